"""The attention backward kernels: delta, dK / dV, dQ (math: kernels/attention/__init__.py)."""
import triton
import triton.language as tl

from .common import LOG2E, _block_head_batch, _boundary, _dropout_keep, _load_rows, _scores, _store_rows
from .configs import _RUNTIME_INTS
from .forward import _key_ranges

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
                lo, hi, interior,
                MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_DROPOUT: tl.constexpr,
                ALIGNED: tl.constexpr, BLOCK_M: tl.constexpr):
    """Accumulate dK, dV of one key block over the query blocks [lo, hi) of one query head (*_ptrs address
    query block 0); the blocks before `interior` straddle the causal diagonal and are masked (one loop with a
    branch, as _fwd_tiles: two loops serialised the wgmmas). Tiles are kept transposed (keys x queries) so that
    both updates are plain dots. Query rows past Lq load q = dO = 0 and lse = +inf and add exactly 0; key rows past
    Lk are never stored."""
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + offs_m
        rows_ok = rows < Lq
        start = tl.cast(start_m, tl.int64)
        q = _load_rows(q_ptrs, start * stride_qm, rows_ok, d_ok, ALIGNED)
        do = _load_rows(do_ptrs, start * stride_dom, rows_ok, d_ok, ALIGNED)
        lse = tl.load(lse_ptr + rows, mask=rows_ok, other=float("inf")) * LOG2E
        delta = tl.load(delta_ptr + rows, mask=rows_ok, other=0.0)
        s_t = _scores(k, tl.trans(q), rows[None, :], cols[:, None], mask_cols[:, None],
                      (rows.to(tl.int64) * stride_mm)[None, :], Lq, Lk, scale, MASK_KIND)
        if IS_CAUSAL:  # (not causal: no query block straddles anything; key rows past Lk are never stored)
            if start_m < interior:
                s_t = _boundary(s_t, rows[None, :], cols[:, None], Lk, IS_CAUSAL)
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
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision="ieee")
    return dk, dv


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _attn_bwd_dkdv_kernel(Q, K, V, DO, LSE, Delta, DK, DV, Mask,
                          stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                          stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
                          stride_mb, stride_mh, stride_mm, stride_mn,
                          Hq, Hkv, Lq, Lk, kv_group, scale, qk_scale, dropout_p, dropout_scale, seed,
                          lq_bucket, lk_bucket,
                          HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASK_KIND: tl.constexpr,
                          IS_CAUSAL: tl.constexpr, HAS_DROPOUT: tl.constexpr, ALIGNED: tl.constexpr,
                          FOLDED: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_n, hkv, b = _block_head_batch(Lk, Hkv, False, FOLDED, BLOCK_N)
    start_n = pid_n * BLOCK_N
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    cols = start_n + offs_n
    cols_ok = cols < Lk
    start_n64 = start_n.to(tl.int64)

    k_tile = K + b * stride_kb + hkv * stride_kh + start_n64 * stride_kn
    v_tile = V + b * stride_vb + hkv * stride_vh + start_n64 * stride_vn
    k = _load_rows(k_tile, offs_n[:, None] * stride_kn + offs_d[None, :], cols_ok, d_ok, ALIGNED)
    v = _load_rows(v_tile, offs_n[:, None] * stride_vn + offs_d[None, :], cols_ok, d_ok, ALIGNED)

    # Causal: query blocks that end before this key block see none of it (skipped); blocks from `interior`
    # on see all of it (no score masking); the ones in between straddle the diagonal.
    if IS_CAUSAL:
        lo = (start_n // BLOCK_M) * BLOCK_M
        interior = tl.minimum(tl.cdiv(start_n + BLOCK_N - 1, BLOCK_M) * BLOCK_M, Lq)
    else:
        lo = 0
        interior = 0
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for g in range(kv_group):  # the query heads sharing this kv head, summed in a fixed order
        h = hkv * kv_group + g
        q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :]
        do_ptrs = DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :]
        lse_ptr = LSE + (b * Hq + h) * Lq
        delta_ptr = Delta + (b * Hq + h) * Lq
        mask_cols = Mask + b * stride_mb + h * stride_mh + cols.to(tl.int64) * stride_mn
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_ptrs, do_ptrs, lse_ptr, delta_ptr, mask_cols, cols, offs_m, d_ok,
                             stride_qm, stride_dom, stride_mm, b, h, Hq, Lq, Lk, scale, qk_scale, dropout_p,
                             dropout_scale, seed, lo, Lq, interior, MASK_KIND, IS_CAUSAL, HAS_DROPOUT, ALIGNED,
                             BLOCK_M)

    out_offsets = ((b * Hkv + hkv) * Lk + start_n64) * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
    _store_rows(DK, out_offsets, (dk * scale).to(DK.dtype.element_ty), cols_ok, d_ok, ALIGNED)
    _store_rows(DV, out_offsets, dv.to(DV.dtype.element_ty), cols_ok, d_ok, ALIGNED)


@triton.jit
def _dq_tiles(dq, q, do, lse, delta, k_ptrs, v_ptrs, mask_rows, rows, offs_n, d_ok, stride_kn, stride_vn, stride_mn,
              b, h, Hq, Lq, Lk, scale, qk_scale, dropout_p, dropout_scale, seed, hi, interior,
              MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_DROPOUT: tl.constexpr,
              ALIGNED: tl.constexpr, BLOCK_N: tl.constexpr):
    """Accumulate dQ of one query block over the key blocks [0, hi) (*_ptrs address key block 0), those from
    `interior` on with the boundary mask (one loop, as _fwd_tiles)."""
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        cols_ok = cols < Lk
        start = tl.cast(start_n, tl.int64)
        k = _load_rows(k_ptrs, start * stride_kn, cols_ok, d_ok, ALIGNED)
        v = _load_rows(v_ptrs, start * stride_vn, cols_ok, d_ok, ALIGNED)
        s = _scores(q, tl.trans(k), rows[:, None], cols[None, :], mask_rows[:, None],
                    (cols.to(tl.int64) * stride_mn)[None, :], Lq, Lk, scale, MASK_KIND)
        if start_n >= interior:
            s = _boundary(s, rows[:, None], cols[None, :], Lk, IS_CAUSAL)
        p = tl.exp2(s * qk_scale - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision="ieee")
        if HAS_DROPOUT:
            keep = _dropout_keep(seed, b, h, Hq, rows[:, None], cols[None, :], dropout_p)
            dp = tl.where(keep, dp * dropout_scale, 0.0)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision="ieee")
    return dq


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _attn_bwd_dq_kernel(Q, K, V, DO, LSE, Delta, DQ, Mask,
                        stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                        stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
                        stride_mb, stride_mh, stride_mm, stride_mn,
                        Hq, Lq, Lk, kv_group, scale, qk_scale, dropout_p, dropout_scale, seed, lq_bucket, lk_bucket,
                        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASK_KIND: tl.constexpr,
                        IS_CAUSAL: tl.constexpr, HAS_DROPOUT: tl.constexpr, ALIGNED: tl.constexpr, FOLDED: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m, h, b = _block_head_batch(Lq, Hq, IS_CAUSAL, FOLDED, BLOCK_M)
    hkv = h // kv_group
    start_m = pid_m * BLOCK_M
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    rows = start_m + offs_m
    rows_ok = rows < Lq
    start_m64 = start_m.to(tl.int64)

    q_tile = Q + b * stride_qb + h * stride_qh + start_m64 * stride_qm
    do_tile = DO + b * stride_dob + h * stride_doh + start_m64 * stride_dom
    q = _load_rows(q_tile, offs_m[:, None] * stride_qm + offs_d[None, :], rows_ok, d_ok, ALIGNED)
    do = _load_rows(do_tile, offs_m[:, None] * stride_dom + offs_d[None, :], rows_ok, d_ok, ALIGNED)
    row_base = (b * Hq + h) * Lq + start_m64
    lse = tl.load(LSE + row_base + offs_m, mask=rows_ok, other=float("inf")) * LOG2E
    delta = tl.load(Delta + row_base + offs_m, mask=rows_ok, other=0.0)
    k_ptrs = K + b * stride_kb + hkv * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :]
    v_ptrs = V + b * stride_vb + hkv * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :]
    mask_rows = Mask + b * stride_mb + h * stride_mh + rows.to(tl.int64) * stride_mm

    # The forward's key ranges. Keys past Lk must be masked here too: a padded key's score 0 could overflow
    # exp(s - lse) when lse is very negative, and inf * 0 would poison dQ.
    interior, hi = _key_ranges(start_m, Lk, IS_CAUSAL, BLOCK_M, BLOCK_N)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dq = _dq_tiles(dq, q, do, lse, delta, k_ptrs, v_ptrs, mask_rows, rows, offs_n, d_ok, stride_kn, stride_vn,
                   stride_mn, b, h, Hq, Lq, Lk, scale, qk_scale, dropout_p, dropout_scale, seed, hi, interior,
                   MASK_KIND, IS_CAUSAL, HAS_DROPOUT, ALIGNED, BLOCK_N)
    _store_rows(DQ + row_base * HEAD_DIM, offs_m[:, None] * HEAD_DIM + offs_d[None, :],
                (dq * scale).to(DQ.dtype.element_ty), rows_ok, d_ok, ALIGNED)
