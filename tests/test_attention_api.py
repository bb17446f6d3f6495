"""bigmodel.ops.attention's contract around the kernels: clear errors for bad input, backend reasons, the custom ops
(opcheck, torch.compile(fullgraph=True) with no graph break), and bigmodel.nn.MultiheadAttention as a drop-in for
torch.nn.MultiheadAttention (state_dict, outputs and gradients, every mask kind, batch_first both ways)."""
import copy

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F

import bigmodel
from bigmodel.backends import BACKENDS, BackendUnavailable
from numerics import BACKENDS_CPU, assert_close_by_rule, requires_interpreter



def qkv(*shape, dtype=torch.float32, requires_grad=False):
    return [torch.randn(shape, dtype=dtype, requires_grad=requires_grad) for _ in range(3)]


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("make,match", [
    (lambda q, k, v: (q.long(), k, v, {}), r"q must have dtype .*; got int64"),
    (lambda q, k, v: (q, k.half(), v, {}), r"q, k and v must share one dtype; got q torch.float32 and k torch.float16"),
    (lambda q, k, v: (q, k.to("meta"), v, {}), r"k is on meta but q is on cpu"),
    (lambda q, k, v: (q, k[..., :8], v, {}), r"q and k must have the same head dim .* got q 16 and k 8"),
    (lambda q, k, v: (q, k[:, :2], v[:, :2], {}), r"q has 4 heads but k and v have 2; pass enable_gqa=True"),
    (lambda q, k, v: (q, k[:, :3], v[:, :3], dict(enable_gqa=True)), r"k/v heads to divide q heads; got q 4 heads, k/v 3"),
    (lambda q, k, v: (q, k, v[:, :, :5], {}), r"k and v must have the same length \(dim -2\); got shapes"),
    (lambda q, k, v: (q, torch.randn(3, 4, 7, 16), torch.randn(3, 4, 7, 16), {}),
     r"leading \(batch\) dims of q, k and v must be broadcastable .* got shapes q \(2, 4, 6, 16\), k \(3, 4, 7, 16\)"),
    (lambda q, k, v: (q, k[:, :2], v[:, :3], dict(enable_gqa=True)),
     r"k and v must have the same number of heads \(or one of them 1, broadcast\); got 2 and 3"),
    (lambda q, k, v: (q[0, 0, 0], k, v, {}), r"q must have at least 2 dims"),
    (lambda q, k, v: (q, k, v, dict(attn_mask=torch.ones(3, 7, dtype=torch.bool))), r"attn_mask of shape \(3, 7\) is not broadcastable to .*\(2, 4, 6, 7\)"),
    (lambda q, k, v: (q, k, v, dict(attn_mask=torch.ones(6, 7, dtype=torch.int32))), r"attn_mask must be bool .* got torch.int32"),
    (lambda q, k, v: (q, k, v, dict(attn_mask=torch.ones(6, 7, dtype=torch.float16))), r"attn_mask must be bool .* q's dtype torch.float32"),
    (lambda q, k, v: (q, k, v, dict(attn_mask=torch.ones(6, 7, dtype=torch.bool), is_causal=True)), r"either attn_mask or is_causal"),
    (lambda q, k, v: (q, k, v, dict(attn_mask=torch.zeros(6, 7, requires_grad=True), backend="reference")),
     r"(?s)backend 'reference' cannot run.*attn_mask requires grad"),
    (lambda q, k, v: (q, k, v, dict(dropout_p=1.0)), r"dropout_p must be a float in \[0, 1\); got 1.0"),
    (lambda q, k, v: (q, k, v, dict(dropout_p=-0.1)), r"dropout_p must be a float in \[0, 1\)"),
    (lambda q, k, v: (q, k, v, dict(scale=float("nan"))), r"scale must be a finite float"),
    (lambda q, k, v: (q, k, v, dict(backend="flash")), r"backend: expected one of .*got 'flash'"),
], ids=["int-dtype", "mixed-dtype", "device", "head-dim", "heads-no-gqa", "gqa-indivisible", "v-length", "batch-not-broadcastable", "kv-heads",
        "rank<2", "mask-shape", "mask-int", "mask-dtype", "mask+causal", "mask-grad", "dropout-1", "dropout-neg",
        "scale-nan", "unknown-backend"])
def test_bad_input_raises_clear_error(make, match):
    q, k, v = qkv(2, 4, 6, 16)
    k, v = torch.randn(2, 4, 7, 16), torch.randn(2, 4, 7, 16)
    q, k, v, kw = make(q, k, v)
    with pytest.raises((ValueError, TypeError, BackendUnavailable), match=match):  # the kernels' limits: reasons
        bigmodel.ops.attention(q, k, v, **kw)


@requires_interpreter
def test_forced_backend_that_cannot_run_lists_every_reason():
    q, k, v = qkv(1, 2, 4, 320)  # head dim 320: beyond the kernels
    with pytest.raises(BackendUnavailable) as err:
        bigmodel.ops.attention(q, k, v, backend="triton")
    msg = str(err.value)
    assert "backend 'triton' cannot run" in msg and "head dim 320 > 256" in msg
    assert "cuda:" in msg and "torch: can run these inputs" in msg
    out = bigmodel.ops.attention(q, k, v)  # auto: the reference takes it
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v), atol=1e-6)


def test_cuda_backend_reasons_name_what_it_lacks():
    """The CUDA kernels' input limits, read straight from the adapter (whatever the machine)."""
    cuda = BACKENDS["cuda"]
    q, k, v = qkv(1, 2, 4, 80)
    reasons = " ".join(cuda.attention_reasons(q=q, k=k, v=v, attn_mask=torch.ones(4, 4), dropout_p=0.1))
    for expected in ("float16 / bfloat16; q is float32", "head dims (64, 128)", "no dropout", "key-padding"):
        assert expected in reasons
    q, k, v = qkv(2, 2, 4, 64, dtype=torch.float16)
    padding = torch.rand(2, 1, 1, 4).lt(0.5).expand(2, 2, 4, 4)
    assert cuda.attention_reasons(q=q, k=k, v=v, attn_mask=padding, dropout_p=0.0) == []


def test_fp64_goes_to_the_reference_under_auto():
    q, k, v = qkv(1, 2, 5, 16, dtype=torch.float64)
    torch.testing.assert_close(bigmodel.ops.attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


# ------------------------------------------------------------------------------------------ custom ops
@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("backend", BACKENDS_CPU)
@pytest.mark.parametrize("mask,causal,hkv", [(None, False, 2), (None, True, 1), ("bool", False, 2),
                                             ("float", False, 2)], ids=["plain", "causal-gqa", "bool", "float"])
def test_opcheck(backend, mask, causal, hkv):
    q = torch.randn(2, 2, 5, 16, requires_grad=True)
    k, v = (torch.randn(2, hkv, 7, 16, requires_grad=True) for _ in range(2))
    m = {None: None, "bool": torch.rand(2, 1, 1, 7) > 0.3, "float": torch.randn(1, 1, 5, 7)}[mask]
    if m is not None:
        m[..., 0] = True if m.dtype == torch.bool else 0.0
        m = m.expand(2, 2, 5, 7)
    torch.library.opcheck(torch.ops.bigmodel.attention.default, (q, k, v, m, 0.0, causal, 0.25, backend))
    out, lse, seed = torch.ops.bigmodel.attention(q.detach(), k.detach(), v.detach(), m, 0.0, causal, 0.25, backend)
    torch.library.opcheck(torch.ops.bigmodel.attention_backward.default,
                          (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse, m, 0.0, causal, 0.25,
                           seed, backend))


@pytest.mark.parametrize("backend", BACKENDS_CPU)
def test_compile_fullgraph_no_graph_break(backend, fresh_dynamo):
    def f(q, k, v, mask):
        return bigmodel.ops.attention(q, k, v, mask, backend=backend).sum()

    q, k, v = qkv(2, 2, 8, 16, requires_grad=True)
    mask = torch.rand(2, 1, 1, 8) > 0.2
    mask[..., 0] = True
    explanation = torch._dynamo.explain(f)(q, k, v, mask)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    grads = torch.autograd.grad(compiled(q, k, v, mask), (q, k, v))
    expected = torch.autograd.grad(f(q, k, v, mask), (q, k, v))
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e)


# ------------------------------------------------------------------------------------------ MultiheadAttention
def mha_pair(backend, **kw):
    theirs = torch.nn.MultiheadAttention(32, 4, **kw)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    ours = bigmodel.nn.MultiheadAttention(32, 4, backend=backend, **kw)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def test_mha_is_a_torch_mha_with_the_same_state_dict():
    ours = bigmodel.nn.MultiheadAttention(32, 4, kdim=12, vdim=20, add_bias_kv=True, batch_first=True)
    theirs = torch.nn.MultiheadAttention(32, 4, kdim=12, vdim=20, add_bias_kv=True, batch_first=True)
    assert isinstance(ours, torch.nn.MultiheadAttention)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}


MHA_CONFIGS = [dict(), dict(batch_first=True), dict(kdim=12, vdim=20), dict(add_bias_kv=True, add_zero_attn=True),
               dict(bias=False, batch_first=True)]


@pytest.mark.parametrize("backend", BACKENDS_CPU)
@pytest.mark.parametrize("kw", MHA_CONFIGS, ids=lambda kw: ",".join(kw) or "default")
@pytest.mark.parametrize("masks", ["none", "key_padding", "attn_bool", "attn_float+key_padding", "attn_3d"])
def test_mha_matches_torch(backend, kw, masks):
    ours, theirs = mha_pair(backend, **kw)
    n, lq, lk = 3, 5, 7
    bf = kw.get("batch_first", False)
    q = torch.randn((n, lq, 32) if bf else (lq, n, 32))
    k = torch.randn((n, lk, kw.get("kdim", 32)) if bf else (lk, n, kw.get("kdim", 32)))
    v = torch.randn((n, lk, kw.get("vdim", 32)) if bf else (lk, n, kw.get("vdim", 32)))
    kpm = torch.zeros(n, lk, dtype=torch.bool)
    kpm[0, -3:] = kpm[2, 1] = True
    args = {"none": {}, "key_padding": dict(key_padding_mask=kpm),
            "attn_bool": dict(attn_mask=torch.rand(lq, lk) > 0.7),
            "attn_float+key_padding": dict(attn_mask=torch.randn(lq, lk), key_padding_mask=kpm.float() * -1e9),
            "attn_3d": dict(attn_mask=torch.randn(n * 4, lq, lk))}[masks]
    if "attn_mask" in args and args["attn_mask"].dtype == torch.bool:
        args["attn_mask"][:, 0] = False  # every query keeps one key
    results = []
    for m, dtype in ((ours, torch.float32), (copy.deepcopy(theirs).double(), torch.float64)):  # fp64 reference
        ins = [t.to(dtype).detach().requires_grad_(True) for t in (q, k, v)]
        out, weights = m(*ins, need_weights=False, **{n: a.to(dtype) if a.is_floating_point() else a
                                                     for n, a in args.items()})
        assert weights is None
        out.backward(torch.ones_like(out))
        results.append([("out", out)] + [(f"d{n}", t.grad) for n, t in zip("qkv", ins)]
                       + [(f"d{n}", p.grad) for n, p in m.named_parameters()])
    for (name, a), (_, b) in zip(*results):
        assert_close_by_rule(name, a, b, kind="output" if name == "out" else "grad")


@pytest.mark.parametrize("backend", BACKENDS_CPU)
def test_mha_causal_hint_and_unbatched(backend):
    ours, theirs = mha_pair(backend)
    x = torch.randn(6, 2, 32)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(6)
    for args in (dict(attn_mask=causal, is_causal=True), dict()):
        torch.testing.assert_close(ours(x, x, x, need_weights=False, **args)[0],
                                   theirs(x, x, x, need_weights=False, **args)[0], rtol=1e-4, atol=1e-5)
    u = x[:, 0]
    torch.testing.assert_close(ours(u, u, u, need_weights=False)[0], theirs(u, u, u, need_weights=False)[0],
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="is_causal=True needs attn_mask"):
        ours(x, x, x, need_weights=False, is_causal=True)


def test_mha_need_weights_returns_torchs_weights():
    ours, theirs = mha_pair("reference")
    x = torch.randn(5, 2, 32)
    for avg in (True, False):
        (o1, w1), (o2, w2) = ours(x, x, x, average_attn_weights=avg), theirs(x, x, x, average_attn_weights=avg)
        torch.testing.assert_close(o1, o2)
        torch.testing.assert_close(w1, w2)


def test_mha_dropout_only_in_training():
    ours, _ = mha_pair("reference", dropout=0.5)
    x = torch.randn(5, 2, 32)
    ours.eval()
    assert torch.equal(ours(x, x, x, need_weights=False)[0], ours(x, x, x, need_weights=False)[0])
    ours.train()
    torch.manual_seed(0)
    a = ours(x, x, x, need_weights=False)[0]
    torch.manual_seed(1)
    assert not torch.equal(a, ours(x, x, x, need_weights=False)[0])


@pytest.mark.parametrize("backend", BACKENDS_CPU)
def test_mha_compile_fullgraph(backend, fresh_dynamo):
    ours, _ = mha_pair(backend, batch_first=True)
    x = torch.randn(2, 6, 32)
    kpm = torch.zeros(2, 6, dtype=torch.bool)
    kpm[1, -2:] = True

    def f(x):
        return ours(x, x, x, key_padding_mask=kpm, need_weights=False)[0]

    explanation = torch._dynamo.explain(f)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch.testing.assert_close(torch.compile(f, fullgraph=True, backend="aot_eager")(x), f(x))


def test_patch_swaps_multihead_attention_and_keeps_parameters():
    model = torch.nn.Sequential(torch.nn.Linear(32, 32))
    model.attn = torch.nn.MultiheadAttention(32, 4, batch_first=True, add_bias_kv=True)
    model.eval()
    params = {n: p for n, p in model.named_parameters()}
    x = torch.randn(2, 5, 32)
    expected = model.attn(x, x, x, need_weights=False)[0]
    bigmodel.patch(model, backend="reference")
    assert type(model.attn) is bigmodel.nn.MultiheadAttention and not model.attn.training
    assert model.attn.backend == "reference" and model.bigmodel_patched == {"MultiheadAttention": 1}
    assert all(p is params[n] for n, p in model.named_parameters())
    assert_close_by_rule("patched mha", model.attn(x, x, x, need_weights=False)[0], expected.double())


def test_autocast_runs_attention_in_the_autocast_dtype():
    """As for SDPA: under torch.autocast the inputs are cast, and fp32 leaves get fp32 gradients."""
    q, k, v = qkv(1, 2, 6, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = bigmodel.ops.attention(q, k, v, is_causal=True, backend="reference")
        expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert out.dtype == expected.dtype == torch.bfloat16
    grads = torch.autograd.grad(out.float().sum(), (q, k, v))
    assert all(g.dtype == torch.float32 for g in grads)
    ref = F.scaled_dot_product_attention(*(t.double() for t in (q, k, v)), is_causal=True)
    assert_close_by_rule("autocast out", out, ref, expected)


# ------------------------------------------------------------------------------------------ found by the OpInfo run
@pytest.mark.parametrize("backend", BACKENDS_CPU)
@pytest.mark.parametrize("q_shape,kv_shape,gqa", [((4, 3, 8), (4, 4, 6, 8), False), ((4, 3, 8), (4, 4, 6, 8), True),
                                                  ((2, 1, 3, 8), (2, 4, 6, 8), False), ((3, 8), (2, 4, 6, 8), False),
                                                  ((2, 4, 3, 8), (1, 2, 6, 8), True),
                                                  ((2, 3, 4, 3, 8), (3, 1, 6, 8), False)], ids=str)
def test_broadcast_like_sdpa(backend, q_shape, kv_shape, gqa, monkeypatch):
    """SDPA broadcasts every dim but the last two (heads too, where one side has one): so does bigmodel, through
    stride-0 views (the backend sees expanded inputs, no copies); gradients of broadcast inputs are summed back."""
    impl = BACKENDS[backend]
    seen = []
    original = impl.attention_fwd

    def spy(q, k, v, *rest):
        seen.append((q, k, v))
        return original(q, k, v, *rest)

    monkeypatch.setitem(vars(impl), "attention_fwd", spy)  # undone by deleting the entry, leaving the class method
    q = torch.randn(q_shape, dtype=torch.float64 if backend == "reference" else torch.float32)
    k, v = (torch.randn(kv_shape, dtype=q.dtype) for _ in range(2))
    ins = [t.clone().requires_grad_(True) for t in (q, k, v)]
    ref = [t.double().clone().requires_grad_(True) for t in (q, k, v)]
    out = bigmodel.ops.attention(*ins, enable_gqa=gqa, backend=backend)
    expected = F.scaled_dot_product_attention(*ref, enable_gqa=gqa)
    assert out.shape == expected.shape
    g = torch.randn(out.shape, dtype=torch.float64)
    grads = torch.autograd.grad(out, ins, g.to(out.dtype))
    grads_ref = torch.autograd.grad(expected, ref, g)
    for name, a, e in zip(("out", "dq", "dk", "dv"), (out, *grads), (expected, *grads_ref)):
        assert a.shape == e.shape, name
        assert_close_by_rule(name, a, e, kind="output" if name == "out" else "grad")
    (q4, k4, v4), = seen
    if len(torch.broadcast_shapes(q.shape[:-3], k.shape[:-3])) > 1:
        return  # several batch dims broadcast differently cannot fold into the kernels' one batch stride: reshape copies
    for name, small, big in (("q", q, q4), ("k", k, k4), ("v", v, v4)):
        if small.numel() < big.numel():  # broadcast: a stride-0 view of the caller's storage, not a copy
            assert 0 in big.stride(), f"{name} was copied, not expanded: strides {big.stride()}"


@pytest.mark.parametrize("dtype,scale", [(torch.float32, 1.0), (torch.float32, None), (torch.float16, None),
                                         (torch.float64, 30.0)], ids=str)
def test_torch_backend_rows_sum_to_one_at_large_scores(dtype, scale):
    """The pure-math attention computed P = exp(s - lse) with lse rounded to fp32, so rows did not sum to 1 at large
    |s| (OpInfo: fp32 grad_q error 5.3e-5 against torch's 6.6e-6; fp16 q = k = v = 256 gave 258.75; bf16 with
    scale = -1e4, 2.9x torch's output error). Now P is the softmax of the scores in fp32 / fp64: with v = 1 every
    output is 1 (to the accumulation dtype's rounding), and q = k = v = 256 gives exactly 256."""
    q, k = ((torch.rand(2, 3, 9, 8, dtype=torch.float64) * 18 - 9).to(dtype) for _ in range(2))
    v = torch.ones(2, 3, 9, 8, dtype=dtype)
    out = bigmodel.ops.attention(q, k, v, scale=scale, backend="reference")
    tol = 4 * torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps  # was 4.6e-6 in fp32
    assert (out.double() - 1).abs().max().item() <= tol, out
    if dtype == torch.float16:
        x = torch.full((1, 2, 4, 8), 256.0, dtype=dtype)
        assert (bigmodel.ops.attention(x, x, x, backend="reference") == 256).all()


@pytest.mark.parametrize("backend", BACKENDS_CPU)
@pytest.mark.parametrize("gqa", [True, False])
def test_one_kv_head_reaches_the_backend_unexpanded(backend, gqa, monkeypatch):
    """MQA (and SDPA's broadcast of a single kv head): the backend sees k / v with one head, read in place by the
    grouped path, not expanded to Hq stride-0 heads (whose gradients would be summed per head after rounding)."""
    impl = BACKENDS[backend]
    seen = []
    original = impl.attention_fwd
    monkeypatch.setitem(vars(impl), "attention_fwd", lambda q, k, v, *rest: seen.append(k.shape) or
                        original(q, k, v, *rest))
    q = torch.randn(2, 6, 5, 16, requires_grad=True)
    k, v = (torch.randn(2, 1, 7, 16, requires_grad=True) for _ in range(2))
    out = bigmodel.ops.attention(q, k, v, enable_gqa=gqa, backend=backend)
    ref = F.scaled_dot_product_attention(*(t.detach().double().requires_grad_() for t in (q, k, v)), enable_gqa=gqa)
    assert seen == [torch.Size((2, 1, 7, 16))]
    assert_close_by_rule("out", out, ref)
