"""Varlen index mapping: FlashAttention's packed layout inside the dense kernels.

The launchers view the packed q (total_q, Hq, D) and k / v (total_k, Hkv, D) as (1, H, total, D) and launch the
dense grid (blocks of the longest sequence, heads, sequences). Program (blk, h, b) finds its sequence through
cu_seqlens: rows cu_seqlens_q[b] + blk * BLOCK_M.. of q, keys cu_seqlens_k[b]..cu_seqlens_k[b + 1] of k / v; its
batch strides are 0, its lengths the sequence's, and causality / windows are aligned bottom-right
(diag = Lk - Lq, as FlashAttention). Programs past their sequence's end find no rows and no keys: nothing is
copied or padded, and empty sequences cost one idle program per block and head.
"""
import triton
import triton.language as tl


@triton.jit
def _sequence(CuQ, CuK, b, Lq, Lk, VARLEN: tl.constexpr):
    """(first query row, first key row, query length, key length, diag) of this program's sequence b. Dense: the
    whole (Lq, Lk) of batch entry b, top-left aligned (diag = 0, as SDPA's is_causal)."""
    if VARLEN:
        q0 = tl.load(CuQ + b)
        k0 = tl.load(CuK + b)
        lq = tl.load(CuQ + b + 1) - q0
        lk = tl.load(CuK + b + 1) - k0
        return q0, k0, lq, lk, lk - lq
    return 0, 0, Lq, Lk, 0


@triton.jit
def _batch_for_address(b, VARLEN: tl.constexpr):
    """The batch index the address arithmetic uses: b (dense), 0 (varlen: one packed batch entry; b still keys
    the sequence's dropout mask)."""
    if VARLEN:
        return b * 0
    return b
