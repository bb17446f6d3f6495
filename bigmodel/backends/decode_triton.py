"""The triton backend's attention_decode: kernels/attention/decode.py kvcache_fwd (the split-KV kernel with the
PAGED / KV_CACHE / causal / window / softcap / sinks flags)."""
import importlib

MAX_HEAD_DIM = 256  # head dims are padded to a power of two inside the kernel
MAX_GRID_YZ = 65535  # grid axes 1 (kv heads) and 2 (batch)


class TritonDecode:
    """Mixed into TritonBackend (its device guard and capability checks apply)."""

    def attention_decode_reasons(self, q, k_cache, v_cache, **_):
        reasons = []
        if q.size(-1) > MAX_HEAD_DIM:
            reasons.append(f"attention_decode: head dim {q.size(-1)} > {MAX_HEAD_DIM}")
        if v_cache.size(-1) != q.size(-1):
            reasons.append(f"attention_decode: v_cache's head dim {v_cache.size(-1)} differs from q's {q.size(-1)} "
                           "(the kernel reads both with one tile width)")
        if q.size(0) > MAX_GRID_YZ or k_cache.size(2) > MAX_GRID_YZ:
            reasons.append(f"attention_decode: batch {q.size(0)} and kv heads {k_cache.size(2)} must each be at most "
                           f"{MAX_GRID_YZ} (CUDA grid axes 1 and 2)")
        return reasons

    def attention_decode_fwd(self, q, k_cache, v_cache, cache_seqlens, block_table, scale, is_causal, window,
                             softcap, sinks):
        from .triton import device_guard  # backends/triton.py imports this module
        decode = importlib.import_module("bigmodel.kernels.attention.decode")
        with device_guard(q.device):
            o, lse = decode.kvcache_fwd(q, k_cache, v_cache, cache_seqlens, scale, block_table=block_table,
                                        is_causal=is_causal, window=window, softcap=softcap, sinks=sinks)
        return o, lse
