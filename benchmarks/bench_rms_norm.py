"""RMSNorm benchmarks over the cases of benchmarks/llama_cases.py: rms_norm and add_rms_norm (the residual add
fused) on torch (F.rms_norm), torch.compile, triton, cuda, auto, liger (Liger-Kernel, when installed and on a GPU)
x fwd / bwd / fwd+bwd; rows 16384 x hidden 1024..8192 and 4096 x 65536 in bf16 on a GPU, tiny fp32 on CPU.

    python -m pytest benchmarks/bench_rms_norm.py -q --benchmark-json=rms_norm.json
    python -m pytest benchmarks/bench_rms_norm.py -q -k "add_rms_norm and bwd and (triton or liger)"
"""
import pytest

from benchmarks import cases

CASES = cases.all_cases(["rms_norm", "add_rms_norm"], quick=cases.quick_from_env())


@pytest.mark.parametrize("case", CASES, ids=[f"{c.op}-{c.id}" for c in CASES])
def test_rms_norm(bench_case, case):
    bench_case(case)
