"""Attention benchmarks: torch (SDPA), SDPA pinned to each backend, eager, flex, triton, cuda x fwd / bwd / fwd+bwd,
over the cases of benchmarks/attention_cases.py (D 64 / 128, L 512..16k at 16k tokens, causal and not, bf16 on a
GPU; two tiny fp32 shapes on CPU, where the triton provider needs TRITON_INTERPRET=1). Cases run most important
first (see attention_cases.py).

    python -m pytest benchmarks/bench_attention.py -q --benchmark-json=attention.json
    python -m pytest benchmarks/bench_attention.py -q -k "fwd- and (triton or sdpa-flash)"
"""
import pytest

from benchmarks import cases

CASES = cases.all_cases(["attention"], quick=cases.quick_from_env())


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_attention(bench_case, case):
    bench_case(case)
