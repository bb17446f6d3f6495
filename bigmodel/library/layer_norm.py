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
    """Returns (y, mean, rstd); mean and rstd are fp32 of shape (rows,), saved for the backward."""
    impl = backends.select("layer_norm", backend, input=x, weight=weight, bias=bias)
    n = math.prod(normalized_shape)
    w, b = _flat_param(weight, n), _flat_param(bias, n)
    y, mean, rstd = impl.layer_norm_fwd(row_view(x, n), w, b, eps)
    return y.view(x.shape), mean, rstd


@layer_norm.register_fake
def _(x, normalized_shape, weight, bias, eps, backend):
    rows = x.numel() // math.prod(normalized_shape)
    stat = x.new_empty(rows, dtype=torch.float32)
    return x.new_empty(x.shape), stat, torch.empty_like(stat)


@torch.library.custom_op("bigmodel::layer_norm_backward", mutates_args=())
@autocast_off
def layer_norm_backward(grad_out: Tensor, x: Tensor, normalized_shape: list[int], weight: Optional[Tensor],
                        bias: Optional[Tensor], mean: Tensor, rstd: Tensor,
                        backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (dx, dweight, dbias); a missing parameter's gradient is an empty tensor."""
    impl = backends.select("layer_norm", backend, input=x, weight=weight, bias=bias)
    n = math.prod(normalized_shape)
    w, b = _flat_param(weight, n), _flat_param(bias, n)
    dx, dw, db = impl.layer_norm_bwd(row_view(grad_out, n), row_view(x, n), w, b, mean, rstd)
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
