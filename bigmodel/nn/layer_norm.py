import torch

from .. import ops


class LayerNorm(torch.nn.LayerNorm):
    """`torch.nn.LayerNorm` on bigmodel's fused kernel. Same constructor, parameters and state_dict;
    `backend` pins one backend for this module (default: the active choice, see bigmodel.backends)."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, device=None, dtype=None,
                 *, backend=None):
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device=device, dtype=dtype)
        self.backend = backend

    def forward(self, input):
        return ops.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps, backend=self.backend)

    def extra_repr(self):
        return super().extra_repr() + (f", backend={self.backend!r}" if self.backend else "")


class RMSNorm(torch.nn.RMSNorm):
    """`torch.nn.RMSNorm` on bigmodel's fused kernel (fp32 statistics). Same constructor, parameters and
    state_dict; `backend` pins one backend for this module."""

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, device=None, dtype=None, *, backend=None):
        super().__init__(normalized_shape, eps, elementwise_affine, device=device, dtype=dtype)
        self.backend = backend

    def forward(self, input):
        return ops.rms_norm(input, self.normalized_shape, self.weight, self.eps, backend=self.backend)

    def extra_repr(self):
        return super().extra_repr() + (f", backend={self.backend!r}" if self.backend else "")


class OffsetRMSNorm(RMSNorm):
    """RMSNorm whose stored weight w scales as (offset + w), e.g. Gemma's (1 + w) with w initialised to zeros.
    Same parameter and state_dict as the module it replaces; the offset is applied to the weight per call (so
    training updates w as the original module would)."""

    def __init__(self, normalized_shape, eps=None, offset=1.0, device=None, dtype=None, *, backend=None):
        super().__init__(normalized_shape, eps, True, device=device, dtype=dtype, backend=backend)
        self.offset = offset

    def forward(self, input):
        w = self.weight.float() if self.weight.element_size() < 4 else self.weight  # (x * (1 + w)) in fp32 at
        weight = self.offset + w                                                      # least, as Gemma does
        return ops.rms_norm(input, self.normalized_shape, weight, self.eps, backend=self.backend)

    def extra_repr(self):
        return super().extra_repr() + f", offset={self.offset}"
