"""Attention benchmark cases (registered in benchmarks/cases.py's OPS as "attention").

Shapes (B, H, L, D) with Lq = Lk = L, no dropout, mask "none" or "causal":
- GPU: D 64 and 128, L 512 .. 16k with B * L = 16k tokens and H = 2048 / D (FlashAttention's benchmark), so every
  size does similar work per token. --quick: L 1k, 4k, 16k. --dtype bf16 (default) and/or fp16.
- CPU: two smoke sizes (B 1, H 2, L 64 / 128, D 32 / 64) in fp32; with TRITON_INTERPRET=1 the Triton kernels run
  in the interpreter. Not performance numbers.

Providers:
  torch           F.scaled_dot_product_attention, PyTorch's own backend choice: the "vs torch" reference
  sdpa-flash, sdpa-efficient, sdpa-cudnn, sdpa-math
                  SDPA pinned to one backend (torch.nn.attention.sdpa_kernel); skipped with PyTorch's reason
                  when that backend cannot run the case
  eager           softmax(Q K^T * scale + causal mask) V written out in torch (softmax in fp32, as Hugging Face's
                  eager attention); sdpa-math and eager are skipped where the L x L scores in fp32 would pass
                  MATERIALISE_LIMIT_GIB
  flex            FlexAttention, torch.compile'd (a causal BlockMask when causal); GPU only with
                  BIGMODEL_BENCH_FULL=1 (it compiles per shape, ~10-20 s each); on CPU forward only (no backward)
  triton, cuda    bigmodel.ops.attention(..., backend=...)
  auto            bigmodel.ops.attention with backend "auto": its measured choice among torch, triton and cuda (made
                  on the first call, outside the timings; the row's note says which it ran)
Rates are TFLOP/s with FlashAttention's count: forward 4 * B * H * L^2 * D, halved when causal; backward 2.5x
forward, fwd+bwd 3.5x. max err vs reference: bigmodel's pure-math backend on the same inputs, within
MATERIALISE_LIMIT_GIB (it writes out the scores). rel_err: against torch's SDPA on the same inputs upcast to fp32
(so the torch row shows the error of plain PyTorch in that dtype, the yardstick of DESIGN.md's numerics rule).
report.py adds, per shape, the speed-up over the best SDPA backend (torch and every sdpa-*) and over sdpa-flash
(DESIGN.md's targets).

Order (the GPU suite must fit one 600 s device call together with the build and the tests; `bigmodel bench` stops
starting cases at --max-seconds): cases run most important first, by tier across all ops (cases.all_cases), and the
report sorts them back by shape.
  tier 0  torch, sdpa-flash, sdpa-cudnn, triton, cuda, auto; fwd and fwd+bwd; L 1k, 4k, 16k   (DESIGN.md's targets)
  tier 1  the same providers: bwd, and L 512, 2k, 8k
  tier 2  sdpa-efficient, sdpa-math, eager
  tier 3  flex (compiles)
Each tier runs for the first dtype asked for, then the next. GPU, bf16: 720 cases; estimated for an H100 (not
measured yet, ~0.5 s a case): tier 0 = 144 cases, ~75 s; all of it ~300 s (588 cases run: flex and sdpa-math /
eager beyond the limit are instant skips); BIGMODEL_BENCH_FULL=1 adds flex (72 cases, 24 compiles), ~400 s more.
"""
from __future__ import annotations

import contextlib
import os
import re
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import bigmodel

from .cases import Case, InputSet, OpBench, Prepared, Unavailable, compiled, n_input_sets, require_backend

SDPA_BACKENDS = {"sdpa-flash": "FLASH_ATTENTION", "sdpa-efficient": "EFFICIENT_ATTENTION",
                 "sdpa-cudnn": "CUDNN_ATTENTION", "sdpa-math": "MATH"}
CORE = ("torch", "sdpa-flash", "sdpa-cudnn", "triton", "cuda", "auto")  # what DESIGN.md's targets compare
MATERIALISE_LIMIT_GIB = 4  # sdpa-math / eager: largest L x L score matrix (B * H * L^2 fp32) they are given
TOKENS, MODEL_DIM = 16384, 2048  # GPU sizes: B * L and H * D
HEADLINE_LENGTHS = (1024, 4096, 16384)  # tier 0 (and --quick)


def full_from_env() -> bool:
    """BIGMODEL_BENCH_FULL=1: also the providers too slow to set up for the default GPU suite (flex)."""
    return os.environ.get("BIGMODEL_BENCH_FULL", "0") not in ("", "0")


@contextlib.contextmanager
def sdpa_reasons(provider: str):
    """A pinned SDPA backend that cannot run a case warns why, then raises RuntimeError ("No available kernel"):
    turn that into Unavailable with PyTorch's reasons. Out of memory stays an error."""
    if provider not in SDPA_BACKENDS:
        yield
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError as e:
            said = [re.sub(r"\s*\(Triggered internally at [^)]*\)\.?", "", str(w.message)).strip() for w in caught]
            # keep the reasons; drop "<backend> kernel not used because:" headers and the backends turned off here
            why = " ".join(s for s in said if s and not s.endswith("because:") and "runtime disabled" not in s)
            why = why or str(e).strip()
            raise Unavailable(f"PyTorch cannot run SDPBackend.{SDPA_BACKENDS[provider]} on this case: "
                              f"{' '.join(why.split())[:400]}") from e


class AttentionBench(OpBench):
    name = "attention"
    providers = ("torch", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-math", "eager", "flex", "triton",
                 "cuda", "auto")
    compiling = ("flex",)  # compiled: its compile failures are reported as skipped, as torch.compile's are
    # report.py: speed-up columns against the fastest of these providers, and the plot's layout
    baselines = {"best_sdpa": ("torch", *SDPA_BACKENDS), "sdpa_flash": ("sdpa-flash",)}
    plot_x = "seqlen"
    plot_panels = ("headdim", "mask")

    def sizes(self, device: str, quick: bool) -> list[tuple]:
        if device == "cuda":
            lengths = HEADLINE_LENGTHS if quick else (512, 1024, 2048, 4096, 8192, 16384)
            dims = [(TOKENS // n, MODEL_DIM // d, n, d, mask) for d in (64, 128) for mask in ("none", "causal")
                    for n in lengths]
        else:  # smoke sizes: the interpreter runs one Triton program instance at a time
            dims = [(1, 2, 64, 32, "causal")] if quick else [(1, 2, 64, 32, "none"), (1, 2, 128, 64, "causal")]
        return [(("batch", b), ("heads", h), ("seqlen", n), ("headdim", d), ("mask", mask))
                for b, h, n, d, mask in dims]

    def tier(self, case: Case) -> int:
        if case.provider in CORE:
            return 0 if case.mode != "bwd" and case.params["seqlen"] in HEADLINE_LENGTHS else 1
        return 3 if case.provider == "flex" else 2

    def work(self, case: Case) -> dict:
        p = case.params
        fwd = 4 * p["batch"] * p["heads"] * p["seqlen"] ** 2 * p["headdim"] // (2 if p["mask"] == "causal" else 1)
        return {"flops": {"fwd": fwd, "bwd": 5 * fwd // 2, "fwd+bwd": 7 * fwd // 2}[case.mode]}

    def input_sets(self, case: Case) -> list[InputSet]:
        p = case.params
        shape = (p["batch"], p["heads"], p["seqlen"], p["headdim"])
        kw = dict(device=case.device, dtype=case.torch_dtype)
        grad = case.mode != "fwd"
        return [InputSet(tuple(torch.randn(shape, **kw).requires_grad_(grad) for _ in range(3)), ("dq", "dk", "dv"),
                         torch.randn(shape, **kw) if grad else None)
                for _ in range(n_input_sets(case.device))]

    def provider_fn(self, case: Case, sample: InputSet):
        p, provider = case.params, case.provider
        causal, n = p["mask"] == "causal", p["seqlen"]
        if provider in ("sdpa-math", "eager"):
            gib = p["batch"] * p["heads"] * n * n * 4 / 2**30
            if gib > MATERIALISE_LIMIT_GIB:
                raise Unavailable(f"would materialise L x L scores: {p['batch']}x{p['heads']}x{n}x{n} in fp32 = "
                                  f"{gib:.0f} GiB (limit MATERIALISE_LIMIT_GIB = {MATERIALISE_LIMIT_GIB})")

        def sdpa(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        if provider == "torch":
            return sdpa
        if provider in SDPA_BACKENDS:
            backend = getattr(SDPBackend, SDPA_BACKENDS[provider], None)
            if backend is None:
                raise Unavailable(f"torch {torch.__version__} has no SDPBackend.{SDPA_BACKENDS[provider]}")

            def pinned(q, k, v):
                with sdpa_kernel(backend):
                    return sdpa(q, k, v)

            return pinned
        if provider == "eager":
            hidden = torch.ones(n, n, dtype=torch.bool, device=case.device).triu(1) if causal else None

            def eager(q, k, v):
                s = (q @ k.transpose(-2, -1)) * q.size(-1) ** -0.5
                if hidden is not None:
                    s = s.masked_fill(hidden, float("-inf"))
                return torch.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype) @ v

            return eager
        if provider == "flex":
            return self.flex_fn(case)
        return self.bigmodel_fn(case, provider, sample)

    def bigmodel_fn(self, case: Case, backend: str, sample: InputSet):
        causal = case.params["mask"] == "causal"
        q, k, v = sample.args
        require_backend(backend, "attention", q=q, k=k, v=v, attn_mask=None, dropout_p=0.0, is_causal=causal,
                        enable_gqa=False)

        def fused(q, k, v):
            return bigmodel.ops.attention(q, k, v, is_causal=causal, backend=backend)

        return fused

    def reference_backend_fn(self, case: Case, sample: InputSet):
        """The pure-math backend writes out the L x L scores (and probabilities) in fp32: only within the limit that
        sdpa-math and eager have (beyond it the row has no "max err vs reference")."""
        p = case.params
        if p["batch"] * p["heads"] * p["seqlen"] ** 2 * 4 / 2**30 > MATERIALISE_LIMIT_GIB:
            return None
        return super().reference_backend_fn(case, sample)

    def flex_fn(self, case: Case):
        if case.device == "cuda" and not full_from_env():
            raise Unavailable("compiles per shape (~10-20 s each): in the full set only (BIGMODEL_BENCH_FULL=1)")
        if case.device != "cuda" and case.mode != "fwd":
            raise Unavailable("FlexAttention has no backward on CPU (torch raises NotImplementedError)")
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        except ImportError as e:
            raise Unavailable(f"torch {torch.__version__} has no FlexAttention ({e})") from e
        n = case.params["seqlen"]
        block_mask = None
        if case.params["mask"] == "causal":
            block_mask = create_block_mask(lambda b, h, i, j: j <= i, None, None, n, n, device=case.device)
        flex = compiled((case.op, case.provider, case.shape, case.dtype, case.device), flex_attention)

        def flex_fn(q, k, v):
            return flex(q, k, v, block_mask=block_mask)

        return flex_fn

    def reference_fn(self, case: Case, sample: InputSet):
        causal = case.params["mask"] == "causal"

        def upcast(q, k, v):  # torch's SDPA in fp32 (gradients come back in the input dtype)
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal)

        return upcast

    def prepare(self, case: Case) -> Prepared:
        with sdpa_reasons(case.provider):
            return super().prepare(case)
