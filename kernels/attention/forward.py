"""The attention forward kernel (math: kernels/attention/__init__.py)."""
import triton
import triton.language as tl

from .common import (LN2, LOG2E, _block_head_batch, _boundary, _desc_tile, _dropout_keep, _key_ranges, _kv_tile,
                     _load_rows, _modified_scores, _store_rows, _straddles)
from .configs import _RUNTIME_INTS
from .varlen import _batch_for_address, _sequence


# --------------------------------------------------------------------------------------------- forward
@triton.jit
def _fwd_tiles(acc, m_i, l_i, q, k_ptrs, v_ptrs, mask_rows, rows, offs_n, d_ok, stride_kn, stride_vn, stride_mn,
               b, h, hkv, Hq, Lq, Lk, scale, qk_scale, dropout_p, seed, lo, hi, mask_below, interior,
               diag, win_left, win_right, slope, cap_in, cap_out,
               MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_DROPOUT: tl.constexpr,
               HAS_WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr,
               ALIGNED: tl.constexpr, TMA: tl.constexpr, BLOCK_N: tl.constexpr):
    """Online-softmax update of one query block over the key blocks [lo, hi). *_ptrs address key 0 of the
    sequence, or, TMA, are the K / V tensor descriptors (bulk tensor copies; rows past Lk arrive as zeros).
    One loop: the blocks that straddle an edge (window edges, the causal diagonal, the key tail) get their
    boundary mask in a branch of it. Two loops in sequence (interior, then boundary) made ptxas serialise every
    wgmma on sm_90 (note C7515: the accumulator chain crossed from one loop into the next through non-wgmma
    instructions)."""
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        cols_ok = cols < Lk
        start = tl.cast(start_n, tl.int64)
        k = _kv_tile(k_ptrs, start * stride_kn, cols_ok, d_ok, b, hkv, start_n, ALIGNED, TMA, BLOCK_N)
        s, _t = _modified_scores(q, tl.trans(k), rows[:, None], cols[None, :], mask_rows[:, None],
                                 (cols.to(tl.int64) * stride_mn)[None, :], Lq, Lk, scale, diag, slope, cap_in,
                                 cap_out, MASK_KIND, SOFTCAP, HAS_ALIBI)
        if _straddles(start_n, mask_below, interior, HAS_WINDOW, True):
            s = _boundary(s, rows[:, None], cols[None, :], Lk, diag, win_left, win_right, IS_CAUSAL, HAS_WINDOW)
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
        p = tl.exp2(s * qk_scale - m_safe[:, None])  # one FMA per score
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        if HAS_DROPOUT:
            p = tl.where(_dropout_keep(seed, b, h, Hq, rows[:, None], cols[None, :], dropout_p), p, 0.0)
        v = _kv_tile(v_ptrs, start * stride_vn, cols_ok, d_ok, b, hkv, start_n, ALIGNED, TMA, BLOCK_N)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision="ieee")
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _head_extras(Alibi, Sinks, h, scale, HAS_ALIBI: tl.constexpr, HAS_SINKS: tl.constexpr, BLOCK_M: tl.constexpr):
    """Per-head extras: the ALiBi slope in unscaled-score units (slope_h / scale), and the online softmax's start
    (m, l): the sink as a first 'key' with logit sinks[h] and no value (m = sinks[h] log2(e), l = 1), else empty."""
    slope = 0.0
    if HAS_ALIBI:
        slope = tl.load(Alibi + h) / scale
    if HAS_SINKS:
        m_i = tl.zeros([BLOCK_M], tl.float32) + tl.load(Sinks + h) * LOG2E
        l_i = tl.full([BLOCK_M], 1.0, tl.float32)
    else:
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
    return slope, m_i, l_i


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _attn_fwd_kernel(Q, K, V, O, LSE, Mask, Alibi, Sinks, CuQ, CuK,
                     stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                     stride_vb, stride_vh, stride_vn, stride_mb, stride_mh, stride_mm, stride_mn,
                     Hq, Lq, Lk, kv_group, scale, qk_scale, dropout_p, dropout_scale, seed, lq_bucket, lk_bucket,
                     win_left, win_right, cap_in, cap_out,
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASK_KIND: tl.constexpr,
                     IS_CAUSAL: tl.constexpr, HAS_DROPOUT: tl.constexpr, ALIGNED: tl.constexpr, FOLDED: tl.constexpr,
                     TMA: tl.constexpr, HAS_WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr,
                     HAS_SINKS: tl.constexpr, VARLEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """TMA: Q, K, V, O are tensor descriptors (sm_90+, see use_tma), else pointers. VARLEN: Lq / Lk are the
    packed totals, each sequence's bounds come from CuQ / CuK (varlen.py)."""
    pid_m, h, b = _block_head_batch(Lq, Hq, IS_CAUSAL, FOLDED, BLOCK_M)
    q0, k0, lq, lk, diag = _sequence(CuQ, CuK, b, Lq, Lk, VARLEN)
    bb = _batch_for_address(b, VARLEN)
    hkv = h // kv_group
    start_m = pid_m * BLOCK_M
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    rows = start_m + offs_m
    rows_ok = rows < lq

    # 64-bit tile bases, 32-bit offsets inside a tile.
    if TMA:
        q = _desc_tile(Q, b, h, start_m, BLOCK_M)
        k_ptrs, v_ptrs = K, V
    else:
        q_tile = Q + bb * stride_qb + h * stride_qh + (q0 + start_m).to(tl.int64) * stride_qm
        q = _load_rows(q_tile, offs_m[:, None] * stride_qm + offs_d[None, :], rows_ok, d_ok, ALIGNED)
        k_ptrs = K + bb * stride_kb + hkv * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :]
        v_ptrs = V + bb * stride_vb + hkv * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :]
        if VARLEN:  # the sequence's first key
            k_ptrs += k0.to(tl.int64) * stride_kn
            v_ptrs += k0.to(tl.int64) * stride_vn
    mask_rows = Mask + b * stride_mb + h * stride_mh + rows.to(tl.int64) * stride_mm

    lo, hi, mask_below, interior = _key_ranges(start_m, lk, diag, win_left, win_right, IS_CAUSAL, HAS_WINDOW,
                                               BLOCK_M, BLOCK_N)
    if VARLEN:  # a block past its sequence's end: no keys (its rows are never stored)
        hi = tl.where(start_m < lq, hi, lo)
    slope, m_i, l_i = _head_extras(Alibi, Sinks, h, scale, HAS_ALIBI, HAS_SINKS, BLOCK_M)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    acc, m_i, l_i = _fwd_tiles(acc, m_i, l_i, q, k_ptrs, v_ptrs, mask_rows, rows, offs_n, d_ok, stride_kn, stride_vn,
                               stride_mn, b, h, hkv, Hq, lq, lk, scale, qk_scale, dropout_p, seed, lo, hi, mask_below,
                               interior, diag, win_left, win_right, slope, cap_in, cap_out,
                               MASK_KIND, IS_CAUSAL, HAS_DROPOUT, HAS_WINDOW, SOFTCAP, HAS_ALIBI, ALIGNED, TMA,
                               BLOCK_N)

    empty = l_i == 0.0  # no visible key (and no sink): O = 0, lse = +inf
    l_safe = tl.where(empty, 1.0, l_i)
    inv_l = tl.where(empty, 0.0, 1.0 / l_safe)
    if HAS_DROPOUT:
        inv_l = inv_l * dropout_scale
    lse = tl.where(empty, float("inf"), (m_i + tl.log2(l_safe)) * LN2)
    row_base = (bb * Hq + h) * Lq + q0 + start_m
    tl.store(LSE + row_base + offs_m, lse, mask=rows_ok)
    out = (acc * inv_l[:, None]).to(q.dtype)
    if TMA:  # rows past Lq are clipped by the copy engine
        O.store([b.to(tl.int32), h.to(tl.int32), start_m, 0], out.reshape(1, 1, BLOCK_M, BLOCK_D))
    else:
        _store_rows(O + row_base * HEAD_DIM, offs_m[:, None] * HEAD_DIM + offs_d[None, :], out, rows_ok, d_ok,
                    ALIGNED)
