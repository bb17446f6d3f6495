"""bigmodel::layer_norm and bigmodel::layer_norm_backward."""
import math
from typing import Optional

import torch
from torch import Tensor

from .. import backends
from . import _empty_grad, _flat_param, autocast_off, row_view


@torch.library.custom_op("bigmodel::layer_norm", mutates_args=())
@autocast_off
def layer_norm(x: Tensor, normalized_shape: list[int], weight: Optional[Tensor], bias: Optional[Tensor],
               eps: float, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (y, mean, rstd); mean and rstd of shape (rows,), saved for the backward, are fp32 (fp64 for fp64 input,
    which only the pure-math backend takes). No kernel runs on zero rows."""
    n = math.prod(normalized_shape)
    x2 = row_view(x, n)
    impl = backends.kernel("layer_norm", backend, input=x2, weight=weight, bias=bias)
    if x2.size(0) == 0:
        stat = x.new_empty(0, dtype=stats_dtype(x))
        return x.new_empty(x.shape), stat, torch.empty_like(stat)
    w, b = _flat_param(weight, n), _flat_param(bias, n)
    y, mean, rstd = impl.layer_norm_fwd(x2, w, b, eps)
    return y.view(x.shape), mean, rstd


def stats_dtype(x: Tensor) -> torch.dtype:
    """The dtype of the saved mean / rstd: fp32, or fp64 for fp64 input (fp64 statistics for fp64 accuracy)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@layer_norm.register_fake
def _(x, normalized_shape, weight, bias, eps, backend):
    rows = x.numel() // math.prod(normalized_shape)
    stat = x.new_empty(rows, dtype=stats_dtype(x))
    return x.new_empty(x.shape), stat, torch.empty_like(stat)


@torch.library.custom_op("bigmodel::layer_norm_backward", mutates_args=())
@autocast_off
def layer_norm_backward(grad_out: Tensor, x: Tensor, normalized_shape: list[int], weight: Optional[Tensor],
                        bias: Optional[Tensor], mean: Tensor, rstd: Tensor,
                        backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (dx, dweight, dbias); a missing parameter's gradient is an empty tensor."""
    n = math.prod(normalized_shape)
    x2 = row_view(x, n)
    impl = backends.kernel("layer_norm", backend, input=x2, weight=weight, bias=bias)
    if x2.size(0) == 0:  # zero rows: dx is empty, dweight / dbias sum nothing
        dw = torch.zeros_like(weight) if weight is not None else _empty_grad(x)
        db = torch.zeros_like(bias) if bias is not None else _empty_grad(x)
        return x.new_empty(x.shape), dw, db
    w, b = _flat_param(weight, n), _flat_param(bias, n)
    dx, dw, db = impl.layer_norm_bwd(row_view(grad_out, n), x2, w, b, mean, rstd)
    dw = dw.view(weight.shape) if weight is not None else _empty_grad(x)
    db = db.view(bias.shape) if bias is not None else _empty_grad(x)
    return dx.view(x.shape), dw, db


@layer_norm_backward.register_fake
def _(grad_out, x, normalized_shape, weight, bias, mean, rstd, backend):
    dw = torch.empty_like(weight) if weight is not None else _empty_grad(x)
    db = torch.empty_like(bias) if bias is not None else _empty_grad(x)
    return x.new_empty(x.shape), dw, db


def _layer_norm_setup(ctx, inputs, output):
    x, normalized_shape, weight, bias, _eps, backend = inputs
    _y, mean, rstd = output
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    ctx.normalized_shape, ctx.backend = normalized_shape, backend
    ctx.mark_non_differentiable(mean, rstd)


def _layer_norm_grad(ctx, grad_y, _grad_mean, _grad_rstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dw, db = torch.ops.bigmodel.layer_norm_backward(grad_y, x, ctx.normalized_shape, weight, bias,
                                                        mean, rstd, ctx.backend)
    return dx, None, dw if weight is not None else None, db if bias is not None else None, None, None


layer_norm.register_autograd(_layer_norm_grad, setup_context=_layer_norm_setup)
