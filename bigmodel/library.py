"""torch.library custom ops `bigmodel::<op>`: one opaque, fake-tensor-aware node per op for torch.compile.

Each op takes the requested backend name as a string argument and picks the concrete backend when it
runs (backends.select), so tracing never looks inside a kernel. Autograd is registered on the forward op
and calls the `<op>_backward` custom op, which uses the same backend choice.
"""
import math
from typing import Optional

import torch
from torch import Tensor

from . import backends


def row_view(t: Tensor, n: int) -> Tensor:
    """`t` as (rows, n) with unit column stride; copies only when no such view exists."""
    t2 = t.reshape(-1, n)
    return t2 if t2.stride(-1) == 1 or n == 1 else t2.contiguous()


def _flat_param(p: Optional[Tensor], n: int) -> Optional[Tensor]:
    """A weight / bias of any normalized_shape as a contiguous (n,) vector."""
    return p.reshape(n).contiguous() if p is not None else None


def _empty_grad(like: Tensor) -> Tensor:
    """Placeholder output for a gradient that does not exist (custom ops cannot return None)."""
    return like.new_empty(0)


# ------------------------------------------------------------------------------------------ layer_norm
@torch.library.custom_op("bigmodel::layer_norm", mutates_args=())
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


# ------------------------------------------------------------------------------------------ attention
# q (B, Hq, Lq, D), k / v (B, Hkv, Lk, D|Dv), attn_mask None or an expanded (B, Hq, Lq, Lk) view: bigmodel.ops.attention
# brings every input to this form. The dropout seed is drawn inside the forward op from torch's CPU generator
# (so torch.manual_seed and activation checkpointing's RNG replay reproduce it) and saved for the backward.
def _attention_impl(backend, q, k, v, attn_mask, dropout_p, is_causal):
    return backends.select("attention", backend, q=q, k=k, v=v, attn_mask=attn_mask, dropout_p=dropout_p,
                           is_causal=is_causal)


@torch.library.custom_op("bigmodel::attention", mutates_args=())
def attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor], dropout_p: float, is_causal: bool,
              scale: float, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (out (B, Hq, Lq, Dv), lse (B, Hq, Lq) fp32, seed (1,) int64 CPU; 0 without dropout)."""
    impl = _attention_impl(backend, q, k, v, attn_mask, dropout_p, is_causal)
    seed = torch.randint(0, 2**31 - 1, (1,)) if dropout_p > 0 else torch.zeros(1, dtype=torch.int64)
    out, lse = impl.attention_fwd(q, k, v, attn_mask, is_causal, scale, dropout_p, int(seed))
    return out, lse, seed


@attention.register_fake
def _(q, k, v, attn_mask, dropout_p, is_causal, scale, backend):
    out = q.new_empty(*q.shape[:-1], v.size(-1))
    return out, q.new_empty(q.shape[:-1], dtype=torch.float32), torch.empty(1, dtype=torch.int64, device="cpu")


@torch.library.custom_op("bigmodel::attention_backward", mutates_args=())
def attention_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                       attn_mask: Optional[Tensor], dropout_p: float, is_causal: bool, scale: float, seed: Tensor,
                       backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (dq, dk, dv) with the shapes of q, k, v (GQA: dk, dv summed over each kv head's query heads)."""
    impl = _attention_impl(backend, q, k, v, attn_mask, dropout_p, is_causal)
    grad_out = grad_out if grad_out.stride(-1) == 1 else grad_out.contiguous()
    return impl.attention_bwd(grad_out, q, k, v, out, lse, attn_mask, is_causal, scale, dropout_p, int(seed))


@attention_backward.register_fake
def _(grad_out, q, k, v, out, lse, attn_mask, dropout_p, is_causal, scale, seed, backend):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)  # kernels return contiguous grads


def _attention_setup(ctx, inputs, output):
    q, k, v, attn_mask, dropout_p, is_causal, scale, backend = inputs
    out, lse, seed = output
    ctx.save_for_backward(q, k, v, out, lse, attn_mask, seed)
    ctx.dropout_p, ctx.is_causal, ctx.scale, ctx.backend = dropout_p, is_causal, scale, backend
    ctx.mark_non_differentiable(lse, seed)


def _attention_grad(ctx, grad_out, _grad_lse, _grad_seed):
    q, k, v, out, lse, attn_mask, seed = ctx.saved_tensors
    dq, dk, dv = torch.ops.bigmodel.attention_backward(grad_out, q, k, v, out, lse, attn_mask, ctx.dropout_p,
                                                       ctx.is_causal, ctx.scale, seed, ctx.backend)
    return dq, dk, dv, None, None, None, None, None


attention.register_autograd(_attention_grad, setup_context=_attention_setup)
