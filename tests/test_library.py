"""The torch.library custom ops behind bigmodel.ops: opcheck (schema, autograd registration, fake tensors,
AOT dispatch) and torch.compile(fullgraph=True) with no graph break, forward + backward equal to eager."""
import pytest
import torch
import torch._dynamo

import bigmodel
from numerics import BACKENDS_CPU, assert_close_by_rule, randn_input, requires_interpreter

AFFINE = [pytest.param((True, True), id="w+b"), pytest.param((True, False), id="w"),
          pytest.param((False, True), id="b"), pytest.param((False, False), id="none")]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _params(shape, affine, dtype=torch.float32, requires_grad=False):
    has_w, has_b = affine
    w = (torch.randn(shape) * 0.5 + 1).to(dtype).requires_grad_(requires_grad) if has_w else None
    b = (torch.randn(shape) * 0.5).to(dtype).requires_grad_(requires_grad) if has_b else None
    return w, b


# ------------------------------------------------------------------------------------------ opcheck
@pytest.mark.parametrize("backend", BACKENDS_CPU)
@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("shape,normalized", [((3, 5, 24), [24]), ((6, 4, 8), [4, 8])], ids=["1d", "2d"])
def test_opcheck_forward(backend, affine, shape, normalized):
    x = randn_input(*shape).requires_grad_(True)
    w, b = _params(normalized, affine, requires_grad=True)
    torch.library.opcheck(torch.ops.bigmodel.layer_norm.default, (x, normalized, w, b, 1e-5, backend))


@pytest.mark.parametrize("backend", BACKENDS_CPU)
@pytest.mark.parametrize("affine", AFFINE)
def test_opcheck_forward_fp16(backend, affine):
    x = randn_input(4, 40, dtype=torch.float16).requires_grad_(True)
    w, b = _params([40], affine, dtype=torch.float16, requires_grad=True)
    torch.library.opcheck(torch.ops.bigmodel.layer_norm.default, (x, [40], w, b, 1e-5, backend))


@pytest.mark.parametrize("backend", BACKENDS_CPU)
@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("shape,normalized", [((3, 5, 24), [24]), ((6, 4, 8), [4, 8])], ids=["1d", "2d"])
def test_opcheck_backward(backend, affine, shape, normalized):
    """The backward op is not itself differentiable (no double backward): its inputs do not require grad."""
    x = randn_input(*shape)
    w, b = _params(normalized, affine)
    _y, mean, rstd = torch.ops.bigmodel.layer_norm(x, normalized, w, b, 1e-5, backend)
    dy = torch.randn(shape)
    torch.library.opcheck(torch.ops.bigmodel.layer_norm_backward.default,
                          (dy, x, normalized, w, b, mean, rstd, backend))


def test_backward_op_shapes_for_missing_params():
    x = randn_input(4, 16)
    _y, mean, rstd = torch.ops.bigmodel.layer_norm(x, [16], None, None, 1e-5, "reference")
    assert mean.shape == (4,) and rstd.shape == (4,) and mean.dtype == rstd.dtype == torch.float32
    dx, dw, db = torch.ops.bigmodel.layer_norm_backward(torch.randn(4, 16), x, [16], None, None, mean, rstd,
                                                        "reference")
    assert dx.shape == (4, 16) and dw.numel() == 0 and db.numel() == 0


def test_ops_layer_norm_is_one_custom_op_node():
    """torch.compile sees bigmodel.ops.layer_norm as the opaque custom op (not its internals)."""
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def f(x, w, b):
        return bigmodel.ops.layer_norm(x, (32,), w, b, backend="reference")

    torch.compile(f, backend=capture, fullgraph=True)(randn_input(4, 32), torch.ones(32), torch.zeros(32))
    assert len(graphs) == 1
    targets = [n.target for n in graphs[0].graph.nodes if n.op == "call_function"]
    ops = [t for t in targets if t in (torch.ops.bigmodel.layer_norm, torch.ops.bigmodel.layer_norm.default)]
    assert len(ops) == 1, targets
    assert not any(t in (torch.var_mean, torch.rsqrt, torch.ops.aten.var_mean.correction) for t in targets), targets


# ------------------------------------------------------------------------------------------ torch.compile
def _eager_and_compiled(fn, args, compile_backend, dy_seed=0):
    """Run fn eagerly and compiled (fullgraph) on fresh copies of args; forward + backward. Returns both."""
    results = []
    for compiled in (False, True):
        leaves = [a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
                  for a in args]
        f = torch.compile(fn, backend=compile_backend, fullgraph=True) if compiled else fn
        y = f(*leaves)
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(dy_seed)).to(y.dtype)
        y.backward(dy)
        results.append((y.detach(), [a.grad for a in leaves if isinstance(a, torch.Tensor) and a.requires_grad]))
    return results


def _assert_same(eager, compiled):
    (y0, g0), (y1, g1) = eager, compiled
    # Same custom op, same backend, same inputs: the results must agree exactly.
    assert torch.equal(y0, y1), (y0 - y1).abs().max()
    assert len(g0) == len(g1)
    for a, c in zip(g0, g1):
        assert torch.equal(a, c), (a - c).abs().max()


def _fn(backend=None):
    def f(x, w, b):
        return bigmodel.ops.layer_norm(x, (64,), w, b, 1e-5, backend=backend) * 2.0 + 1.0
    return f


def _args(dtype=torch.float32):
    return (randn_input(2, 8, 64, dtype=dtype).requires_grad_(True),
            (torch.randn(64) * 0.5 + 1).to(dtype).requires_grad_(True),
            (torch.randn(64) * 0.5).to(dtype).requires_grad_(True))


@pytest.mark.parametrize("backend", BACKENDS_CPU)
def test_compile_ops_aot_eager(backend):
    eager, compiled = _eager_and_compiled(_fn(backend), _args(), "aot_eager")
    _assert_same(eager, compiled)


def test_compile_ops_auto_aot_eager(monkeypatch):
    monkeypatch.delenv("BIGMODEL_BACKEND", raising=False)
    eager, compiled = _eager_and_compiled(_fn(None), _args(), "aot_eager")
    _assert_same(eager, compiled)


@pytest.mark.parametrize("backend", BACKENDS_CPU)
def test_compile_nn_layer_norm_aot_eager(backend):
    torch.manual_seed(1)
    m = bigmodel.nn.LayerNorm(64, backend=backend)
    with torch.no_grad():
        m.weight.mul_(0.5).add_(torch.randn(64))
        m.bias.add_(torch.randn(64))
    x = randn_input(3, 5, 64)
    ys, grads = [], []
    for compiled in (False, True):
        m.zero_grad()
        xi = x.clone().requires_grad_(True)
        f = torch.compile(m, backend="aot_eager", fullgraph=True) if compiled else m
        y = f(xi)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(3)))
        ys.append(y.detach())
        grads.append((xi.grad, m.weight.grad.clone(), m.bias.grad.clone()))
    assert torch.equal(ys[0], ys[1])
    for a, c in zip(*grads):
        assert torch.equal(a, c)


def test_compile_inductor_ops_and_module():
    """The default backend (inductor): the custom op stays opaque, the surrounding math is generated."""
    eager, compiled = _eager_and_compiled(_fn("reference"), _args(), "inductor")
    # Inductor may fuse the surrounding `* 2 + 1` differently: compare by the numerics rule, not bitwise.
    assert_close_by_rule("y", compiled[0], eager[0].double())
    for name, a, c in zip(("dx", "dweight", "dbias"), eager[1], compiled[1]):
        assert_close_by_rule(name, c, a.double(), kind="grad")

    m = torch.nn.Sequential(torch.nn.Linear(64, 64), bigmodel.nn.LayerNorm(64, backend="reference"))
    x = randn_input(4, 64)
    ref = m(x)
    out = torch.compile(m, fullgraph=True)(x)
    assert_close_by_rule("module y", out.detach(), ref.detach().double())


@requires_interpreter
def test_compile_inductor_triton_interpreter():
    eager, compiled = _eager_and_compiled(_fn("triton"), _args(), "inductor")
    assert_close_by_rule("y", compiled[0], eager[0].double())
    for name, a, c in zip(("dx", "dweight", "dbias"), eager[1], compiled[1]):
        assert_close_by_rule(name, c, a.double(), kind="grad")


@pytest.mark.parametrize("backend", BACKENDS_CPU)
def test_compile_fp16_no_affine(backend):
    def f(x):
        return bigmodel.ops.layer_norm(x, (64,), backend=backend)

    eager, compiled = _eager_and_compiled(f, (randn_input(4, 64, dtype=torch.float16).requires_grad_(True),),
                                          "aot_eager")
    _assert_same(eager, compiled)


# ------------------------------------------------------------------------------------------ compile + backend choice
@requires_interpreter
def test_compile_inside_use_backend(spy, monkeypatch):
    monkeypatch.delenv("BIGMODEL_BACKEND", raising=False)
    f = torch.compile(_fn(None), backend="aot_eager", fullgraph=True)
    args = _args()
    with bigmodel.use_backend("reference"):
        y = f(*args)
    y.sum().backward()
    assert spy == [("reference", "layer_norm_fwd"), ("reference", "layer_norm_bwd")]
    with bigmodel.use_backend("reference"):
        eager = _fn(None)(*[a.detach() for a in args])
    assert torch.equal(y.detach(), eager)


@requires_interpreter
def test_compile_follows_use_backend_changes(spy, monkeypatch):
    """A compiled function must not bake in the backend that was active when it was traced."""
    monkeypatch.delenv("BIGMODEL_BACKEND", raising=False)
    f = torch.compile(_fn(None), backend="aot_eager", fullgraph=True)
    x, w, b = (a.detach() for a in _args())
    with bigmodel.use_backend("reference"):
        f(x, w, b)
    with bigmodel.use_backend("triton"):
        f(x, w, b)
    f(x, w, b)  # auto: PyTorch's F.layer_norm on CPU (recorded once, when traced: it is part of the graph)
    assert [name for name, _ in spy] == ["reference", "triton", "torch"]


@requires_interpreter
def test_compile_with_env_backend(spy, monkeypatch):
    monkeypatch.setenv("BIGMODEL_BACKEND", "reference")
    f = torch.compile(_fn(None), backend="aot_eager", fullgraph=True)
    args = _args()
    y = f(*args)
    y.sum().backward()
    assert spy == [("reference", "layer_norm_fwd"), ("reference", "layer_norm_bwd")]


@requires_interpreter
def test_compile_follows_env_changes(spy, monkeypatch):
    """Changing BIGMODEL_BACKEND between calls of a compiled function is honoured (as in eager)."""
    f = torch.compile(_fn(None), backend="aot_eager", fullgraph=True)
    x, w, b = (a.detach() for a in _args())
    monkeypatch.setenv("BIGMODEL_BACKEND", "reference")
    f(x, w, b)
    monkeypatch.setenv("BIGMODEL_BACKEND", "triton")
    f(x, w, b)
    assert [name for name, _ in spy] == ["reference", "triton"]


def test_compile_nn_module_inside_use_backend_and_env(monkeypatch):
    monkeypatch.setenv("BIGMODEL_BACKEND", "reference")
    m = bigmodel.nn.LayerNorm(64)
    x = randn_input(4, 64)
    eager = m(x)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x), eager)
    monkeypatch.delenv("BIGMODEL_BACKEND")
    with bigmodel.use_backend("reference"):
        assert torch.equal(compiled(x), eager)


def test_compile_dynamic_shapes():
    f = torch.compile(_fn("reference"), backend="aot_eager", fullgraph=True, dynamic=True)
    for rows in (3, 7):
        x = randn_input(rows, 64)
        w, b = torch.ones(64), torch.zeros(64)
        assert torch.equal(f(x, w, b), _fn("reference")(x, w, b))
