"""The benchmark cases of the loss ops (benchmarks/loss_cases.py) on CPU: every case builds, each available provider
runs one call and agrees with eager torch (cases.REL_ERR_TOL), each unavailable one says why; the CPU peak memory is a
real measurement (PyTorch's CPU allocator), labelled CPU in the row and the report, and it shows linear_cross_entropy's
saving: the fused rows' peak is well below the torch row's on the same inputs. The GPU case lists (built without a GPU)
have their headline tier, no bwd mode for linear_cross_entropy, and the work counts of the module doc."""

import pytest
import torch

from bench_checks import INTERPRETING, check_agreement, run_or_reason
from benchmarks import cases, loss_cases, report, timing

OPS = ("cross_entropy", "linear_cross_entropy")
SMALL = ({"rows": 64, "classes": 1000}, {"tokens": 64, "d_model": 64, "vocab": 1000})
# Every provider and mode at the small CPU shapes (the checks run each case ~4 times); the memory shapes (2048 x 8192,
# 4096 x 64 x 8192: ~0.5-2 s a call here) in test_cpu_peak_memory_shows_the_fused_saving and `bigmodel bench --device
# cpu`. torch.compile compiles per case (seconds each): one case of it per op.
CPU_CASES = [c for c in cases.all_cases(OPS, device="cpu")
             if c.params in SMALL and (c.provider != "torch.compile" or c.mode == "fwd+bwd")]
MEMORY_SHAPE = (("tokens", 4096), ("d_model", 64), ("vocab", 8192))  # the bench's CPU memory shape: logits 128 MiB


def test_registered_with_their_providers_and_modes():
    for op in OPS:
        assert op in cases.OPS and cases.OPS[op].peak_memory
    ce = cases.all_cases(["cross_entropy"], device="cpu")
    assert {c.provider for c in ce} == {"torch", "torch.compile", "triton", "cuda", "auto", "liger"}
    assert {c.mode for c in ce} == set(cases.MODES)
    lce = cases.all_cases(["linear_cross_entropy"], device="cpu")
    assert {c.provider for c in lce} == {"torch", "torch.compile", "triton", "cuda", "auto", "bigmodel-torch", "liger"}
    assert {c.mode for c in lce} == {"fwd", "fwd+bwd"}  # no bwd: the fused gradients come out of the forward
    assert "torch-no-upcast" in {c.provider for c in cases.all_cases(["linear_cross_entropy"], device="cuda")}


@pytest.mark.parametrize("case", CPU_CASES, ids=[f"{c.op}-{c.id}" for c in CPU_CASES])
def test_case_runs_or_says_why(case):
    ran = run_or_reason(case)
    if ran is not None:
        prepared, out = ran
        grads = {"dlogits"} if case.op == "cross_entropy" else {"dx", "dw"}
        assert set(out) == {"fwd": {"y"}, "bwd": grads, "fwd+bwd": {"y"} | grads}[case.mode]
        check_agreement(case, prepared, prepared.flops if case.op == "linear_cross_entropy" else prepared.bytes)


@pytest.mark.skipif(not INTERPRETING, reason="Triton's CPU interpreter is off: triton skips every CPU case")
def test_big_cpu_shapes_skip_the_interpreted_triton_with_the_reason():
    for op in OPS:
        case = [c for c in cases.all_cases([op], ("fwd",), device="cpu") if c.params not in SMALL
                and c.provider == "triton"][0]
        with pytest.raises(cases.Unavailable, match="interpreter"):
            cases.prepare(case)


def test_cpu_peak_memory_shows_the_fused_saving():
    """A measurement, not a timing: one training step (loss, dx, dW) per provider on the bench's CPU memory shape, the
    peak of PyTorch's CPU allocator above the inputs. torch holds the (N, V) logits, log_softmax's output and the
    gradient; the chunked op a few 32 MiB chunks. (prepare() runs and checks nothing more than one call.)"""
    peaks = {}
    for provider in ("torch", "bigmodel-torch"):
        case = cases.Case("linear_cross_entropy", "fwd+bwd", MEMORY_SHAPE, "fp32", provider, "cpu")
        prepared = cases.prepare(case)
        peaks[provider] = timing.peak_memory_mb(prepared.run, "cpu", cpu=True)
        del prepared
    logits_mib = 4096 * 8192 * 4 / 2**20
    assert peaks["torch"] >= 2 * logits_mib, peaks  # the logits and their gradient at least
    assert peaks["bigmodel-torch"] < 0.5 * peaks["torch"], peaks  # measured here: ~99 vs ~384 MiB


def test_cpu_peak_is_labelled_cpu_in_the_row_and_report():
    (case,) = [c for c in cases.all_cases(["linear_cross_entropy"], ("fwd",), device="cpu")
               if c.provider == "bigmodel-torch" and c.params["tokens"] == 64]
    row = timing.measure(case, cases.prepare(case), quick=True)
    assert row["status"] == "ok" and row["peak_mem_device"] == "CPU" and row["peak_mem_mb"] > 0, row
    assert report.peak_mem(row).endswith(" (CPU)")
    env = report.environment("cpu")
    assert f"| {report.peak_mem(row)} |" in report.to_markdown([row], env)
    assert f"peak {row['peak_mem_mb']:.1f} MiB (CPU)" in report.summary([row], env)
    # other ops keep no CPU peak (their builders do not ask for it)
    assert timing.peak_memory_mb(lambda: torch.ones(1000), "cpu") is None


def test_cpu_peak_memory_mb_measures_an_allocation():
    peak = timing.cpu_peak_memory_mb(lambda: torch.ones(4 * 2**20 // 4).sum())  # 4 MiB, freed inside the call
    assert peak is not None and 4.0 <= peak < 4.5, peak


def test_liger_reason_without_liger_kernel(monkeypatch):
    from benchmarks import llama_cases

    monkeypatch.setattr(llama_cases.importlib.util, "find_spec", lambda name, *a: None)
    for op in OPS:
        case = [c for c in cases.all_cases([op], ("fwd",), device="cpu") if c.provider == "liger"][0]
        with pytest.raises(cases.Unavailable, match=r"Liger-Kernel is not installed \(pip install liger-kernel\)"):
            cases.prepare(case)


def test_liger_apply_passes_arguments_by_name():
    class Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, _input, target, weight, ignore_index=-100, reduction="mean", softcap=None):
            assert weight is None  # no default (as LigerCrossEntropyFunction's class weight): None
            return _input.sum() * 0 + ignore_index, None

    x = torch.zeros(3)
    assert loss_cases.liger_apply(Fn, _input=x, target=x).item() == -100
    assert loss_cases.liger_apply(Fn, _input=x, target=x, ignore_index=7).item() == 7
    assert loss_cases.liger_apply(Fn, _input=x, target=x, reduction="sum").item() == -100  # filled with its default
    with pytest.raises(cases.Unavailable, match="no parameter lse"):
        loss_cases.liger_apply(Fn, _input=x, lse=1)


def test_gpu_case_lists_headline_tiers_and_work():
    every = cases.all_cases(OPS, device="cuda")  # listing only: nothing is allocated
    assert {c.dtype for c in every} == {"bf16"}
    tier0 = [c for c in every if cases.OPS[c.op].tier(c) == 0]
    assert {(c.op, c.mode) for c in tier0} == {("cross_entropy", "fwd"), ("cross_entropy", "fwd+bwd"),
                                               ("linear_cross_entropy", "fwd+bwd")}
    for op in OPS:
        assert {c.provider for c in tier0 if c.op == op} == {"torch", "triton", "cuda", "liger"}, op
    assert all(c.provider == "torch.compile" for c in every if cases.OPS[c.op].tier(c) == 2)
    assert not [c for c in every if c.op == "linear_cross_entropy" and c.mode == "bwd"]
    shapes = {tuple(v for _, v in c.shape) for c in every if c.op == "linear_cross_entropy"}
    assert shapes == {(16384, d, v) for d in (2048, 4096) for v in (32000, 128256, 256000)}
    lce = {c.mode: cases.OPS[c.op].work(c)["flops"] for c in every if c.op == "linear_cross_entropy"
           and c.params == {"tokens": 16384, "d_model": 4096, "vocab": 128256} and c.provider == "torch"}
    assert lce == {"fwd": 2 * 16384 * 4096 * 128256, "fwd+bwd": 6 * 16384 * 4096 * 128256}
    ce = {c.mode: cases.OPS[c.op].work(c)["bytes"] for c in every if c.op == "cross_entropy"
          and c.params == {"rows": 16384, "classes": 128256} and c.provider == "torch"}
    nc = 16384 * 128256 * 2
    assert ce == {"fwd": nc + 8 * 16384, "bwd": 2 * nc + 8 * 16384, "fwd+bwd": 3 * nc + 16 * 16384}
