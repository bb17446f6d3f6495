"""Shared checks of the benchmark-case tests (test_bench_*.py): one case prepared on CPU either runs, finite and in
agreement with eager torch (cases.REL_ERR_TOL) and the reference backend, or is unavailable with its reason."""
import os

import torch

from benchmarks import cases

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
# Without a GPU these cannot run (cuda: no device; liger: CUDA-only Triton kernels; triton: without the interpreter)
MAY_SKIP = {"cuda", "liger"} | (set() if INTERPRETING else {"triton"})


def run_or_reason(case, may_skip=MAY_SKIP):
    """(prepared, outputs) for a case that runs here, or None when its provider is unavailable with a reason."""
    try:
        prepared = cases.prepare(case)
    except cases.Unavailable as e:
        assert case.provider in may_skip, f"{case.provider} should run here: {e}"
        assert str(e).strip(), "an unavailable provider must carry its reason"
        if case.provider == "liger":
            assert "Liger-Kernel" in str(e)
        return None
    out = prepared.run()
    assert out and all(isinstance(t, torch.Tensor) and torch.isfinite(t).all() for t in out.values())
    return prepared, out


def check_agreement(case, prepared, work):
    """Eager torch is the reference of every other provider; every provider is within 1e-3 of the reference backend;
    the case's work count (bytes or flops) is positive."""
    errors = prepared.errors()
    if case.provider == "torch":
        assert errors["rel_err"] is None  # torch is the reference itself
    else:
        assert errors["rel_err"] is not None and errors["rel_err"] <= cases.REL_ERR_TOL[case.dtype], errors
    assert errors["max_err_vs_reference"] is not None and errors["max_err_vs_reference"] < 1e-3, errors
    assert work and work > 0
