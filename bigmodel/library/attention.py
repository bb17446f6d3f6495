"""bigmodel::attention and bigmodel::attention_backward.

q (B, Hq, Lq, D), k / v (B, Hkv, Lk, D|Dv), attn_mask None or an expanded (B, Hq, Lq, Lk) view: bigmodel.ops.attention
brings every input to this form. The dropout seed is drawn inside the forward op from torch's CPU generator (so
torch.manual_seed and activation checkpointing's RNG replay reproduce it) and saved for the backward.
"""
from typing import Optional

import torch
from torch import Tensor

from .. import backends
from . import autocast_off


def _attention_impl(backend, q, k, v, attn_mask, dropout_p, is_causal):
    mask = attn_mask.detach() if attn_mask is not None else None  # bigmodel.ops judged its requires_grad
    return backends.kernel("attention", backend, q=q, k=k, v=v, attn_mask=mask, dropout_p=dropout_p,
                           is_causal=is_causal)


@torch.library.custom_op("bigmodel::attention", mutates_args=())
@autocast_off
def attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor], dropout_p: float, is_causal: bool,
              scale: float, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (out (B, Hq, Lq, Dv), lse (B, Hq, Lq) fp32, seed (1,) int64 CPU; 0 without dropout)."""
    impl = _attention_impl(backend, q, k, v, attn_mask, dropout_p, is_causal)
    seed = torch.randint(0, 2**31 - 1, (1,)) if dropout_p > 0 else torch.zeros(1, dtype=torch.int64)
    if q.numel() == 0 or k.numel() == 0 or v.numel() == 0:  # no kernel runs on empty data
        out = q.new_zeros(*q.shape[:-1], v.size(-1))  # no keys (Lk = 0): every row is fully masked, output 0
        return out, q.new_full(q.shape[:-1], float("inf"), dtype=torch.float32), seed
    out, lse = impl.attention_fwd(q, k, v, attn_mask, is_causal, scale, dropout_p, int(seed))
    return out, lse, seed


@attention.register_fake
def _(q, k, v, attn_mask, dropout_p, is_causal, scale, backend):
    out = q.new_empty(*q.shape[:-1], v.size(-1))
    return out, q.new_empty(q.shape[:-1], dtype=torch.float32), torch.empty(1, dtype=torch.int64, device="cpu")


@torch.library.custom_op("bigmodel::attention_backward", mutates_args=())
@autocast_off
def attention_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                       attn_mask: Optional[Tensor], dropout_p: float, is_causal: bool, scale: float, seed: Tensor,
                       backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (dq, dk, dv) with the shapes of q, k, v (GQA: dk, dv summed over each kv head's query heads)."""
    impl = _attention_impl(backend, q, k, v, attn_mask, dropout_p, is_causal)
    if q.numel() == 0 or k.numel() == 0 or v.numel() == 0:  # nothing attends to anything: zero gradients
        return q.new_zeros(q.shape), k.new_zeros(k.shape), v.new_zeros(v.shape)
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
