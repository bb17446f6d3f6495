"""The reference backend's attention_decode (bigmodel.ops.attention_decode): upcast torch math, the test oracle.

Gathers each sequence's pages into a dense (B, capacity, Hkv, D) copy (what a paged kernel exists to avoid; here
it is the plain statement of the layout), then the scores of every (query, key) pair, in fp32 (fp64 for fp64
inputs). Semantics: kernels/attention/decode.py (bottom-right aligned causal / window, softcap, sinks).
"""
import math

import torch


def _acc(t):
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def gather_pages(cache, block_table):
    """(num_blocks, block_size, H, D) pages -> (B, max_blocks * block_size, H, D): sequence b's key j at [b, j].
    Entries a sequence never reads may hold anything: they are clamped into range (their keys are masked)."""
    table = block_table.long().clamp(0, cache.size(0) - 1)
    B, blocks = table.shape
    return cache[table].reshape(B, blocks * cache.size(1), *cache.shape[2:])


def visible_keys(cache_seqlens, lq, capacity, is_causal, window):
    """(B, Lq, capacity) bool: query i of sequence b (position seqlen_b - Lq + i) sees key j."""
    n = cache_seqlens.long()[:, None, None]
    j = torch.arange(capacity, device=cache_seqlens.device)[None, None, :]
    pos = n - lq + torch.arange(lq, device=cache_seqlens.device)[None, :, None]
    vis = j < n
    if is_causal:
        vis = vis & (j <= pos)
    if window is not None:
        left, right = window
        if left is not None:
            vis = vis & (j >= pos - left)
        if right is not None:
            vis = vis & (j <= pos + right)
    return vis


class ReferenceDecode:
    """Mixed into ReferenceBackend."""

    def attention_decode_reasons(self, **_):
        return []

    def attention_decode_fwd(self, q, k_cache, v_cache, cache_seqlens, block_table, scale, is_causal, window,
                             softcap, sinks):
        acc = _acc(q)
        B, Lq, Hq, _ = q.shape
        if block_table is not None:
            k_cache, v_cache = gather_pages(k_cache, block_table), gather_pages(v_cache, block_table)
        capacity, hkv = k_cache.size(1), k_cache.size(2)
        stored = (torch.arange(capacity, device=q.device)[None, :] < cache_seqlens.long()[:, None])[..., None, None]
        k_cache, v_cache = (torch.where(stored, t, 0) for t in (k_cache, v_cache))  # slots past a length: unread
        qf = q.to(acc).transpose(1, 2)  # (B, Hq, Lq, D)
        kf, vf = (t.to(acc).transpose(1, 2).repeat_interleave(Hq // hkv, dim=1) for t in (k_cache, v_cache))
        s = scale * (qf @ kf.transpose(-1, -2))  # (B, Hq, Lq, capacity)
        if softcap is not None:
            s = softcap * torch.tanh(s / softcap)
        vis = visible_keys(cache_seqlens, Lq, capacity, is_causal, window)[:, None]  # (B, 1, Lq, capacity)
        s = s.masked_fill(~vis, -math.inf)
        if sinks is not None:  # one more logit per head in the denominator, with no value
            s = torch.cat((s, sinks.to(acc)[None, :, None, None].expand(B, Hq, Lq, 1)), dim=-1)
        lse = torch.logsumexp(s, dim=-1)  # -inf where nothing is visible and no sink
        empty = lse == -math.inf
        p = torch.exp(s - torch.where(empty, 0.0, lse)[..., None])
        if sinks is not None:
            p = p[..., :-1]
        o = (p @ vf).transpose(1, 2).contiguous()  # (B, Lq, Hq, Dv); 0 for an empty row (p = exp(-inf) = 0)
        return o.to(q.dtype), torch.where(empty, math.inf, lse).to(torch.float32)
