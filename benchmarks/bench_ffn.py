"""Feed-forward benchmarks over the cases of benchmarks/ffn_cases.py: linear_act and feed_forward (torch,
addmm_activation, torch.compile, cublas, triton, cuda; TFLOP/s), softmax and gelu (torch, torch.compile, triton,
cuda; GB/s and % of copy bandwidth), x fwd / bwd / fwd+bwd; bf16 at Transformer sizes on a GPU, one tiny fp32 shape
each on CPU (the triton provider needs TRITON_INTERPRET=1 there).

    python -m pytest benchmarks/bench_ffn.py -q --benchmark-json=ffn.json
    python -m pytest benchmarks/bench_ffn.py -q -k "linear_act and fwd+bwd and (cublas or triton)"
"""
import pytest

from benchmarks import cases

OPS = ("linear_act", "feed_forward", "softmax", "gelu")
CASES = cases.all_cases(OPS, quick=cases.quick_from_env())


@pytest.mark.parametrize("case", CASES, ids=[f"{c.op}-{c.id}" for c in CASES])
def test_ffn(bench_case, case):
    bench_case(case)
