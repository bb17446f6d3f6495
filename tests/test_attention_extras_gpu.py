"""The attention extras (window, softcap, ALiBi, sinks) and varlen on a GPU, at the head dims and lengths where the
kernels use their real (autotuned, 64-128 row) tiles and, on sm_90, the TMA forward -- which the CPU interpreter's
small configs never reach. Against the fp64 oracle of tests/attention_naive.py (explicit loops and masks), forward
and every gradient (sinks included), under DESIGN's fp16 / bf16 rule (vs plain PyTorch in the same dtype). Every
test here is `cuda`-marked (skipped without a GPU)."""
import pytest
import torch

import bigmodel
from attention_naive import naive_attention, naive_attention_varlen, plain_attention, plain_attention_varlen
from numerics import assert_close_by_rule

pytestmark = pytest.mark.cuda

CASES = {
    "window_causal": dict(window=(100, 0), is_causal=True),
    "window_two_sided": dict(window=(70, 33)),
    "softcap_causal": dict(softcap=5.0, is_causal=True),
    "alibi_mask": dict(alibi=True, mask=True),
    "sinks_window": dict(sinks=True, window=(50, None), is_causal=True),
    "all": dict(window=(90, 20), softcap=4.0, alibi=True, sinks=True, mask=True),
}


@pytest.fixture
def backend():
    return "triton"  # (auto takes triton for extras on CUDA: backends.auto_order)


def _extras(spec, hq, dtype):
    kw = {key: spec[key] for key in ("window", "softcap", "is_causal") if key in spec}
    if spec.get("alibi"):
        kw["alibi_slopes"] = torch.tensor([2.0 ** (-8.0 * (i + 1) / hq) for i in range(hq)])
    if spec.get("sinks"):
        kw["sinks"] = (torch.randn(hq) * 2).to(dtype)
    return kw


def _grads(fn, inputs, kw, do, cast):
    """fn's output and the gradients of its inputs (and sinks), all back on the CPU, fresh leaves cast()."""
    leaves = [cast(t).detach().clone().requires_grad_(True) for t in inputs]
    kw = dict(kw)
    if "sinks" in kw:
        kw["sinks"] = cast(kw["sinks"]).detach().clone().requires_grad_(True)
        leaves.append(kw["sinks"])
    out = fn(*leaves[:3], **kw)
    out = out[0] if isinstance(out, tuple) else out
    grads = torch.autograd.grad(out, leaves, do.to(out.device, out.dtype))
    return [t.detach().cpu() for t in (out, *grads)]


def _check(got, ref, lowp):
    for name, o, r, p in zip(["out", "dq", "dk", "dv", "dsinks"], got, ref, lowp):
        assert_close_by_rule(name, o, r, p, "output" if name == "out" else "grad")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("name", list(CASES))
def test_extras_on_gpu_match_naive(backend, name, head_dim, dtype):
    spec, (b, hq, hkv, lq, lk) = CASES[name], (2, 8, 2, 300, 389)
    q, k, v = torch.randn(b, hq, lq, head_dim), torch.randn(b, hkv, lk, head_dim), torch.randn(b, hkv, lk, head_dim)
    kw = _extras(spec, hq, dtype)
    if spec.get("mask"):
        kw["mask"] = torch.rand(b, 1, lq, lk) > 0.2
    do = torch.randn(b, hq, lq, head_dim)

    def ours(q, k, v, mask=None, **kw):
        on = (lambda t: None if t is None else t.cuda())
        kw = {key: on(t) if isinstance(t, torch.Tensor) else t for key, t in kw.items()}
        return bigmodel.ops.attention(on(q), on(k), on(v), attn_mask=on(mask), enable_gqa=True, backend=backend,
                                      **kw)

    got = _grads(ours, (q.to(dtype), k.to(dtype), v.to(dtype)), kw, do, lambda t: t.cuda())
    ref = _grads(naive_attention, (q, k, v), kw, do, lambda t: t.double())
    lowp = _grads(lambda q, k, v, **kw: plain_attention(q, k, v, **{key: (t.cuda() if isinstance(t, torch.Tensor)
                                                                           else t) for key, t in kw.items()}),
                  (q.to(dtype), k.to(dtype), v.to(dtype)), kw, do, lambda t: t.cuda())
    _check(got, ref, lowp)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("extras", [dict(is_causal=True), dict(is_causal=True, window=(63, 0), sinks=True),
                                    dict(softcap=3.0, alibi=True)])
def test_varlen_on_gpu_matches_naive(backend, extras, dtype):
    lq, lk, hq, hkv, d = [1, 130, 0, 300, 77], [5, 130, 40, 257, 77], 8, 2, 128
    cq = torch.tensor([0] + lq).cumsum(0).to(torch.int32)
    ck = torch.tensor([0] + lk).cumsum(0).to(torch.int32)
    q, k, v = torch.randn(sum(lq), hq, d), torch.randn(sum(lk), hkv, d), torch.randn(sum(lk), hkv, d)
    kw = _extras(extras, hq, dtype)
    do = torch.randn(sum(lq), hq, d)

    def ours(q, k, v, **kw):
        kw = {key: t.cuda() if isinstance(t, torch.Tensor) else t for key, t in kw.items()}
        return bigmodel.ops.attention_varlen(q, k, v, cq.cuda(), ck.cuda(), max(lq), max(lk), backend=backend, **kw)

    got = _grads(ours, (q.to(dtype), k.to(dtype), v.to(dtype)), kw, do, lambda t: t.cuda())
    ref = _grads(lambda q, k, v, **kw: naive_attention_varlen(q, k, v, cq.tolist(), ck.tolist(), **kw), (q, k, v),
                 kw, do, lambda t: t.double())
    lowp = _grads(lambda q, k, v, **kw: plain_attention_varlen(q, k, v, cq.tolist(), ck.tolist(), **{
        key: (t.cuda() if isinstance(t, torch.Tensor) else t) for key, t in kw.items()}),
        (q.to(dtype), k.to(dtype), v.to(dtype)), kw, do, lambda t: t.cuda())
    _check(got, ref, lowp)
