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
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import bigmodel

from .cases import Case, InputSet, OpBench, n_input_sets, require_backend

GPU_LENGTHS, GPU_QUICK = (4096, 16384, 65536, 131072), (4096, 65536)


class DecodeBench(OpBench):
    name = "attention_decode"
    providers = ("torch", "triton", "cuda", "auto")

    def sizes(self, device: str, quick: bool) -> list[tuple]:
        dims = [(1, 32, 8, n, 128) for n in (GPU_QUICK if quick else GPU_LENGTHS)] if device == "cuda" \
            else [(1, 2, 1, 300, 64)]
        return [(("batch", b), ("heads", hq), ("kv_heads", hkv), ("kv_len", n), ("headdim", d))
                for b, hq, hkv, n, d in dims]

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
        return [InputSet((torch.randn(p["batch"], p["heads"], 1, p["headdim"], **kw),
                          *(torch.randn(p["batch"], p["kv_heads"], p["kv_len"], p["headdim"], **kw)
                            for _ in range(2))), ())
                for _ in range(n_input_sets(case.device))]

    def provider_fn(self, case: Case, sample: InputSet):
        if case.provider == "torch":
            return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        return self.bigmodel_fn(case, case.provider, sample)

    def bigmodel_fn(self, case: Case, backend: str, sample: InputSet):
        q, k, v = sample.args
        require_backend(backend, "attention", q=q, k=k, v=v, attn_mask=None, dropout_p=0.0, is_causal=False)

        def fused(q, k, v):
            return bigmodel.ops.attention(q, k, v, enable_gqa=True, backend=backend)

        return fused
