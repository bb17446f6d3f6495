"""The fp64 oracle of every attention test: explicit loops over positions build each (query i, key j) visible set
and ALiBi distance, the scores are plain fp64 matrix products, and autograd through these functions gives the fp64
reference gradients of q, k, v and sinks. It imports nothing from bigmodel (an independent reference).

Semantics (kernels/limits.py AttentionExtras; /work/spec/issue15.md), per (query i, key j) of one sequence with
diag = 0 (dense: top-left, as SDPA's is_causal) or Lk - Lq (varlen: bottom-right per sequence, as FlashAttention):
    s = scale * q_i . k_j;  softcap c: s = c * tanh(s / c);  alibi: s -= slope[h] * |i + diag - j|;  then the mask
    (bool: False = not visible; float: added, -inf = not visible)
    visible iff (not causal or j <= i + diag) and (window (left, right): i + diag - left <= j <= i + diag + right,
    a None side unbounded)
    sinks: lse_i = log(sum_visible exp(s_ij) + exp(sinks[h])), P_ij = exp(s_ij - lse_i), O_i = sum_j P_ij v_j
    a row with nothing visible: O = 0 and zero gradients; lse = +inf (no sinks) or sinks[h]
    dropout_keep: a float multiplier of the normalised P (keep / (1 - p), 0 where dropped); lse ignores it.

Small sizes only (the loops are Python loops over Lq x Lk).
"""
import math

import torch

F64 = torch.float64


def visible_set(lq, lk, *, is_causal=False, window=None, diag=0):
    """(lq, lk) bool: query i sees key j, built entry by entry; and (lq, lk) fp64 |i + diag - j| (ALiBi distance)."""
    left, right = window if window is not None else (None, None)
    vis = [[False] * lk for _ in range(lq)]
    dist = [[0.0] * lk for _ in range(lq)]
    for i in range(lq):
        pos = i + diag  # the query's position on the key axis
        for j in range(lk):
            ok = True
            if is_causal and j > pos:
                ok = False
            if left is not None and j < pos - left:
                ok = False
            if right is not None and j > pos + right:
                ok = False
            vis[i][j] = ok
            dist[i][j] = float(abs(pos - j))
    return (torch.tensor(vis, dtype=torch.bool).reshape(lq, lk),
            torch.tensor(dist, dtype=F64).reshape(lq, lk))


def _head(q, k, v, vis, dist, *, mask=None, scale, softcap=None, slope=None, sink=None, keep=None):
    """One head: q (Lq, D), k (Lk, D), v (Lk, Dv) fp64; vis / dist (Lq, Lk); mask (Lq, Lk) bool or float or None;
    slope / sink 0-dim fp64 or None; keep (Lq, Lk) or None. Returns o (Lq, Dv), lse (Lq,)."""
    lq, lk = vis.shape
    s = scale * (q @ k.transpose(0, 1))
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    if slope is not None:
        s = s - slope * dist
    vis = vis.clone()
    if mask is not None:
        if mask.dtype == torch.bool:
            vis &= mask
        else:
            m64 = mask.to(F64)
            vis &= m64 != -math.inf
            s = s + torch.where(vis, m64, 0.0)
    s = torch.where(vis, s, 0.0)  # invisible entries: finite stand-ins, zeroed below (no NaN in the gradients)
    # row maximum over the visible scores and the sink (a stabiliser: detached, the lse is exact either way)
    sd = s.detach()
    rowmax = torch.where(vis, sd, -math.inf).amax(dim=1) if lk else torch.full((lq,), -math.inf, dtype=F64)
    if sink is not None:
        rowmax = torch.maximum(rowmax, sink.detach())
    has_any = rowmax > -math.inf
    m = torch.where(has_any, rowmax, 0.0)[:, None]
    e = torch.where(vis, torch.exp(s - m), 0.0)
    denom = e.sum(dim=1)
    if sink is not None:
        denom = denom + torch.exp(sink - m[:, 0])
    safe = torch.where(denom > 0, denom, 1.0)
    p = torch.where((denom > 0)[:, None], e / safe[:, None], 0.0)
    lse = torch.where(denom > 0, m[:, 0] + torch.log(safe), math.inf)
    if keep is not None:
        p = p * keep.to(F64)
    return p @ v, lse


def _core(q, k, v, *, diag, mask, is_causal, scale, window, softcap, alibi_slopes, sinks, keep):
    """q (B, Hq, Lq, D), k / v (B, Hkv, Lk, D|Dv) fp64 -> o (B, Hq, Lq, Dv), lse (B, Hq, Lq)."""
    b_, hq, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    if hq % hkv:
        raise ValueError(f"naive attention: Hkv {hkv} must divide Hq {hq}")
    group = hq // hkv
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    vis, dist = visible_set(lq, lk, is_causal=is_causal, window=window, diag=diag)
    if mask is not None:
        mask = mask.expand(b_, hq, lq, lk)
    if keep is not None:
        keep = keep.expand(b_, hq, lq, lk)
    outs, lses = [], []
    for b in range(b_):
        ob, lb = [], []
        for h in range(hq):
            g = h // group  # GQA: query head h reads kv head h // (Hq // Hkv)
            o, lse = _head(q[b, h], k[b, g], v[b, g], vis, dist, scale=scale, softcap=softcap,
                           mask=None if mask is None else mask[b, h],
                           slope=None if alibi_slopes is None else alibi_slopes[h],
                           sink=None if sinks is None else sinks[h],
                           keep=None if keep is None else keep[b, h])
            ob.append(o)
            lb.append(lse)
        outs.append(torch.stack(ob))
        lses.append(torch.stack(lb))
    return torch.stack(outs), torch.stack(lses)


def _f64(t):
    return None if t is None else t.to(F64)  # differentiable: gradients reach the caller's tensor in its dtype


def naive_attention(q, k, v, *, mask=None, is_causal=False, scale=None, window=None, softcap=None,
                    alibi_slopes=None, sinks=None, dropout_keep=None):
    """Dense attention in fp64: q (B, Hq, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv) (GQA: Hkv divides Hq).
    mask: bool (True = attend) or additive float, broadcastable to (B, Hq, Lq, Lk). window (left, right), ints or
    None per side, top-left aligned (diag 0) like is_causal. dropout_keep: float multiplier of P, broadcastable to
    (B, Hq, Lq, Lk). Returns (o (B, Hq, Lq, Dv), lse (B, Hq, Lq)), both fp64; backward through them gives
    fp64 gradients for q, k, v and sinks."""
    return _core(_f64(q), _f64(k), _f64(v), diag=0, mask=mask, is_causal=is_causal, scale=scale, window=window,
                 softcap=softcap, alibi_slopes=_f64(alibi_slopes), sinks=_f64(sinks), keep=dropout_keep)


def naive_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, *, is_causal=False, scale=None, window=None,
                           softcap=None, alibi_slopes=None, sinks=None, dropout_keep=None):
    """Packed attention in fp64, FlashAttention's layout: q (total_q, Hq, D), k (total_k, Hkv, D), v (total_k, Hkv,
    Dv); sequence b is rows cu_seqlens_q[b]:cu_seqlens_q[b+1] and keys cu_seqlens_k[b]:cu_seqlens_k[b+1]; causal and
    window are bottom-right aligned per sequence (diag = Lk_b - Lq_b). dropout_keep: None or one float multiplier
    per sequence, each broadcastable to (Hq, Lq_b, Lk_b). Returns (o (total_q, Hq, Dv), lse (Hq, total_q)), fp64."""
    cq, ck = [int(x) for x in cu_seqlens_q], [int(x) for x in cu_seqlens_k]
    if len(cq) != len(ck):
        raise ValueError("naive attention varlen: cu_seqlens_q and cu_seqlens_k differ in length")
    q64, k64, v64 = _f64(q), _f64(k), _f64(v)
    hq, dv = q.shape[1], v.shape[2]
    outs, lses = [], []
    for b in range(len(cq) - 1):
        qs, ks, vs = (t.transpose(0, 1)[None] for t in (q64[cq[b]:cq[b + 1]], k64[ck[b]:ck[b + 1]],
                                                        v64[ck[b]:ck[b + 1]]))
        lq, lk = qs.shape[2], ks.shape[2]
        if lq == 0:
            continue
        keep = None if dropout_keep is None else dropout_keep[b][None]
        o, lse = _core(qs, ks, vs, diag=lk - lq, mask=None, is_causal=is_causal, scale=scale, window=window,
                       softcap=softcap, alibi_slopes=_f64(alibi_slopes), sinks=_f64(sinks), keep=keep)
        outs.append(o[0].transpose(0, 1))  # (Lq_b, Hq, Dv)
        lses.append(lse[0])  # (Hq, Lq_b)
    if not outs:
        return q64.new_zeros(0, hq, dv) + 0 * (q64.sum() + k64.sum() + v64.sum()), q64.new_zeros(hq, 0)
    return torch.cat(outs, dim=0), torch.cat(lses, dim=1)


# ------------------------------------------------------------------------- the low-precision baseline (fp16 rule)
def plain_attention(q, k, v, *, mask=None, is_causal=False, scale=None, window=None, softcap=None,
                    alibi_slopes=None, sinks=None, dropout_keep=None, diag=0):
    """What a user writes in plain PyTorch in the inputs' own dtype (the "plain PyTorch in the same low precision"
    of DESIGN's fp16 / bf16 rule): scores, softcap, ALiBi bias and mask in q's dtype, the softmax in fp32 cast back
    (Hugging Face's eager attention), the sink as an extra softmax column that is dropped, P @ V in q's dtype.
    Dense (B, Hq, Lq, D) layout; rows with nothing visible give 0. Returns o (B, Hq, Lq, Dv)."""
    dt = q.dtype
    hq, hkv = q.size(1), k.size(1)
    k, v = (t.repeat_interleave(hq // hkv, dim=1) for t in (k, v))
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    lq, lk = q.size(2), k.size(2)
    vis, dist = visible_set(lq, lk, is_causal=is_causal, window=window, diag=diag)
    s = (q @ k.transpose(-1, -2)) * scale
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    if alibi_slopes is not None:
        s = s - (alibi_slopes.float()[:, None, None] * dist.float()).to(dt)
    vis = vis.expand(s.shape)
    if mask is not None:
        if mask.dtype == torch.bool:
            vis = vis & mask
        else:
            s = s + mask.to(dt)
    s = s.float().masked_fill(~vis, -math.inf)
    if sinks is not None:
        s = torch.cat((s, sinks.float()[None, :, None, None].expand(*s.shape[:-1], 1)), dim=-1)
    dead = s.detach().amax(dim=-1, keepdim=True) == -math.inf
    p = torch.softmax(s.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0).to(dt)
    if sinks is not None:
        p = p[..., :-1]
    if dropout_keep is not None:
        p = p * dropout_keep.to(dt)
    return p @ v


def plain_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, **extras):
    """plain_attention per packed sequence (bottom-right aligned), FlashAttention's layout: o (total_q, Hq, Dv)."""
    cq, ck = [int(x) for x in cu_seqlens_q], [int(x) for x in cu_seqlens_k]
    outs = []
    for b in range(len(cq) - 1):
        qs, ks, vs = (t.transpose(0, 1)[None] for t in (q[cq[b]:cq[b + 1]], k[ck[b]:ck[b + 1]], v[ck[b]:ck[b + 1]]))
        if qs.size(2) == 0:
            continue
        if ks.size(2) == 0:  # no keys: output 0 (kept in the graph)
            outs.append(qs.new_zeros(qs.size(2), qs.size(1), v.size(-1)) + 0 * qs.sum())
            continue
        o = plain_attention(qs, ks, vs, diag=ks.size(2) - qs.size(2), **extras)
        outs.append(o[0].transpose(0, 1))
    if not outs:
        return q.new_zeros(0, q.size(1), v.size(-1)) + 0 * (q.sum() + k.sum() + v.sum())
    return torch.cat(outs, dim=0)
