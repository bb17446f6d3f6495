"""The benchmark cases of attention's issue-15 features (benchmarks/attention_extras_cases.py: attention_varlen,
attention_window, attention_softcap) on CPU: every case builds; each available provider runs, agrees with the fp32 torch
composition (cases.REL_ERR_TOL) and with bigmodel's pure-math backend (an independent oracle: it catches a wrong pad,
mask or layout in the torch rows), each unavailable one says why. The GPU-only peers (torch.nn.attention.varlen,
flash-attn) run here as stand-ins with their signatures, built on the reference backend, so their layouts and keywords
are checked too. The GPU case lists (built without a GPU) have their tier-0 shapes, providers, modes and the FLOP
counts of the module doc."""
import inspect
import types

import pytest
import torch

from bench_checks import INTERPRETING, run_or_reason
from benchmarks import attention_extras_cases as extras
from benchmarks import cases

OPS = ("attention_varlen", "attention_window", "attention_softcap")
CPU_CASES = cases.all_cases(OPS, device="cpu")
RUNS_HERE = {"torch", "auto"} | ({"triton"} if INTERPRETING else set())


def _check(case, prepared):
    errors = prepared.errors()
    assert errors["rel_err"] is not None and errors["rel_err"] <= cases.REL_ERR_TOL[case.dtype], errors
    assert errors["max_err_vs_reference"] is not None and errors["max_err_vs_reference"] < 1e-4, errors
    assert prepared.flops and prepared.flops > 0


def test_registered_with_providers_and_modes():
    for op in OPS:
        assert op in cases.OPS
        listed = cases.all_cases([op], device="cuda")
        assert {c.mode for c in listed} == {"fwd", "fwd+bwd"}, op
        peers = {"flash_attn"} | ({"torch-varlen"} if op != "attention_softcap" else set())
        assert {c.provider for c in listed} == {"torch", "triton", "cuda", "auto"} | peers, op
    # CPU: the smoke shape, fwd+bwd only (the interpreter is slow), every provider listed
    assert {c.mode for c in CPU_CASES} == {"fwd+bwd"} and len(CPU_CASES) == 17


@pytest.mark.parametrize("case", CPU_CASES, ids=[f"{c.op}-{c.id}" for c in CPU_CASES])
def test_case_runs_or_says_why(case):
    ran = run_or_reason(case, may_skip=set(cases.OPS[case.op].providers) - RUNS_HERE)
    if ran is not None:
        prepared, out = ran
        assert set(out) == {"y", "dq", "dk", "dv"}
        _check(case, prepared)


@pytest.mark.parametrize("op", OPS)
def test_forward_mode_runs(op):
    """The fwd cases are GPU-only in the listing; the same code at the CPU shape."""
    shape = cases.OPS[op].shapes("cpu")[0]
    for provider in ("torch", "auto"):
        case = cases.Case(op, "fwd", shape, "fp32", provider, "cpu")
        prepared, out = run_or_reason(case, may_skip=set())
        assert set(out) == {"y"}
        _check(case, prepared)


def test_varlen_torch_row_is_padded_sdpa():
    (case,) = [c for c in CPU_CASES if c.op == "attention_varlen" and c.provider == "torch"]
    prepared = cases.prepare(case)
    lengths = extras.seq_lengths(case.params)
    assert lengths == [29, 11, 14]
    assert prepared.flops == 7 * (2 * 2 * 16 * sum(n * n for n in lengths)) // 2  # 3.5 x fwd, real tokens only
    assert "3 x 29 = 87 rows for 54 tokens" in prepared.extra["note"]
    out = prepared.run()  # timed on the padded batch
    assert out["y"].shape == (3, 2, 29, 16) and out["dk"].shape == (3, 1, 29, 16)
    checked = prepared.check(0)  # compared unpadded
    assert checked["y"].shape == (54, 2, 16) and checked["dk"].shape == (54, 1, 16)


def _reference_attention_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal, window):
    return extras.bigmodel.ops.attention_varlen(q, k, v, cu_q, cu_k, max_q, max_k, is_causal=causal, window=window,
                                                backend="reference")


def _window_of(size):
    """FlashAttention's (left, right) with -1 = unbounded -> bigmodel's window (None = unbounded)."""
    return tuple(None if s < 0 else s for s in size)


def fake_varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                     window_size=(-1, -1), enable_gqa=False):
    """torch 2.14's varlen_attn signature (window_size (-1, 0) = causal), on the reference backend."""
    assert enable_gqa == (query.size(1) != key.size(1)) and scale is None
    return _reference_attention_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, False,
                                       _window_of(window_size))


def fake_varlen_attn_29(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    """torch 2.9's: is_causal, no window, no enable_gqa (FlashAttention takes GQA as it is)."""
    return _reference_attention_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal, None)


def _fake_flash_attn():
    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                               softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0):
        assert causal and window_size == (-1, -1) and softcap == 0.0
        return _reference_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, True,
                                           None)

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0):
        assert causal and q.dim() == 4 and q.stride(-1) == 1  # (B, L, H, D)
        window = _window_of(window_size) if window_size != (-1, -1) else None
        y = extras.bigmodel.ops.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                          enable_gqa=True, window=window, softcap=softcap or None,
                                          backend="reference")
        return y.transpose(1, 2)

    return types.SimpleNamespace(flash_attn_varlen_func=flash_attn_varlen_func, flash_attn_func=flash_attn_func)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("op", OPS)
def test_peers_layouts_and_keywords(monkeypatch, op, mode):
    """torch-varlen and flash_attn need a GPU: stand-ins with their signatures run the same glue (layouts, keywords),
    and their results must match the oracle in the canonical layout."""
    monkeypatch.setattr(extras, "torch_varlen_attn", lambda case: fake_varlen_attn)
    monkeypatch.setattr(extras, "flash_attn_module", lambda case: _fake_flash_attn())
    shape = cases.OPS[op].shapes("cpu")[0]
    for provider in set(cases.OPS[op].providers) & set(extras.PEERS):
        case = cases.Case(op, mode, shape, "fp32", provider, "cpu")
        prepared, out = run_or_reason(case, may_skip=set())
        _check(case, prepared)
        if op != "attention_varlen" and provider == "torch-varlen":  # the B equal sequences packed
            assert out["y"].shape == (32, 2, 16)


def test_torch_varlen_keywords_across_versions(monkeypatch):
    assert extras.varlen_kwargs(fake_varlen_attn, None, True) == {"window_size": (-1, 0), "enable_gqa": True}
    assert extras.varlen_kwargs(fake_varlen_attn, 4095, False) == {"window_size": (4095, 0)}
    assert extras.varlen_kwargs(fake_varlen_attn_29, None, True) == {"is_causal": True}
    with pytest.raises(cases.Unavailable, match="has no window_size"):
        extras.varlen_kwargs(fake_varlen_attn_29, 4095, True)
    # torch 2.9's varlen_attn runs the varlen case (GQA as it is), and says why it cannot run the window
    monkeypatch.setattr(extras, "torch_varlen_attn", lambda case: fake_varlen_attn_29)
    shape = cases.OPS["attention_varlen"].shapes("cpu")[0]
    case = cases.Case("attention_varlen", "fwd+bwd", shape, "fp32", "torch-varlen", "cpu")
    _check(case, run_or_reason(case, may_skip=set())[0])
    case = cases.Case("attention_window", "fwd", cases.OPS["attention_window"].shapes("cpu")[0], "fp32",
                      "torch-varlen", "cpu")
    with pytest.raises(cases.Unavailable, match="has no window_size"):
        cases.prepare(case)


def test_peer_reasons_here():
    shape = cases.OPS["attention_softcap"].shapes("cuda")[0]
    gpu = cases.Case("attention_softcap", "fwd", shape, "bf16", "flash_attn", "cuda")
    with pytest.raises(cases.Unavailable, match=r"flash-attn is not installed \(pip install flash-attn"):
        extras.flash_attn_module(gpu)  # no flash_attn in this environment (nor on the GPU machine)
    cpu = cases.Case("attention_varlen", "fwd", shape, "fp32", "torch-varlen", "cpu")
    with pytest.raises(cases.Unavailable, match="CUDA kernels: no CPU path"):
        extras.torch_varlen_attn(cpu)

    def no_softcap(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1)):
        pass

    with pytest.raises(cases.Unavailable, match=r"no softcap \(flash-attn >= 2.6\)"):
        extras.flash_kwargs(no_softcap, softcap=50.0)
    assert "softcap" in inspect.signature(_fake_flash_attn().flash_attn_func).parameters


def test_gpu_case_lists_tiers_and_flops():
    every = cases.all_cases(OPS, device="cuda")  # listing only: nothing is allocated
    assert {c.dtype for c in every} == {"bf16"} and len(every) == 68
    tier0 = {(c.op, c.shape) for c in every if cases.OPS[c.op].tier(c) == 0}
    assert {(op, tuple(v for _, v in shape)) for op, shape in tier0} == {
        ("attention_varlen", (16, 128, 2048, 32, 8, 128)), ("attention_window", (1, 32, 8, 16384, 128, 4096)),
        ("attention_softcap", (1, 32, 8, 8192, 128, 50.0))}
    assert [cases.OPS[c.op].tier(c) for c in every] == sorted(cases.OPS[c.op].tier(c) for c in every)  # run order
    quick = cases.all_cases(OPS, device="cuda", quick=True)
    assert {(c.op, c.shape) for c in quick} == tier0

    def flops(op, mode, **params):
        (case,) = [c for c in every if c.op == op and c.mode == mode and c.provider == "torch"
                   and all(c.params[k] == v for k, v in params.items())]
        return cases.OPS[op].work(case)["flops"]

    lengths = extras.seq_lengths({"seqs": 16, "min_len": 128, "max_len": 2048})
    assert len(lengths) == 16 and 128 <= min(lengths) and max(lengths) <= 2048 and len(set(lengths)) > 8
    varlen = 4 * 32 * 128 * sum(n * n for n in lengths) // 2
    assert flops("attention_varlen", "fwd", headdim=128) == varlen
    assert flops("attention_varlen", "fwd+bwd", headdim=128) == 7 * varlen // 2
    n, w = 16384, 4096
    band = 4 * 32 * 128 * (n * w - w * w // 2)  # the visible band: L * W - W^2 / 2 keys per head
    assert flops("attention_window", "fwd", seqlen=n) == band
    assert flops("attention_window", "fwd+bwd", seqlen=n) == 7 * band // 2
    assert flops("attention_softcap", "fwd", headdim=128) == 4 * 32 * 8192 ** 2 * 128 // 2
    # a window at least as long as the sequence counts as plain causal attention
    assert extras.WindowBench().fwd_flops({"batch": 1, "heads": 2, "headdim": 8, "seqlen": 64, "window": 64}) \
        == 4 * 2 * 64 * 64 * 8 // 2


def test_reference_backend_column_within_the_materialise_limit():
    """At the GPU sizes the dense rows have no pure-math column (L x L scores beyond the limit); varlen has (per
    sequence)."""
    window = [c for c in cases.all_cases(["attention_window"], device="cuda") if c.provider == "triton"][0]
    assert cases.OPS["attention_window"].reference_backend_fn(window, None) is None
    varlen = cases.OPS["attention_varlen"]
    p = varlen.shapes("cuda")[0]
    assert varlen.score_bytes(dict(p), 4) / 2**30 < extras.MATERIALISE_LIMIT_GIB
