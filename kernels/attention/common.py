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
