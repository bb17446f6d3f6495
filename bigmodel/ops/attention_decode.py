"""bigmodel.ops.attention_decode: attention of a few new queries against a KV cache, dense or paged, in
FlashAttention's flash_attn_with_kvcache layout (inference: forward only)."""
import torch

from .. import backends
from . import _attention_extras as _extras
from . import _checks

OP = "attention_decode"
MIN_PAGE = 16  # kernels/attention/decode.py MIN_PAGE: a page holds a multiple of 16 keys


def attention_decode(q, k_cache, v_cache, cache_seqlens, *, block_table=None, scale=None, is_causal=False,
                     window=None, softcap=None, sinks=None, backend=None):
    """Decode step of attention against a KV cache (flash_attn_with_kvcache without its in-place append).

    q: (B, Lq, Hq, D), the Lq newest positions of each of B sequences (Lq small: 1 for a decode step, a few for
    speculative decoding or a chunk of prefill; any Lq >= 1 runs).
    k_cache / v_cache, one of two layouts (Hkv divides Hq, GQA: query head h reads kv head h // (Hq // Hkv)):
      dense: (B, Lcache, Hkv, D), sequence b's key j at k_cache[b, j];
      paged: (num_blocks, block_size, Hkv, D) with block_table (B, max_blocks_per_seq) int32: sequence b's key j is
        k_cache[block_table[b, j // block_size], j % block_size]; block_size a multiple of 16. Only the entries
        below cdiv(cache_seqlens[b], block_size) are read: the rest may hold anything (e.g. -1).
    cache_seqlens: (B,) int32, the keys of each sequence, at most the capacity (Lcache, or max_blocks_per_seq *
      block_size) and at least Lq.
    The new keys and values must already be in the cache: the caller writes the Lq new positions first (unlike
    flash_attn_with_kvcache's k= / v= arguments, this op never writes the cache), so query i of sequence b is at
    position cache_seqlens[b] - Lq + i and attends to keys j < cache_seqlens[b].
    is_causal: query i sees keys j <= cache_seqlens[b] - Lq + i (bottom-right aligned, as FlashAttention; with
      Lq = 1 it changes nothing). window=(left, right), ints >= 0 or None per side (None = unbounded, where
      FlashAttention says -1): keys with pos - left <= j <= pos + right, aligned the same way. softcap=c > 0:
      scores -> c * tanh(scores / c) (Gemma 2). sinks (Hq,): a logit per head in the softmax denominator, no value
      (gpt-oss). scale: default 1 / sqrt(D).
    Returns (B, Lq, Hq, Dv) in q's dtype, contiguous. A query that sees no key gives 0.

    Inference only: there is no backward (as flash_attn_with_kvcache); tensors that require grad while grad is
    enabled are refused. q and the caches share one dtype (fp32 / fp16 / bf16; autocast does not cast a cache).
    block_table and cache_seqlens are checked on the host (one device sync; skipped under torch.compile).
    Backends: "triton" (the split-KV kernel of kernels/attention/decode.py, pages read in place) and "reference"
    (gathers the pages, fp32 math). "torch" declines: PyTorch has no paged-cache attention, and gathering the pages
    into a dense copy per step is what the layout exists to avoid (the reference does it, as the oracle); "cuda"
    has no decode kernel. Auto: triton on a GPU, the reference on the CPU.
    """
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        _checks.check_tensor(OP, name, t)
        if t.dim() != 4:
            layout = "(B, Lq, Hq, D)" if name == "q" else \
                "(B, Lcache, Hkv, D) (dense) or (num_blocks, block_size, Hkv, D) (paged)"
            raise ValueError(f"bigmodel.ops.{OP}: {name} must be 4-D {layout}; got shape {tuple(t.shape)}")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.dtype != q.dtype:
            raise TypeError(f"bigmodel.ops.{OP}: q, k_cache and v_cache must share one dtype; got q {q.dtype} and "
                            f"{name} {t.dtype}")
    _checks.check_same_device(OP, "q", q, k_cache=k_cache, v_cache=v_cache)
    B, Lq, Hq, D = q.shape
    if k_cache.shape[:3] != v_cache.shape[:3]:
        raise ValueError(f"bigmodel.ops.{OP}: k_cache and v_cache must agree in every dim but the head dim; got "
                         f"k_cache {tuple(k_cache.shape)}, v_cache {tuple(v_cache.shape)}")
    if k_cache.size(-1) != D or D == 0:
        raise ValueError(f"bigmodel.ops.{OP}: q and k_cache must have the same head dim (last dim), at least 1; got "
                         f"q {tuple(q.shape)}, k_cache {tuple(k_cache.shape)}")
    hkv = k_cache.size(2)
    if hkv == 0 or Hq % hkv:
        raise ValueError(f"bigmodel.ops.{OP}: k_cache's heads (dim 2) must divide q's heads (GQA); got q {Hq} heads, "
                         f"k_cache {hkv}")
    if Lq == 0:
        raise ValueError(f"bigmodel.ops.{OP}: q must hold at least one query per sequence (dim 1); got shape "
                         f"{tuple(q.shape)}")
    paged = block_table is not None
    capacity = _check_layout(q, k_cache, block_table)
    _check_seqlens(q, cache_seqlens)
    if not isinstance(is_causal, bool):
        raise TypeError(f"bigmodel.ops.{OP}: is_causal must be a bool; got {type(is_causal).__name__}")
    scale = _extras.check_dropout_scale(OP, 0.0, scale, D)
    left, right = _extras.check_window(OP, window)
    softcap = _extras.check_softcap(OP, softcap)
    _extras.check_head_vector(OP, "sinks", sinks, q, Hq)
    if torch.is_grad_enabled():
        for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("sinks", sinks)):
            if t is not None and t.requires_grad:
                raise ValueError(f"bigmodel.ops.{OP}: is inference only (no backward, as flash_attn_with_kvcache); "
                                 f"{name} requires grad: call it under torch.no_grad() / torch.inference_mode(), or "
                                 "pass detached tensors")
    if not torch.compiler.is_compiling():
        _check_contents(q, cache_seqlens, block_table, k_cache, capacity)
    cache_seqlens = cache_seqlens.contiguous()
    if paged:
        block_table = block_table.contiguous()
    q = q if q.stride(-1) == 1 else q.contiguous()
    k_cache, v_cache = (t if t.stride(-1) == 1 else t.contiguous() for t in (k_cache, v_cache))
    sinks32 = None if sinks is None else sinks.detach().to(torch.float32).contiguous()
    window = None if left is None and right is None else (left, right)
    name = backends.requested(backend)

    def trial(backend, fresh):  # what auto times the first time it meets such inputs (a fresh q; the caches as
        # they are: their block table and lengths must stay valid)
        return attention_decode(fresh(q), k_cache, v_cache, cache_seqlens, block_table=block_table, scale=scale,
                                is_causal=is_causal, window=window, softcap=softcap, sinks=sinks, backend=backend)

    impl = backends.select(OP, name, trial=trial, q=q, k_cache=k_cache, v_cache=v_cache, paged=paged,
                           block_size=k_cache.size(1) if paged else 0, is_causal=bool(is_causal), window=window,
                           softcap=softcap, sinks=sinks32)
    out, _lse = torch.ops.bigmodel.attention_decode(q, k_cache, v_cache, cache_seqlens, block_table, scale,
                                                    bool(is_causal), left, right, softcap, sinks32, impl.name)
    return out


def _check_layout(q, k_cache, block_table) -> int:
    """The cache's layout against q's batch; returns the capacity (keys a sequence can hold)."""
    B = q.size(0)
    if block_table is None:
        if k_cache.size(0) != B:
            raise ValueError(f"bigmodel.ops.{OP}: a dense k_cache (no block_table) must hold one row per sequence: "
                             f"k_cache.size(0) = {k_cache.size(0)}, q's batch = {B} (a paged cache needs "
                             "block_table)")
        return k_cache.size(1)
    if not isinstance(block_table, torch.Tensor):
        raise TypeError(f"bigmodel.ops.{OP}: block_table must be a torch.Tensor (int32, (B, max_blocks_per_seq)) or "
                        f"None; got {type(block_table).__name__}")
    if block_table.dtype != torch.int32:
        raise TypeError(f"bigmodel.ops.{OP}: block_table must have dtype int32 (FlashAttention's layout); got "
                        f"{str(block_table.dtype).replace('torch.', '')}")
    if block_table.dim() != 2 or block_table.size(0) != B or block_table.size(1) == 0:
        raise ValueError(f"bigmodel.ops.{OP}: block_table must have shape (B, max_blocks_per_seq) = ({B}, >= 1); got "
                         f"{tuple(block_table.shape)}")
    if block_table.device != q.device:
        raise ValueError(f"bigmodel.ops.{OP}: block_table is on {block_table.device} but q is on {q.device}; all "
                         "tensors must be on one device")
    block_size = k_cache.size(1)
    if block_size == 0 or block_size % MIN_PAGE:
        raise ValueError(f"bigmodel.ops.{OP}: a paged k_cache's block_size (dim 1) must be a positive multiple of "
                         f"{MIN_PAGE}; got {block_size} (k_cache {tuple(k_cache.shape)})")
    if k_cache.size(0) == 0:
        raise ValueError(f"bigmodel.ops.{OP}: a paged k_cache needs at least one block (dim 0); got shape "
                         f"{tuple(k_cache.shape)}")
    return block_table.size(1) * block_size


def _check_seqlens(q, cache_seqlens):
    if not isinstance(cache_seqlens, torch.Tensor):
        raise TypeError(f"bigmodel.ops.{OP}: cache_seqlens must be a torch.Tensor (int32, shape (B,)); got "
                        f"{type(cache_seqlens).__name__}")
    if cache_seqlens.dtype != torch.int32:
        raise TypeError(f"bigmodel.ops.{OP}: cache_seqlens must have dtype int32; got "
                        f"{str(cache_seqlens.dtype).replace('torch.', '')}")
    if tuple(cache_seqlens.shape) != (q.size(0),):
        raise ValueError(f"bigmodel.ops.{OP}: cache_seqlens must have shape (B,) = ({q.size(0)},); got "
                         f"{tuple(cache_seqlens.shape)}")
    if cache_seqlens.device != q.device:
        raise ValueError(f"bigmodel.ops.{OP}: cache_seqlens is on {cache_seqlens.device} but q is on {q.device}; "
                         "all tensors must be on one device")


def _check_contents(q, cache_seqlens, block_table, k_cache, capacity):
    """On the host, in one sync: Lq <= cache_seqlens[b] <= capacity, and the block-table entries a sequence reads
    (those below cdiv(cache_seqlens[b], block_size)) in [0, num_blocks)."""
    if q.size(0) == 0:
        return
    lq = q.size(1)
    stats = [cache_seqlens.min(), cache_seqlens.max()]
    if block_table is not None:
        block_size = k_cache.size(1)
        used = _used_entries(cache_seqlens, block_table, block_size)
        stats += [torch.where(used, block_table, 0).min(), torch.where(used, block_table, 0).max()]
    stats = torch.stack(stats).tolist()  # the one host sync
    if stats[0] < lq or stats[1] > capacity:
        bad = int(((cache_seqlens < lq) | (cache_seqlens > capacity)).nonzero()[0, 0])
        value = int(cache_seqlens[bad])
        where = (f"max_blocks_per_seq {block_table.size(1)} x block_size {k_cache.size(1)}" if block_table is not None
                 else f"k_cache.size(1)")
        raise ValueError(f"bigmodel.ops.{OP}: cache_seqlens[{bad}] = {value} is outside [Lq, capacity] = [{lq}, "
                         f"{capacity}] (capacity = {where}; the {lq} new keys must already be in the cache)")
    if block_table is not None and (stats[2] < 0 or stats[3] >= k_cache.size(0)):
        used = _used_entries(cache_seqlens, block_table, k_cache.size(1))
        bad = (used & ((block_table < 0) | (block_table >= k_cache.size(0)))).nonzero()[0].tolist()
        raise ValueError(f"bigmodel.ops.{OP}: block_table[{bad[0]}, {bad[1]}] = {int(block_table[bad[0], bad[1]])} is "
                         f"out of range [0, num_blocks = {k_cache.size(0)}) (sequence {bad[0]} holds "
                         f"{int(cache_seqlens[bad[0]])} keys, so it reads its first "
                         f"{-(-int(cache_seqlens[bad[0]]) // k_cache.size(1))} entries)")


def _used_entries(cache_seqlens, block_table, block_size):
    """(B, max_blocks) bool: the entries sequence b reads."""
    blocks = (cache_seqlens.to(torch.int64) + block_size - 1) // block_size
    return torch.arange(block_table.size(1), device=block_table.device)[None, :] < blocks[:, None]
