import torch

from .. import ops
from ..ops.activation import gated
from ..ops.feed_forward import _activation_name


class Linear(torch.nn.Linear):
    """`torch.nn.Linear` with an optional fused activation: y = act(x W^T + b), act in "gelu", "gelu_tanh", "relu",
    "silu" or None. Same constructor (plus `activation`), parameters and state_dict as torch.nn.Linear."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None, *, activation=None,
                 backend=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        _activation_name("Linear", activation)  # fail at construction, not at first call
        self.activation, self.backend = activation, backend

    def forward(self, input):
        return ops.linear_act(input, self.weight, self.bias, self.activation, backend=self.backend)

    def extra_repr(self):
        extra = "".join(f", {k}={getattr(self, k)!r}" for k in ("activation", "backend") if getattr(self, k))
        return super().extra_repr() + extra


class FeedForward(torch.nn.Module):
    """The Transformer MLP: fc2(dropout(act(fc1(x)))), with act fused into fc1's GEMM.
    fc1: d_model -> d_hidden, fc2: d_hidden -> d_model (both bigmodel.nn.Linear, i.e. torch.nn.Linear state)."""

    def __init__(self, d_model, d_hidden, activation="gelu", bias=True, dropout=0.0, device=None, dtype=None, *,
                 backend=None):
        super().__init__()
        self.fc1 = Linear(d_model, d_hidden, bias, device, dtype, activation=activation, backend=backend)
        self.fc2 = Linear(d_hidden, d_model, bias, device, dtype, backend=backend)
        self.dropout = torch.nn.Dropout(dropout)

    def forward(self, x):  # (..., d_model)
        if self.dropout.p == 0 or not self.training:  # the fused two-GEMM op
            return ops.feed_forward(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias,
                                    self.fc1.activation, backend=self.fc1.backend)
        return self.fc2(self.dropout(self.fc1(x)))


def _plain_linears(*linears) -> bool:
    """Exactly torch.nn.Linear, no bias, hooks or parametrizations: its weight alone says what it computes, so the
    fused op may read it (a subclass or wrapper, e.g. a LoRA adapter, must be called as a module)."""
    return all(type(m) is torch.nn.Linear and m.bias is None and not m._forward_hooks and not m._forward_pre_hooks
               and not torch.nn.utils.parametrize.is_parametrized(m) for m in linears)


class GatedFeedForward(torch.nn.Module):
    """The gated MLP of Llama / Mistral / Qwen (activation "silu") and Gemma ("gelu_tanh"):
    down_proj(act(gate_proj(x)) * up_proj(x)), with Hugging Face's parameter names (a Llama MLP's state_dict
    loads). act(g) * u runs fused, forward and backward (ops.gated_feed_forward / ops.swiglu); Linears with biases,
    hooks or parametrizations, and subclasses / wrappers of Linear (LoRA adapters), are called as modules."""

    def __init__(self, d_model, d_ff, activation="silu", bias=False, device=None, dtype=None, *, backend=None):
        super().__init__()
        self.gate_proj = torch.nn.Linear(d_model, d_ff, bias, device, dtype)
        self.up_proj = torch.nn.Linear(d_model, d_ff, bias, device, dtype)
        self.down_proj = torch.nn.Linear(d_ff, d_model, bias, device, dtype)
        self.activation, self.backend = activation, backend

    def forward(self, x):  # (..., d_model)
        if _plain_linears(self.gate_proj, self.up_proj, self.down_proj):
            return ops.gated_feed_forward(x, self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight,
                                          self.activation, backend=self.backend)
        return self.down_proj(gated("gated_feed_forward", self.gate_proj(x), self.up_proj(x), self.activation,
                                    self.backend))

    def extra_repr(self):
        return f"activation={self.activation!r}" + (f", backend={self.backend!r}" if self.backend else "")


class FusedGatedFeedForward(torch.nn.Module):
    """The gated MLP with one [gate; up] projection (Phi-3's gate_up_proj: the first d_ff outputs are the gate):
    down_proj(act(g) * u) with g, u = gate_up_proj(x).chunk(2, -1)."""

    def __init__(self, d_model, d_ff, activation="silu", bias=False, device=None, dtype=None, *, backend=None):
        super().__init__()
        self.gate_up_proj = torch.nn.Linear(d_model, 2 * d_ff, bias, device, dtype)
        self.down_proj = torch.nn.Linear(d_ff, d_model, bias, device, dtype)
        self.activation, self.backend = activation, backend

    def forward(self, x):
        if _plain_linears(self.gate_up_proj, self.down_proj):
            w_gate, w_up = self.gate_up_proj.weight.chunk(2, dim=0)  # row blocks: contiguous views
            return ops.gated_feed_forward(x, w_gate, w_up, self.down_proj.weight, self.activation,
                                          backend=self.backend)
        g, u = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(gated("gated_feed_forward", g, u, self.activation, self.backend))

    def extra_repr(self):
        return f"activation={self.activation!r}" + (f", backend={self.backend!r}" if self.backend else "")


class GELU(torch.nn.GELU):
    """`torch.nn.GELU(approximate="none"|"tanh")` on the fused kernel."""

    def __init__(self, approximate="none", *, backend=None):
        super().__init__(approximate)
        self.backend = backend

    def forward(self, input):
        return ops.gelu(input, self.approximate, backend=self.backend)


class SiLU(torch.nn.SiLU):
    """`torch.nn.SiLU` on the fused kernel (`inplace=True` accepted for compatibility; the result is a new tensor)."""

    def __init__(self, inplace=False, *, backend=None):
        super().__init__(inplace)
        self.backend = backend

    def forward(self, input):
        return ops.silu(input, backend=self.backend)


class ReLU(torch.nn.ReLU):
    """`torch.nn.ReLU` on the fused kernel. `inplace=True` is accepted for compatibility but the result is always a
    new tensor (the input is left unchanged)."""

    def __init__(self, inplace=False, *, backend=None):
        super().__init__(inplace)
        self.backend = backend

    def forward(self, input):
        return ops.relu(input, backend=self.backend)


class Softmax(torch.nn.Softmax):
    """`torch.nn.Softmax(dim)` on the fused kernel (dim=None picks the dim as torch's legacy rule does)."""

    def __init__(self, dim=None, *, backend=None):
        super().__init__(dim)
        self.backend = backend

    def forward(self, input):
        dim = self.dim if self.dim is not None else (0 if input.dim() in (0, 1, 3) else 1)
        return ops.softmax(input, dim, backend=self.backend)
