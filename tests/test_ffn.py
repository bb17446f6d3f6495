"""bigmodel.ops.linear_act / feed_forward / gelu / relu / softmax on CPU: the reference backend ("reference") and the
Triton kernels under the interpreter, forward and every gradient against the torch.nn.functional compositions in
fp64 by DESIGN.md's rule; bad input; the custom ops (opcheck, torch.compile(fullgraph=True)); and the nn modules as
drop-ins. The kernel-level sweep is in test_ffn_kernels.py."""
import copy

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F

import bigmodel
from numerics import BACKEND_DTYPES, BACKENDS_CPU, assert_close_by_rule

TORCH_ACT = {"gelu": F.gelu, "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"), "relu": F.relu,
             "silu": F.silu, None: lambda z: z}


def compare(ours_fn, torch_fn, inputs, dtype, grad_out=None):
    """ours_fn(*inputs) vs torch_fn(*inputs) in fp64 (the reference) and in `dtype` (plain PyTorch), forward and
    the gradient of every floating input that is not None."""
    runs = []
    for fn, cast in ((ours_fn, dtype), (torch_fn, torch.float64), (torch_fn, dtype)):
        leaves = [t.detach().to(cast).requires_grad_(True) if t is not None else None for t in inputs]
        out = fn(*leaves)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)) if grad_out is None else grad_out
        out.backward(g.to(cast))
        runs.append([out] + [t.grad for t in leaves if t is not None])
    for i, (ours, ref, low) in enumerate(zip(*runs)):
        name = "out" if i == 0 else f"grad[{i - 1}]"
        assert ours.dtype == dtype and ours.shape == ref.shape, name
        assert_close_by_rule(name, ours, ref, low, "output" if i == 0 else "grad")


# ------------------------------------------------------------------------------------------ linear_act
@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu", "silu", None])
@pytest.mark.parametrize("shape,n,bias", [((1, 16), 16, True), ((37, 48), 96, True), ((2, 5, 40), 24, False)],
                         ids=["1x16x16", "37x48x96", "3d-no-bias"])
def test_linear_act(backend, dtype, activation, shape, n, bias):
    x = torch.randn(shape)
    w, b = torch.randn(n, shape[-1]) * shape[-1] ** -0.5, torch.randn(n) if bias else None

    def ours(x, w, b):
        return bigmodel.ops.linear_act(x, w, b, activation, backend=backend)

    def theirs(x, w, b):
        return TORCH_ACT[activation](F.linear(x, w, b))

    compare(ours, theirs, (x, w, b), dtype)


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_linear_act_non_contiguous_input(backend, dtype):
    x = torch.randn(20, 50)[:, :32]  # row stride 50
    w, b = torch.randn(24, 32) * 0.2, torch.randn(24)
    compare(lambda x, w, b: bigmodel.ops.linear_act(x, w, b, "gelu", backend=backend),
            lambda x, w, b: F.gelu(F.linear(x, w, b)), (x, w, b), dtype)


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_feed_forward(backend, dtype, activation):
    x = torch.randn(3, 7, 32)
    w1, b1 = torch.randn(64, 32) * 0.2, torch.randn(64)
    w2, b2 = torch.randn(32, 64) * 0.1, torch.randn(32)

    def ours(x, w1, b1, w2, b2):
        return bigmodel.ops.feed_forward(x, w1, b1, w2, b2, activation, backend=backend)

    def theirs(x, w1, b1, w2, b2):
        return F.linear(TORCH_ACT[activation](F.linear(x, w1, b1)), w2, b2)

    compare(ours, theirs, (x, w1, b1, w2, b2), dtype)


# ------------------------------------------------------------------------------------------ gelu / relu / softmax
@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("name", ["gelu", "gelu_tanh", "relu"])
@pytest.mark.parametrize("shape", [(1,), (3, 333), (2, 4, 65)], ids=str)
def test_activation(backend, dtype, name, shape):
    ours = {"gelu": lambda x: bigmodel.ops.gelu(x, backend=backend),
            "gelu_tanh": lambda x: bigmodel.ops.gelu(x, "tanh", backend=backend),
            "relu": lambda x: bigmodel.ops.relu(x, backend=backend)}[name]
    compare(ours, TORCH_ACT[name], (torch.randn(shape) * 3,), dtype)


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_activation_non_contiguous(backend, dtype):
    x = torch.randn(40, 30).t()
    compare(lambda x: bigmodel.ops.gelu(x, backend=backend), F.gelu, (x,), dtype)


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("shape,dim", [((4, 1), -1), ((3, 7), 1), ((5, 128), -1), ((2, 1025), -1), ((6, 5, 3), 0),
                                       ((2, 9, 4), 1), ((7,), 0)], ids=str)
def test_softmax(backend, dtype, shape, dim):
    compare(lambda x: bigmodel.ops.softmax(x, dim, backend=backend), lambda x: torch.softmax(x, dim),
            (torch.randn(shape) * 2,), dtype)


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_softmax_minus_inf_like_torch(backend, dtype):
    x = torch.randn(4, 50).to(dtype)
    x[0, ::3] = float("-inf")
    x[2] = float("-inf")  # a fully -inf row: NaN, as torch
    ours, theirs = bigmodel.ops.softmax(x, backend=backend), torch.softmax(x.float(), -1).to(dtype)
    assert torch.equal(torch.isnan(ours), torch.isnan(theirs)) and torch.isnan(ours[2]).all()
    keep = ~torch.isnan(theirs)
    assert_close_by_rule("softmax", ours[keep], torch.softmax(x.double(), -1)[keep], theirs[keep])
    assert (ours[0, ::3] == 0).all()


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("call,match", [
    (lambda: bigmodel.ops.linear_act(torch.randn(2, 8), torch.randn(4, 7)), r"weight must have shape \(out_features, 8\)"),
    (lambda: bigmodel.ops.linear_act(torch.randn(2, 8), torch.randn(4, 8), torch.randn(5)), r"bias must have shape \(4,\)"),
    (lambda: bigmodel.ops.linear_act(torch.randn(2, 8), torch.randn(4, 8), activation="swish"), r"activation must be one of .*got 'swish'"),
    (lambda: bigmodel.ops.linear_act(torch.randn(2, 8), torch.randn(4, 8).half()), r"weight must have the input's dtype torch.float32; got torch.float16"),
    (lambda: bigmodel.ops.linear_act(torch.randn(2, 8).int(), torch.randn(4, 8)), r"input must have dtype .*; got int32"),
    (lambda: bigmodel.ops.linear_act(torch.randn(2, 8), torch.randn(4, 8, device="meta")), r"weight is on meta but input is on cpu"),
    (lambda: bigmodel.ops.feed_forward(torch.randn(2, 8), torch.randn(16, 8), None, torch.randn(8, 15), None), r"w2 must have shape \(out_features, 16\)"),
    (lambda: bigmodel.ops.gelu(torch.randn(3), approximate="fast"), r"approximate must be 'none' or 'tanh'; got 'fast'"),
    (lambda: bigmodel.ops.relu(torch.arange(3)), r"input must have dtype .*; got int64"),
    (lambda: bigmodel.ops.softmax(torch.randn(3, 4), dim=2), r"dim must be an int in \[-2, 1\] .* got 2"),
    (lambda: bigmodel.ops.softmax(torch.randn(3, 4), backend="cudnn"), r"backend: expected one of"),
    (lambda: bigmodel.nn.Linear(4, 4, activation="tanh"), r"activation must be one of"),
], ids=["weight-shape", "bias-shape", "activation", "weight-dtype", "int-input", "device", "w2-shape", "approximate",
        "relu-int", "softmax-dim", "backend", "module-activation"])
def test_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


# ------------------------------------------------------------------------------------------ custom ops
@pytest.mark.parametrize("backend", BACKENDS_CPU)
@pytest.mark.parametrize("activation", ["gelu", "relu", "silu", "none"])
@pytest.mark.parametrize("bias", [True, False])
def test_opcheck_linear_act(backend, activation, bias):
    x, w = torch.randn(9, 16, requires_grad=True), torch.randn(12, 16, requires_grad=True)
    b = torch.randn(12, requires_grad=True) if bias else None
    torch.library.opcheck(torch.ops.bigmodel.linear_act.default, (x, w, b, activation, backend))
    y, saved = torch.ops.bigmodel.linear_act(x.detach(), w.detach(), b.detach() if bias else None, activation,
                                             backend)
    torch.library.opcheck(torch.ops.bigmodel.linear_act_backward.default,
                          (torch.randn_like(y), x.detach(), w.detach(), saved, y, activation, bias, backend))


@pytest.mark.parametrize("backend", BACKENDS_CPU)
def test_opcheck_activation_and_softmax(backend):
    x = torch.randn(6, 20, requires_grad=True)
    for name in ("gelu", "gelu_tanh", "relu"):
        torch.library.opcheck(torch.ops.bigmodel.activation.default, (x, name, backend))
        torch.library.opcheck(torch.ops.bigmodel.activation_backward.default,
                              (torch.randn(6, 20), x.detach(), name, backend))
    torch.library.opcheck(torch.ops.bigmodel.softmax.default, (x, backend))
    torch.library.opcheck(torch.ops.bigmodel.softmax_backward.default,
                          (torch.randn(6, 20), torch.softmax(x.detach(), -1), backend))


@pytest.mark.parametrize("backend", BACKENDS_CPU)
def test_compile_fullgraph_no_graph_break(backend):
    torch._dynamo.reset()
    ffn = bigmodel.nn.FeedForward(16, 32, backend=backend)
    soft = bigmodel.nn.Softmax(-1, backend=backend)

    def f(x):
        return soft(bigmodel.ops.relu(ffn(x), backend=backend)).sum()

    x = torch.randn(2, 5, 16, requires_grad=True)
    explanation = torch._dynamo.explain(f)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(torch.autograd.grad(compiled(x), x)[0], torch.autograd.grad(f(x), x)[0])
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------------ modules
@pytest.mark.parametrize("backend", BACKENDS_CPU)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_module_loads_torch_state_dict(backend, bias):
    theirs = torch.nn.Linear(24, 40, bias=bias)
    ours = bigmodel.nn.Linear(24, 40, bias=bias, backend=backend)
    assert isinstance(ours, torch.nn.Linear) and ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())
    compare(lambda x: ours(x), lambda x: copy.deepcopy(theirs).to(x.dtype)(x), (torch.randn(3, 24),), torch.float32)
    act = bigmodel.nn.Linear(24, 40, bias=bias, activation="gelu", backend=backend)
    act.load_state_dict(theirs.state_dict())
    x = torch.randn(3, 24)
    assert_close_by_rule("Linear+gelu", act(x), F.gelu(copy.deepcopy(theirs).double()(x.double())))


@pytest.mark.parametrize("backend", BACKENDS_CPU)
def test_feed_forward_module(backend):
    ffn = bigmodel.nn.FeedForward(16, 64, activation="gelu_tanh", backend=backend)
    assert set(ffn.state_dict()) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    x = torch.randn(2, 3, 16)
    ref = ffn.fc2.weight.double()
    expected = F.linear(F.gelu(F.linear(x.double(), ffn.fc1.weight.double(), ffn.fc1.bias.double()),
                               approximate="tanh"), ref, ffn.fc2.bias.double())
    assert_close_by_rule("FeedForward", ffn(x), expected)
    drop = bigmodel.nn.FeedForward(16, 64, dropout=0.5, backend=backend).train()
    assert not torch.equal(drop(x), drop(x))
    assert torch.equal(drop.eval()(x), drop(x))


@pytest.mark.parametrize("backend", BACKENDS_CPU)
def test_activation_modules_match_torch(backend):
    x = torch.randn(4, 6, 5) * 2
    pairs = [(bigmodel.nn.GELU(backend=backend), torch.nn.GELU()),
             (bigmodel.nn.GELU("tanh", backend=backend), torch.nn.GELU("tanh")),
             (bigmodel.nn.ReLU(backend=backend), torch.nn.ReLU()),
             (bigmodel.nn.Softmax(1, backend=backend), torch.nn.Softmax(1)),
             (bigmodel.nn.Softmax(backend=backend), torch.nn.Softmax())]
    for ours, theirs in pairs:
        assert isinstance(ours, type(theirs))
        assert_close_by_rule(repr(ours), ours(x), theirs(x.double()))


def test_patch_swaps_activations():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU("tanh"), torch.nn.ReLU(), torch.nn.Softmax(-1))
    x = torch.randn(3, 8)
    expected = model(x)
    bigmodel.patch(model, backend="reference")
    assert [type(m) for m in model][1:] == [bigmodel.nn.GELU, bigmodel.nn.ReLU, bigmodel.nn.Softmax]
    assert model[1].approximate == "tanh" and model[3].dim == -1
    assert model.bigmodel_patched == {"GELU": 1, "ReLU": 1, "Softmax": 1}
    torch.testing.assert_close(model(x), expected)


def test_autocast_runs_linear_act_in_the_autocast_dtype():
    lin = bigmodel.nn.Linear(16, 32, activation="gelu", backend="reference")
    x = torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = lin(x)
        expected = F.gelu(F.linear(x, lin.weight, lin.bias))
    assert y.dtype == expected.dtype == torch.bfloat16
    y.float().sum().backward()
    assert lin.weight.grad.dtype == torch.float32
    ref = F.gelu(F.linear(x.double(), lin.weight.double(), lin.bias.double()))
    assert_close_by_rule("autocast linear_act", y, ref, expected)


@pytest.mark.parametrize("backend,dtype", [p for p in BACKEND_DTYPES if p.id != "reference-fp32"])
def test_softmax_rows_past_128k_columns(backend, dtype):
    """The issue's longest rows: the online two-pass path, forward and backward. (Not the reference in fp32: it is
    torch.softmax in fp32, and plain PyTorch's own relative error over 131k columns is 1.3e-5, above the 1e-5 rule.)"""
    x = torch.randn(2, 131073) * 4
    x[1, :1000] = float("-inf")
    compare(lambda x: bigmodel.ops.softmax(x, backend=backend), lambda x: torch.softmax(x, -1), (x,), dtype)


# ------------------------------------------------------------------------------------------ zero-size inputs
# Found by PyTorch's OpInfo samples (tests/test_opinfo.py): these crashed in row_view on every backend and dtype.
def _no_kernel(monkeypatch, backend, *fns):
    """Make the backend's kernels for `fns` fail if called: zero-size inputs must never reach them."""
    impl = bigmodel.backends.BACKENDS[backend]
    for fn in fns:
        # setitem on the instance dict: undone by deleting the entry (setattr would leave a bound method behind)
        monkeypatch.setitem(vars(impl), fn, lambda *a, _fn=fn: pytest.fail(f"{backend}.{_fn} ran on empty data"))


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("shape,dim", [((5, 0, 0), -1), ((0, 4), -1), ((3, 0), 0), ((2, 0, 3), 1)], ids=str)
def test_softmax_zero_size(backend, dtype, shape, dim, monkeypatch):
    _no_kernel(monkeypatch, backend, "softmax_fwd", "softmax_bwd")
    x = torch.randn(shape).to(dtype).requires_grad_(True)
    y = bigmodel.ops.softmax(x, dim, backend=backend)
    assert y.shape == torch.softmax(x, dim).shape and y.dtype == dtype
    (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert dx.shape == x.shape


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu", None])
@pytest.mark.parametrize("x_shape,w_shape,bias", [((3, 4, 0), (5, 0), False), ((3, 4, 0), (5, 0), True),
                                                  ((0, 3), (4, 3), True), ((2, 3), (0, 3), True)],
                         ids=["K=0", "K=0-bias", "M=0-bias", "N=0-bias"])
def test_linear_act_zero_size(backend, dtype, activation, x_shape, w_shape, bias, monkeypatch):
    """K = 0: act(bias) (or act(0)) broadcast, as torch; M or N = 0: empty. Gradients like torch's, no kernel."""
    _no_kernel(monkeypatch, backend, "linear_act_fwd", "linear_act_bwd")
    x = torch.randn(x_shape)
    w = torch.randn(w_shape)
    b = torch.randn(w_shape[0]) * 2 if bias else None
    compare(lambda *t: bigmodel.ops.linear_act(*t, activation=activation, backend=backend),
            lambda *t: TORCH_ACT[activation](F.linear(*t)), (x, w) + ((b,) if bias else ()), dtype)


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("name", ["gelu", "relu"])
def test_activation_zero_size(backend, dtype, name, monkeypatch):
    _no_kernel(monkeypatch, backend, "activation_fwd", "activation_bwd")
    x = torch.randn(4, 0, 3).to(dtype).requires_grad_(True)
    y = getattr(bigmodel.ops, name)(x, backend=backend)
    assert y.shape == x.shape
    assert torch.autograd.grad(y, x, torch.ones_like(y))[0].shape == x.shape
