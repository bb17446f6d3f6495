"""bigmodel.ops.attention_varlen: attention over packed variable-length sequences, FlashAttention's varlen layout."""
import torch

from .. import backends
from . import _attention_extras as _extras
from . import _checks

OP = "attention_varlen"
KERNEL_OP = "attention"  # the backends' op and the custom op: dense and packed share them (extras.varlen)


def attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                     is_causal=False, scale=None, *, window=None, softcap=None, sinks=None, alibi_slopes=None,
                     backend=None):
    """Attention over a batch of sequences packed without padding (flash_attn_varlen_func's layout).

    q: (total_q, Hq, D), k: (total_k, Hkv, D), v: (total_k, Hkv, Dv); Hkv divides Hq (GQA: query head h uses kv
    head h // (Hq // Hkv)). cu_seqlens_q / cu_seqlens_k: int32 (batch + 1,) on q's device, cumulative lengths
    starting at 0 and ending at total_q / total_k: sequence b is q rows cu_seqlens_q[b]:cu_seqlens_q[b+1] against
    k / v rows cu_seqlens_k[b]:cu_seqlens_k[b+1] (its own keys only). Empty sequences are allowed. max_seqlen_q /
    max_seqlen_k: at least the longest sequence (the kernels size their grids with them).

    is_causal and window are bottom-right aligned per sequence, as in FlashAttention: query i of a sequence with
    Lq queries and Lk keys sits at key position i + Lk - Lq. dropout_p, scale and the extras (window, softcap,
    sinks, alibi_slopes) as in bigmodel.ops.attention (sinks get a gradient, alibi_slopes none). No mask.

    The cu_seqlens are checked on the host (one device sync; skipped under torch.compile: a traced graph trusts
    them). Returns (total_q, Hq, Dv), contiguous (FlashAttention's layout: .view(total_q, Hq * Dv) works); the
    kernels write (Hq, total_q, Dv), so this is one copy of the output.
    Backends: "reference" and "triton" run it; "torch" (SDPA has no packed layout) declines.
    """
    q, k, v = _checks.autocast_inputs(q, k, v)
    for name, t in (("q", q), ("k", k), ("v", v)):
        _checks.check_tensor(OP, name, t)
        if t.dim() != 3:
            raise ValueError(f"bigmodel.ops.{OP}: {name} must be 3-D (total, heads, head_dim), FlashAttention's "
                             f"varlen layout; got shape {tuple(t.shape)}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"bigmodel.ops.{OP}: q, k and v must share one dtype; got q {q.dtype} and {name} {t.dtype}")
    _checks.check_same_device(OP, "q", q, k=k, v=v)
    if k.size(0) != v.size(0) or k.size(1) != v.size(1):
        raise ValueError(f"bigmodel.ops.{OP}: k and v must have the same total length and heads (dims 0, 1); got "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.size(-1) != k.size(-1) or q.size(-1) == 0:
        raise ValueError(f"bigmodel.ops.{OP}: q and k must have the same head dim (last dim), at least 1; got q "
                         f"{tuple(q.shape)}, k {tuple(k.shape)}")
    hq, hkv = q.size(1), k.size(1)
    if hkv == 0 or hq % hkv:
        raise ValueError(f"bigmodel.ops.{OP}: k/v heads must divide q heads (GQA); got q {hq} heads, k/v {hkv}")
    scale = _extras.check_dropout_scale(OP, dropout_p, scale, q.size(-1))
    _extras.check_cu_seqlens(OP, q, cu_seqlens_q, cu_seqlens_k, q.size(0), k.size(0), max_seqlen_q, max_seqlen_k)
    left, right, softcap = _extras.check_extras(OP, q, hq, window, softcap, sinks, alibi_slopes)
    extras = _extras.backend_extras(left, right, softcap, alibi_slopes, sinks, cu_seqlens_q, cu_seqlens_k,
                                    max_seqlen_q, max_seqlen_k, dtype=q.dtype)
    name = backends.requested(backend)
    q4, k4, v4 = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # (1, H, total, D) views: nothing copied
    q4, k4, v4 = (t if t.stride(-1) == 1 or t.size(-1) == 1 else t.contiguous() for t in (q4, k4, v4))

    def trial(backend, fresh):  # what auto times, the first time it meets such inputs
        return attention_varlen(*map(fresh, (q, k, v)), cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                dropout_p, is_causal, scale, window=window, softcap=softcap, sinks=sinks,
                                alibi_slopes=alibi_slopes, backend=backend)

    impl = backends.select(KERNEL_OP, name, training=_checks.needs_grad(q, k, v, sinks), trial=trial, q=q4, k=k4,
                           v=v4, attn_mask=None, dropout_p=float(dropout_p), is_causal=bool(is_causal),
                           extras=extras)
    out, _lse, _seed = torch.ops.bigmodel.attention(q4, k4, v4, None, float(dropout_p), bool(is_causal), scale,
                                                    impl.name, left, right, softcap, alibi_slopes, sinks,
                                                    cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k))
    return out[0].transpose(0, 1).contiguous()
