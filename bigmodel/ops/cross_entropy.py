"""bigmodel.ops.cross_entropy: F.cross_entropy for (N, C) logits and (N,) int64 class indices on the fused kernels."""
import numbers

import torch

from .. import backends
from . import _checks

REDUCTIONS = ("mean", "sum", "none")


def cross_entropy(input, target, *, ignore_index=-100, reduction="mean", label_smoothing=0.0, backend=None):
    """Same as `F.cross_entropy(input, target, ignore_index=..., reduction=..., label_smoothing=...)` for logits
    `input` (N, C) (fp32 / fp16 / bf16, fp64 on the reference and torch backends) and class indices `target` (N,)
    int64. Class weights and probability targets are not taken (F.cross_entropy or bigmodel.nn.CrossEntropyLoss with
    weight= run them on PyTorch).

    Per row, in fp32 with one online log-sum-exp pass: loss_i = (1 - eps)(lse_i - x_{i,t_i}) + eps (lse_i - mean_j
    x_ij), eps = label_smoothing; 0 on rows whose target is ignore_index. "mean" divides the sum by the count of
    non-ignored targets (NaN when every target is ignored, as torch), "sum" sums, "none" returns the (N,) rows. The
    result has the logits' dtype (fp32 under autocast, which runs F.cross_entropy in fp32); the gradient is computed in
    fp32 and written once into a fresh dlogits buffer (see bigmodel/library/cross_entropy.py for why not in place).

    Every target that is not ignore_index must lie in [0, C): this is checked on the host, so the call synchronises
    with the device once (`bad.any()`), and raises a ValueError naming `target` instead of a device-side assert. Under
    torch.compile the check is skipped (it would break the graph): the kernels then give NaN for such rows, never an
    out-of-bounds read.
    """
    _check_args(input, target, ignore_index, reduction, label_smoothing)
    if not torch.compiler.is_compiling():
        check_target_range("cross_entropy", target, input.size(1), ignore_index)
    out_dtype = input.dtype
    if torch.is_autocast_enabled(input.device.type) and input.dtype != torch.float64:
        out_dtype = torch.float32  # autocast runs F.cross_entropy in fp32; the kernels read the 16-bit logits as is
    impl = backends.select("cross_entropy", backends.requested(backend), training=_checks.needs_grad(input),
                           trial=lambda b, fresh: cross_entropy(fresh(input), target, ignore_index=ignore_index,
                                                                reduction=reduction, label_smoothing=label_smoothing,
                                                                backend=b),
                           input=input, reduction=reduction, label_smoothing=float(label_smoothing))
    if impl.name == "torch":
        return impl.cross_entropy(input, target, ignore_index, reduction, float(label_smoothing))
    logits = input if input.stride(1) == 1 or input.size(1) <= 1 else input.contiguous()
    rows, _lse = torch.ops.bigmodel.cross_entropy(logits, target.contiguous(), int(ignore_index),
                                                  float(label_smoothing), 0.0, impl.name)
    return reduce_rows(rows, target, ignore_index, reduction).to(out_dtype)


def reduce_rows(rows, target, ignore_index, reduction):
    """The per-row losses (fp32, 0 on ignored rows) reduced with torch ops, so autograd carries the 1 / count of
    "mean" into the gradient each row's backward receives."""
    if reduction == "none":
        return rows
    total = rows.sum()
    if reduction == "sum":
        return total
    return total / (target != ignore_index).sum()  # 0 / 0 = NaN when every target is ignored, as torch


def _check_args(input, target, ignore_index, reduction, label_smoothing, op="cross_entropy"):
    _checks.check_tensor(op, "input", input)
    if input.dim() != 2:
        raise ValueError(f"bigmodel.ops.{op}: input must be 2-D logits (N, C); got shape {tuple(input.shape)} "
                         "(flatten the leading dims into N first)")
    if input.size(1) == 0:
        raise ValueError(f"bigmodel.ops.{op}: input must have at least one class (C >= 1); got shape "
                         f"{tuple(input.shape)}")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"bigmodel.ops.{op}: target must be a torch.Tensor, got {type(target).__name__}")
    if target.dtype != torch.int64:
        raise TypeError(f"bigmodel.ops.{op}: target must hold int64 class indices; got dtype "
                        f"{str(target.dtype).replace('torch.', '')} (probability targets are not supported: use "
                        "F.cross_entropy)")
    _checks.check_shape(op, "target", target, (input.size(0),), " (one class index per row of input)")
    _checks.check_same_device(op, "input", input, target=target)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"bigmodel.ops.{op}: ignore_index must be an int; got {ignore_index!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"bigmodel.ops.{op}: reduction must be one of {', '.join(map(repr, REDUCTIONS))}; got "
                         f"{reduction!r}")
    if not isinstance(label_smoothing, numbers.Real) or not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"bigmodel.ops.{op}: label_smoothing must be a float in [0, 1]; got {label_smoothing!r}")


def check_target_range(op, target, num_classes, ignore_index):
    """Every non-ignored target in [0, num_classes), else a ValueError naming the first bad one. One host sync."""
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"bigmodel.ops.{op}: target must hold class indices in [0, {num_classes}) or ignore_index "
                         f"({ignore_index}); got target[{i}] = {int(target[i])}")


__all__ = ["check_target_range", "cross_entropy", "reduce_rows"]
