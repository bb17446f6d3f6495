"""bigmodel::rms_norm, bigmodel::add_rms_norm and their backward ops.

rms_norm(x) -> (y, rstd);  add_rms_norm(x, residual) -> (y, h, rstd) with h = x + residual (the residual stream the
next block adds to) and y = rms_norm(h). rstd (rows,) is fp32 (fp64 for fp64 input, the reference backend only),
saved for the backward. add_rms_norm's backward gets the gradients of both y and h and returns
d(x) = d(residual) = rms_norm'(h)^T dy + dh.
"""
import math
from typing import Optional

import torch
from torch import Tensor

from .. import backends
from . import _empty_grad, _flat_param, autocast_off, row_view
from .layer_norm import stats_dtype


def _rows(x: Tensor, normalized_shape) -> int:
    return x.numel() // math.prod(normalized_shape)


# --------------------------------------------------------------------------------------------- rms_norm
@torch.library.custom_op("bigmodel::rms_norm", mutates_args=())
@autocast_off
def rms_norm(x: Tensor, normalized_shape: list[int], weight: Optional[Tensor], eps: float,
             backend: str) -> tuple[Tensor, Tensor]:
    n = math.prod(normalized_shape)
    x2 = row_view(x, n)
    impl = backends.kernel("rms_norm", backend, input=x2, weight=weight)
    if x2.size(0) == 0:
        return x.new_empty(x.shape), x.new_empty(0, dtype=stats_dtype(x))
    y, rstd = impl.rms_norm_fwd(x2, _flat_param(weight, n), eps)
    return y.view(x.shape), rstd


@rms_norm.register_fake
def _(x, normalized_shape, weight, eps, backend):
    return x.new_empty(x.shape), x.new_empty(_rows(x, normalized_shape), dtype=stats_dtype(x))


@torch.library.custom_op("bigmodel::rms_norm_backward", mutates_args=())
@autocast_off
def rms_norm_backward(grad_out: Tensor, x: Tensor, normalized_shape: list[int], weight: Optional[Tensor],
                      rstd: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    """Returns (dx, dweight); without a weight, dweight is an empty tensor."""
    n = math.prod(normalized_shape)
    x2 = row_view(x, n)
    impl = backends.kernel("rms_norm", backend, input=x2, weight=weight)
    if x2.size(0) == 0:
        return x.new_empty(x.shape), torch.zeros_like(weight) if weight is not None else _empty_grad(x)
    dx, dw = impl.rms_norm_bwd(row_view(grad_out, n), x2, _flat_param(weight, n), rstd)
    return dx.view(x.shape), dw.view(weight.shape) if weight is not None else _empty_grad(x)


@rms_norm_backward.register_fake
def _(grad_out, x, normalized_shape, weight, rstd, backend):
    return x.new_empty(x.shape), torch.empty_like(weight) if weight is not None else _empty_grad(x)


def _rms_norm_setup(ctx, inputs, output):
    x, normalized_shape, weight, _eps, backend = inputs
    ctx.save_for_backward(x, weight, output[1])
    ctx.normalized_shape, ctx.backend = normalized_shape, backend
    ctx.mark_non_differentiable(output[1])


def _rms_norm_grad(ctx, grad_y, _grad_rstd):
    x, weight, rstd = ctx.saved_tensors
    dx, dw = torch.ops.bigmodel.rms_norm_backward(grad_y, x, ctx.normalized_shape, weight, rstd, ctx.backend)
    return dx, None, dw if weight is not None else None, None, None


rms_norm.register_autograd(_rms_norm_grad, setup_context=_rms_norm_setup)


# --------------------------------------------------------------------------------------------- add_rms_norm
@torch.library.custom_op("bigmodel::add_rms_norm", mutates_args=())
@autocast_off
def add_rms_norm(x: Tensor, residual: Tensor, normalized_shape: list[int], weight: Optional[Tensor], eps: float,
                 backend: str) -> tuple[Tensor, Tensor, Tensor]:
    n = math.prod(normalized_shape)
    x2, r2 = row_view(x, n), row_view(residual, n)
    impl = backends.kernel("add_rms_norm", backend, input=x2, residual=r2, weight=weight)
    if x2.size(0) == 0:
        return x.new_empty(x.shape), x.new_empty(x.shape), x.new_empty(0, dtype=stats_dtype(x))
    y, h, rstd = impl.add_rms_norm_fwd(x2, r2, _flat_param(weight, n), eps)
    return y.view(x.shape), h.view(x.shape), rstd


@add_rms_norm.register_fake
def _(x, residual, normalized_shape, weight, eps, backend):
    return x.new_empty(x.shape), x.new_empty(x.shape), x.new_empty(_rows(x, normalized_shape), dtype=stats_dtype(x))


@torch.library.custom_op("bigmodel::add_rms_norm_backward", mutates_args=())
@autocast_off
def add_rms_norm_backward(grad_y: Tensor, grad_h: Tensor, h: Tensor, normalized_shape: list[int],
                          weight: Optional[Tensor], rstd: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    """Returns (d(x) = d(residual), dweight); without a weight, dweight is an empty tensor."""
    n = math.prod(normalized_shape)
    h2 = row_view(h, n)
    impl = backends.kernel("add_rms_norm", backend, input=h2, residual=h2, weight=weight)
    if h2.size(0) == 0:
        return h.new_empty(h.shape), torch.zeros_like(weight) if weight is not None else _empty_grad(h)
    dx, dw = impl.add_rms_norm_bwd(row_view(grad_y, n), row_view(grad_h, n), h2, _flat_param(weight, n), rstd)
    return dx.view(h.shape), dw.view(weight.shape) if weight is not None else _empty_grad(h)


@add_rms_norm_backward.register_fake
def _(grad_y, grad_h, h, normalized_shape, weight, rstd, backend):
    return h.new_empty(h.shape), torch.empty_like(weight) if weight is not None else _empty_grad(h)


def _add_rms_norm_setup(ctx, inputs, output):
    _x, _residual, normalized_shape, weight, _eps, backend = inputs
    _y, h, rstd = output
    ctx.save_for_backward(h, weight, rstd)
    ctx.normalized_shape, ctx.backend = normalized_shape, backend
    ctx.mark_non_differentiable(rstd)


def _add_rms_norm_grad(ctx, grad_y, grad_h, _grad_rstd):
    h, weight, rstd = ctx.saved_tensors
    if grad_y is None:
        grad_y = torch.zeros_like(h)
    if grad_h is None:
        grad_h = torch.zeros_like(h)
    d, dw = torch.ops.bigmodel.add_rms_norm_backward(grad_y, grad_h, h, ctx.normalized_shape, weight, rstd,
                                                     ctx.backend)
    return d, d, None, dw if weight is not None else None, None, None


add_rms_norm.register_autograd(_add_rms_norm_grad, setup_context=_add_rms_norm_setup)
