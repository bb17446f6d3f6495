"""Split-KV attention forward (flash-decoding) for short queries against long keys.

The regular forward runs one program per (query block, head, batch): at Lq = 1, B = 1, H = 12 that is 12 programs
on a GPU of 132 SMs, each streaming the whole KV cache. Here the keys are split as well:

    split kernel    grid (splits, Hkv, B). Program (s, hkv, b) takes the key chunk [s * chunk, (s + 1) * chunk) and
                    every query row of the kv head's group (G = Hq / Hkv heads x Lq rows, padded to a power of two
                    >= 16 for tl.dot): K / V are read once per group, not once per query head. Online softmax over
                    its chunk; it writes the unnormalised partial o (fp32), row max m and sum l (base-2 exponents).
    combine kernel  one program per (b, query head, query row): merges the splits in index order (deterministic)
                        m = max_s m_s,  l = sum_s l_s 2^(m_s - m),  o = sum_s o_s 2^(m_s - m) / l
                    and writes o and lse = (m + log2 l) ln 2, as the regular forward does (its backward reads them).

Splits: enough programs to fill the device (`num_parallel_programs`), no more than one per key block. Semantics are
the regular forward's for its case: no mask, no dropout, not causal (SDPA's causal is top-left aligned: a short
query row would see only the first keys, so decode passes no causal flag); `use_split` says when it applies.
"""
import math

import torch
import triton
import triton.language as tl

from .._utils import INTERPRETING, TL_DTYPE, CompileSpec, next_pow2, num_parallel_programs

LN2 = tl.constexpr(0.6931471805599453)
MAX_LQ = 16  # queries per head this path takes
MAX_ROWS = 64  # group heads x query rows in one program (the score tile's rows)
MIN_LK = 256  # shorter key sequences: the regular forward already has enough work per program
BLOCK_N = 32 if INTERPRETING else 64
NUM_WARPS, NUM_STAGES = 4, 3


@triton.jit
def _decode_split_kernel(Q, K, V, Opart, Mpart, Lpart, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh,
                         stride_kn, stride_vb, stride_vh, stride_vn, Hq, Lq, Lk, chunk, n_splits, qk_scale,
                         GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    split = tl.program_id(0)
    hkv = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    r = tl.arange(0, BLOCK_R)
    g, i = r // Lq, r % Lq  # row r: query row i of group head g
    rows_ok = r < GROUP * Lq
    h = hkv * GROUP + g
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    offs_n = tl.arange(0, BLOCK_N)
    q_rows = Q + b * stride_qb + h * stride_qh + i.to(tl.int64) * stride_qm
    q = tl.load(q_rows[:, None] + offs_d[None, :], mask=rows_ok[:, None] & d_ok[None, :], other=0.0)
    k_base = K + b * stride_kb + hkv * stride_kh
    v_base = V + b * stride_vb + hkv * stride_vh

    lo = split * chunk
    hi = tl.minimum(lo + chunk, Lk)
    m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        cols_ok = cols < hi
        kv_mask = cols_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + cols.to(tl.int64)[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
        s = tl.where(cols_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s * qk_scale - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + cols.to(tl.int64)[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision="ieee")
        m_i = m_new

    idx = ((b * Hq + h) * n_splits + split) * Lq + i  # (B, Hq, splits, Lq)
    tl.store(Mpart + idx, m_i, mask=rows_ok)
    tl.store(Lpart + idx, l_i, mask=rows_ok)
    tl.store(Opart + idx[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=rows_ok[:, None] & d_ok[None, :])


@triton.jit
def _decode_combine_kernel(Opart, Mpart, Lpart, O, LSE, Lq, n_splits,
                           HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # (b * Hq + h) * Lq + i: O and LSE are contiguous (B, Hq, Lq[, D])
    bh, i = row // Lq, row % Lq
    offs_s = tl.arange(0, BLOCK_S)
    s_ok = offs_s < n_splits
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    idx = (bh * n_splits + offs_s) * Lq + i
    m_s = tl.load(Mpart + idx, mask=s_ok, other=float("-inf"))
    l_s = tl.load(Lpart + idx, mask=s_ok, other=0.0)
    m = tl.max(m_s, 0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(m_s - m_safe)  # 0 for a split that saw no key
    l = tl.sum(l_s * w, 0)
    o_s = tl.load(Opart + idx[:, None] * HEAD_DIM + offs_d[None, :], mask=s_ok[:, None] & d_ok[None, :], other=0.0)
    o = tl.sum(o_s * w[:, None], 0)
    empty = l == 0.0  # no visible key: o = 0, lse = +inf (as the regular forward)
    l_safe = tl.where(empty, 1.0, l)
    o = tl.where(empty, 0.0, o / l_safe)
    tl.store(O + row * HEAD_DIM + offs_d, o.to(O.dtype.element_ty), mask=d_ok)
    tl.store(LSE + row, tl.where(empty, float("inf"), (m + tl.log2(l_safe)) * LN2))


def use_split(q, k, mask, is_causal: bool, dropout_p: float) -> bool:
    """Whether attention_fwd takes this path: fp16 / bf16, short queries (Lq <= MAX_LQ, group x Lq <= MAX_ROWS)
    against long keys (Lk >= MIN_LK), no mask, no dropout, not causal, and the regular grid would leave the device
    short of programs."""
    B, Hq, Lq = q.shape[:3]
    Hkv, Lk = k.shape[1], k.shape[2]
    if mask is not None or is_causal or dropout_p > 0.0 or Lq > MAX_LQ or Lk < MIN_LK:
        return False
    if q.dtype not in (torch.float16, torch.bfloat16):  # fp32 "ieee" dots on CUDA cores spill at these tiles
        return False
    if (Hq // Hkv) * Lq > MAX_ROWS or max(B, Hkv) > 65535:
        return False
    return B * Hq * triton.cdiv(Lq, 16) < num_parallel_programs(q.device)


def splits_for(B: int, Hkv: int, Lk: int, device) -> tuple:
    """(n_splits, chunk): enough (b, kv head, split) programs to fill the device, each at least one key block."""
    n_blocks = triton.cdiv(Lk, BLOCK_N)
    wanted = max(1, min(n_blocks, triton.cdiv(num_parallel_programs(device), B * Hkv)))
    chunk = triton.cdiv(n_blocks, wanted) * BLOCK_N
    return triton.cdiv(Lk, chunk), chunk


def decode_fwd(q, k, v, scale: float, o, lse, n_splits=None):
    """Fills o (B, Hq, Lq, D) contiguous and lse (B, Hq, Lq) fp32 for q / k / v with unit last stride, scale > 0
    (the caller's regular-forward contract). n_splits: for tests (default: splits_for)."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    if n_splits is None:
        n_splits, chunk = splits_for(B, Hkv, Lk, q.device)
    else:
        chunk = triton.cdiv(triton.cdiv(Lk, BLOCK_N), n_splits) * BLOCK_N
        n_splits = triton.cdiv(Lk, chunk)
    group = Hq // Hkv
    opart = torch.empty((B, Hq, n_splits, Lq, D), dtype=torch.float32, device=q.device)
    mpart = torch.empty((B, Hq, n_splits, Lq), dtype=torch.float32, device=q.device)
    lpart = torch.empty_like(mpart)
    block_d = next_pow2(max(D, 16))
    _decode_split_kernel[(n_splits, Hkv, B)](
        q, k, v, opart, mpart, lpart, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], Hq, Lq, Lk, chunk, n_splits,
        scale * math.log2(math.e), GROUP=group, HEAD_DIM=D, BLOCK_D=block_d, BLOCK_R=max(16, next_pow2(group * Lq)),
        BLOCK_N=BLOCK_N, num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    _decode_combine_kernel[(B * Hq * Lq,)](opart, mpart, lpart, o, lse, Lq, n_splits, HEAD_DIM=D, BLOCK_D=block_d,
                                           BLOCK_S=next_pow2(n_splits), num_warps=4)
    return o, lse


def compile_specs():
    """Both kernels for fp16 / bf16 (the dtypes use_split takes) at D = 64, 128 and 80, group x Lq = 1, 4, 64 rows."""
    specs = []
    for dtype in (torch.float16, torch.bfloat16):
        t = TL_DTYPE[dtype]
        for head_dim in (64, 128, 80):
            for group, lq in ((1, 1), (4, 1), (8, 8)):
                sig = dict(Q=f"*{t}", K=f"*{t}", V=f"*{t}", Opart="*fp32", Mpart="*fp32", Lpart="*fp32",
                           **{f"stride_{a}{b}": "i32" for a in "qkv" for b in ("b", "h", "m" if a == "q" else "n")},
                           Hq="i32", Lq="i32", Lk="i32", chunk="i32", n_splits="i32", qk_scale="fp32")
                consts = dict(GROUP=group, HEAD_DIM=head_dim, BLOCK_D=next_pow2(head_dim),
                              BLOCK_R=max(16, next_pow2(group * lq)), BLOCK_N=64)
                aligned = tuple(n for n, ty in sig.items() if ty.startswith("*") or n.startswith("stride_"))
                specs.append(CompileSpec(f"_decode_split_kernel[{t},D={head_dim},G={group},Lq={lq}]",
                                         _decode_split_kernel, sig, consts, NUM_WARPS, NUM_STAGES,
                                         aligned_args=aligned))
            sig = dict(Opart="*fp32", Mpart="*fp32", Lpart="*fp32", O=f"*{t}", LSE="*fp32", Lq="i32", n_splits="i32")
            consts = dict(HEAD_DIM=head_dim, BLOCK_D=next_pow2(head_dim), BLOCK_S=64)
            specs.append(CompileSpec(f"_decode_combine_kernel[{t},D={head_dim}]", _decode_combine_kernel, sig, consts,
                                     4, 1, aligned_args=("Opart", "Mpart", "Lpart", "O", "LSE")))
    return specs
