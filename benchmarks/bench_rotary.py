"""Rotary embedding benchmarks over the cases of benchmarks/llama_cases.py: torch (Hugging Face's rotate_half
formula), torch.compile, triton, cuda, auto, liger (liger_rotary_pos_emb, when installed and on a GPU) x fwd / bwd /
fwd+bwd; q (8, 32 | 8, 2048, 128) with (L, D) and (B, L, D) tables, Hugging Face's (B, L, H, D) storage, head dim
80 full and partial (rotary dim 32), bf16 on a GPU; tiny fp32 on CPU.

    python -m pytest benchmarks/bench_rotary.py -q --benchmark-json=rotary.json
    python -m pytest benchmarks/bench_rotary.py -q -k "fwd+bwd and 128x128"
"""
import pytest

from benchmarks import cases

CASES = cases.all_cases(["rotary"], quick=cases.quick_from_env())


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rotary(bench_case, case):
    bench_case(case)
