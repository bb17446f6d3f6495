"""LayerNorm benchmarks: every provider (torch, torch.compile, triton, cuda) x fwd / bwd / fwd+bwd,
over the cases of benchmarks/cases.py (rows 16384 x hidden 768..16384 in bf16 on a GPU; tiny fp32 on CPU).

    python -m pytest benchmarks/bench_layer_norm.py -q --benchmark-json=layer_norm.json
    python -m pytest benchmarks -q -k "fwd and 4096"          # one mode and size
"""
import pytest

from benchmarks import cases

CASES = cases.all_cases(["layer_norm"], quick=cases.quick_from_env())


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_layer_norm(bench_case, case):
    bench_case(case)
