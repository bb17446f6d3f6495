"""bigmodel::attention_decode: attention of q (B, Lq, Hq, D) against a dense (B, Lcache, Hkv, D) or paged
(num_blocks, block_size, Hkv, D) KV cache with cache_seqlens (B,) int32 and block_table (B, max_blocks) int32 or
None; bigmodel.ops.attention_decode validated everything and brought sinks to fp32. Forward only (inference, as
flash_attn_with_kvcache): no autograd is registered, and bigmodel.ops refuses inputs that require grad.
Returns (out (B, Lq, Hq, Dv) in q's dtype, lse (B, Hq, Lq) fp32; +inf for a row that sees nothing and has no sink).
"""
from typing import Optional

import torch
from torch import Tensor

from .. import backends
from . import autocast_off


@torch.library.custom_op("bigmodel::attention_decode", mutates_args=())
@autocast_off
def attention_decode(q: Tensor, k_cache: Tensor, v_cache: Tensor, cache_seqlens: Tensor,
                     block_table: Optional[Tensor], scale: float, is_causal: bool, window_left: Optional[int],
                     window_right: Optional[int], softcap: Optional[float], sinks: Optional[Tensor],
                     backend: str) -> tuple[Tensor, Tensor]:
    paged = block_table is not None
    window = None if window_left is None and window_right is None else (window_left, window_right)
    impl = backends.kernel("attention_decode", backend, q=q, k_cache=k_cache, v_cache=v_cache, paged=paged,
                           block_size=k_cache.size(1) if paged else 0, is_causal=is_causal, window=window,
                           softcap=softcap, sinks=sinks)
    B, Lq, Hq = q.shape[:3]
    if q.numel() == 0 or v_cache.size(-1) == 0:  # nothing to compute
        out = q.new_zeros(B, Lq, Hq, v_cache.size(-1))
        return out, q.new_full((B, Hq, Lq), float("inf"), dtype=torch.float32)
    return impl.attention_decode_fwd(q, k_cache, v_cache, cache_seqlens, block_table, scale, is_causal, window,
                                     softcap, sinks)


@attention_decode.register_fake
def _(q, k_cache, v_cache, cache_seqlens, block_table, scale, is_causal, window_left, window_right, softcap, sinks,
      backend):
    B, Lq, Hq = q.shape[:3]
    return q.new_empty(B, Lq, Hq, v_cache.size(-1)), q.new_empty(B, Hq, Lq, dtype=torch.float32)
