"""Gated MLP benchmarks over the cases of benchmarks/llama_cases.py: swiglu (F.silu(g) * u), geglu (Gemma's tanh
GELU) and gated_feed_forward (the Llama MLP, three GEMMs; TFLOP/s) on torch, torch.compile, triton, cuda, auto, liger
(Liger-Kernel's SiLU / GELU-mul, when installed and on a GPU) x fwd / bwd / fwd+bwd; bf16 at Llama-3 sizes on a GPU,
tiny fp32 on CPU.

    python -m pytest benchmarks/bench_gated.py -q --benchmark-json=gated.json
    python -m pytest benchmarks/bench_gated.py -q -k "gated_feed_forward and fwd+bwd"
"""
import pytest

from benchmarks import cases

OPS = ("swiglu", "geglu", "gated_feed_forward")
CASES = cases.all_cases(OPS, quick=cases.quick_from_env())


@pytest.mark.parametrize("case", CASES, ids=[f"{c.op}-{c.id}" for c in CASES])
def test_gated(bench_case, case):
    bench_case(case)
