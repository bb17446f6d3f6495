"""bigmodel.ops.attention: F.scaled_dot_product_attention's semantics on the fused kernels."""
import math
import numbers

import torch

from .. import backends
from . import _attention_extras as _extras
from . import _checks

OP = "attention"


def attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False, *,
              window=None, softcap=None, sinks=None, alibi_slopes=None, backend=None):
    """Same as `torch.nn.functional.scaled_dot_product_attention`, fused (FlashAttention-2 style, O(L) memory).

    q: (..., Hq, Lq, D), k: (..., Hkv, Lk, D), v: (..., Hkv, Lk, Dv); the leading dims broadcast as in SDPA (as
    stride-0 views, nothing copied; the gradient of a broadcast input is summed back), and so do the heads where one
    side has one.
    attn_mask: boolean (True = attend) or additive float (q's dtype), broadcastable to (..., Hq, Lq, Lk); it gets
    no gradient. is_causal: query i sees key j iff j <= i (top-left aligned when Lq != Lk, as SDPA); not together
    with attn_mask. enable_gqa: Hkv may divide Hq (query head h uses kv head h // (Hq // Hkv)), K/V never copied.
    dropout_p: applied whenever > 0, like the functional SDPA (pass 0.0 in eval); the seed comes from torch's
    CPU generator, and the backward regenerates the same mask.

    Rows in which every key is masked give output 0 and gradient 0 on the kernels and the reference. (Backend
    "torch" is PyTorch's SDPA: 0 too on CPU; some of its CUDA kernels may give NaN there. See backends/pytorch.py.)
    A mask that requires grad gets its gradient from backend "torch" (auto takes it); the kernels refuse it. Statistics (max, log-sum-exp) are kept in fp32 for every dtype;
    fp32 inputs use full-precision (not TF32) dot products. Under torch.autocast the inputs are cast to the autocast
    dtype, as for SDPA. `backend`: "triton", "cuda",
    "torch" (PyTorch's SDPA), "reference" or "auto" ("torch" first, for now).

    Extras (keyword-only; None = off), per query i and key j (positions aligned as is_causal: top-left):
    window=(left, right): i sees j only if i - left <= j <= i + right; each side an int >= 0, or None for
    unbounded (FlashAttention's -1); composes with is_causal (then right is effectively min(right, 0)) and masks.
    softcap=c > 0: scores s -> c * tanh(s / c) after scaling, before ALiBi and the mask (Gemma 2).
    alibi_slopes (Hq,): s -> s - slope[h] * |i - j| (BLOOM, MPT); it gets no gradient (as FlashAttention's):
    slopes that require grad are refused. sinks (Hq,): one logit per head joins the softmax denominator and has
    no value (gpt-oss); it gets a gradient. Both: floating, 1-D, on q's device. Which backends run which extras:
    each backend's not_supported_reasons (torch: no sinks; auto picks only a backend that runs all given ones).
    """
    q, k, v, attn_mask = _checks.autocast_inputs(q, k, v, attn_mask)
    for name, t in (("q", q), ("k", k), ("v", v)):
        _checks.check_tensor(OP, name, t)
        if t.dim() < 2:
            raise ValueError(f"bigmodel.ops.{OP}: {name} must have at least 2 dims (..., L, E); got shape "
                             f"{tuple(t.shape)}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"bigmodel.ops.{OP}: q, k and v must share one dtype; got q {q.dtype} and {name} {t.dtype}")
    _checks.check_same_device(OP, "q", q, k=k, v=v, attn_mask=attn_mask)
    if q.size(-1) != k.size(-1):
        raise ValueError(f"bigmodel.ops.{OP}: q and k must have the same head dim (last dim); got q {q.size(-1)} "
                         f"and k {k.size(-1)}")
    if q.size(-1) == 0:
        raise ValueError(f"bigmodel.ops.{OP}: q and k must have a head dim (last dim) of at least 1; got shapes q "
                         f"{tuple(q.shape)}, k {tuple(k.shape)}")
    if k.size(-2) != v.size(-2):
        raise ValueError(f"bigmodel.ops.{OP}: k and v must have the same length (dim -2); got shapes k "
                         f"{tuple(k.shape)}, v {tuple(v.shape)}")
    given = (q, k, v)  # as the caller gave them (after autocast): what SDPA gets on backend "torch"
    q, k, v, hq, hkv = _broadcast(q, k, v, enable_gqa)
    if not isinstance(dropout_p, numbers.Real) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"bigmodel.ops.{OP}: dropout_p must be a float in [0, 1); got {dropout_p!r}")
    if scale is not None and (not isinstance(scale, numbers.Real) or not math.isfinite(scale)):
        raise ValueError(f"bigmodel.ops.{OP}: scale must be a finite float or None; got {scale!r}")
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else float(scale)
    left, right, softcap = _extras.check_extras(OP, q, hq, window, softcap, sinks, alibi_slopes)
    extras = _extras.backend_extras(left, right, softcap, alibi_slopes, sinks, dtype=q.dtype)
    name = backends.requested(backend)

    batch, lq, lk = q.shape[:-3], q.size(-2), k.size(-2)
    mask4 = _mask_4d(attn_mask, is_causal, (*batch, hq, lq, lk), q)
    q4, k4, v4 = (_as_4d(t, copy=False) for t in (q, k, v))
    def trial(backend, fresh):  # what auto times, the first time it meets such inputs
        return attention(*map(fresh, given), attn_mask, dropout_p, is_causal, scale, enable_gqa, window=window,
                         softcap=softcap, sinks=sinks, alibi_slopes=alibi_slopes, backend=backend)

    impl = backends.select(OP, name, training=_checks.needs_grad(*given, attn_mask, sinks), trial=trial, q=q4, k=k4,
                           v=v4, attn_mask=mask4, dropout_p=float(dropout_p), is_causal=bool(is_causal),
                           extras=extras)
    if impl.name == "torch":  # PyTorch's SDPA on the validated inputs as given (it broadcasts them itself, and sums a
        # broadcast input's gradient in fp32), with its autograd and its kernels; ALiBi's slopes in their own dtype
        if extras is not _extras.NO_EXTRAS:
            extras = _extras.backend_extras(left, right, softcap, alibi_slopes, sinks, fp32=False)
        return impl.attention(*given, attn_mask, float(dropout_p), bool(is_causal), scale, bool(enable_gqa),
                              extras=extras)
    q4, k4, v4 = (_as_4d(t) for t in (q, k, v))
    if extras is _extras.NO_EXTRAS:
        out, _lse, _seed = torch.ops.bigmodel.attention(q4, k4, v4, mask4, float(dropout_p), bool(is_causal), scale,
                                                        impl.name)
    else:
        out, _lse, _seed = torch.ops.bigmodel.attention(q4, k4, v4, mask4, float(dropout_p), bool(is_causal), scale,
                                                        impl.name, left, right, softcap, alibi_slopes, sinks)
    return out.view(*q.shape[:-1], v.size(-1))


def _broadcast(q, k, v, enable_gqa):
    """q, k, v broadcast as SDPA does (every dim but the last two; heads too, except that with enable_gqa the kv
    heads may divide the q heads), as stride-0 expanded views: nothing is copied, and autograd sums the gradients
    of a broadcast input back. (With several batch dims broadcast in different ways, folding them into the kernels'
    one batch dim makes _as_4d copy the expanded input: correct, not free.) Returns (q, k, v, hq, hkv), each tensor
    (..., H, L, E) with equal leading dims."""
    nd = max(q.dim(), k.dim(), v.dim())
    if nd == 2:
        return q, k, v, 1, 1
    q, k, v = (t if t.dim() == nd else t.view((1,) * (nd - t.dim()) + tuple(t.shape)) for t in (q, k, v))
    shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    hq, hk, hv = q.size(-3), k.size(-3), v.size(-3)
    if hk != hv and 1 not in (hk, hv):
        raise ValueError(f"bigmodel.ops.{OP}: k and v must have the same number of heads (or one of them 1, "
                         f"broadcast); got {hk} and {hv} (shapes {shapes})")
    hkv = _broadcast_shape((hk,), (hv,))[0]
    if hq != hkv:
        if hkv == 1:  # one kv head serves every q head (SDPA's broadcast, and MQA): the kernels' grouped path
            pass      # reads it in place; expanding K/V would give dK/dV Hq heads to sum, rounded per head
        elif hq == 1 and not enable_gqa:
            hq = hkv  # SDPA broadcasts q's single head
        elif not enable_gqa:
            raise ValueError(f"bigmodel.ops.{OP}: q has {hq} heads but k and v have {hkv}; pass enable_gqa=True for "
                             "grouped-query attention, or give them the same number of heads")
        elif hkv == 0 or hq % hkv:
            raise ValueError(f"bigmodel.ops.{OP}: enable_gqa needs k/v heads to divide q heads; got q {hq} heads, "
                             f"k/v {hkv}")
    batch = _broadcast_shape(q.shape[:-3], k.shape[:-3], v.shape[:-3])
    if batch is None:
        raise ValueError(f"bigmodel.ops.{OP}: the leading (batch) dims of q, k and v must be broadcastable (as in "
                         f"SDPA); got shapes {shapes}")
    q, k, v = (_expand(t, (*batch, h, *t.shape[-2:])) for t, h in ((q, hq), (k, hkv), (v, hkv)))
    return q, k, v, hq, hkv


def _broadcast_shape(*shapes):
    """torch.broadcast_shapes of equal-length shapes, None when they do not broadcast (plain Python: torch's own
    takes ~25 us a call, the whole of a small op's budget)."""
    out = []
    for dims in zip(*shapes):
        sizes = {d for d in dims if d != 1}
        if len(sizes) > 1:
            return None
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def _expand(t, shape):
    return t if tuple(t.shape) == shape else t.expand(shape)


def _as_4d(t, copy=True):
    """(..., H, L, E) -> (B, H, L, E) with unit last stride (a view when one exists). copy=False: a stride-0
    stand-in of that shape (for the backends' not_supported_reasons, which read sizes only) where no view exists."""
    shape = (1, 1, *t.shape) if t.dim() == 2 else (-1, *t.shape[-3:])
    if not copy:
        return t.new_empty((1,) * 4).expand((1, 1, *t.shape) if t.dim() == 2 else (math.prod(t.shape[:-3]),
                                                                                    *t.shape[-3:]))
    t4 = t.reshape(shape)
    return t4 if t4.stride(-1) == 1 or t4.size(-1) == 1 else t4.contiguous()


def _mask_4d(mask, is_causal, full_shape, q):
    """The mask as a (B, Hq, Lq, Lk) view (broadcast dims get stride 0: nothing is copied)."""
    if mask is None:
        return None
    if is_causal:
        raise ValueError(f"bigmodel.ops.{OP}: pass either attn_mask or is_causal=True, not both (as SDPA)")
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"bigmodel.ops.{OP}: attn_mask must be a torch.Tensor or None; got {type(mask).__name__}")
    if mask.dtype not in (torch.bool, q.dtype):
        raise TypeError(f"bigmodel.ops.{OP}: attn_mask must be bool (True = attend) or q's dtype {q.dtype} "
                        f"(additive); got {mask.dtype}")
    try:
        expanded = mask.expand(full_shape)
    except RuntimeError:
        raise ValueError(f"bigmodel.ops.{OP}: attn_mask of shape {tuple(mask.shape)} is not broadcastable to "
                         f"(..., Hq, Lq, Lk) = {tuple(full_shape)}") from None
    return expanded.reshape(-1, *full_shape[-3:])
