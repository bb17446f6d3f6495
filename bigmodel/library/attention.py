"""bigmodel::attention and bigmodel::attention_backward.

q (B, Hq, Lq, D), k / v (B, Hkv, Lk, D|Dv), attn_mask None or an expanded (B, Hq, Lq, Lk) view: bigmodel.ops.attention
brings every input to this form. The dropout seed is drawn inside the forward op from torch's CPU generator (so
torch.manual_seed and activation checkpointing's RNG replay reproduce it) and saved for the backward.

The extras (kernels/limits.py AttentionExtras; None / 0 = off) travel as plain op arguments: window_left /
window_right (ints >= 0, None = unbounded side), softcap, alibi_slopes (Hq,), sinks (Hq,), and for the packed
(varlen) layout cu_seqlens_q / cu_seqlens_k (batch + 1,) int32 with max_seqlen_q / max_seqlen_k; then q is
(1, Hq, total_q, D), k / v (1, Hkv, total_k, D) and there is no mask. The backends get them as one AttentionExtras
(tensors fp32 (fp64 for fp64 q), contiguous, detached). sinks is differentiable: the backends return dq, dk, dv only, and its gradient
is taken here, for every backend, from lse and delta = rowsum(dO * O):
    lse_i = log(sum_visible exp(s_ij) + exp(sinks[h]))  =>  d sinks[h] = - sum_{b,i} exp(sinks[h] - lse_bhi) delta_bhi
alibi_slopes gets no gradient (as FlashAttention); bigmodel.ops refuses slopes that require grad.
"""
from typing import Optional

import torch
from torch import Tensor

from bigmodel.kernels.limits import NO_EXTRAS, AttentionExtras

from .. import backends
from . import autocast_off


def make_extras(window_left, window_right, softcap, alibi_slopes, sinks, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                max_seqlen_k, dtype=torch.float32) -> AttentionExtras:
    """The backends' AttentionExtras from the ops' arguments (NO_EXTRAS itself when none is on, so the dense code
    paths stay exactly as they were). The (Hq,) tensors detached and contiguous in fp32 (fp64 for fp64 inputs,
    dtype=torch.float64: the reference keeps an fp64 problem's precision; no kernel takes fp64)."""
    if (window_left is None and window_right is None and softcap is None and alibi_slopes is None and sinks is None
            and cu_seqlens_q is None):
        return NO_EXTRAS
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    conv = (lambda t: None if t is None else t.detach().to(acc).contiguous())
    cu = (lambda t: None if t is None else t.contiguous())  # the kernels index cu_seqlens[b] densely
    return AttentionExtras(window_left, window_right, softcap, conv(alibi_slopes), conv(sinks), cu(cu_seqlens_q),
                           cu(cu_seqlens_k), int(max_seqlen_q), int(max_seqlen_k))


def _attention_impl(backend, q, k, v, attn_mask, dropout_p, is_causal, extras):
    mask = attn_mask.detach() if attn_mask is not None else None  # bigmodel.ops judged its requires_grad
    return backends.kernel("attention", backend, q=q, k=k, v=v, attn_mask=mask, dropout_p=dropout_p,
                           is_causal=is_causal, extras=extras)


@torch.library.custom_op("bigmodel::attention", mutates_args=())
@autocast_off
def attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor], dropout_p: float, is_causal: bool,
              scale: float, backend: str, window_left: Optional[int] = None, window_right: Optional[int] = None,
              softcap: Optional[float] = None, alibi_slopes: Optional[Tensor] = None, sinks: Optional[Tensor] = None,
              cu_seqlens_q: Optional[Tensor] = None, cu_seqlens_k: Optional[Tensor] = None, max_seqlen_q: int = 0,
              max_seqlen_k: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (out (B, Hq, Lq, Dv), lse (B, Hq, Lq) fp32, seed (1,) int64 CPU; 0 without dropout)."""
    extras = make_extras(window_left, window_right, softcap, alibi_slopes, sinks, cu_seqlens_q, cu_seqlens_k,
                         max_seqlen_q, max_seqlen_k, q.dtype)
    impl = _attention_impl(backend, q, k, v, attn_mask, dropout_p, is_causal, extras)
    seed = torch.randint(0, 2**31 - 1, (1,)) if dropout_p > 0 else torch.zeros(1, dtype=torch.int64)
    if q.numel() == 0 or k.numel() == 0 or v.numel() == 0:  # no kernel runs on empty data
        out = q.new_zeros(*q.shape[:-1], v.size(-1))  # no keys (Lk = 0): every row is fully masked, output 0
        lse = q.new_full(q.shape[:-1], float("inf"), dtype=torch.float32)
        if extras.sinks is not None:  # nothing visible but the sink: lse = sinks[h]
            lse = lse.copy_(extras.sinks.float()[:, None].expand(lse.shape))  # a fresh tensor: never an input
        return out, lse, seed
    if extras is NO_EXTRAS:  # every backend's dense call, as before the extras existed
        out, lse = impl.attention_fwd(q, k, v, attn_mask, is_causal, scale, dropout_p, int(seed))
    else:
        out, lse = impl.attention_fwd(q, k, v, attn_mask, is_causal, scale, dropout_p, int(seed), extras=extras)
    return out, lse, seed


@attention.register_fake
def _(q, k, v, attn_mask, dropout_p, is_causal, scale, backend, window_left=None, window_right=None, softcap=None,
      alibi_slopes=None, sinks=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0):
    out = q.new_empty(*q.shape[:-1], v.size(-1))
    return out, q.new_empty(q.shape[:-1], dtype=torch.float32), torch.empty(1, dtype=torch.int64, device="cpu")


@torch.library.custom_op("bigmodel::attention_backward", mutates_args=())
@autocast_off
def attention_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                       attn_mask: Optional[Tensor], dropout_p: float, is_causal: bool, scale: float, seed: Tensor,
                       backend: str, window_left: Optional[int] = None, window_right: Optional[int] = None,
                       softcap: Optional[float] = None, alibi_slopes: Optional[Tensor] = None,
                       sinks: Optional[Tensor] = None, cu_seqlens_q: Optional[Tensor] = None,
                       cu_seqlens_k: Optional[Tensor] = None, max_seqlen_q: int = 0,
                       max_seqlen_k: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns (dq, dk, dv, dsinks): the shapes of q, k, v (GQA: dk, dv summed over each kv head's query heads)
    and of sinks (an empty tensor without sinks)."""
    extras = make_extras(window_left, window_right, softcap, alibi_slopes, sinks, cu_seqlens_q, cu_seqlens_k,
                         max_seqlen_q, max_seqlen_k, q.dtype)
    impl = _attention_impl(backend, q, k, v, attn_mask, dropout_p, is_causal, extras)
    no_sinks = q.new_zeros(0) if sinks is None else sinks.new_zeros(sinks.shape)
    if q.numel() == 0 or k.numel() == 0 or v.numel() == 0:  # nothing attends to anything: zero gradients
        return q.new_zeros(q.shape), k.new_zeros(k.shape), v.new_zeros(v.shape), no_sinks
    grad_out = grad_out if grad_out.stride(-1) == 1 else grad_out.contiguous()
    if extras is NO_EXTRAS:
        dq, dk, dv = impl.attention_bwd(grad_out, q, k, v, out, lse, attn_mask, is_causal, scale, dropout_p,
                                        int(seed))
        return dq, dk, dv, no_sinks
    grads = impl.attention_bwd(grad_out, q, k, v, out, lse, attn_mask, is_causal, scale, dropout_p, int(seed),
                               extras=extras)
    if sinks is None:
        return (*grads, no_sinks)
    # A backend may return rowsum(P * dP) as a fourth value (its fp32 P and dP): the sinks' delta without O's
    # rounding to the input dtype; otherwise rowsum(dO * O).
    row_pdp = grads[3] if len(grads) > 3 else None
    return (*grads[:3], sinks_grad(grad_out, out, lse, sinks, row_pdp))


@attention_backward.register_fake
def _(grad_out, q, k, v, out, lse, attn_mask, dropout_p, is_causal, scale, seed, backend, window_left=None,
      window_right=None, softcap=None, alibi_slopes=None, sinks=None, *varlen):
    dsinks = q.new_empty(0) if sinks is None else sinks.new_empty(sinks.shape)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dsinks  # contiguous grads


def _attention_setup(ctx, inputs, output):
    q, k, v, attn_mask, dropout_p, is_causal, scale, backend = inputs[:8]
    (window_left, window_right, softcap, alibi_slopes, sinks, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
     max_seqlen_k) = tuple(inputs[8:]) + ((None,) * 7 + (0, 0))[len(inputs) - 8:]  # the schema's defaults
    out, lse, seed = output
    ctx.save_for_backward(q, k, v, out, lse, attn_mask, seed, alibi_slopes, sinks, cu_seqlens_q, cu_seqlens_k)
    ctx.dropout_p, ctx.is_causal, ctx.scale, ctx.backend = dropout_p, is_causal, scale, backend
    ctx.scalars = (window_left, window_right, softcap, max_seqlen_q, max_seqlen_k)
    ctx.mark_non_differentiable(lse, seed)


def sinks_grad(grad_out, out, lse, sinks, row_pdp=None):
    """d sinks[h] = - sum_{b,i} exp(sinks[h] - lse[b,h,i]) * delta[b,h,i], delta = rowsum(P * dP) = rowsum(dO * O),
    in fp32 (fp64 for fp64), cast to sinks' dtype (lse is finite wherever a sink is: it includes exp(sinks[h]))."""
    acc = torch.float64 if out.dtype == torch.float64 else torch.float32
    delta = (grad_out.to(acc) * out.to(acc)).sum(-1) if row_pdp is None else row_pdp.to(acc)  # (B, Hq, Lq)
    weight = torch.exp(sinks.detach().to(acc)[:, None] - lse.to(acc))  # the sink's probability per row
    return (-(weight * delta).sum(dim=(0, 2))).to(sinks.dtype)


def _attention_grad(ctx, grad_out, _grad_lse, _grad_seed):
    q, k, v, out, lse, attn_mask, seed, alibi_slopes, sinks, cu_seqlens_q, cu_seqlens_k = ctx.saved_tensors
    window_left, window_right, softcap, max_seqlen_q, max_seqlen_k = ctx.scalars
    dq, dk, dv, dsinks = torch.ops.bigmodel.attention_backward(
        grad_out, q, k, v, out, lse, attn_mask, ctx.dropout_p, ctx.is_causal, ctx.scale, seed, ctx.backend,
        window_left, window_right, softcap, alibi_slopes, sinks, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
        max_seqlen_k)
    dsinks = dsinks if sinks is not None else None
    return (dq, dk, dv, None, None, None, None, None, None, None, None, None, dsinks, None, None, None, None)


attention.register_autograd(_attention_grad, setup_context=_attention_setup)
