"""bigmodel.ops.rms_norm (F.rms_norm's semantics) and bigmodel.ops.add_rms_norm (the pre-norm block's residual add
and RMSNorm in one pass) on the fused kernels."""
import math

import torch

from .. import backends
from . import _checks


def _check(op, input, normalized_shape, weight, eps, residual=None):
    """The shared argument checks; returns (normalized_shape tuple, eps as a float)."""
    _checks.check_tensor(op, "input", input)
    shape = _checks.normalized_shape_of(op, input, normalized_shape)
    if residual is not None or op == "add_rms_norm":
        _checks.check_tensor(op, "residual", residual)
        if residual.shape != input.shape or residual.dtype != input.dtype:
            raise ValueError(f"bigmodel.ops.{op}: residual must have input's shape and dtype "
                             f"{tuple(input.shape)} {input.dtype}; got {tuple(residual.shape)} {residual.dtype}")
    _checks.check_tensor(op, "weight", weight, optional=True)
    _checks.check_shape(op, "weight", weight, shape, " (= normalized_shape)")
    _checks.check_dtype_in(op, "weight", weight, (input.dtype, torch.float32), f"the input is {input.dtype}")
    _checks.check_same_device(op, "input", input, residual=residual, weight=weight)
    if eps is None:  # F.rms_norm's default: the machine epsilon of the dtype it computes in (fp32 for 16-bit input)
        eps = torch.finfo(torch.float64 if input.dtype == torch.float64 else torch.float32).eps
    _checks.check_eps(op, eps)
    return shape, float(eps)


def rms_norm(input, normalized_shape, weight=None, eps=None, *, backend=None):
    """Same as `torch.nn.functional.rms_norm`: y = x / sqrt(mean(x^2) + eps) * weight over the last
    len(normalized_shape) dims; eps=None is torch.finfo(input.dtype).eps. Statistics in fp32 for every dtype (fp64
    for fp64 input, reference and torch backends). weight may be the input's dtype or float32; the output has the
    input's dtype. Gemma's (1 + weight) is not a flag: pass 1 + weight (bigmodel.patch does for Gemma's RMSNorm)."""
    op = "rms_norm"
    shape, eps = _check(op, input, normalized_shape, weight, eps)
    n = math.prod(shape)

    def trial(name, fresh):
        return rms_norm(fresh(input), shape, fresh(weight), eps, backend=name)

    impl = backends.select(op, backends.requested(backend), training=_checks.needs_grad(input, weight), trial=trial,
                           input=_checks.rows_like(input, n, input.numel() // n), weight=weight)
    if impl.name == "torch":
        return impl.rms_norm(input, shape, weight, eps)
    y, _rstd = torch.ops.bigmodel.rms_norm(input, list(shape), weight, eps, impl.name)
    return y


def add_rms_norm(input, residual, normalized_shape, weight=None, eps=None, *, backend=None):
    """(rms_norm(input + residual), input + residual) in one pass: the sum is rounded to the input dtype (as the
    unfused `input + residual` is) before it is normalised, and returned as the next residual stream. The backward
    is fused too: d(input) = d(residual) = rms_norm's gradient + the gradient of the returned sum."""
    op = "add_rms_norm"
    shape, eps = _check(op, input, normalized_shape, weight, eps, residual)
    n = math.prod(shape)

    def trial(name, fresh):
        return add_rms_norm(fresh(input), fresh(residual), shape, fresh(weight), eps, backend=name)

    rows = input.numel() // n
    impl = backends.select(op, backends.requested(backend), training=_checks.needs_grad(input, residual, weight),
                           trial=trial, input=_checks.rows_like(input, n, rows),
                           residual=_checks.rows_like(residual, n, rows), weight=weight)
    if impl.name == "torch":
        return impl.add_rms_norm(input, residual, shape, weight, eps)
    y, h, _rstd = torch.ops.bigmodel.add_rms_norm(input, residual, list(shape), weight, eps, impl.name)
    return y, h
