"""ops.attention's extras (window, softcap, alibi_slopes, sinks) on every CPU backend against the fp64 oracle of
tests/attention_naive.py (explicit loops and masks; autograd in fp64), forward and all gradients (sinks included),
fp32 and fp16 (DESIGN's rule; the fp16 baseline is attention_naive.plain_attention); and bad input.

Backends: the module-level BACKENDS list, one parameter of every correctness test (the `backend` fixture).
To add Triton under the interpreter, append `pytest.param("triton", marks=requires_interpreter)` to BACKENDS (and
drop it from UNSUPPORTED's keys where it runs everything).
"""
import pytest
import torch

import bigmodel
from attention_naive import naive_attention, plain_attention
from bigmodel import backends
from bigmodel.backends import BackendUnavailable
from numerics import assert_close_by_rule, requires_interpreter

BACKENDS = ["reference", "torch", pytest.param("triton", marks=requires_interpreter)]
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")]
# Extras a backend declines by design: the test checks the reason instead of the numbers.
UNSUPPORTED = {"torch": {"sinks"}}

B, HQ, HKV, LQ, LK, D = 2, 4, 2, 37, 53, 16


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def alibi_slopes(h):
    """BLOOM's slopes 2^(-8 (i + 1) / h) (fp32, as FlashAttention takes them)."""
    return torch.tensor([2.0 ** (-8.0 * (i + 1) / h) for i in range(h)], dtype=torch.float32)


def _mask(kind, lq, lk):
    if kind == "bool":
        m = torch.rand(B, 1, lq, lk) > 0.3
        m[0, 0, 3] = False  # one row sees nothing through the mask
        return m
    if kind == "float":
        return torch.randn(B, HQ, lq, lk)
    return None


# name -> keyword arguments of ops.attention (tensors built per dtype in _case)
CASES = {
    "window": dict(window=(5, 3)),
    "window_left_only": dict(window=(4, None)),
    "window_right_only": dict(window=(None, 2)),
    "window_narrow": dict(window=(0, 1)),  # two keys per query: its own position and the next
    "window_causal": dict(window=(6, 2), is_causal=True),  # right is effectively 0
    "window_bool_mask": dict(window=(5, 5), mask="bool"),
    "window_float_mask": dict(window=(7, 1), mask="float"),
    "softcap": dict(softcap=1.0),
    "softcap_causal": dict(softcap=2.5, is_causal=True),
    "alibi": dict(alibi=True),
    "alibi_causal": dict(alibi=True, is_causal=True),
    "sinks": dict(sinks=True),
    "sinks_causal_window": dict(sinks=True, is_causal=True, window=(3, None)),
    "sinks_masked_row": dict(sinks=True, mask="bool"),  # a row that sees only the sink: O = 0, lse = sinks[h]
    "all": dict(window=(9, 4), softcap=2.0, alibi=True, sinks=True, mask="bool"),
}


def _case(name, dtype, lq=LQ, lk=LK, hq=HQ, hkv=HKV):
    spec = dict(CASES[name])
    q = torch.randn(B, hq, lq, D).to(dtype)
    k = torch.randn(B, hkv, lk, D).to(dtype)
    v = torch.randn(B, hkv, lk, D).to(dtype)
    extras = {"window": spec.get("window"), "softcap": spec.get("softcap"), "is_causal": spec.get("is_causal", False)}
    mask = _mask(spec.get("mask"), lq, lk)
    if mask is not None and mask.is_floating_point():
        mask = mask.to(dtype)
    extras["mask"] = mask
    extras["alibi_slopes"] = alibi_slopes(hq) if spec.get("alibi") else None
    # sinks in q's dtype, so the gradient's rule is the dtype's (fp16: vs plain PyTorch in fp16)
    extras["sinks"] = (torch.randn(hq) * 2).to(dtype) if spec.get("sinks") else None
    return q, k, v, extras


def _run(fn, q, k, v, extras, do, cast):
    """fn's output and the gradients of q, k, v (and sinks) for backward(do); inputs are fresh leaves cast()."""
    leaves = [cast(t).detach().clone().requires_grad_(True) for t in (q, k, v)]
    sinks = extras["sinks"]
    sinks = None if sinks is None else cast(sinks).detach().clone().requires_grad_(True)
    mask = extras["mask"]
    if mask is not None and mask.is_floating_point():
        mask = cast(mask)
    out = fn(*leaves, mask=mask, sinks=sinks, **{k_: extras[k_] for k_ in ("window", "softcap", "is_causal",
                                                                            "alibi_slopes")})
    out = out[0] if isinstance(out, tuple) else out
    inputs = leaves + ([sinks] if sinks is not None else [])
    grads = torch.autograd.grad(out, inputs, do.to(out.dtype))
    return [out.detach()] + list(grads)


def _ops(backend):
    def fn(q, k, v, mask, **kw):
        return bigmodel.ops.attention(q, k, v, attn_mask=mask, enable_gqa=True, backend=backend, **kw)
    return fn


def check_case(backend, name, dtype, **sizes):
    q, k, v, extras = _case(name, dtype, **sizes)
    do = torch.randn(*q.shape[:-1], v.size(-1))
    ours = _run(_ops(backend), q, k, v, extras, do, lambda t: t)
    ref = _run(naive_attention, q, k, v, extras, do, lambda t: t.double())
    lowp = _run(plain_attention, q, k, v, extras, do, lambda t: t) if dtype != torch.float32 else [None] * len(ref)
    names = ["out", "dq", "dk", "dv", "dsinks"]
    for i, (o, r, p) in enumerate(zip(ours, ref, lowp)):
        assert o.dtype == dtype, f"{names[i]}: dtype {o.dtype}, expected {dtype}"
        assert_close_by_rule(names[i], o, r, p, "output" if i == 0 else "grad")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CASES))
def test_extras_match_naive(backend, name, dtype):
    declined = UNSUPPORTED.get(backend, set()) & {key for key in ("sinks",) if CASES[name].get(key)}
    if declined:
        q, k, v, extras = _case(name, dtype)
        with pytest.raises(BackendUnavailable, match="sinks"):
            _run(_ops(backend), q, k, v, extras, torch.randn(*q.shape[:-1], D), lambda t: t)
        return
    check_case(backend, name, dtype)


@pytest.mark.parametrize("name", ["window_causal", "all"])
def test_extras_long_and_mha(backend, name):
    """The largest size of the suite (130 queries and keys), one kv head per query head."""
    if name == "all" and "sinks" in UNSUPPORTED.get(backend, set()):
        name = "window_causal"
    check_case(backend, name, torch.float32, lq=130, lk=130, hq=2, hkv=2)


def test_window_covering_everything_is_bitwise_dense():
    """A window wider than the keys masks nothing: the reference gives exactly the dense answer."""
    q, k, v = torch.randn(B, HQ, LQ, D), torch.randn(B, HQ, LK, D), torch.randn(B, HQ, LK, D)
    dense = bigmodel.ops.attention(q, k, v, backend="reference")
    wide = bigmodel.ops.attention(q, k, v, window=(LK + LQ, LK + LQ), backend="reference")
    assert torch.equal(dense, wide)
    assert torch.equal(bigmodel.ops.attention(q, k, v, window=(None, None), backend="reference"), dense)


def test_sinks_lse_and_masked_rows():
    """lse includes the sink; a row that sees nothing gives O = 0 and lse = sinks[h] (no sinks: +inf)."""
    q, k, v = torch.randn(1, HQ, 8, D), torch.randn(1, HQ, 8, D), torch.randn(1, HQ, 8, D)
    mask = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    mask[..., 2, :] = False
    sinks = torch.randn(HQ)
    out, lse, _ = torch.ops.bigmodel.attention(q, k, v, mask.expand(1, HQ, 8, 8), 0.0, False, D ** -0.5,
                                               "reference", None, None, None, None, sinks)
    ref_o, ref_lse = naive_attention(q, k, v, mask=mask, sinks=sinks)
    assert_close_by_rule("lse", lse, ref_lse)
    assert torch.equal(out[0, :, 2], torch.zeros(HQ, D))
    assert torch.equal(lse[0, :, 2], sinks)
    _, lse0, _ = torch.ops.bigmodel.attention(q, k, v, mask.expand(1, HQ, 8, 8), 0.0, False, D ** -0.5, "reference")
    assert torch.isinf(lse0[0, :, 2]).all()


def test_sinks_gradcheck_with_dropout():
    """fp64 gradcheck of q, k, v and sinks through the custom op, dropout on (the seed is reset per call, so each
    evaluation draws the same mask): the backward is the gradient of the forward, dropout and sinks included."""
    q, k, v = (torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    sinks = torch.randn(2, dtype=torch.float64, requires_grad=True)

    def f(q, k, v, sinks):
        torch.manual_seed(7)
        return bigmodel.ops.attention(q, k, v, dropout_p=0.3, sinks=sinks, softcap=1.5, window=(2, 1),
                                      alibi_slopes=alibi_slopes(2).double(), backend="reference")
    assert torch.autograd.gradcheck(f, (q, k, v, sinks))


def test_auto_never_picks_a_backend_that_ignores_extras(monkeypatch):
    """On CPU, auto runs torch, and the reference where torch declines (sinks); a backend whose attention takes no
    `extras=` is declined with a reason whatever its own attention_reasons say."""
    q, k, v = torch.randn(1, HQ, 8, D), torch.randn(1, HQ, 8, D), torch.randn(1, HQ, 8, D)
    sinks = torch.randn(HQ)
    bigmodel.ops.attention(q, k, v, window=(2, 2), backend="auto")  # torch runs it; the choice is remembered ...
    assert backends.autotune.LAST["attention"][1] == "torch"
    auto = bigmodel.ops.attention(q, k, v, sinks=sinks, backend="auto")  # ... per extras: sinks go elsewhere
    assert backends.autotune.LAST["attention"][1] == "reference"
    torch.testing.assert_close(auto, bigmodel.ops.attention(q, k, v, sinks=sinks, backend="reference"), rtol=0, atol=0)
    from bigmodel.kernels.limits import AttentionExtras
    some = AttentionExtras(window_left=2)
    inputs = dict(q=q, k=k, v=v, attn_mask=None, dropout_p=0.0, is_causal=False, extras=some)
    assert not any("takes no extras" in r for r in backends._reasons("reference", "attention", inputs))
    assert backends.ATTENTION_TAKES_EXTRAS["reference"] and backends.ATTENTION_TAKES_EXTRAS["torch"]
    monkeypatch.setitem(backends.ATTENTION_TAKES_EXTRAS, "reference", False)  # as a backend without `extras=`
    reasons = backends._reasons("reference", "attention", inputs)
    assert any("takes no extras (window)" in r for r in reasons), reasons


def test_compile_fullgraph_with_extras():
    """torch.compile(fullgraph=True) over ops.attention with every extra: no graph break, same numbers."""
    q, k, v = (torch.randn(1, HQ, 12, D, requires_grad=True) for _ in range(3))
    sinks = torch.randn(HQ, requires_grad=True)
    slopes = alibi_slopes(HQ)

    def f(q, k, v, sinks):
        return bigmodel.ops.attention(q, k, v, is_causal=True, window=(4, None), softcap=2.0, sinks=sinks,
                                      alibi_slopes=slopes, backend="reference")
    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(q, k, v, sinks)
    ref = f(q, k, v, sinks)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    g = torch.autograd.grad(out.sum(), (q, k, v, sinks))
    g_ref = torch.autograd.grad(ref.sum(), (q, k, v, sinks))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ bad input
def _qkv():
    return torch.randn(1, HQ, 8, D), torch.randn(1, HQ, 8, D), torch.randn(1, HQ, 8, D)


@pytest.mark.parametrize("window, error, text", [
    ((-1, 2), ValueError, "window's left size must be >= 0"),
    ((2, -3), ValueError, "window's right size must be >= 0"),
    ((1, 2, 3), TypeError, "window must be None or a"),
    (4, TypeError, "window must be None or a"),
    ((1.5, 2), TypeError, "window's left size must be an int"),
    ((True, 2), TypeError, "window's left size must be an int"),
])
def test_bad_window(window, error, text):
    with pytest.raises(error, match=text):
        bigmodel.ops.attention(*_qkv(), window=window, backend="reference")


@pytest.mark.parametrize("softcap", [0.0, -1.0, float("inf"), float("nan"), True, "2"])
def test_bad_softcap(softcap):
    with pytest.raises(ValueError, match="softcap must be a positive finite float"):
        bigmodel.ops.attention(*_qkv(), softcap=softcap, backend="reference")


@pytest.mark.parametrize("name", ["sinks", "alibi_slopes"])
def test_bad_head_vectors(name):
    q, k, v = _qkv()
    for bad, error, text in ((torch.randn(HQ + 1), ValueError, rf"{name} must have shape \({HQ},\)"),
                             (torch.randn(1, HQ), ValueError, rf"{name} must have shape \({HQ},\)"),
                             (torch.arange(HQ), TypeError, f"{name} must have dtype"),
                             (torch.randn(HQ, device="meta"), ValueError, f"{name} is on meta but q is on cpu"),
                             ([0.5] * HQ, TypeError, f"{name} must be a torch.Tensor")):
        with pytest.raises(error, match=text):
            bigmodel.ops.attention(q, k, v, backend="reference", **{name: bad})


def test_alibi_slopes_get_no_gradient():
    slopes = alibi_slopes(HQ).requires_grad_(True)
    with pytest.raises(ValueError, match="alibi_slopes gets no gradient"):
        bigmodel.ops.attention(*_qkv(), alibi_slopes=slopes, backend="reference")
    with torch.no_grad():  # nothing to differentiate: accepted
        bigmodel.ops.attention(*_qkv(), alibi_slopes=slopes, backend="reference")


def test_torch_declines_sinks_with_a_reason():
    with pytest.raises(BackendUnavailable, match="torch: sinks: SDPA has no attention sinks"):
        bigmodel.ops.attention(*_qkv(), sinks=torch.randn(HQ), backend="torch")
