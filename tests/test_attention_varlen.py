"""ops.attention_varlen (FlashAttention's packed layout) against the fp64 oracle naive_attention_varlen of
tests/attention_naive.py (a loop over sequences, explicit masks, bottom-right alignment), forward and all gradients
(sinks included), fp32 and fp16; GQA; empty sequences; Lq != Lk per sequence; the extras; and bad cu_seqlens.

Backends: the module-level BACKENDS list, one parameter of every correctness test (the `backend` fixture). To add
Triton under the interpreter, append `pytest.param("triton", marks=requires_interpreter)` to BACKENDS. The torch
backend (SDPA) declines varlen: test_torch_declines_varlen checks its reason.
"""
import pytest
import torch

import bigmodel
from attention_naive import naive_attention_varlen, plain_attention_varlen
from bigmodel.backends import BackendUnavailable
from numerics import assert_close_by_rule, requires_interpreter

BACKENDS = ["reference", pytest.param("triton", marks=requires_interpreter)]
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")]
D = 16


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def cu(lengths):
    out = [0]
    for n in lengths:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32)


def alibi_slopes(h):
    return torch.tensor([2.0 ** (-8.0 * (i + 1) / h) for i in range(h)], dtype=torch.float32)


# (q lengths, k lengths): one sequence; four with Lq != Lk (both ways), lengths 1..130 and an empty one; a
# sequence with queries but no keys (its rows see nothing).
LAYOUTS = {
    "one": ([37], [53]),
    "one_equal": ([64], [64]),
    "four": ([1, 130, 0, 17], [9, 100, 0, 40]),
    "four_lq_gt_lk": ([20, 5, 33, 2], [7, 5, 60, 1]),
    "no_keys": ([3, 4], [0, 6]),
}
EXTRAS = {
    "plain": {},
    "causal": dict(is_causal=True),
    "window": dict(window=(6, 3)),
    "window_causal": dict(window=(5, None), is_causal=True),
    "softcap": dict(softcap=1.0),
    "alibi": dict(alibi=True),
    "sinks": dict(sinks=True),
    "sinks_causal": dict(sinks=True, is_causal=True),
    "all": dict(window=(8, 2), is_causal=True, softcap=2.0, alibi=True, sinks=True),
}


def _inputs(layout, dtype, hq, hkv):
    lq, lk = LAYOUTS[layout]
    q = torch.randn(sum(lq), hq, D).to(dtype)
    k, v = torch.randn(sum(lk), hkv, D).to(dtype), torch.randn(sum(lk), hkv, D).to(dtype)
    return q, k, v, cu(lq), cu(lk), max(lq), max(lk)


def _kwargs(extras, hq, dtype):
    kw = {key: val for key, val in extras.items() if key in ("window", "softcap", "is_causal")}
    kw["alibi_slopes"] = alibi_slopes(hq) if extras.get("alibi") else None
    kw["sinks"] = (torch.randn(hq) * 2).to(dtype) if extras.get("sinks") else None
    return kw


def _run(fn, q, k, v, cq, ck, kw, do, cast):
    leaves = [cast(t).detach().clone().requires_grad_(True) for t in (q, k, v)]
    sinks = None if kw["sinks"] is None else cast(kw["sinks"]).detach().clone().requires_grad_(True)
    out = fn(*leaves, cq, ck, **{**kw, "sinks": sinks})
    out = out[0] if isinstance(out, tuple) else out
    inputs = leaves + ([sinks] if sinks is not None else [])
    return [out.detach()] + list(torch.autograd.grad(out, inputs, do.to(out.dtype)))


# every extra with GQA (4 query heads on 2 kv heads); MHA and MQA with the plain and all-extras cases only
HEADS = {"mha": (4, 4), "gqa": (4, 2), "mqa": (4, 1)}
EXTRAS_HEADS = [pytest.param(e, HEADS[h], id=f"{e}-{h}") for e in EXTRAS for h in HEADS
                if h == "gqa" or e in ("plain", "all")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("extras, heads", EXTRAS_HEADS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_varlen_matches_naive(backend, layout, extras, heads, dtype):
    hq, hkv = heads
    q, k, v, cq, ck, mq, mk = _inputs(layout, dtype, hq, hkv)
    kw = _kwargs(EXTRAS[extras], hq, dtype)
    do = torch.randn(q.size(0), hq, D)

    def ours(q, k, v, cq, ck, **kw):
        return bigmodel.ops.attention_varlen(q, k, v, cq, ck, mq, mk, backend=backend, **kw)
    got = _run(ours, q, k, v, cq, ck, kw, do, lambda t: t)
    ref = _run(naive_attention_varlen, q, k, v, cq.tolist(), ck.tolist(), kw, do, lambda t: t.double())
    lowp = (_run(plain_attention_varlen, q, k, v, cq.tolist(), ck.tolist(), kw, do, lambda t: t)
            if dtype != torch.float32 else [None] * len(ref))
    assert got[0].is_contiguous() and tuple(got[0].shape) == (q.size(0), hq, D)
    for name, o, r, p in zip(["out", "dq", "dk", "dv", "dsinks"], got, ref, lowp):
        assert o.dtype == dtype, f"{name}: dtype {o.dtype}"
        assert_close_by_rule(name, o, r, p, "output" if name == "out" else "grad")


def test_varlen_lse(backend):
    """The custom op's packed lse (1, Hq, total_q): +inf for rows that see nothing, sinks[h] with sinks."""
    q, k, v, cq, ck, mq, mk = _inputs("no_keys", torch.float32, 4, 2)
    sinks = torch.randn(4)
    q4, k4, v4 = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
    for s in (None, sinks):
        _, lse, _ = torch.ops.bigmodel.attention(q4, k4, v4, None, 0.0, True, D ** -0.5, backend, None, None, None,
                                                 None, s, cq, ck, mq, mk)
        _, ref = naive_attention_varlen(q, k, v, cq.tolist(), ck.tolist(), is_causal=True, sinks=s)
        assert tuple(lse.shape) == (1, 4, q.size(0))
        assert torch.equal(torch.isinf(lse[0]), torch.isinf(ref))
        finite = torch.isfinite(ref)
        assert_close_by_rule("lse", lse[0][finite], ref[finite])
        if s is None:
            assert torch.isinf(lse[0, :, :3]).all()  # sequence 0 has no keys
        else:
            assert torch.equal(lse[0, :, :3], s[:, None].expand(4, 3))


def test_varlen_all_empty(backend):
    """A batch whose every sequence is empty (total 0) and a batch of none (cu_seqlens = [0])."""
    for lengths in ([0, 0], []):
        q, k, v = torch.randn(0, 2, D, requires_grad=True), torch.randn(0, 2, D), torch.randn(0, 2, D)
        out = bigmodel.ops.attention_varlen(q, k, v, cu(lengths), cu(lengths), 0, 0, backend=backend)
        assert tuple(out.shape) == (0, 2, D)
        out.sum().backward()
        assert tuple(q.grad.shape) == (0, 2, D)


def test_varlen_no_keys_with_sinks(backend):
    """Queries but no keys, with fp32 sinks: O = 0 and lse = sinks[h] in a fresh tensor (the custom op refuses an
    output aliasing its sinks input; with one query row the expanded sinks were already contiguous)."""
    sinks = torch.randn(2, requires_grad=True)
    q = torch.randn(1, 2, D, requires_grad=True)
    out = bigmodel.ops.attention_varlen(q, torch.randn(0, 2, D), torch.randn(0, 2, D), cu([1]), cu([0]), 1, 0,
                                        sinks=sinks, backend=backend)
    assert torch.equal(out, torch.zeros(1, 2, D))
    out.sum().backward()  # d sinks = -P_sink * rowsum(dO * O) = 0
    assert torch.equal(sinks.grad, torch.zeros(2)) and torch.equal(q.grad, torch.zeros(1, 2, D))


def test_varlen_strided_cu_seqlens(backend):
    """cu_seqlens given as a strided view: the kernels index it densely, so it is made contiguous first."""
    q, k, v = (torch.randn(10, 2, D) for _ in range(3))
    strided = torch.tensor([0, 0, 3, 3, 10, 10], dtype=torch.int32)[::2]  # [0, 3, 10], stride 2
    got = bigmodel.ops.attention_varlen(q, k, v, strided, strided, 7, 7, is_causal=True, backend=backend)
    ref, _ = naive_attention_varlen(q, k, v, [0, 3, 10], [0, 3, 10], is_causal=True)
    assert_close_by_rule("out", got, ref)


def test_varlen_dropout_gradcheck():
    """fp64 gradcheck with dropout and sinks (the seed is reset per call: each evaluation draws the same masks)."""
    lq, lk = [3, 0, 4], [2, 3, 5]
    q = torch.randn(sum(lq), 2, 4, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(sum(lk), 1, 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    sinks = torch.randn(2, dtype=torch.float64, requires_grad=True)

    def f(q, k, v, sinks):
        torch.manual_seed(11)
        return bigmodel.ops.attention_varlen(q, k, v, cu(lq), cu(lk), 4, 5, dropout_p=0.25, is_causal=True,
                                             sinks=sinks, softcap=1.5, backend="reference")
    assert torch.autograd.gradcheck(f, (q, k, v, sinks))
    torch.manual_seed(3)
    a = f(q, k, v, sinks)
    torch.manual_seed(3)
    assert torch.equal(a, f(q, k, v, sinks))  # f reseeds: same masks, same output


def test_varlen_compile_fullgraph():
    """torch.compile(fullgraph=True): the host checks are skipped while tracing; same numbers as eager."""
    q, k, v, cq, ck, mq, mk = _inputs("four", torch.float32, 4, 2)
    sinks = torch.randn(4, requires_grad=True)

    def f(q, sinks):
        return bigmodel.ops.attention_varlen(q, k, v, cq, ck, mq, mk, is_causal=True, window=(7, None), sinks=sinks,
                                             backend="reference")
    torch._dynamo.reset()
    q = q.requires_grad_(True)
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(q, sinks)
    ref = f(q, sinks)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    for a, b in zip(torch.autograd.grad(out.sum(), (q, sinks)), torch.autograd.grad(ref.sum(), (q, sinks))):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_auto_runs_varlen_on_the_reference_on_cpu():
    q, k, v, cq, ck, mq, mk = _inputs("four", torch.float32, 4, 2)
    auto = bigmodel.ops.attention_varlen(q, k, v, cq, ck, mq, mk, is_causal=True)
    ref = bigmodel.ops.attention_varlen(q, k, v, cq, ck, mq, mk, is_causal=True, backend="reference")
    assert torch.equal(auto, ref)


def test_torch_declines_varlen():
    q, k, v, cq, ck, mq, mk = _inputs("one", torch.float32, 2, 2)
    with pytest.raises(BackendUnavailable, match="torch: varlen: SDPA has no packed variable-length layout"):
        bigmodel.ops.attention_varlen(q, k, v, cq, ck, mq, mk, backend="torch")


# ------------------------------------------------------------------------------------------------ bad input
def _good():
    q, k, v = torch.randn(10, 4, D), torch.randn(12, 2, D), torch.randn(12, 2, D)
    return q, k, v, cu([3, 7]), cu([5, 7]), 7, 7


@pytest.mark.parametrize("change, error, text", [
    (dict(cu_seqlens_q=cu([3, 7]).long()), TypeError, "cu_seqlens_q must have dtype int32"),
    (dict(cu_seqlens_k=cu([5, 7]).float()), TypeError, "cu_seqlens_k must have dtype int32"),
    (dict(cu_seqlens_q=[0, 3, 10]), TypeError, "cu_seqlens_q must be a torch.Tensor"),
    (dict(cu_seqlens_q=torch.tensor([0, 7, 3, 10], dtype=torch.int32),
          cu_seqlens_k=torch.tensor([0, 5, 5, 12], dtype=torch.int32)), ValueError, "cu_seqlens_q must be non-decreasing"),
    (dict(cu_seqlens_k=torch.tensor([0, 8, 7], dtype=torch.int32)), ValueError, "cu_seqlens_k must be non-decreasing"),
    (dict(cu_seqlens_q=torch.tensor([0, 3, 9], dtype=torch.int32)), ValueError,
     r"cu_seqlens_q's last entry must equal total_q \(q.size\(0\)\) = 10; got 9"),
    (dict(cu_seqlens_k=torch.tensor([0, 5, 13], dtype=torch.int32)), ValueError,
     r"cu_seqlens_k's last entry must equal total_k \(k.size\(0\)\) = 12; got 13"),
    (dict(cu_seqlens_q=torch.tensor([1, 3, 10], dtype=torch.int32)), ValueError, "cu_seqlens_q must start at 0"),
    (dict(cu_seqlens_q=cu([3, 7]).to("meta")), ValueError, "cu_seqlens_q is on meta but q is on cpu"),
    (dict(cu_seqlens_q=cu([3, 7])[None]), ValueError, "cu_seqlens_q must be 1-D"),
    (dict(cu_seqlens_q=torch.zeros(0, dtype=torch.int32)), ValueError, "cu_seqlens_q must be 1-D"),
    (dict(cu_seqlens_k=cu([5, 7, 0])), ValueError, "cu_seqlens_q and cu_seqlens_k must have the same length"),
    (dict(max_seqlen_q=6), ValueError, "max_seqlen_q = 6 is smaller than the longest sequence in cu_seqlens_q, 7"),
    (dict(max_seqlen_k=5), ValueError, "max_seqlen_k = 5 is smaller than the longest sequence in cu_seqlens_k, 7"),
    (dict(max_seqlen_k=-1), ValueError, "max_seqlen_k must be an int >= 0"),
    (dict(q=torch.randn(1, 10, 4, D)), ValueError, "q must be 3-D"),
    (dict(k=torch.randn(12, 3, D), v=torch.randn(12, 3, D)), ValueError, "k/v heads must divide q heads"),
    (dict(v=torch.randn(11, 2, D)), ValueError, "k and v must have the same total length"),
    (dict(k=torch.randn(12, 2, D).double()), TypeError, "q, k and v must share one dtype"),
    (dict(window=(-1, 0)), ValueError, "window's left size must be >= 0"),
    (dict(sinks=torch.randn(3)), ValueError, r"sinks must have shape \(4,\)"),
    (dict(sinks=torch.arange(4)), TypeError, "sinks must have dtype"),
    (dict(dropout_p=1.0), ValueError, "dropout_p must be a float in"),
])
def test_varlen_bad_input(change, error, text):
    names = ["q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k"]
    args = dict(zip(names, _good()))
    kw = {key: val for key, val in change.items() if key not in names}
    args.update({key: val for key, val in change.items() if key in names})
    with pytest.raises(error, match=text):
        bigmodel.ops.attention_varlen(*(args[n] for n in names), backend="reference", **kw)
