"""Training-step benchmark over the cases of benchmarks/model_cases.py: one AdamW step of GPT-2 small (batch 8 x
seq 1024, bf16 autocast) on a GPU, of a one-layer "micro" GPT (fp32) on CPU; providers torch (a plain-PyTorch twin
of the model: nn.LayerNorm, nn.Linear + F.gelu, SDPA), torch.compile (the twin compiled), bigmodel (backend auto),
bigmodel-triton, bigmodel-cuda. extra_info carries tokens_per_s and peak_mem_mb.

    python -m pytest benchmarks/bench_model.py -q --benchmark-json=train_step.json
"""
import pytest

from benchmarks import cases

CASES = cases.all_cases(["train_step"], quick=cases.quick_from_env())


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_train_step(bench_case, case):
    bench_case(case)
