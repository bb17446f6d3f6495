"""bigmodel.ops.linear_cross_entropy: F.cross_entropy(F.linear(input, weight, bias), target) without ever holding
all (N, V) logits at once.

The rows are walked in chunks (bigmodel/library/linear_cross_entropy.py has the algorithm): per chunk the logits,
the per-row loss, and -- when a gradient is wanted, for "mean" / "sum" -- the chunk's dlogits in place over its
logits, its dinput and its share of dweight / dbias (accumulated in fp32 in a fixed order: bitwise deterministic).
The backward is then only a scale by grad_output. Reduction "none" recomputes the chunks in its backward.

Chunk size (`chunk_rows`): the largest power of two of rows whose logits take at most 256 MiB on a CUDA device
(32 MiB on other devices, the CPU), at least 1 row and never more rows than the next power of two of N. The extra
memory is then a small multiple of chunk x V (the chunk's logits, overwritten by its dlogits, plus the per-chunk
math's fp32 temporaries), plus the gradients themselves and an fp32 (V, d) dweight accumulator. The environment
variable BIGMODEL_LCE_CHUNK_ROWS (a positive int) overrides the rule (tests use it to force many chunks).
"""
import numbers
import os

import torch

from .. import backends
from ..library import row_view
from ..library.linear_cross_entropy import REDUCTIONS
from . import _checks

OP = "linear_cross_entropy"
CHUNK_ENV = "BIGMODEL_LCE_CHUNK_ROWS"
CHUNK_BYTES = {"cuda": 256 * 2**20}  # logits bytes per chunk on this device type
CHUNK_BYTES_OTHER = 32 * 2**20


@backends.trace_constant
def _env_chunk():
    value = os.environ.get(CHUNK_ENV)
    if not value:
        return 0
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{CHUNK_ENV} must be a positive int (rows per chunk); got {value!r}")
    return int(value)


def chunk_rows(n: int, classes: int, dtype: torch.dtype, device_type: str) -> int:
    """Rows per chunk: see the module doc."""
    forced = _env_chunk()
    if forced:
        return forced
    budget = CHUNK_BYTES.get(device_type, CHUNK_BYTES_OTHER)
    itemsize = torch.empty((), dtype=dtype, device="meta").element_size()
    rows = max(1, budget // max(1, classes * itemsize))
    rows = 1 << (rows.bit_length() - 1)  # largest power of two <= rows
    cap = 1 << max(0, (max(n, 1) - 1).bit_length())  # next power of two >= n
    return max(1, min(rows, cap))


def _check(input, weight, target, bias, ignore_index, reduction, label_smoothing, softcap):
    _checks.check_tensor(OP, "input", input)
    if input.dim() < 1:
        raise ValueError(f"bigmodel.ops.{OP}: input must have at least 1 dim (..., in_features); got a scalar")
    _checks.check_tensor(OP, "weight", weight)
    if weight.dim() != 2 or weight.size(1) != input.size(-1):
        raise ValueError(f"bigmodel.ops.{OP}: weight must have shape (num_classes, {input.size(-1)}) to match "
                         f"input's last dim (input is {tuple(input.shape)}); got weight {tuple(weight.shape)}")
    _checks.check_tensor(OP, "bias", bias, optional=True)
    _checks.check_shape(OP, "bias", bias, (weight.size(0),), " (= weight's num_classes)")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != input.dtype:
            raise TypeError(f"bigmodel.ops.{OP}: {name} must have the input's dtype {input.dtype}; got {t.dtype}")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"bigmodel.ops.{OP}: target must be a torch.Tensor of int64 class indices, got "
                        f"{type(target).__name__}")
    if target.dtype != torch.int64:
        what = " (class probabilities are not supported: pass int64 class indices)" if target.is_floating_point() \
            else ""
        raise TypeError(f"bigmodel.ops.{OP}: target must have dtype int64 (class indices){what}; got "
                        f"{str(target.dtype).replace('torch.', '')}")
    if tuple(target.shape) != tuple(input.shape[:-1]):
        raise ValueError(f"bigmodel.ops.{OP}: target must have shape {tuple(input.shape[:-1])} (input's leading "
                         f"dims; input is {tuple(input.shape)}); got {tuple(target.shape)}")
    _checks.check_same_device(OP, "input", input, weight=weight, bias=bias, target=target)
    if not isinstance(ignore_index, numbers.Integral) or isinstance(ignore_index, bool):
        raise TypeError(f"bigmodel.ops.{OP}: ignore_index must be an int; got {ignore_index!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"bigmodel.ops.{OP}: reduction must be one of 'mean', 'sum', 'none'; got {reduction!r}")
    if not isinstance(label_smoothing, numbers.Real) or not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"bigmodel.ops.{OP}: label_smoothing must be a float in [0.0, 1.0]; got {label_smoothing!r}")
    if softcap is not None and (not isinstance(softcap, numbers.Real) or not softcap > 0):
        raise ValueError(f"bigmodel.ops.{OP}: softcap must be None (off) or a positive float; got {softcap!r}")


def linear_cross_entropy(input, weight, target, bias=None, *, ignore_index=-100, reduction="mean",
                         label_smoothing=0.0, softcap=None, backend=None):
    """`F.cross_entropy(F.linear(input, weight, bias), target, ignore_index=..., reduction=...,
    label_smoothing=...)`, computed chunk by chunk over the rows so the (N, V) logits never exist in full.

    input (N, d) or (..., d); weight (V, d) (a classifier head or a tied embedding matrix); target (N,) / (...,)
    int64 class indices; bias (V,) or None. softcap=c (Gemma 2's final_logit_softcapping) applies
    logits -> c * tanh(logits / c) before the loss. "mean" divides by the number of non-ignored targets (nan when
    every target is ignored, as F.cross_entropy; the gradients are then 0). The loss has the input's dtype (fp32
    under autocast, as F.cross_entropy's autocast rule gives), computed in fp32 (fp64 for fp64 inputs).
    Gradients come out of the forward when an input requires grad (the backward only scales them); see the module
    doc for the chunk size and bigmodel/library/linear_cross_entropy.py for the algorithm.
    """
    return _loss_in(None, input, weight, target, bias, ignore_index, reduction, label_smoothing, softcap, backend)


def linear_cross_entropy_fp32(input, weight, target, bias=None, *, ignore_index=-100, reduction="mean",
                              label_smoothing=0.0, softcap=None, backend=None):
    """linear_cross_entropy with the loss kept in fp32 whatever the input dtype (it is computed in fp32): what
    Hugging Face's ForCausalLMLoss (logits.float()) and the trainer's loss give; rounding it to bf16 first and then
    calling .float() would be off by up to ~0.4%."""
    return _loss_in(torch.float32, input, weight, target, bias, ignore_index, reduction, label_smoothing, softcap,
                    backend)


def _loss_in(dtype, input, weight, target, bias, ignore_index, reduction, label_smoothing, softcap, backend):
    autocast = isinstance(input, torch.Tensor) and torch.is_autocast_enabled(input.device.type)
    input, weight, bias = _checks.autocast_inputs(input, weight, bias)  # as autocast does for F.linear
    _check(input, weight, target, bias, ignore_index, reduction, label_smoothing, softcap)
    if dtype is None or input.dtype == torch.float64:  # fp32 requested: fp64 inputs keep their fp64 loss
        dtype = torch.float32 if autocast and input.dtype != torch.float64 else input.dtype
    loss = _linear_cross_entropy(input, weight, target, bias, int(ignore_index), reduction, float(label_smoothing),
                                 float(softcap) if softcap is not None else 0.0, backends.requested(backend))
    loss = loss.to(dtype)
    return loss.view(target.shape) if reduction == "none" else loss


def _select(x, weight, rows, chunk, training, trial, backend_name, reduction, label_smoothing):
    """The backend's name: "torch" runs the chunked loop with PyTorch per-chunk math (always possible for
    floating inputs); otherwise the backend whose cross_entropy kernels the chunks use, judged on a stand-in of one
    chunk's (rows, V) logits."""
    if backend_name == "torch":
        return "torch"
    stand_in = _checks.rows_like(x, weight.size(0), max(1, min(chunk, rows)))
    # fused="linear" and the weight keep auto's measured choice apart from the plain cross_entropy op's on the
    # same (rows, V) logits: here "torch" means this chunked loop with PyTorch per-chunk math, and d matters.
    return backends.select("cross_entropy", backend_name, training=training, trial=trial, input=stand_in,
                           weight=weight, reduction=reduction, label_smoothing=label_smoothing,
                           fused="linear").name


def _linear_cross_entropy(input, weight, target, bias, ignore_index, reduction, label_smoothing, softcap,
                          backend_name):
    d = input.size(-1)
    x = row_view(input, d)
    rows = x.size(0)
    chunk = chunk_rows(rows, weight.size(0), x.dtype, x.device.type)
    grad_enabled = torch.is_grad_enabled()
    flags = tuple(grad_enabled and t is not None and t.requires_grad for t in (input, weight, bias))
    name = _select(x, weight, rows, chunk, any(flags),
                   lambda b, fresh: _linear_cross_entropy(fresh(input), fresh(weight), target,
                                                          fresh(bias), ignore_index, reduction, label_smoothing,
                                                          softcap, b),
                   backend_name, reduction, label_smoothing)
    loss, _dx, _dw, _db = torch.ops.bigmodel.linear_cross_entropy(
        x, weight.contiguous(), target.reshape(rows).contiguous(), bias, ignore_index, reduction, label_smoothing,
        softcap, chunk, *flags, name)
    return loss


__all__ = ["chunk_rows", "linear_cross_entropy", "linear_cross_entropy_fp32"]
