"""Split-KV attention forward (flash-decoding) for short queries against long keys, dense or paged KV caches.

The regular forward runs one program per (query block, head, batch): at Lq = 1, B = 1, H = 12 that is 12 programs
on a GPU of 132 SMs, each streaming the whole KV cache. Here the keys are split as well:

    split kernel    grid (row blocks x splits, Hkv, B). Program (rb, s, hkv, b) takes every query row of the kv
                    head's group (G = Hq / Hkv heads x Lq rows, padded to a power of two >= 16 for tl.dot; more than
                    MAX_ROWS rows take several row blocks) against key chunk s of the sequence's visible key range:
                    K / V are read once per group, not once per query head. Online softmax over its chunk; it writes
                    the unnormalised partial o (fp32), row max m and sum l (base-2 exponents).
    combine kernel  one program per (b, query head, query row): merges the splits in index order (deterministic),
                    COMBINE_SPLITS at a time (any split count in bounded registers)
                        m = max_s m_s,  l = sum_s l_s 2^(m_s - m),  o = sum_s o_s 2^(m_s - m) / l
                    with a sink (HAS_SINKS): m = max(m, sink log2 e), l += 2^(sink log2 e - m) (a logit, no value);
                    it writes o and lse = (m + log2 l) ln 2, as the regular forward does.

Two callers:
- decode_fwd: the regular forward's hand-over (`use_split`): q (B, Hq, Lq, D) against k / v (B, Hkv, Lk, D), no
  mask, not causal (SDPA's causal is top-left aligned: a short query row would see only the first keys).
- kvcache_fwd: bigmodel.ops.attention_decode, FlashAttention's flash_attn_with_kvcache layout: q (B, Lq, Hq, D),
  a dense cache (B, Lcache, Hkv, D) or a paged one (num_blocks, PAGE, Hkv, D) with a block table (B, max_blocks)
  int32: key j of sequence b is row j % PAGE of page block_table[b, j // PAGE] (PAGED). Sequence b has
  cache_seqlens[b] keys (KV_CACHE); its Lq queries are its last Lq positions, query i at diag + i with
  diag = seqlens[b] - Lq, so causal and the window are bottom-right aligned (FlashAttention's convention).
  Visible: j < seqlens[b], j <= diag + i (IS_CAUSAL), diag + i - left <= j <= diag + i + right (HAS_WINDOW; the
  launcher folds causality into right). Each sequence's key range [lo, hi) spans only the visible keys: the key
  blocks past its length or outside the window are never read, and the splits divide that range.
One kernel body for every variant: PAGED, KV_CACHE, IS_CAUSAL, HAS_WINDOW, SOFTCAP, HAS_SINKS are constexpr flags.
SOFTCAP: s = c tanh(scale q.k / c) (in base 2: cap_out tanh(qk_scale q.k), qk_scale = scale / c, cap_out = c log2 e).
"""
import math

import torch
import triton
import triton.language as tl

from .._utils import INTERPRETING, TL_DTYPE, CompileSpec, next_pow2, num_parallel_programs
from .common import LOG2E, _tanh

LN2 = tl.constexpr(0.6931471805599453)
MAX_LQ = 16  # queries per head the regular forward hands over (use_split)
MAX_ROWS = 64  # group heads x query rows in one program (the score tile's rows); more rows: more row blocks
MIN_LK = 256  # shorter key sequences: the regular forward already has enough work per program
BLOCK_N = 32 if INTERPRETING else 64
MIN_PAGE = 16  # pages are multiples of this (tl.dot needs >= 16 key rows per tile; a tile never spans two pages)
NUM_WARPS, NUM_STAGES = 4, 3
COMBINE_SPLITS = 64  # splits the combine kernel merges per step (its tile: 64 x BLOCK_D fp32)


@triton.jit
def _decode_split_kernel(Q, K, V, Opart, Mpart, Lpart, SeqLens, BlockTable, stride_qb, stride_qh, stride_qm,
                         stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_bt, Hq, Lq, Lk,
                         chunk, n_splits, qk_scale, cap_out, win_left, win_right,
                         GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, KV_CACHE: tl.constexpr = False,
                         PAGED: tl.constexpr = False, PAGE: tl.constexpr = 16, IS_CAUSAL: tl.constexpr = False,
                         HAS_WINDOW: tl.constexpr = False, SOFTCAP: tl.constexpr = False):
    split = tl.program_id(0) % n_splits
    row_block = tl.program_id(0) // n_splits
    hkv = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    r = row_block * BLOCK_R + tl.arange(0, BLOCK_R)
    g, i = r // Lq, r % Lq  # row r: query row i of group head g
    rows_ok = r < GROUP * Lq
    h = hkv * GROUP + g
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    offs_n = tl.arange(0, BLOCK_N)
    q_rows = Q + b * stride_qb + h * stride_qh + i.to(tl.int64) * stride_qm
    q = tl.load(q_rows[:, None] + offs_d[None, :], mask=rows_ok[:, None] & d_ok[None, :], other=0.0)

    if KV_CACHE:  # this sequence's visible key range [lo, hi), split into n_splits chunks of whole key blocks
        seq_len = tl.load(SeqLens + b)
        diag = seq_len - Lq  # query i sits at key position diag + i
        lo = 0
        hi = seq_len
        if HAS_WINDOW:  # the rows' positions run diag .. diag + Lq - 1: keys before diag - left are seen by none
            lo = tl.maximum(diag - win_left, 0)
            hi = tl.minimum(hi, diag + Lq + win_right)
        lo = (lo // BLOCK_N) * BLOCK_N  # tiles start on block boundaries (a paged tile stays inside one page)
        chunk = tl.cdiv(tl.cdiv(tl.maximum(hi - lo, 0), BLOCK_N), n_splits) * BLOCK_N
        pos = diag + i  # (BLOCK_R,)
    else:  # every batch row has Lk keys: the launcher's chunk (computing it here costs the 64-row tiles registers)
        lo = 0
        hi = Lk
    start = lo + split * chunk
    end = tl.minimum(start + chunk, hi)

    m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    if PAGED:  # the first tile's page; each iteration loads the next one's ahead, so the K / V loads pipeline
        page = tl.load(BlockTable + b * stride_bt + start // PAGE, mask=start < end, other=0).to(tl.int64)
    for start_n in range(start, end, BLOCK_N):
        cols = start_n + offs_n
        cols_ok = cols < end
        if PAGED:  # rows start_n % PAGE .. of this tile's page
            k_base = K + page * stride_kb + hkv * stride_kh
            v_base = V + page * stride_vb + hkv * stride_vh
            rows_kv = ((start_n % PAGE) + offs_n).to(tl.int64)
        else:
            k_base = K + b * stride_kb + hkv * stride_kh
            v_base = V + b * stride_vb + hkv * stride_vh
            rows_kv = cols.to(tl.int64)
        kv_mask = cols_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + rows_kv[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
        if SOFTCAP:  # base-2 logits from here on
            s = _tanh(s * qk_scale) * cap_out
            s_scale = 1.0
        else:  # scaled below, inside the exponent's FMA (s * qk_scale - m)
            s_scale = qk_scale
        visible = cols_ok[None, :]
        if HAS_WINDOW:
            visible = visible & (cols[None, :] >= pos[:, None] - win_left) & (cols[None, :] <= pos[:, None] + win_right)
        elif IS_CAUSAL:
            visible = visible & (cols[None, :] <= pos[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * s_scale)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s * s_scale - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + rows_kv[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision="ieee")
        m_i = m_new
        if PAGED:
            nxt = start_n + BLOCK_N
            page = tl.load(BlockTable + b * stride_bt + nxt // PAGE, mask=nxt < end, other=0).to(tl.int64)

    idx = ((b * Hq + h) * n_splits + split) * Lq + i  # (B, Hq, splits, Lq)
    tl.store(Mpart + idx, m_i, mask=rows_ok)
    tl.store(Lpart + idx, l_i, mask=rows_ok)
    tl.store(Opart + idx[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=rows_ok[:, None] & d_ok[None, :])


@triton.jit
def _decode_combine_kernel(Opart, Mpart, Lpart, O, LSE, Sinks, stride_ob, stride_oh, stride_om, Hq, Lq, n_splits,
                           HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
                           HAS_SINKS: tl.constexpr = False):
    row = tl.program_id(0).to(tl.int64)  # (b * Hq + h) * Lq + i: LSE is contiguous (B, Hq, Lq)
    bh, i = row // Lq, row % Lq
    b, h = bh // Hq, bh % Hq
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    base = bh * n_splits * Lq + i  # split s of this row at base + s * Lq
    m_run = tl.full([BLOCK_S], float("-inf"), tl.float32)
    for s0 in range(0, n_splits, BLOCK_S):  # BLOCK_S splits at a time: any split count in bounded registers
        m_run = tl.maximum(m_run, tl.load(Mpart + base + (s0 + offs_s) * Lq, mask=s0 + offs_s < n_splits,
                                          other=float("-inf")))
    m = tl.max(m_run, 0)
    if HAS_SINKS:
        sink = tl.load(Sinks + h) * LOG2E
        m = tl.maximum(m, sink)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    l_run = tl.zeros([BLOCK_S], tl.float32)
    o = tl.zeros([BLOCK_D], tl.float32)
    for s0 in range(0, n_splits, BLOCK_S):  # in split order: deterministic
        s_ok = s0 + offs_s < n_splits
        idx = base + (s0 + offs_s) * Lq
        w = tl.exp2(tl.load(Mpart + idx, mask=s_ok, other=float("-inf")) - m_safe)  # 0 for a split that saw no key
        l_run += tl.load(Lpart + idx, mask=s_ok, other=0.0) * w
        o_s = tl.load(Opart + idx[:, None] * HEAD_DIM + offs_d[None, :], mask=s_ok[:, None] & d_ok[None, :],
                      other=0.0)
        o += tl.sum(o_s * w[:, None], 0)
    l = tl.sum(l_run, 0)
    if HAS_SINKS:
        l += tl.exp2(sink - m_safe)  # the sink joins the denominator; it has no value
    empty = l == 0.0  # no visible key (and no sink): o = 0, lse = +inf (as the regular forward)
    l_safe = tl.where(empty, 1.0, l)
    o = tl.where(empty, 0.0, o / l_safe)
    tl.store(O + b * stride_ob + h * stride_oh + i * stride_om + offs_d, o.to(O.dtype.element_ty), mask=d_ok)
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


def splits_for(B: int, Hkv: int, Lk: int, device, block_n: int = BLOCK_N, row_blocks: int = 1) -> tuple:
    """(n_splits, chunk): enough (row block, split, kv head, b) programs to fill the device, each split at least
    one key block of a range of Lk keys (plus one block: a window's range may start mid-block)."""
    n_blocks = triton.cdiv(Lk, block_n)
    wanted = max(1, min(n_blocks, triton.cdiv(num_parallel_programs(device), B * Hkv * row_blocks)))
    chunk = triton.cdiv(n_blocks, wanted) * block_n
    return triton.cdiv(Lk, chunk), chunk


def _rows(group: int, lq: int) -> tuple:
    """(BLOCK_R, row blocks) for group x Lq score rows."""
    block_r = max(16, next_pow2(min(group * lq, MAX_ROWS)))
    return block_r, triton.cdiv(group * lq, block_r)


def _run(q, k, v, o, lse, q_strides, k_strides, v_strides, o_strides, Lk, key_range, n_splits, scale, *,
         seqlens=None, block_table=None, page=MIN_PAGE, block_n=BLOCK_N, is_causal=False, window=None,
         softcap=None, sinks=None):
    """Both launches. q_strides (b, h, m), k / v_strides (batch or page, head, row), o_strides (b, h, m); key_range:
    the most keys any sequence's visible range spans (sizes the split count)."""
    B, Hq, Lq, D = o.shape[0], lse.shape[1], lse.shape[2], q.shape[-1]
    Hkv = k.shape[-2] if seqlens is not None else k.shape[1]
    group = Hq // Hkv
    block_r, row_blocks = _rows(group, Lq)
    if n_splits is None:  # chunk: the dense path's (KV_CACHE: the kernel splits each sequence's own range)
        n_splits, chunk = splits_for(B, Hkv, key_range, q.device, block_n, row_blocks)
    else:  # tests: no more splits than key blocks
        chunk = triton.cdiv(triton.cdiv(key_range, block_n), max(1, int(n_splits))) * block_n
        n_splits = triton.cdiv(key_range, chunk)
    opart = torch.empty((B, Hq, n_splits, Lq, D), dtype=torch.float32, device=q.device)
    mpart = torch.empty((B, Hq, n_splits, Lq), dtype=torch.float32, device=q.device)
    lpart = torch.empty_like(mpart)
    block_d = next_pow2(max(D, 16))
    if softcap is not None:
        qk_scale, cap_out = scale / softcap, softcap * math.log2(math.e)
    else:
        qk_scale, cap_out = scale * math.log2(math.e), 1.0
    left, right = window if window is not None else (None, None)
    big = max(int(key_range), Lq) + 1  # an unbounded side: farther than any key
    left = big if left is None else min(int(left), big)
    right = big if right is None else min(int(right), big)
    if is_causal:
        right = min(right, 0)
    has_window = window is not None
    dummy = lse  # stands in for an absent pointer (never read)
    _decode_split_kernel[(row_blocks * n_splits, Hkv, B)](
        q, k, v, opart, mpart, lpart, dummy if seqlens is None else seqlens,
        dummy if block_table is None else block_table, *q_strides, *k_strides, *v_strides,
        0 if block_table is None else block_table.stride(0), Hq, Lq, Lk, chunk, n_splits, qk_scale, cap_out, left,
        right,
        GROUP=group, HEAD_DIM=D, BLOCK_D=block_d, BLOCK_R=block_r, BLOCK_N=block_n, KV_CACHE=seqlens is not None,
        PAGED=block_table is not None, PAGE=page, IS_CAUSAL=bool(is_causal) and not has_window,
        HAS_WINDOW=has_window, SOFTCAP=softcap is not None, num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    _decode_combine_kernel[(B * Hq * Lq,)](opart, mpart, lpart, o, lse, dummy if sinks is None else sinks, *o_strides,
                                           Hq, Lq, n_splits, HEAD_DIM=D, BLOCK_D=block_d,
                                           BLOCK_S=min(COMBINE_SPLITS, next_pow2(n_splits)),
                                           HAS_SINKS=sinks is not None, num_warps=4)
    return o, lse


def decode_fwd(q, k, v, scale: float, o, lse, n_splits=None):
    """Fills o (B, Hq, Lq, D) contiguous and lse (B, Hq, Lq) fp32 for q / k / v with unit last stride, scale > 0
    (the caller's regular-forward contract). n_splits: for tests (default: splits_for)."""
    Lk = k.shape[2]
    return _run(q, k, v, o, lse, q.stride()[:3], k.stride()[:3], v.stride()[:3], o.stride()[:3], Lk, Lk, n_splits,
                scale)


def kvcache_fwd(q, k_cache, v_cache, cache_seqlens, scale: float, *, block_table=None, is_causal=False,
                window=None, softcap=None, sinks=None, n_splits=None):
    """Attention of q (B, Lq, Hq, D) against a KV cache, FlashAttention's flash_attn_with_kvcache layout (see the
    module doc); the caller (bigmodel.ops.attention_decode) validated everything:
      k_cache / v_cache: dense (B, Lcache, Hkv, D) or, with block_table (B, max_blocks) int32, paged
        (num_blocks, PAGE, Hkv, D) with PAGE a multiple of MIN_PAGE; unit last stride (any other strides).
      cache_seqlens (B,) int32 contiguous: keys per sequence (<= the capacity, block table entries valid below it).
      scale > 0; window (left, right) of ints >= 0 or None per side; softcap c > 0 or None; sinks (Hq,) fp32 or None.
    Returns o (B, Lq, Hq, D) contiguous in q's dtype and lse (B, Hq, Lq) fp32 (+inf where a row sees nothing and has
    no sink). n_splits: for tests (default: enough to fill the device)."""
    B, Lq, Hq, D = q.shape
    o = torch.empty((B, Lq, Hq, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, Hq, Lq), dtype=torch.float32, device=q.device)
    if o.numel() == 0:
        return o, lse
    paged = block_table is not None
    page = k_cache.shape[1] if paged else MIN_PAGE
    capacity = block_table.shape[1] * page if paged else k_cache.shape[1]
    block_n = math.gcd(page, BLOCK_N) if paged else BLOCK_N  # a tile never spans two pages
    key_range = capacity
    if window is not None and window[0] is not None:  # the visible keys span at most left + Lq (+ block alignment)
        key_range = max(1, min(capacity, window[0] + Lq + block_n))
    kb, kn, kh = k_cache.stride()[:3]
    vb, vn, vh = v_cache.stride()[:3]
    return _run(q, k_cache, v_cache, o, lse, (q.stride(0), q.stride(2), q.stride(1)), (kb, kh, kn), (vb, vh, vn),
                (o.stride(0), o.stride(2), o.stride(1)), capacity, key_range, n_splits, scale, seqlens=cache_seqlens,
                block_table=block_table, page=page, block_n=block_n, is_causal=is_causal, window=window,
                softcap=softcap, sinks=sinks)


def _split_spec(t, head_dim, group, lq, block_n, **flags):
    """One split-kernel build: dtype t, head dim, group x Lq rows, key block, variant flags."""
    sig = dict(Q=f"*{t}", K=f"*{t}", V=f"*{t}", Opart="*fp32", Mpart="*fp32", Lpart="*fp32", SeqLens="*i32",
               BlockTable="*i32",
               **{f"stride_{a}{b}": "i32" for a in "qkv" for b in ("b", "h", "m" if a == "q" else "n")},
               stride_bt="i32", Hq="i32", Lq="i32", Lk="i32", chunk="i32", n_splits="i32", qk_scale="fp32",
               cap_out="fp32", win_left="i32", win_right="i32")
    flags = dict(dict(KV_CACHE=False, PAGED=False, PAGE=MIN_PAGE, IS_CAUSAL=False, HAS_WINDOW=False,
                      SOFTCAP=False), **flags)
    consts = dict(GROUP=group, HEAD_DIM=head_dim, BLOCK_D=next_pow2(head_dim),
                  BLOCK_R=_rows(group, lq)[0], BLOCK_N=block_n, **flags)
    aligned = tuple(n for n, ty in sig.items() if ty.startswith("*") or n.startswith("stride_"))
    tag = ",".join(k if v is True else f"{k}={v}" for k, v in flags.items()
                   if v is not False and (k != "PAGE" or flags["PAGED"]))
    name = f"_decode_split_kernel[{t},D={head_dim},G={group},Lq={lq}" + (f",{tag}" if tag else "") + "]"
    return CompileSpec(name, _decode_split_kernel, sig, consts, NUM_WARPS, NUM_STAGES, aligned_args=aligned)


def compile_specs():
    """Both kernels for fp16 / bf16 (the dtypes use_split takes) at D = 64, 128 and 80, group x Lq = 1, 4, 64 rows;
    the KV-cache variants (ops.attention_decode) at D = 64 / 128: dense and paged (pages of 16 and 64: key blocks
    of 16 and 64), causal, window, softcap, GQA 4:1 and 8:1 with Lq 1 and 4; the combine kernel with sinks."""
    specs = []
    for dtype in (torch.float16, torch.bfloat16):
        t = TL_DTYPE[dtype]
        for head_dim in (64, 128, 80):
            for group, lq in ((1, 1), (4, 1), (8, 8)):
                specs.append(_split_spec(t, head_dim, group, lq, 64))
            for sinks in (False, True):
                sig = dict(Opart="*fp32", Mpart="*fp32", Lpart="*fp32", O=f"*{t}", LSE="*fp32", Sinks="*fp32",
                           stride_ob="i32", stride_oh="i32", stride_om="i32", Hq="i32", Lq="i32", n_splits="i32")
                consts = dict(HEAD_DIM=head_dim, BLOCK_D=next_pow2(head_dim), BLOCK_S=COMBINE_SPLITS,
                              HAS_SINKS=sinks)
                specs.append(CompileSpec(f"_decode_combine_kernel[{t},D={head_dim}" + (",sinks]" if sinks else "]"),
                                         _decode_combine_kernel, sig, consts, 4, 1,
                                         aligned_args=("Opart", "Mpart", "Lpart", "O", "LSE", "Sinks")))
        for head_dim in (64, 128):
            for group, lq in ((4, 1), (8, 4)):
                flags = dict(KV_CACHE=True, IS_CAUSAL=lq > 1)
                specs.append(_split_spec(t, head_dim, group, lq, 64, **flags))  # dense cache
                for page in (16, 64):
                    specs.append(_split_spec(t, head_dim, group, lq, page, PAGED=True, PAGE=page, **flags))
            paged = dict(KV_CACHE=True, PAGED=True, PAGE=64)
            specs.append(_split_spec(t, head_dim, 4, 1, 64, HAS_WINDOW=True, SOFTCAP=True, **paged))
            specs.append(_split_spec(t, head_dim, 8, 4, 16, IS_CAUSAL=True, SOFTCAP=True,
                                     **dict(paged, PAGE=16)))
    return specs
