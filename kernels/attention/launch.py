"""Launchers of the attention kernels: autotuning, grids, and attention_fwd / attention_bwd."""
import functools
import math

import torch
import triton

from .. import tma
from .._utils import INTERPRETING, next_pow2
from ..limits import MAX_GRID_YZ, MAX_ROW_STRIDE, MIN_BLOCK, NO_EXTRAS, varlen_limits_reasons
from . import decode as attention_decode
from .backward import _attn_bwd_delta_kernel, _attn_bwd_dkdv_kernel, _attn_bwd_dq_kernel
from .configs import (_TMA_ROWS, CONFIGS, INTERPRETER_CONFIGS, MASK_BOOL, MASK_FLOAT, MASK_NONE, SM80_CONFIGS,
                      SM90_CONFIGS, SM90_EXTRA, candidate_configs, config_variant, delta_config, extras_heavy)
from .forward import _attn_fwd_kernel

# --------------------------------------------------------------------------------------------- configs
# The tables and their selection: configs.py.
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
        arch, smem = _device_arch_and_smem(q.device.index)
        variant = config_variant(q.dtype, args["IS_CAUSAL"] or args.get("HAS_WINDOW", False),
                                 args["MASK_KIND"] != MASK_NONE or extras_heavy(arch, args.get("SOFTCAP", False)),
                                 args["HAS_DROPOUT"], args["ALIGNED"])
        allowed = set(candidate_configs(kind, args["BLOCK_D"], variant, q.dtype, arch, smem))
        return [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in allowed]

    # Lengths enter the key as power-of-two buckets: variable lengths don't re-tune at every new length.
    key = ["lq_bucket", "lk_bucket", "HEAD_DIM", "MASK_KIND", "IS_CAUSAL", "HAS_DROPOUT", "ALIGNED", "FOLDED",
           "HAS_WINDOW", "SOFTCAP", "HAS_ALIBI", "VARLEN"]
    key += {"fwd": ["TMA", "HAS_SINKS"], "dq": ["HAS_SINKS"]}.get(kind, [])
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


def _consts(q, mask_kind, is_causal, dropout_p, aligned, extras):
    return dict(HEAD_DIM=q.shape[3], BLOCK_D=next_pow2(max(q.shape[3], 16)), MASK_KIND=mask_kind,
                IS_CAUSAL=bool(is_causal), HAS_DROPOUT=dropout_p > 0.0, ALIGNED=aligned,
                FOLDED=max(q.shape[0], q.shape[1]) > MAX_GRID_YZ, HAS_WINDOW=extras.has_window,
                SOFTCAP=extras.softcap is not None, HAS_ALIBI=extras.alibi_slopes is not None, VARLEN=extras.varlen)


def _extras_args(q, k, lse, is_causal, scale, extras):
    """(batch, Lq, Lk for the grid and autotune buckets), (Alibi, CuQ, CuK pointers), (win_left, win_right,
    cap_in, cap_out): what the kernels take for `extras` (kernels/limits.AttentionExtras). Unused pointers are
    stood in for by lse (never read). An unbounded window side is clamped to the longest length (equivalent)."""
    if extras.varlen:
        reasons = varlen_limits_reasons(extras.cu_seqlens_q.numel() - 1, q.shape[1])
        if reasons:
            raise ValueError(f"attention {reasons[0]}")
        sizes = (extras.cu_seqlens_q.numel() - 1, extras.max_seqlen_q, extras.max_seqlen_k)
        cu_q, cu_k = extras.cu_seqlens_q, extras.cu_seqlens_k
    else:
        sizes = (q.shape[0], q.shape[2], k.shape[2])
        cu_q = cu_k = lse
    unbounded = max(sizes[1], sizes[2]) + 1
    left = unbounded if extras.window_left is None else min(extras.window_left, unbounded)
    right = unbounded if extras.window_right is None else min(extras.window_right, unbounded)
    if is_causal:
        right = min(right, 0)
    cap = extras.softcap
    caps = (scale / cap, cap / scale) if cap is not None else (1.0, 1.0)
    alibi = extras.alibi_slopes if extras.alibi_slopes is not None else lse
    return sizes, (alibi, cu_q, cu_k), (left, right, *caps)


def _batch_strides(t, extras):
    """The (batch, head, row) strides the kernels take: batch 0 in varlen (one packed entry, found per sequence)."""
    return (0, *t.stride()[1:3]) if extras.varlen else tuple(t.stride()[:3])


def attention_fwd(q, k, v, mask, is_causal: bool, scale: float, dropout_p: float, seed: int, extras=NO_EXTRAS):
    """softmax(scale * q k^T + mask) v with dropout on the probabilities, and the extras (window, softcap, ALiBi,
    sinks, varlen: kernels/limits.AttentionExtras).
    q (B, Hq, Lq, D), k / v (B, Hkv, Lk, D) with Hq % Hkv == 0, unit last stride; mask None or (B, Hq, Lq, Lk), any
    strides (expanded views welcome): bool (True = attend) or float in q's dtype (added to the scaled scores);
    is_causal: query i sees keys j <= i (varlen: j <= i + Lk - Lq per sequence); dropout_p in [0, 1) with seed in
    [0, 2**31) (the backward needs the same). Varlen: B = 1, the lengths are the packed totals.
    Returns o (B, Hq, Lq, D) contiguous in q.dtype and lse (B, Hq, Lq) fp32, natural log of the un-dropped softmax
    denominator (sink included); rows with no visible key (and no sink) give o = 0, lse = +inf."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    o = torch.empty((B, Hq, Lq, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, Hq, Lq), dtype=torch.float32, device=q.device)
    if o.numel() == 0:
        return o, lse
    q, k, v = (_small_row_stride(t) for t in (q, k, v))
    q, scale, _ = _positive_scale(q, scale)
    if not extras.names and attention_decode.use_split(q, k, mask, is_causal, dropout_p):
        return attention_decode.decode_fwd(q, k, v, scale, o, lse)  # short queries, long keys: split the keys too
    if extras.varlen and Lk == 0:  # every sequence without keys: nothing visible anywhere
        return _no_keys(o, lse, extras)
    mask_ptr, mask_strides, mask_kind = _mask_args(mask, q)
    consts = _consts(q, mask_kind, is_causal, dropout_p, rows_aligned(q, k, v, o), extras)
    consts["HAS_SINKS"] = extras.sinks is not None
    arch = _device_arch_and_smem(q.device.index)[0] if q.is_cuda else 0
    consts["TMA"] = not consts["FOLDED"] and not extras.varlen and tma.usable(arch, q, k, v, o)
    tiles = [tma.descriptor(t, MIN_BLOCK) for t in (q, k, v, o)] if consts["TMA"] else [q, k, v, o]
    (batch, len_q, len_k), (alibi, cu_q, cu_k), extra_scalars = _extras_args(q, k, lse, is_causal, scale, extras)
    sinks = extras.sinks if extras.sinks is not None else lse
    args = (*tiles, lse, mask_ptr, alibi, sinks, cu_q, cu_k, *_batch_strides(q, extras), *_batch_strides(k, extras),
            *_batch_strides(v, extras), *mask_strides, Hq, Lq, Lk, Hq // Hkv, scale, scale * math.log2(math.e),
            dropout_p, 1.0 / (1.0 - dropout_p), int(seed), next_pow2(len_q), next_pow2(len_k), *extra_scalars)
    _launch(_attn_fwd_kernel, _FWD_TUNED, "fwd", _grid(len_q, Hq, batch, "BLOCK_M", consts["FOLDED"]), args, consts)
    return o, lse


def _no_keys(o, lse, extras):
    """Varlen with no keys at all: o = 0, lse = the sink (or +inf)."""
    o.zero_()
    if extras.sinks is not None:
        lse.copy_(extras.sinks.view(1, -1, 1).expand_as(lse))
    else:
        lse.fill_(float("inf"))
    return o, lse


def attention_bwd(do, q, k, v, o, lse, mask, is_causal: bool, scale: float, dropout_p: float, seed: int,
                  extras=NO_EXTRAS):
    """Gradients of attention_fwd for the same (mask, is_causal, scale, dropout_p, seed, extras); do may have any
    strides (unit last stride). Returns dq like q, dk / dv like k / v (summed over each kv head's query heads),
    contiguous, in the input dtype. With sinks also rowsum(P * dP) (B, Hq, Lq) fp32, from which
    bigmodel/library/attention.py takes the sinks' gradient (the saved lse includes them)."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    dq = torch.empty((B, Hq, Lq, D), dtype=q.dtype, device=q.device)
    dk = torch.empty((B, Hkv, Lk, D), dtype=k.dtype, device=k.device)
    dv = torch.empty((B, Hkv, Lk, D), dtype=v.dtype, device=v.device)
    if dq.numel() == 0 or dk.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    q, k, v, do = (_small_row_stride(t) for t in (q, k, v, do))
    q, scale, dq_factor = _positive_scale(q, scale)
    mask_ptr, mask_strides, mask_kind = _mask_args(mask, q)
    consts = _consts(q, mask_kind, is_causal, dropout_p, rows_aligned(q, k, v, do, o, dq, dk, dv), extras)
    delta = torch.empty((B, Hq, Lq), dtype=torch.float32, device=q.device)
    dcfg = dict(HEAD_DIM=D, BLOCK_D=consts["BLOCK_D"], ALIGNED=consts["ALIGNED"], FOLDED=consts["FOLDED"],
                **delta_config(consts["BLOCK_D"]))
    _launch(_attn_bwd_delta_kernel, None, "delta", _grid(Lq, Hq, B, "BLOCK_M", consts["FOLDED"]),
            (o, do, delta, *do.stride()[:3], Hq, Lq), dcfg)  # varlen too: the packed rows as one sequence
    (batch, len_q, len_k), (alibi, cu_q, cu_k), extra_scalars = _extras_args(q, k, lse, is_causal, scale, extras)
    strides = (*_batch_strides(q, extras), *_batch_strides(k, extras), *_batch_strides(v, extras),
               *_batch_strides(do, extras), *mask_strides)
    scalars = (scale, scale * math.log2(math.e), dropout_p, 1.0 / (1.0 - dropout_p), int(seed),
               next_pow2(len_q), next_pow2(len_k), *extra_scalars)
    pointers = (mask_ptr, alibi, cu_q, cu_k)
    _launch(_attn_bwd_dkdv_kernel, _DKDV_TUNED, "dkdv", _grid(len_k, Hkv, batch, "BLOCK_N", consts["FOLDED"]),
            (q, k, v, do, lse, delta, dk, dv, *pointers, *strides, Hq, Hkv, Lq, Lk, Hq // Hkv, *scalars), consts)
    consts["HAS_SINKS"] = extras.sinks is not None
    row_pdp = torch.zeros_like(delta) if consts["HAS_SINKS"] else delta
    _launch(_attn_bwd_dq_kernel, _DQ_TUNED, "dq", _grid(len_q, Hq, batch, "BLOCK_M", consts["FOLDED"]),
            (q, k, v, do, lse, delta, dq, *pointers, row_pdp, *strides, Hq, Lq, Lk, Hq // Hkv, *scalars), consts)
    if dq_factor != 1.0:
        dq.mul_(dq_factor)
    return (dq, dk, dv, row_pdp) if consts["HAS_SINKS"] else (dq, dk, dv)
