"""Loss benchmarks over the cases of benchmarks/loss_cases.py: cross_entropy (logits given) and linear_cross_entropy
(the LM head fused with the loss) on torch (F.cross_entropy; for the linear one Hugging Face's F.linear + .float() +
F.cross_entropy, and on a GPU also without the upcast: torch-no-upcast), torch.compile, triton, cuda, auto,
bigmodel-torch (the chunked op on PyTorch's math), liger (Liger-Kernel, when installed and on a GPU); cross_entropy x
fwd / bwd / fwd+bwd, linear_cross_entropy x fwd / fwd+bwd (its fused providers compute the gradients in the forward:
no bwd). N = 16384 tokens x V 32000 / 128256 / 256000 (d_model 2048 / 4096) in bf16 on a GPU, small fp32 shapes on CPU.
extra_info carries peak_mem_mb: GPU allocator, or on a CPU PyTorch's CPU allocator (`bigmodel bench` labels it CPU).

    python -m pytest benchmarks/bench_loss.py -q --benchmark-json=loss.json
    python -m pytest benchmarks/bench_loss.py -q -k "linear_cross_entropy and fwd+bwd and (triton or liger)"
"""
import pytest

from benchmarks import cases

CASES = cases.all_cases(["cross_entropy", "linear_cross_entropy"], quick=cases.quick_from_env())


@pytest.mark.parametrize("case", CASES, ids=[f"{c.op}-{c.id}" for c in CASES])
def test_loss(bench_case, case):
    bench_case(case)
