"""Decode attention benchmark cases (registered in benchmarks/cases.py's OPS as "attention_decode").

One new token per sequence against a KV cache: q (B, Hq, 1, D), k / v (B, Hkv, Lk, D), no mask (what generation
without padding passes), inference only.
- GPU: B = 1, Hq = 32, Hkv = 8 (GQA 32:8, Llama-3 8B's heads), D = 128, Lk 4k, 16k, 64k, 128k; bf16.
  --quick: 4k and 64k.
- CPU: one smoke size (B 1, Hq 2, Hkv 1, Lk 300, D 64). Not performance numbers (and in fp32 the Triton backend
  takes its regular forward: the split-KV path is fp16 / bf16).
Providers: torch (SDPA, enable_gqa), triton and cuda (bigmodel.ops.attention(..., backend=...): on the Triton
backend the split-KV forward of kernels/attention/decode.py), auto. The rate is GB/s of the K / V cache read (plus
q and o) and its % of the measured copy bandwidth: decode is bandwidth-bound, and the target is 80%.

Paged cases (shape entry block_size): bigmodel.ops.attention_decode over a paged cache (num_blocks, block_size,
Hkv, D), FlashAttention's flash_attn_with_kvcache layout, every sequence kv_len keys in pages handed out in a
random order (block_table int32). GPU: B = 4 sequences, Hq 32, Hkv 8, D 128, kv_len 16k, pages of 64 and 16
(--quick: 64); CPU: (B 2, Hq 2, Hkv 1, kv_len 300, D 64, pages of 16). Providers: torch (what plain PyTorch does
with a paged cache: gather the pages into a dense copy, k_cache[block_table], then SDPA; the gather is timed),
triton and auto (ops.attention_decode), cuda (no decode kernel: skipped with its reason). The rate counts the
cache bytes the sequences own (the gather's extra traffic is torch's cost).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import bigmodel

from .cases import Case, InputSet, OpBench, n_input_sets, require_backend

GPU_LENGTHS, GPU_QUICK = (4096, 16384, 65536, 131072), (4096, 65536)
PAGED_GPU, PAGED_GPU_QUICK = ((4, 32, 8, 16384, 128, 64), (4, 32, 8, 16384, 128, 16)), ((4, 32, 8, 16384, 128, 64),)
PAGED_CPU = ((2, 2, 1, 300, 64, 16),)


class DecodeBench(OpBench):
    name = "attention_decode"
    providers = ("torch", "triton", "cuda", "auto")

    def sizes(self, device: str, quick: bool) -> list[tuple]:
        dims = [(1, 32, 8, n, 128) for n in (GPU_QUICK if quick else GPU_LENGTHS)] if device == "cuda" \
            else [(1, 2, 1, 300, 64)]
        paged = (PAGED_GPU_QUICK if quick else PAGED_GPU) if device == "cuda" else PAGED_CPU
        return [(("batch", b), ("heads", hq), ("kv_heads", hkv), ("kv_len", n), ("headdim", d))
                for b, hq, hkv, n, d in dims] + \
            [(("batch", b), ("heads", hq), ("kv_heads", hkv), ("kv_len", n), ("headdim", d), ("block_size", bs))
             for b, hq, hkv, n, d, bs in paged]

    def has_mode(self, shape: tuple, mode: str) -> bool:
        return mode == "fwd"  # generation: no backward

    def tier(self, case: Case) -> int:
        return 1

    def work(self, case: Case) -> dict:
        p = case.params
        e = case.torch_dtype.itemsize
        kv = 2 * p["batch"] * p["kv_heads"] * p["kv_len"] * p["headdim"]
        return {"bytes": (kv + 2 * p["batch"] * p["heads"] * p["headdim"]) * e}

    def input_sets(self, case: Case) -> list[InputSet]:
        p = case.params
        kw = dict(device=case.device, dtype=case.torch_dtype)
        if "block_size" in p:
            return [self._paged_set(p, kw) for _ in range(n_input_sets(case.device))]
        return [InputSet((torch.randn(p["batch"], p["heads"], 1, p["headdim"], **kw),
                          *(torch.randn(p["batch"], p["kv_heads"], p["kv_len"], p["headdim"], **kw)
                            for _ in range(2))), ())
                for _ in range(n_input_sets(case.device))]

    @staticmethod
    def _paged_set(p, kw):
        """q (B, 1, Hq, D), pages (B * blocks, block_size, Hkv, D) x 2, cache_seqlens, a shuffled block table."""
        b, n, bs = p["batch"], p["kv_len"], p["block_size"]
        blocks = -(-n // bs)
        pages = (b * blocks, bs, p["kv_heads"], p["headdim"])
        table = torch.randperm(b * blocks, device=kw["device"]).to(torch.int32).view(b, blocks)
        seqlens = torch.full((b,), n, dtype=torch.int32, device=kw["device"])
        return InputSet((torch.randn(b, 1, p["heads"], p["headdim"], **kw), torch.randn(pages, **kw),
                         torch.randn(pages, **kw), seqlens, table), ())

    def provider_fn(self, case: Case, sample: InputSet):
        if case.provider == "torch" and "block_size" in case.params:
            n = case.params["kv_len"]
            return lambda q, k_cache, v_cache, seqlens, table: _gathered_sdpa(q, k_cache, v_cache, table, n)
        if case.provider == "torch":
            return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        return self.bigmodel_fn(case, case.provider, sample)

    def bigmodel_fn(self, case: Case, backend: str, sample: InputSet):
        if "block_size" in case.params:
            q, k_cache, v_cache, seqlens, table = sample.args
            require_backend(backend, "attention_decode", q=q, k_cache=k_cache, v_cache=v_cache, paged=True,
                            block_size=k_cache.size(1), is_causal=False, window=None, softcap=None, sinks=None)

            def paged(q, k_cache, v_cache, seqlens, table):
                return bigmodel.ops.attention_decode(q, k_cache, v_cache, seqlens, block_table=table, backend=backend)

            return paged
        q, k, v = sample.args
        require_backend(backend, "attention", q=q, k=k, v=v, attn_mask=None, dropout_p=0.0, is_causal=False)

        def fused(q, k, v):
            return bigmodel.ops.attention(q, k, v, enable_gqa=True, backend=backend)

        return fused


def _gathered_sdpa(q, k_cache, v_cache, table, n):
    """Plain PyTorch on a paged cache: the pages gathered into a dense (B, Hkv, L, D) copy, then SDPA over the first
    n keys (every sequence of these cases holds n)."""
    b = q.size(0)
    k, v = (c[table.long()].reshape(b, -1, *c.shape[2:])[:, :n].transpose(1, 2) for c in (k_cache, v_cache))
    return F.scaled_dot_product_attention(q.transpose(1, 2), k, v, enable_gqa=True).transpose(1, 2)
