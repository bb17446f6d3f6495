"""Tile helpers shared by the attention kernels (forward.py, backward.py): row loads / stores, the program's
(block, head, batch), the scores with the user mask folded in, the boundary masks, dropout's keep-mask."""
import triton
import triton.language as tl

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
def _mask_bias(mask_lines, mask_offsets, rows, cols, Lq, Lk, scale, MASK_KIND: tl.constexpr):
    """The user mask as an additive term of the unscaled scores: 0 / -inf for a boolean mask, bias / scale for a
    float one (scale > 0, so the caller's later scaling keeps -inf and restores the bias)."""
    in_bounds = (rows < Lq) & (cols < Lk)
    if MASK_KIND == 1:
        bias = tl.where(tl.load(mask_lines + mask_offsets, mask=in_bounds, other=0) != 0, 0.0, float("-inf"))
    else:
        bias = tl.load(mask_lines + mask_offsets, mask=in_bounds, other=0.0).to(tl.float32) * (1.0 / scale)
    return bias


@triton.jit
def _scores(a, b_t, rows, cols, mask_lines, mask_offsets, Lq, Lk, scale, MASK_KIND: tl.constexpr):
    """Unscaled scores a @ b_t with the user mask folded in as the dot's initial accumulator.
    Writing the mask into the scores after the dot made ptxas serialise the wgmmas on sm_90 (C7515); as the
    accumulator it is part of the MMA. rows / cols: query / key indices broadcastable to the tile (either
    orientation); the mask tile is mask_lines (pointers along the program's fixed axis) + mask_offsets (along the
    loop axis), formed here in each iteration: a loop-invariant 2-D pointer tile would pin two registers per
    element."""
    if MASK_KIND == 0:
        return tl.dot(a, b_t, input_precision="ieee")
    return tl.dot(a, b_t, _mask_bias(mask_lines, mask_offsets, rows, cols, Lq, Lk, scale, MASK_KIND),
                  input_precision="ieee")


@triton.jit
def _tanh(x):
    """tanh from one exp2, exact at +-inf: sign(x) (1 - e) / (1 + e), e = exp(-2 |x|)."""
    e = tl.exp2(-2.8853900817779268 * tl.abs(x))  # 2 log2(e)
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _modified_scores(a, b_t, rows, cols, mask_lines, mask_offsets, Lq, Lk, scale, diag, slope, cap_in, cap_out,
                     MASK_KIND: tl.constexpr, SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr):
    """Unscaled scores with the extras, in the order of the math: softcap (s = cap_out tanh(cap_in u), cap_in =
    scale / c, cap_out = c / scale, so that scale * s = c tanh(scale u / c)), ALiBi (slope = slope_h / scale times
    |i + diag - j|), the mask. Returns (s, t), t = tanh(cap_in u) for the backward's factor 1 - t^2 (s itself when
    there is no softcap: unused). Without softcap the mask stays the dot's accumulator (see _scores)."""
    if SOFTCAP:
        t = _tanh(tl.dot(a, b_t, input_precision="ieee") * cap_in)
        s = t * cap_out
        if MASK_KIND != 0:
            s = s + _mask_bias(mask_lines, mask_offsets, rows, cols, Lq, Lk, scale, MASK_KIND)
    else:
        s = _scores(a, b_t, rows, cols, mask_lines, mask_offsets, Lq, Lk, scale, MASK_KIND)
        t = s
    if HAS_ALIBI:
        s = s - slope * tl.abs(rows + diag - cols).to(tl.float32)
    return s, t


@triton.jit
def _boundary(s, rows, cols, Lk, diag, win_left, win_right, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """On tiles that straddle a visibility edge: hide j >= Lk, and j > i + diag (causal) or keys outside
    [i + diag - left, i + diag + right] (window; the launcher folded causality into right)."""
    if HAS_WINDOW:
        visible = (cols >= rows + (diag - win_left)) & (cols <= tl.minimum(rows + (diag + win_right), Lk - 1))
        return tl.where(visible, s, float("-inf"))
    if IS_CAUSAL:  # j <= min(i + diag, Lk - 1): the diagonal and the key tail in one comparison per score
        return tl.where(cols <= tl.minimum(rows + diag, Lk - 1), s, float("-inf"))
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


@triton.jit
def _key_ranges(start_m, Lk, diag, win_left, win_right, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key blocks [lo, hi) of the query block at start_m; those before mask_below or from interior on straddle
    a visibility edge (window's left edge; causal diagonal or window's right edge; key tail) and get the boundary
    mask, the rest none. Whole key blocks outside the visible band are never visited."""
    full_blocks_end = (Lk // BLOCK_N) * BLOCK_N
    if HAS_WINDOW:
        first = start_m + diag - win_left  # the block's first row's first visible key
        lo = (tl.maximum(first, 0) // BLOCK_N) * BLOCK_N
        hi = tl.minimum(Lk, start_m + BLOCK_M + diag + win_right)
        mask_below = first + BLOCK_M - 1  # before the last row's first visible key
        interior = tl.minimum((tl.maximum(start_m + diag + win_right + 1, 0) // BLOCK_N) * BLOCK_N, full_blocks_end)
    elif IS_CAUSAL:  # causal rows never see keys past the block's last row
        lo, mask_below = 0, 0
        hi = tl.minimum(Lk, start_m + BLOCK_M + diag)
        interior = tl.minimum((tl.maximum(start_m + diag + 1, 0) // BLOCK_N) * BLOCK_N, full_blocks_end)
    else:
        lo, mask_below = 0, 0
        hi = Lk
        interior = full_blocks_end
    return lo, hi, mask_below, interior


@triton.jit
def _query_ranges(start_n, Lq, diag, win_left, win_right, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Query blocks [lo, hi) that see some key of the block at start_n (row i sees key j iff
    j - diag - right <= i <= j - diag + left); those before mask_below or from mask_from on straddle an edge.
    Query rows past Lq are never masked: they load zeros and lse = +inf and add exactly 0."""
    if HAS_WINDOW:
        lo = (tl.maximum(start_n - diag - win_right, 0) // BLOCK_M) * BLOCK_M
        hi = tl.minimum(Lq, start_n + BLOCK_N - diag + win_left)
        mask_below = tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - diag - win_right, 0), BLOCK_M) * BLOCK_M
        mask_from = (tl.maximum(start_n - diag + win_left + 1, 0) // BLOCK_M) * BLOCK_M
    elif IS_CAUSAL:  # query blocks that end before this key block see none of it
        lo = (tl.maximum(start_n - diag, 0) // BLOCK_M) * BLOCK_M
        hi = Lq
        mask_below = tl.minimum(tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - diag, 0), BLOCK_M) * BLOCK_M, Lq)
        mask_from = Lq
    else:
        lo, hi, mask_below, mask_from = 0, Lq, 0, Lq
    return lo, hi, mask_below, mask_from


@triton.jit
def _straddles(start, mask_below, mask_from, BELOW: tl.constexpr, ABOVE: tl.constexpr):
    """Whether the tile at `start` (of the loop's axis) needs the boundary mask: start < mask_below (if BELOW),
    start >= mask_from (if ABOVE); see _key_ranges / _query_ranges."""
    if BELOW and ABOVE:
        return (start < mask_below) | (start >= mask_from)
    if BELOW:
        return start < mask_below
    return start >= mask_from
