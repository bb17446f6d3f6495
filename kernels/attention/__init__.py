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

Extras (kernels/limits.AttentionExtras; constexpr flags on the same kernel bodies, nothing written twice), in
unscaled-score units (u = q.k, the kernels scale once in the exponent), with diag = 0 (dense) or Lk - Lq (varlen):
    softcap c:  s = (c / scale) tanh(scale u / c)   (common._modified_scores; before ALiBi and the mask)
                backward: dS_u = dS_s (1 - tanh^2)
    ALiBi:      s -= (slope_h / scale) |i + diag - j|
    window:     visible iff i + diag - left <= j <= i + diag + right (causal folds into right = min(right, 0));
                key blocks wholly outside the band are never loaded (common._key_ranges / _query_ranges), blocks on
                an edge get the boundary mask, the rest none
    sinks:      the online softmax starts at m = sink_h log2(e), l = 1 (a first "key" with no value), so lse
                includes it and no row is ever empty; d sink_h = -sum_i exp(sink_h - lse_i) rowsum(P_i dP_i), with
                rowsum(P dP) accumulated by the dQ kernel from its fp32 tiles (bigmodel/library/attention.py sums it)
    varlen:     FlashAttention's packed layout viewed as (1, H, total, D); program (blk, h, b) finds sequence b's
                rows and keys through cu_seqlens (varlen.py), no padding, no copies.

Dropout: keep[b, h, i, j] = rand(key = seed + (b * Hq + h) * 2^32, counter = i * 2^32 + j) >= p with Triton's
Philox (tl.rand): a pure function of (seed, b, h, i, j), so the backward regenerates the forward's mask tile by
tile, nothing is stored, and no index arithmetic overflows at any length.

Numerics: inputs fp16 / bf16 / fp32; scores, softmax statistics and every accumulator are fp32. P and dS are rounded
to the input dtype only as tl.dot operands (tensor cores for fp16 / bf16). fp32 inputs use input_precision="ieee"
(true fp32 products, no TF32), to meet the project's 1e-5 relative-error rule: that path runs on CUDA cores, several
times slower than fp16 / bf16. A float-mask value below -3.4e38 * scale overflows to -inf (masked), so a row hidden
only by such finite values (e.g. torch.finfo(torch.float32).min) gives O = 0 where SDPA averages V uniformly.

Layout: common.py (tile helpers), forward.py, backward.py, varlen.py, launch.py (autotune, launchers),
configs.py (tables), decode.py (split-KV and paged decode).

Shapes: any Lq, Lk >= 1 (tails masked), head dim D in 16..256, padded in registers to BLOCK_D = next power of two
(loads / stores masked on d < D). Grids are (blocks, heads, batch); with more than 65535 heads or batch entries
(CUDA's limit on grid axes 1 and 2) the launchers switch to the FOLDED variant: blocks * heads * batch programs on
axis 0 (limit 2^31 - 1), decoded in the kernels with a head's blocks adjacent (causal: longest first), so batch and
heads are unlimited. The 3-D grid stays the common case because program ids cost no registers (see
_block_head_batch). Tile bases and everything scaled by batch, head or sequence position are
int64; offsets inside a tile stay int32 (rows with a larger stride than MAX_ROW_STRIDE are copied contiguous
first). attention_limits_reasons(q, k) names what still cannot run: more than 2^31 - 1 programs, lengths near 2^31.
Launch configs (configs.py): triton.autotune on a GPU over per-kernel tables (CONFIGS), pruned by head
dim, variant (causal, mask / dropout, unaligned rows, fp32), compute capability and the device's shared memory; the
lengths enter the autotune key as power-of-two buckets. Every offered config is spill-free under both the oldest
supported triton (3.6) and the newest (tests/gpu_compile.py; the folded variant excepted, see compile_specs);
SM80_CONFIGS holds the sm_80 replacements that 3.6 needed. Under the interpreter (TRITON_INTERPRET=1): one small
config per kernel. On sm_90 the forward reads and writes its tiles through tensor descriptors (TMA, kernels/tma.py).
"""
from ..limits import MAX_GRID_YZ, MAX_ROW_STRIDE, MIN_BLOCK, attention_limits_reasons  # noqa: F401 (re-exported)
from . import configs, decode  # noqa: F401
from .backward import _attn_bwd_delta_kernel, _attn_bwd_dkdv_kernel, _attn_bwd_dq_kernel  # noqa: F401
from .configs import (CONFIGS, INTERPRETER_CONFIGS, MASK_BOOL, MASK_FLOAT, MASK_NONE, SM80_CONFIGS,  # noqa: F401
                      SM90_CONFIGS, SM90_EXTRA, SMEM_BYTES, candidate_configs, config_variant, delta_config,
                      shared_memory_estimate)
from .forward import _attn_fwd_kernel  # noqa: F401
from . import launch  # noqa: F401 (the tests patch its module globals)
from .._utils import next_pow2  # noqa: F401
from .launch import attention_bwd, attention_fwd, rows_aligned  # noqa: F401


def compile_specs():
    """The kernels at every config their autotuners may pick, per arch (configs.build_compile_specs), and the
    split-KV decode kernels (decode.compile_specs)."""
    return configs.build_compile_specs() + decode.compile_specs()
