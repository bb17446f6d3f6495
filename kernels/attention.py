"""Scaled dot-product attention in Triton, FlashAttention-2 style: O(L) memory, the L x L scores never leave
the chip.

Per (batch b, query head h), with the key/value head hk = h // (Hq // Hkv) (GQA/MQA: K and V are read in place):
    S = scale * Q K^T + M        M: the additive float mask, or -inf where a bool mask is False / causality hides j > i
    P = softmax(S) (per row),  lse_i = log sum_j exp(S_ij)
    Pd = P * keep / (1 - p)        keep ~ Bernoulli(1 - p): dropout on the normalised probabilities, as in SDPA
    O = Pd V

Forward: one program per (query block, head, batch) walks the key blocks with an online softmax in fp32. Scores stay
unscaled (s = q.k, masks applied there: -inf, or bias / scale) and every exponential is one exp2 with log2(e)
folded into the scale, c = scale * log2(e); m and l are kept in base 2:
    m' = max(m, c * rowmax(s_blk)),  alpha = 2^(m - m'),  l' = alpha * l + rowsum(2^(c * s_blk - m')),
    acc' = alpha * acc + (2^(c * s_blk - m') * keep) V_blk;   at the end O = acc / l / (1 - p), lse = (m + log2 l) ln 2.
l sums the un-dropped probabilities, so lse is that of the plain softmax. A row with no visible key keeps m = -inf
and l = 0: inside the exponentials its max is replaced by 0 (2^(-inf - 0) = 0, never -inf + inf = NaN), and the
epilogue writes O = 0, lse = +inf. The kernels need scale > 0; the launchers fold any other scale into q exactly.

Backward (FlashAttention-2), P recomputed from the saved lse as 2^(c * s - lse * log2(e)) -- exactly 0 on fully
masked rows (lse = +inf), so all their gradients are 0:
    delta_i = rowsum(dO_i * O_i)    (= rowsum(P_i * dP_i), dropout included)
    dV = Pd^T dO,   dP = (dO V^T) * keep / (1 - p),   dS = P * (dP - delta),   dQ = scale * dS K,   dK = scale * dS^T Q
Three kernels: delta; dK/dV with one program per (key block, kv head, batch) that loops over the query heads of its
GQA group and their query blocks (the group sum stays in registers: deterministic, no atomics); dQ with one program
per (query block, head, batch) over the key blocks. Causal programs stop their loops at the diagonal and mask only
the tiles that straddle it (and the sequence tails).

Dropout: keep[b, h, i, j] = rand(key = seed + (b * Hq + h) * 2^32, counter = i * 2^32 + j) >= p with Triton's
Philox (tl.rand): a pure function of (seed, b, h, i, j), so the backward regenerates the forward's mask tile by
tile, nothing is stored, and no index arithmetic overflows at any length.

Numerics: inputs fp16 / bf16 / fp32; scores, softmax statistics and every accumulator are fp32. P and dS are rounded
to the input dtype only as tl.dot operands (tensor cores for fp16 / bf16). fp32 inputs use input_precision="ieee"
(true fp32 products, no TF32), to meet the project's 1e-5 relative-error rule: that path runs on CUDA cores, several
times slower than fp16 / bf16. A float-mask value below -3.4e38 * scale overflows to -inf (masked), so a row hidden
only by such finite values (e.g. torch.finfo(torch.float32).min) gives O = 0 where SDPA averages V uniformly.

Shapes: any Lq, Lk >= 1 (tails masked), head dim D in 16..256, padded in registers to BLOCK_D = next power of two
(loads / stores masked on d < D). Grids are (blocks, heads, batch); with more than 65535 heads or batch entries
(CUDA's limit on grid axes 1 and 2) the launchers switch to the FOLDED variant: blocks * heads * batch programs on
axis 0 (limit 2^31 - 1), decoded in the kernels with a head's blocks adjacent (causal: longest first), so batch and
heads are unlimited. The 3-D grid stays the common case because program ids cost no registers (see
_block_head_batch). Tile bases and everything scaled by batch, head or sequence position are
int64; offsets inside a tile stay int32 (rows with a larger stride than MAX_ROW_STRIDE are copied contiguous
first). attention_limits_reasons(q, k) names what still cannot run: more than 2^31 - 1 programs, lengths near 2^31.
Launch configs (attention_configs.py): triton.autotune on a GPU over per-kernel tables (CONFIGS), pruned by head
dim, variant (causal, mask / dropout, unaligned rows, fp32), compute capability and the device's shared memory; the
lengths enter the autotune key as power-of-two buckets. Every offered config is spill-free under both the oldest
supported triton (3.6) and the newest (tests/gpu_compile.py; the folded variant excepted, see compile_specs);
SM80_CONFIGS holds the sm_80 replacements that 3.6 needed. Under the interpreter (TRITON_INTERPRET=1): one small
config per kernel. On sm_90 the forward reads and writes its tiles through tensor descriptors (TMA, kernels/tma.py).
"""
import functools
import math

import torch
import triton
import triton.language as tl

from . import attention_configs, attention_decode, tma
from .attention_configs import (_RUNTIME_INTS, _TMA_ROWS, CONFIGS, INTERPRETER_CONFIGS,  # noqa: F401 (re-exported)
                                MASK_BOOL, MASK_FLOAT, MASK_NONE, SM80_CONFIGS, SM90_CONFIGS, SM90_EXTRA, SMEM_BYTES,
                                candidate_configs, config_variant, delta_config, shared_memory_estimate)
from .limits import MAX_GRID_YZ, MAX_ROW_STRIDE, MIN_BLOCK, attention_limits_reasons  # noqa: F401 (re-exported)
from ._utils import INTERPRETING, next_pow2

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)



# --------------------------------------------------------------------------------------------- helpers
@triton.jit
def _row_pointers(base, offsets, ALIGNED: tl.constexpr):
    """base + offsets for a (rows, BLOCK_D) tile. With ALIGNED (the launcher checked every data pointer and batch /
    head / row stride) each row starts on a 16-byte boundary, which lets loads vectorise and pipeline (cp.async /
    TMA). The hint must sit on an op created here: Triton drops it on a function argument."""
    ptrs = base + offsets
    if ALIGNED:
        ptrs = tl.multiple_of(ptrs, [16, 16])
    return ptrs


@triton.jit
def _load_rows(base, offsets, rows_ok, d_ok, ALIGNED: tl.constexpr):
    """A (rows, BLOCK_D) tile, zero outside the sequence and beyond the head dim."""
    return tl.load(_row_pointers(base, offsets, ALIGNED), mask=rows_ok[:, None] & d_ok[None, :], other=0.0)


@triton.jit
def _store_rows(base, offsets, value, rows_ok, d_ok, ALIGNED: tl.constexpr):
    tl.store(_row_pointers(base, offsets, ALIGNED), value, mask=rows_ok[:, None] & d_ok[None, :])


@triton.jit
def _block_head_batch(L, H, LONGEST_FIRST: tl.constexpr, FOLDED: tl.constexpr, BLOCK: tl.constexpr):
    """(block index, head, batch) of this program, head and batch as int64 for the address arithmetic; the blocks
    run fastest, so a head's blocks run side by side and share its K / V in L2. With LONGEST_FIRST (causal query
    blocks) a head's blocks are taken last to first: the ones with the most key blocks start first (tail balance).
    FOLDED: the grid is 1-D, blocks * heads * batch on axis 0 (no 65535 limit), decoded here. Otherwise it is
    (blocks, heads, batch): the common case, kept because the decoded indices are live values, where program ids
    are re-read for free, and that costs the largest tiles their last registers (stack frames on sm_80)."""
    if FOLDED:
        n_blocks = tl.cdiv(L, BLOCK)
        pid = tl.program_id(0)
        bh = pid // n_blocks
        pid_blk = pid - bh * n_blocks
        if LONGEST_FIRST:
            pid_blk = n_blocks - 1 - pid_blk
        h = (bh % H).to(tl.int64)
        b = (bh // H).to(tl.int64)
    else:
        pid_blk = tl.program_id(0)
        if LONGEST_FIRST:
            pid_blk = tl.num_programs(0) - 1 - pid_blk
        h = tl.program_id(1).to(tl.int64)
        b = tl.program_id(2).to(tl.int64)
    return pid_blk, h, b


@triton.jit
def _scores(a, b_t, rows, cols, mask_lines, mask_offsets, Lq, Lk, scale, MASK_KIND: tl.constexpr):
    """Unscaled scores a @ b_t with the user mask folded in as the dot's initial accumulator: 0 / -inf for a boolean
    mask, bias / scale for a float one (scale > 0, so the caller's later scaling keeps -inf and restores the bias).
    Writing the mask into the scores after the dot made ptxas serialise the wgmmas on sm_90 (C7515); as the
    accumulator it is part of the MMA. rows / cols: query / key indices broadcastable to the tile (either
    orientation); the mask tile is mask_lines (pointers along the program's fixed axis) + mask_offsets (along the
    loop axis), formed here in each iteration: a loop-invariant 2-D pointer tile would pin two registers per
    element."""
    if MASK_KIND == 0:
        return tl.dot(a, b_t, input_precision="ieee")
    in_bounds = (rows < Lq) & (cols < Lk)
    if MASK_KIND == 1:
        bias = tl.where(tl.load(mask_lines + mask_offsets, mask=in_bounds, other=0) != 0, 0.0, float("-inf"))
    else:
        bias = tl.load(mask_lines + mask_offsets, mask=in_bounds, other=0.0).to(tl.float32) * (1.0 / scale)
    return tl.dot(a, b_t, bias, input_precision="ieee")


@triton.jit
def _boundary(s, rows, cols, Lk, IS_CAUSAL: tl.constexpr):
    """On tiles that straddle the causal diagonal or the key tail: hide j > i and j >= Lk."""
    if IS_CAUSAL:  # j <= min(i, Lk - 1): the diagonal and the key tail in one comparison per score
        return tl.where(cols <= tl.minimum(rows, Lk - 1), s, float("-inf"))
    return tl.where(cols < Lk, s, float("-inf"))


@triton.jit
def _dropout_keep(seed, b, h, Hq, rows, cols, dropout_p):
    """Keep-mask of P[b, h, rows, cols]: Philox with key (seed, b * Hq + h) and counter words (j, i)."""
    key = seed + (b * Hq + h).to(tl.int64) * 4294967296
    counter = rows.to(tl.int64) * 4294967296 + cols
    return tl.rand(key, counter) >= dropout_p


@triton.jit
def _desc_tile(desc, b, h, row0, ROWS: tl.constexpr):
    """The (ROWS, BLOCK_D) tile at rows row0.. of head (b, h) through a 4-D (B, H, L, D) tensor descriptor whose
    block is (1, 1, ROWS, BLOCK_D): one TMA copy, zero-filled past L."""
    tile = desc.load([b.to(tl.int32), h.to(tl.int32), row0, 0])
    return tile.reshape(ROWS, tile.shape[3])


@triton.jit
def _kv_tile(ptrs, offsets, rows_ok, d_ok, b, h, row0, ALIGNED: tl.constexpr, TMA: tl.constexpr,
             ROWS: tl.constexpr):
    if TMA:
        tile = _desc_tile(ptrs, b, h, row0, ROWS)
    else:
        tile = _load_rows(ptrs, offsets, rows_ok, d_ok, ALIGNED)
    return tile


# --------------------------------------------------------------------------------------------- forward
@triton.jit
def _fwd_tiles(acc, m_i, l_i, q, k_ptrs, v_ptrs, mask_rows, rows, offs_n, d_ok, stride_kn, stride_vn, stride_mn,
               b, h, hkv, Hq, Lq, Lk, scale, qk_scale, dropout_p, seed, hi, interior,
               MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_DROPOUT: tl.constexpr,
               ALIGNED: tl.constexpr, TMA: tl.constexpr, BLOCK_N: tl.constexpr):
    """Online-softmax update of one query block over the key blocks [0, hi). *_ptrs address key block 0, or, TMA,
    are the K / V tensor descriptors (bulk tensor copies; rows past Lk arrive as zeros).
    One loop: the blocks from `interior` on (the causal diagonal, the key tail) get their boundary mask in a branch
    of it. Two loops in sequence (interior, then boundary) made ptxas serialise every wgmma on sm_90 (note C7515:
    the accumulator chain crossed from one loop into the next through non-wgmma instructions)."""
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        cols_ok = cols < Lk
        start = tl.cast(start_n, tl.int64)
        k = _kv_tile(k_ptrs, start * stride_kn, cols_ok, d_ok, b, hkv, start_n, ALIGNED, TMA, BLOCK_N)
        s = _scores(q, tl.trans(k), rows[:, None], cols[None, :], mask_rows[:, None],
                    (cols.to(tl.int64) * stride_mn)[None, :], Lq, Lk, scale, MASK_KIND)
        if start_n >= interior:
            s = _boundary(s, rows[:, None], cols[None, :], Lk, IS_CAUSAL)
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
def _key_ranges(start_m, Lk, IS_CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key blocks of a query block: [0, interior) need no score masking, [interior, hi) hold the key tail and,
    when causal, the diagonal. Causal rows never see keys past the block's last row: hi stops there."""
    full_blocks_end = (Lk // BLOCK_N) * BLOCK_N
    if IS_CAUSAL:
        hi = tl.minimum(Lk, start_m + BLOCK_M)
        interior = tl.minimum(((start_m + 1) // BLOCK_N) * BLOCK_N, full_blocks_end)
    else:
        hi = Lk
        interior = full_blocks_end
    return interior, hi


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _attn_fwd_kernel(Q, K, V, O, LSE, Mask,
                     stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                     stride_vb, stride_vh, stride_vn, stride_mb, stride_mh, stride_mm, stride_mn,
                     Hq, Lq, Lk, kv_group, scale, qk_scale, dropout_p, dropout_scale, seed, lq_bucket, lk_bucket,
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASK_KIND: tl.constexpr,
                     IS_CAUSAL: tl.constexpr, HAS_DROPOUT: tl.constexpr, ALIGNED: tl.constexpr, FOLDED: tl.constexpr,
                     TMA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """TMA: Q, K, V, O are tensor descriptors (sm_90+, see use_tma), else pointers."""
    pid_m, h, b = _block_head_batch(Lq, Hq, IS_CAUSAL, FOLDED, BLOCK_M)
    hkv = h // kv_group
    start_m = pid_m * BLOCK_M
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    rows = start_m + offs_m
    rows_ok = rows < Lq

    # 64-bit tile bases, 32-bit offsets inside a tile.
    if TMA:
        q = _desc_tile(Q, b, h, start_m, BLOCK_M)
        k_ptrs, v_ptrs = K, V
    else:
        q_tile = Q + b * stride_qb + h * stride_qh + start_m.to(tl.int64) * stride_qm
        q = _load_rows(q_tile, offs_m[:, None] * stride_qm + offs_d[None, :], rows_ok, d_ok, ALIGNED)
        k_ptrs = K + b * stride_kb + hkv * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :]
        v_ptrs = V + b * stride_vb + hkv * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :]
    mask_rows = Mask + b * stride_mb + h * stride_mh + rows.to(tl.int64) * stride_mm

    interior, hi = _key_ranges(start_m, Lk, IS_CAUSAL, BLOCK_M, BLOCK_N)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    acc, m_i, l_i = _fwd_tiles(acc, m_i, l_i, q, k_ptrs, v_ptrs, mask_rows, rows, offs_n, d_ok, stride_kn, stride_vn,
                               stride_mn, b, h, hkv, Hq, Lq, Lk, scale, qk_scale, dropout_p, seed, hi, interior,
                               MASK_KIND, IS_CAUSAL, HAS_DROPOUT, ALIGNED, TMA, BLOCK_N)

    empty = l_i == 0.0  # no visible key: O = 0, lse = +inf
    l_safe = tl.where(empty, 1.0, l_i)
    inv_l = tl.where(empty, 0.0, 1.0 / l_safe)
    if HAS_DROPOUT:
        inv_l = inv_l * dropout_scale
    lse = tl.where(empty, float("inf"), (m_i + tl.log2(l_safe)) * LN2)
    row_base = (b * Hq + h) * Lq + start_m
    tl.store(LSE + row_base + offs_m, lse, mask=rows_ok)
    out = (acc * inv_l[:, None]).to(q.dtype)
    if TMA:  # rows past Lq are clipped by the copy engine
        O.store([b.to(tl.int32), h.to(tl.int32), start_m, 0], out.reshape(1, 1, BLOCK_M, BLOCK_D))
    else:
        _store_rows(O + row_base * HEAD_DIM, offs_m[:, None] * HEAD_DIM + offs_d[None, :], out, rows_ok, d_ok,
                    ALIGNED)


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


# --------------------------------------------------------------------------------------------- configs
# The tables and their selection: attention_configs.py.
@functools.lru_cache(maxsize=None)
def _device_arch_and_smem(index: int):
    major, minor = torch.cuda.get_device_capability(index)
    return 10 * major + minor, triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"]


def _autotuned(kernel, kind: str):
    """kernel under triton.autotune over every table entry, pruned per call to candidate_configs(...)."""
    entries = {c for table in (*CONFIGS.values(), *SM90_EXTRA.values(), *SM80_CONFIGS.values(), *SM90_CONFIGS.values())
               for cfgs in table.get(kind, {}).values() for c in cfgs}
    hook = functools.partial(tma.set_block_rows, rows=_TMA_ROWS) if kind == "fwd" else None
    configs = [triton.Config(dict(BLOCK_M=m, BLOCK_N=n), num_warps=w, num_stages=s, pre_hook=hook)
               for m, n, w, s in sorted(entries)]

    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        q = getattr(args["Q"], "base", args["Q"])  # a tensor descriptor's tensor (TMA)
        variant = config_variant(q.dtype, args["IS_CAUSAL"], args["MASK_KIND"] != MASK_NONE, args["HAS_DROPOUT"],
                                 args["ALIGNED"])
        allowed = set(candidate_configs(kind, args["BLOCK_D"], variant, q.dtype,
                                        *_device_arch_and_smem(q.device.index)))
        return [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in allowed]

    # Lengths enter the key as power-of-two buckets: variable lengths don't re-tune at every new length.
    key = ["lq_bucket", "lk_bucket", "HEAD_DIM", "MASK_KIND", "IS_CAUSAL", "HAS_DROPOUT", "ALIGNED", "FOLDED"]
    key += ["TMA"] if kind == "fwd" else []
    return triton.autotune(configs, key=key, prune_configs_by={"early_config_prune": prune})(kernel)


_FWD_TUNED = _autotuned(_attn_fwd_kernel, "fwd")
_DKDV_TUNED = _autotuned(_attn_bwd_dkdv_kernel, "dkdv")
_DQ_TUNED = _autotuned(_attn_bwd_dq_kernel, "dq")


def _launch(kernel, tuned, kind: str, grid, args, consts):
    """On a GPU the autotuned kernel; under the interpreter the plain one at its single small config. tuned None
    (the delta kernel): the plain kernel, its config in consts. grid(meta) is 1-D (see _grid)."""
    if tuned is None:
        kernel[grid(consts)](*args, **consts)
    elif INTERPRETING:
        cfg = INTERPRETER_CONFIGS[kind]
        tma.set_block_rows({**dict(zip(kernel.arg_names, args)), **cfg}, _TMA_ROWS)
        kernel[grid(cfg)](*args, **consts, **cfg)
    else:
        tuned[grid](*args, **consts)


def _grid(length: int, heads: int, batch: int, block: str, folded: bool):
    """One program per (block of `length` rows, head, batch), as _block_head_batch decodes it: (blocks, heads, batch),
    or, FOLDED, all on axis 0 (limit 2^31 - 1, where axes 1 and 2 stop at 65535), blocks fastest, then heads."""
    if folded:
        return lambda meta: (triton.cdiv(length, meta[block]) * heads * batch,)
    return lambda meta: (triton.cdiv(length, meta[block]), heads, batch)


def _small_row_stride(t):
    """t itself, or a contiguous copy when its row stride is too large for the kernels' 32-bit in-tile offsets
    (rare: a view with huge gaps between rows)."""
    return t if t.stride(2) <= MAX_ROW_STRIDE else t.contiguous()


# --------------------------------------------------------------------------------------------- launchers
def _mask_args(mask, q):
    """(pointer, its four strides, MASK_KIND); q stands in for the pointer when there is no mask (never read)."""
    if mask is None:
        return q, (0, 0, 0, 0), MASK_NONE
    return mask, tuple(mask.stride()), MASK_BOOL if mask.dtype == torch.bool else MASK_FLOAT


def rows_aligned(*tensors) -> bool:
    """Every (b, h, i) row of every tensor starts on a 16-byte boundary (the kernels' ALIGNED promise)."""
    return all(t.data_ptr() % 16 == 0
               and all(stride * t.element_size() % 16 == 0 for stride, size in zip(t.stride()[:3], t.shape) if size > 1)
               for t in tensors)


def _positive_scale(q, scale: float):
    """The kernels need scale > 0 (they mask unscaled scores, then scale). Any other scale is folded into q,
    exactly: -q for scale < 0, a zero q for scale = 0 (uniform softmax). Returns (q, scale, dq factor)."""
    if scale > 0:
        return q, scale, 1.0
    if scale < 0:
        return -q, -scale, -1.0
    return torch.zeros_like(q), 1.0, 0.0


def _consts(q, mask_kind, is_causal, dropout_p, aligned):
    return dict(HEAD_DIM=q.shape[3], BLOCK_D=next_pow2(max(q.shape[3], 16)), MASK_KIND=mask_kind,
                IS_CAUSAL=bool(is_causal), HAS_DROPOUT=dropout_p > 0.0, ALIGNED=aligned,
                FOLDED=max(q.shape[0], q.shape[1]) > MAX_GRID_YZ)


def attention_fwd(q, k, v, mask, is_causal: bool, scale: float, dropout_p: float, seed: int):
    """softmax(scale * q k^T + mask) v with dropout on the probabilities.
    q (B, Hq, Lq, D), k / v (B, Hkv, Lk, D) with Hq % Hkv == 0, unit last stride; mask None or (B, Hq, Lq, Lk), any
    strides (expanded views welcome): bool (True = attend) or float in q's dtype (added to the scaled scores);
    is_causal: query i sees keys j <= i; dropout_p in [0, 1) with seed in [0, 2**31) (the backward needs the same).
    Returns o (B, Hq, Lq, D) contiguous in q.dtype and lse (B, Hq, Lq) fp32, natural log of the un-dropped softmax
    denominator; rows with no visible key give o = 0, lse = +inf."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    o = torch.empty((B, Hq, Lq, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, Hq, Lq), dtype=torch.float32, device=q.device)
    if o.numel() == 0:
        return o, lse
    q, k, v = (_small_row_stride(t) for t in (q, k, v))
    q, scale, _ = _positive_scale(q, scale)
    if attention_decode.use_split(q, k, mask, is_causal, dropout_p):  # short queries, long keys: split the keys too
        return attention_decode.decode_fwd(q, k, v, scale, o, lse)
    mask_ptr, mask_strides, mask_kind = _mask_args(mask, q)
    consts = _consts(q, mask_kind, is_causal, dropout_p, rows_aligned(q, k, v, o))
    arch = _device_arch_and_smem(q.device.index)[0] if q.is_cuda else 0
    consts["TMA"] = not consts["FOLDED"] and tma.usable(arch, q, k, v, o)
    tiles = [tma.descriptor(t, MIN_BLOCK) for t in (q, k, v, o)] if consts["TMA"] else [q, k, v, o]
    args = (*tiles, lse, mask_ptr, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *mask_strides,
            Hq, Lq, Lk, Hq // Hkv, scale, scale * math.log2(math.e), dropout_p, 1.0 / (1.0 - dropout_p), int(seed),
            next_pow2(Lq), next_pow2(Lk))
    _launch(_attn_fwd_kernel, _FWD_TUNED, "fwd", _grid(Lq, Hq, B, "BLOCK_M", consts["FOLDED"]), args, consts)
    return o, lse


def attention_bwd(do, q, k, v, o, lse, mask, is_causal: bool, scale: float, dropout_p: float, seed: int):
    """Gradients of attention_fwd for the same (mask, is_causal, scale, dropout_p, seed); do may have any strides
    (unit last stride). Returns dq like q, dk / dv like k / v (summed over each kv head's query heads),
    contiguous, in the input dtype."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    dq = torch.empty((B, Hq, Lq, D), dtype=q.dtype, device=q.device)
    dk = torch.empty((B, Hkv, Lk, D), dtype=k.dtype, device=k.device)
    dv = torch.empty((B, Hkv, Lk, D), dtype=v.dtype, device=v.device)
    if dq.numel() == 0:
        return dq, dk.zero_(), dv.zero_()
    q, k, v, do = (_small_row_stride(t) for t in (q, k, v, do))
    q, scale, dq_factor = _positive_scale(q, scale)
    mask_ptr, mask_strides, mask_kind = _mask_args(mask, q)
    consts = _consts(q, mask_kind, is_causal, dropout_p, rows_aligned(q, k, v, do, o, dq, dk, dv))
    delta = torch.empty((B, Hq, Lq), dtype=torch.float32, device=q.device)
    dcfg = dict(HEAD_DIM=D, BLOCK_D=consts["BLOCK_D"], ALIGNED=consts["ALIGNED"], FOLDED=consts["FOLDED"],
                **delta_config(consts["BLOCK_D"]))
    _launch(_attn_bwd_delta_kernel, None, "delta", _grid(Lq, Hq, B, "BLOCK_M", consts["FOLDED"]),
            (o, do, delta, *do.stride()[:3], Hq, Lq), dcfg)
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *mask_strides)
    scalars = (scale, scale * math.log2(math.e), dropout_p, 1.0 / (1.0 - dropout_p), int(seed),
               next_pow2(Lq), next_pow2(Lk))
    _launch(_attn_bwd_dkdv_kernel, _DKDV_TUNED, "dkdv", _grid(Lk, Hkv, B, "BLOCK_N", consts["FOLDED"]),
            (q, k, v, do, lse, delta, dk, dv, mask_ptr, *strides, Hq, Hkv, Lq, Lk, Hq // Hkv, *scalars), consts)
    _launch(_attn_bwd_dq_kernel, _DQ_TUNED, "dq", _grid(Lq, Hq, B, "BLOCK_M", consts["FOLDED"]),
            (q, k, v, do, lse, delta, dq, mask_ptr, *strides, Hq, Lq, Lk, Hq // Hkv, *scalars), consts)
    if dq_factor != 1.0:
        dq.mul_(dq_factor)
    return dq, dk, dv


# --------------------------------------------------------------------------------------------- static compile
def compile_specs():
    """The kernels at every config their autotuners may pick, per arch (attention_configs.build_compile_specs)."""
    return attention_configs.build_compile_specs()
