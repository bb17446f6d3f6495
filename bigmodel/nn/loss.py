"""bigmodel.nn.CrossEntropyLoss: torch.nn.CrossEntropyLoss on bigmodel.ops.cross_entropy."""
import torch
import torch.nn.functional as F

from .. import backends, ops

KERNEL_BACKENDS = ("triton", "cuda", "reference")


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """`torch.nn.CrossEntropyLoss` on bigmodel's fused cross-entropy for (N, C) logits and (N,) int64 targets. Same
    constructor, buffers and state_dict; `backend` pins one backend for this module.

    Class weights (`weight=`) are not in the kernels. A module with a weight computes F.cross_entropy (PyTorch's own
    op, the "torch" backend) so it stays a drop-in; if a kernel backend ("triton", "cuda", "reference") was asked for
    by name, the constructor raises instead, since nothing falls back silently when a backend was asked for (a backend
    chosen later with use_backend() makes forward raise)."""

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
                 label_smoothing=0.0, *, backend=None):
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        if backend is not None:
            backends.check_name(backend, "backend")
        if weight is not None and backend in KERNEL_BACKENDS:
            raise ValueError(f"bigmodel.nn.CrossEntropyLoss: class weights (weight=) are not supported by the "
                             f"{backend!r} kernels; use backend='torch' (or None / 'auto'), which runs F.cross_entropy")
        self.backend = backend

    def forward(self, input, target):
        if self.weight is not None:
            name = backends.requested(self.backend)
            if name in KERNEL_BACKENDS:
                raise ValueError(f"bigmodel.nn.CrossEntropyLoss: class weights (weight=) are not supported by the "
                                 f"{name!r} kernels; use backend 'torch' or 'auto', which run F.cross_entropy")
            return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                                   reduction=self.reduction, label_smoothing=self.label_smoothing)
        return ops.cross_entropy(input, target, ignore_index=self.ignore_index, reduction=self.reduction,
                                 label_smoothing=self.label_smoothing, backend=self.backend)

    def extra_repr(self):
        return f"backend={self.backend!r}" if self.backend else ""
