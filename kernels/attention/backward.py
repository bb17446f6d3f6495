"""The attention backward kernels: delta, dK / dV, dQ (math: kernels/attention/__init__.py)."""
import triton
import triton.language as tl

from .common import (LOG2E, _block_head_batch, _boundary, _dropout_keep, _key_ranges, _load_rows, _modified_scores,
                     _query_ranges, _store_rows, _straddles)
from .configs import _RUNTIME_INTS
from .varlen import _batch_for_address, _sequence


# --------------------------------------------------------------------------------------------- backward
@triton.jit
def _attn_bwd_delta_kernel(O, DO, Delta, stride_dob, stride_doh, stride_dom, Hq, Lq,
                           HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, ALIGNED: tl.constexpr,
                           FOLDED: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta = rowsum(dO * O) in fp32; O is contiguous, dO any strides."""
    pid_m, h, b = _block_head_batch(Lq, Hq, False, FOLDED, BLOCK_M)
    start_m = pid_m * BLOCK_M
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    rows_ok = start_m + offs_m < Lq
    d_ok = offs_d < HEAD_DIM
    row_base = (b * Hq + h) * Lq + start_m
    o = _load_rows(O + row_base * HEAD_DIM, offs_m[:, None] * HEAD_DIM + offs_d[None, :], rows_ok, d_ok, ALIGNED)
    do_tile = DO + b * stride_dob + h * stride_doh + start_m.to(tl.int64) * stride_dom
    do = _load_rows(do_tile, offs_m[:, None] * stride_dom + offs_d[None, :], rows_ok, d_ok, ALIGNED)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(Delta + row_base + offs_m, delta, mask=rows_ok)


@triton.jit
def _dkdv_tiles(dk, dv, k, v, q_ptrs, do_ptrs, lse_ptr, delta_ptr, mask_cols, cols, offs_m, d_ok,
                stride_qm, stride_dom, stride_mm, b, h, Hq, Lq, Lk, scale, qk_scale, dropout_p, dropout_scale, seed,
                lo, hi, mask_below, mask_from, diag, win_left, win_right, slope, cap_in, cap_out,
                MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_DROPOUT: tl.constexpr,
                HAS_WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr,
                ALIGNED: tl.constexpr, BLOCK_M: tl.constexpr):
    """Accumulate dK, dV of one key block over the query blocks [lo, hi) of one query head (*_ptrs address
    query row 0 of the sequence); the blocks before mask_below (causal diagonal, window's right edge) or from
    mask_from on (window's left edge) straddle an edge and are masked (one loop with a branch, as _fwd_tiles: two
    loops serialised the wgmmas). Tiles are kept transposed (keys x queries) so that both updates are plain dots.
    Query rows past Lq load q = dO = 0 and lse = +inf and add exactly 0; key rows past Lk are never stored.
    Softcap: dS of the raw scores is dS of the capped ones times 1 - tanh^2."""
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + offs_m
        rows_ok = rows < Lq
        start = tl.cast(start_m, tl.int64)
        q = _load_rows(q_ptrs, start * stride_qm, rows_ok, d_ok, ALIGNED)
        do = _load_rows(do_ptrs, start * stride_dom, rows_ok, d_ok, ALIGNED)
        lse = tl.load(lse_ptr + rows, mask=rows_ok, other=float("inf")) * LOG2E
        delta = tl.load(delta_ptr + rows, mask=rows_ok, other=0.0)
        s_t, t_t = _modified_scores(k, tl.trans(q), rows[None, :], cols[:, None], mask_cols[:, None],
                                    (rows.to(tl.int64) * stride_mm)[None, :], Lq, Lk, scale, diag, slope, cap_in,
                                    cap_out, MASK_KIND, SOFTCAP, HAS_ALIBI)
        if IS_CAUSAL or HAS_WINDOW:  # (else no query block straddles anything; key rows past Lk are never stored)
            if _straddles(start_m, mask_below, mask_from, True, HAS_WINDOW):
                s_t = _boundary(s_t, rows[None, :], cols[:, None], Lk, diag, win_left, win_right, IS_CAUSAL,
                                HAS_WINDOW)
        p_t = tl.exp2(s_t * qk_scale - lse[None, :])
        dp_t = tl.dot(v, tl.trans(do), input_precision="ieee")
        if HAS_DROPOUT:
            keep = _dropout_keep(seed, b, h, Hq, rows[None, :], cols[:, None], dropout_p)
            pd_t = tl.where(keep, p_t * dropout_scale, 0.0)
            dp_t = tl.where(keep, dp_t * dropout_scale, 0.0)
        else:
            pd_t = p_t
        dv = tl.dot(pd_t.to(do.dtype), do, dv, input_precision="ieee")
        ds_t = p_t * (dp_t - delta[None, :])
        if SOFTCAP:
            ds_t = ds_t * (1.0 - t_t * t_t)
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision="ieee")
    return dk, dv


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _attn_bwd_dkdv_kernel(Q, K, V, DO, LSE, Delta, DK, DV, Mask, Alibi, CuQ, CuK,
                          stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                          stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
                          stride_mb, stride_mh, stride_mm, stride_mn,
                          Hq, Hkv, Lq, Lk, kv_group, scale, qk_scale, dropout_p, dropout_scale, seed,
                          lq_bucket, lk_bucket, win_left, win_right, cap_in, cap_out,
                          HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASK_KIND: tl.constexpr,
                          IS_CAUSAL: tl.constexpr, HAS_DROPOUT: tl.constexpr, ALIGNED: tl.constexpr,
                          FOLDED: tl.constexpr, HAS_WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
                          HAS_ALIBI: tl.constexpr, VARLEN: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_n, hkv, b = _block_head_batch(Lk, Hkv, False, FOLDED, BLOCK_N)
    q0, k0, lq, lk, diag = _sequence(CuQ, CuK, b, Lq, Lk, VARLEN)
    bb = _batch_for_address(b, VARLEN)
    start_n = pid_n * BLOCK_N
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    cols = start_n + offs_n
    cols_ok = cols < lk
    start_n64 = (k0 + start_n).to(tl.int64)

    k_tile = K + bb * stride_kb + hkv * stride_kh + start_n64 * stride_kn
    v_tile = V + bb * stride_vb + hkv * stride_vh + start_n64 * stride_vn
    k = _load_rows(k_tile, offs_n[:, None] * stride_kn + offs_d[None, :], cols_ok, d_ok, ALIGNED)
    v = _load_rows(v_tile, offs_n[:, None] * stride_vn + offs_d[None, :], cols_ok, d_ok, ALIGNED)

    # Query blocks that see none of this key block are skipped; see _query_ranges.
    lo, hi, mask_below, mask_from = _query_ranges(start_n, lq, diag, win_left, win_right, IS_CAUSAL, HAS_WINDOW,
                                                  BLOCK_M, BLOCK_N)
    if VARLEN:  # a block past its sequence's keys: no queries (its rows are never stored)
        hi = tl.where(start_n < lk, hi, lo)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for g in range(kv_group):  # the query heads sharing this kv head, summed in a fixed order
        h = hkv * kv_group + g
        slope = 0.0
        if HAS_ALIBI:
            slope = tl.load(Alibi + h) / scale
        q_ptrs = Q + bb * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :]
        do_ptrs = DO + bb * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :]
        if VARLEN:  # the sequence's first query row
            q_ptrs += q0.to(tl.int64) * stride_qm
            do_ptrs += q0.to(tl.int64) * stride_dom
        lse_ptr = LSE + (bb * Hq + h) * Lq + q0
        delta_ptr = Delta + (bb * Hq + h) * Lq + q0
        mask_cols = Mask + b * stride_mb + h * stride_mh + cols.to(tl.int64) * stride_mn
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_ptrs, do_ptrs, lse_ptr, delta_ptr, mask_cols, cols, offs_m, d_ok,
                             stride_qm, stride_dom, stride_mm, b, h, Hq, lq, lk, scale, qk_scale, dropout_p,
                             dropout_scale, seed, lo, hi, mask_below, mask_from, diag, win_left, win_right, slope,
                             cap_in, cap_out, MASK_KIND, IS_CAUSAL, HAS_DROPOUT, HAS_WINDOW, SOFTCAP, HAS_ALIBI,
                             ALIGNED, BLOCK_M)

    out_offsets = ((bb * Hkv + hkv) * Lk + start_n64) * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
    _store_rows(DK, out_offsets, (dk * scale).to(DK.dtype.element_ty), cols_ok, d_ok, ALIGNED)
    _store_rows(DV, out_offsets, dv.to(DV.dtype.element_ty), cols_ok, d_ok, ALIGNED)


@triton.jit
def _dq_tiles(dq, q, do, lse, delta, k_ptrs, v_ptrs, mask_rows, rows, offs_n, d_ok, stride_kn, stride_vn, stride_mn,
              b, h, Hq, Lq, Lk, scale, qk_scale, dropout_p, dropout_scale, seed, lo, hi, mask_below, interior,
              diag, win_left, win_right, slope, cap_in, cap_out,
              MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_DROPOUT: tl.constexpr,
              HAS_WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr, HAS_SINKS: tl.constexpr,
              ALIGNED: tl.constexpr, BLOCK_N: tl.constexpr):
    """Accumulate dQ of one query block over the key blocks [lo, hi) (*_ptrs address key 0 of the sequence),
    the forward's ranges and boundary masks (one loop, as _fwd_tiles). HAS_SINKS: also rowsum(P * dP), the
    sinks' gradient's delta from fp32 P and dP (rowsum(dO * O) rounds O to the input dtype first: in fp16 the
    sum over every row of the batch came out ~10x less accurate than plain PyTorch's)."""
    pdp = tl.zeros_like(delta)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        cols_ok = cols < Lk
        start = tl.cast(start_n, tl.int64)
        k = _load_rows(k_ptrs, start * stride_kn, cols_ok, d_ok, ALIGNED)
        v = _load_rows(v_ptrs, start * stride_vn, cols_ok, d_ok, ALIGNED)
        s, t = _modified_scores(q, tl.trans(k), rows[:, None], cols[None, :], mask_rows[:, None],
                                (cols.to(tl.int64) * stride_mn)[None, :], Lq, Lk, scale, diag, slope, cap_in, cap_out,
                                MASK_KIND, SOFTCAP, HAS_ALIBI)
        if _straddles(start_n, mask_below, interior, HAS_WINDOW, True):
            s = _boundary(s, rows[:, None], cols[None, :], Lk, diag, win_left, win_right, IS_CAUSAL, HAS_WINDOW)
        p = tl.exp2(s * qk_scale - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision="ieee")
        if HAS_DROPOUT:
            keep = _dropout_keep(seed, b, h, Hq, rows[:, None], cols[None, :], dropout_p)
            dp = tl.where(keep, dp * dropout_scale, 0.0)
        if HAS_SINKS:
            pdp += tl.sum(p * dp, 1)
        ds = p * (dp - delta[:, None])
        if SOFTCAP:
            ds = ds * (1.0 - t * t)
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision="ieee")
    return dq, pdp


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _attn_bwd_dq_kernel(Q, K, V, DO, LSE, Delta, DQ, Mask, Alibi, CuQ, CuK, RowPdP,
                        stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                        stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
                        stride_mb, stride_mh, stride_mm, stride_mn,
                        Hq, Lq, Lk, kv_group, scale, qk_scale, dropout_p, dropout_scale, seed, lq_bucket, lk_bucket,
                        win_left, win_right, cap_in, cap_out,
                        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASK_KIND: tl.constexpr,
                        IS_CAUSAL: tl.constexpr, HAS_DROPOUT: tl.constexpr, ALIGNED: tl.constexpr, FOLDED: tl.constexpr,
                        HAS_WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr,
                        HAS_SINKS: tl.constexpr, VARLEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
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
    start_m64 = (q0 + start_m).to(tl.int64)

    q_tile = Q + bb * stride_qb + h * stride_qh + start_m64 * stride_qm
    do_tile = DO + bb * stride_dob + h * stride_doh + start_m64 * stride_dom
    q = _load_rows(q_tile, offs_m[:, None] * stride_qm + offs_d[None, :], rows_ok, d_ok, ALIGNED)
    do = _load_rows(do_tile, offs_m[:, None] * stride_dom + offs_d[None, :], rows_ok, d_ok, ALIGNED)
    row_base = (bb * Hq + h) * Lq + start_m64
    lse = tl.load(LSE + row_base + offs_m, mask=rows_ok, other=float("inf")) * LOG2E
    delta = tl.load(Delta + row_base + offs_m, mask=rows_ok, other=0.0)
    k_ptrs = K + bb * stride_kb + hkv * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :]
    v_ptrs = V + bb * stride_vb + hkv * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :]
    if VARLEN:  # the sequence's first key
        k_ptrs += k0.to(tl.int64) * stride_kn
        v_ptrs += k0.to(tl.int64) * stride_vn
    mask_rows = Mask + b * stride_mb + h * stride_mh + rows.to(tl.int64) * stride_mm
    slope = 0.0
    if HAS_ALIBI:
        slope = tl.load(Alibi + h) / scale

    # The forward's key ranges. Keys past Lk must be masked here too: a padded key's score 0 could overflow
    # exp(s - lse) when lse is very negative, and inf * 0 would poison dQ.
    lo, hi, mask_below, interior = _key_ranges(start_m, lk, diag, win_left, win_right, IS_CAUSAL, HAS_WINDOW,
                                               BLOCK_M, BLOCK_N)
    if VARLEN:
        hi = tl.where(start_m < lq, hi, lo)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dq, pdp = _dq_tiles(dq, q, do, lse, delta, k_ptrs, v_ptrs, mask_rows, rows, offs_n, d_ok, stride_kn, stride_vn,
                   stride_mn, b, h, Hq, lq, lk, scale, qk_scale, dropout_p, dropout_scale, seed, lo, hi, mask_below,
                   interior, diag, win_left, win_right, slope, cap_in, cap_out, MASK_KIND, IS_CAUSAL, HAS_DROPOUT,
                   HAS_WINDOW, SOFTCAP, HAS_ALIBI, HAS_SINKS, ALIGNED, BLOCK_N)
    if HAS_SINKS:
        tl.store(RowPdP + row_base + offs_m, pdp, mask=rows_ok)
    _store_rows(DQ + row_base * HEAD_DIM, offs_m[:, None] * HEAD_DIM + offs_d[None, :],
                (dq * scale).to(DQ.dtype.element_ty), rows_ok, d_ok, ALIGNED)
