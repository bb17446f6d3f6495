"""The benchmark cases of the Llama-family ops (benchmarks/llama_cases.py) on CPU: every case builds, each available
provider runs one call and agrees with eager torch (cases.REL_ERR_TOL), each unavailable one says why; the GPU case
lists (built without a GPU) have their headline tier, every provider and sane work counts; a provider that writes
into its inputs (as Liger's swiglu backward does) is checked on fresh copies."""

import pytest
import torch

from bench_checks import check_agreement, run_or_reason
from benchmarks import cases, llama_cases

OPS = ("rms_norm", "add_rms_norm", "rotary", "swiglu", "geglu", "gated_feed_forward")
PROVIDERS = ("torch", "torch.compile", "triton", "cuda", "auto", "liger")
# torch.compile compiles per case (seconds each): one case of it here; the others are covered by `bigmodel bench`
CPU_CASES = [c for c in cases.all_cases(OPS, device="cpu")
             if c.provider != "torch.compile" or (c.op, c.mode) == ("rms_norm", "bwd")]


def test_every_op_is_registered_with_every_provider():
    for op in OPS:
        assert op in cases.OPS
        listed = {c.provider for c in cases.all_cases([op], device="cpu")}
        assert listed == set(PROVIDERS), op
        assert {c.mode for c in cases.all_cases([op], device="cpu")} == set(cases.MODES), op


@pytest.mark.parametrize("case", CPU_CASES, ids=[f"{c.op}-{c.id}" for c in CPU_CASES])
def test_case_runs_or_says_why(case):
    ran = run_or_reason(case)
    if ran is not None:
        prepared, _out = ran
        check_agreement(case, prepared, prepared.flops if case.op == "gated_feed_forward" else prepared.bytes)


def test_liger_reason_without_liger_kernel(monkeypatch):
    monkeypatch.setattr(llama_cases.importlib.util, "find_spec", lambda name, *a: None)
    (case,) = [c for c in cases.all_cases(["swiglu"], ("fwd",), device="cpu") if c.provider == "liger"]
    with pytest.raises(cases.Unavailable, match=r"Liger-Kernel is not installed \(pip install liger-kernel\)"):
        cases.prepare(case)
    gpu_case = [c for c in cases.all_cases(["swiglu"], ("fwd",), device="cuda") if c.provider == "liger"][0]
    with pytest.raises(cases.Unavailable, match=r"^Liger-Kernel is not installed \(pip install liger-kernel\)$"):
        llama_cases.require_liger(gpu_case)


def test_gpu_case_lists_headline_tiers_and_work():
    every = cases.all_cases(OPS, device="cuda")  # listing only: nothing is allocated
    assert {c.dtype for c in every} == {"bf16"}
    tier0 = [c for c in every if cases.OPS[c.op].tier(c) == 0]
    for op in ("rms_norm", "add_rms_norm", "rotary", "swiglu", "gated_feed_forward"):
        assert {c.provider for c in tier0 if c.op == op} == {"torch", "triton", "cuda", "liger"}, op
    assert all(c.provider == "torch.compile" for c in every if cases.OPS[c.op].tier(c) == 2)
    assert [cases.OPS[c.op].tier(c) for c in every] == sorted(cases.OPS[c.op].tier(c) for c in every)  # run order
    rms = {c.mode: cases.OPS["rms_norm"].work(c)["bytes"] for c in every if c.op == "rms_norm"
           and c.params == {"rows": 16384, "hidden": 4096} and c.provider == "torch"}
    nh = 16384 * 4096 * 2
    assert rms == {"fwd": 2 * nh + 4096 * 2, "bwd": 3 * nh + 2 * 4096 * 2, "fwd+bwd": 5 * nh + 3 * 4096 * 2}
    ffn = {c.mode: cases.OPS["gated_feed_forward"].work(c)["flops"] for c in every if c.op == "gated_feed_forward"
           and c.params["d_ff"] == 14336 and c.provider == "torch"}
    fwd = 2 * 3 * 16384 * 4096 * 14336
    assert ffn == {"fwd": fwd, "bwd": 2 * fwd, "fwd+bwd": 3 * fwd}


class _MulInPlace(torch.autograd.Function):
    """silu(a) * b whose backward writes da, db into a, b (what Liger's LigerSiLUMulFunction does)."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return torch.nn.functional.silu(a) * b

    @staticmethod
    def backward(ctx, dc):
        a, b = ctx.saved_tensors
        s = torch.sigmoid(a)
        da, db = dc * b * s * (1 + a * (1 - s)), dc * a * s
        a.data.copy_(da)  # .data: unseen by autograd's version counter, as a Triton kernel's writes are
        b.data.copy_(db)
        return a, b


@pytest.mark.parametrize("mode", ["bwd", "fwd+bwd"])
def test_a_provider_that_overwrites_its_inputs_is_checked_on_fresh_copies(monkeypatch, mode):
    monkeypatch.setattr(llama_cases, "require_liger", lambda case: None)
    monkeypatch.setattr(llama_cases.GatedBench, "liger_fn", lambda self, case: _MulInPlace.apply)
    (case,) = [c for c in cases.all_cases(["swiglu"], (mode,), device="cpu") if c.provider == "liger"]
    prepared = cases.prepare(case)  # its first call already overwrote input set 0
    for _ in range(3):
        prepared.run()
    errors = prepared.errors()
    assert errors["rel_err"] < 1e-6 and errors["max_err_vs_reference"] < 1e-5, errors
    assert "in place" in prepared.extra["note"]
