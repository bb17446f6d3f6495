"""Backend "torch": PyTorch's own op for every bigmodel op, with PyTorch's autograd, on CPU in every float dtype.

It must equal F.* exactly (outputs and gradients: it is the same call after bigmodel's validation), be what auto
picks on CPU, keep bigmodel's validation and error messages, and compile with fullgraph=True (no graph break)."""
import pytest
import torch
import torch._dynamo
import torch.nn.functional as F

import bigmodel
from bigmodel.backends import BACKENDS, BackendUnavailable

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _leaves(*ts):
    return [t.detach().clone().requires_grad_(t.is_floating_point()) if t is not None else None for t in ts]


def _cases(dtype):
    """(name, bigmodel call, the PyTorch call it must equal, input tensors)."""
    r = lambda *s: torch.randn(*s).to(dtype)  # noqa: E731
    q, k, v = r(2, 4, 5, 8), r(2, 2, 7, 8), r(2, 2, 7, 6)
    mask = torch.rand(2, 1, 5, 7) > 0.3
    x, w, b = r(3, 5, 16), r(16), r(16)
    w1, b1, w2, b2 = r(32, 16), r(32), r(16, 32), r(16)
    return [
        ("attention-gqa-causal", lambda q, k, v: bigmodel.ops.attention(q, k, v, is_causal=True, enable_gqa=True,
                                                                        backend="torch"),
         lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), (q, k, v)),
        ("attention-mask-scale", lambda q, k, v: bigmodel.ops.attention(q, k, v, attn_mask=mask, scale=0.3,
                                                                        backend="torch"),
         # one kv head broadcast over 4 query heads: SDPA gets the inputs as given and broadcasts them itself
         lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3),
         (q, k[:, :1], v[:, :1])),
        ("layer_norm", lambda x, w, b: bigmodel.ops.layer_norm(x, (16,), w, b, 1e-4, backend="torch"),
         lambda x, w, b: F.layer_norm(x, (16,), w, b, 1e-4), (x, w, b)),
        ("softmax", lambda x: bigmodel.ops.softmax(x, 1, backend="torch"), lambda x: torch.softmax(x, 1), (x,)),
        ("gelu", lambda x: bigmodel.ops.gelu(x, backend="torch"), lambda x: F.gelu(x), (x,)),
        ("gelu-tanh", lambda x: bigmodel.ops.gelu(x, "tanh", backend="torch"), lambda x: F.gelu(x, approximate="tanh"),
         (x,)),
        ("relu", lambda x: bigmodel.ops.relu(x, backend="torch"), lambda x: F.relu(x), (x,)),
        ("linear_act", lambda x, w, b: bigmodel.ops.linear_act(x, w, b, "gelu_tanh", backend="torch"),
         lambda x, w, b: F.gelu(F.linear(x, w, b), approximate="tanh"), (x, w1, b1)),
        ("feed_forward", lambda x, w1, b1, w2, b2: bigmodel.ops.feed_forward(x, w1, b1, w2, b2, "relu", backend="torch"),
         lambda x, w1, b1, w2, b2: F.linear(F.relu(F.linear(x, w1, b1)), w2, b2), (x, w1, b1, w2, b2)),
    ]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("index", range(9), ids=lambda i: _cases(torch.float32)[i][0])
def test_torch_backend_equals_pytorch(index, dtype):
    _, ours, theirs, inputs = _cases(dtype)[index]
    results = []
    for fn in (ours, theirs):
        leaves = _leaves(*inputs)
        y = fn(*leaves)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(0)).to(y.dtype))
        results.append((y.detach(), [t.grad for t in leaves]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_layer_norm_fp32_params_with_low_precision_input():
    x, w, b = torch.randn(4, 16, dtype=torch.bfloat16), torch.randn(16), torch.randn(16)
    y = bigmodel.ops.layer_norm(x, (16,), w, b, backend="torch")
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, F.layer_norm(x, (16,), w, b), rtol=0, atol=0)
    y64 = bigmodel.ops.layer_norm(x.double(), (16,), w, b, backend="torch")  # fp32 params, fp64 input: cast up
    torch.testing.assert_close(y64, F.layer_norm(x.double(), (16,), w.double(), b.double()), rtol=0, atol=0)


def test_mask_with_grad_runs_on_torch_and_gets_a_gradient():
    q = torch.randn(1, 2, 4, 8, requires_grad=True)
    bias = torch.randn(4, 4, requires_grad=True)
    out = bigmodel.ops.attention(q, q, q, attn_mask=bias)  # auto -> torch: the kernels cannot give the mask a grad
    out.sum().backward()
    assert bias.grad is not None and bias.grad.abs().sum() > 0
    with pytest.raises(BackendUnavailable, match="attn_mask requires grad"):
        bigmodel.ops.attention(q, q, q, attn_mask=bias, backend="reference")


def test_fully_masked_rows_give_zero_on_cpu():
    q = torch.randn(1, 1, 3, 8, requires_grad=True)
    mask = torch.ones(1, 1, 3, 5, dtype=torch.bool)
    mask[..., 1, :] = False
    out = bigmodel.ops.attention(q, torch.randn(1, 1, 5, 8), torch.randn(1, 1, 5, 8), attn_mask=mask, backend="torch")
    out.sum().backward()
    assert torch.equal(out[0, 0, 1], torch.zeros(8)) and torch.equal(q.grad[0, 0, 1], torch.zeros(8))
    empty_keys = bigmodel.ops.attention(q, torch.randn(1, 1, 0, 8), torch.randn(1, 1, 0, 8), backend="torch")
    assert empty_keys.shape == (1, 1, 3, 8) and torch.equal(empty_keys, torch.zeros(1, 1, 3, 8))


def test_validation_and_messages_are_bigmodels():
    with pytest.raises(ValueError, match=r"bigmodel.ops.layer_norm: normalized_shape \[8\] must match"):
        bigmodel.ops.layer_norm(torch.randn(4, 16), (8,), backend="torch")
    with pytest.raises(ValueError, match="pass either attn_mask or is_causal=True"):
        q = torch.randn(1, 1, 2, 8)
        bigmodel.ops.attention(q, q, q, attn_mask=torch.ones(2, 2, dtype=torch.bool), is_causal=True, backend="torch")


def test_custom_ops_refuse_torch_and_auto():
    x = torch.randn(4, 16)
    for name in ("torch", "auto"):
        with pytest.raises(ValueError, match="backend must be one of 'cuda', 'triton', 'reference'"):
            torch.ops.bigmodel.layer_norm(x, [16], None, None, 1e-5, name)


@pytest.mark.parametrize("backend", ["torch", None])
def test_compile_fullgraph_through_torch(backend):
    """The choice runs at trace time: PyTorch's own ops land in the graph, no graph break, no custom op."""
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def f(x, w, b, q):
        h = bigmodel.ops.layer_norm(x, (16,), w, b, backend=backend)
        h = bigmodel.ops.linear_act(h, torch.ones(16, 16), None, "gelu", backend=backend)
        h = bigmodel.ops.softmax(h, -1, backend=backend) + bigmodel.ops.relu(h, backend=backend)
        return h.sum() + bigmodel.ops.attention(q, q, q, is_causal=True, backend=backend).sum()

    args = (torch.randn(4, 16), torch.ones(16), torch.zeros(16), torch.randn(1, 2, 4, 8))
    out = torch.compile(f, backend=capture, fullgraph=True)(*args)
    torch.testing.assert_close(out, f(*args))
    assert len(graphs) == 1
    targets = {str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"}
    assert not any("bigmodel" in t for t in targets), targets
    assert any("scaled_dot_product_attention" in t for t in targets), targets


def test_compile_training_step_through_torch_matches_eager():
    m = torch.nn.Sequential(bigmodel.nn.LayerNorm(16), bigmodel.nn.Linear(16, 16, activation="gelu"))
    x = torch.randn(4, 16)
    eager = m(x)
    eager.sum().backward()
    grads = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)(x)
    compiled.sum().backward()
    torch.testing.assert_close(compiled, eager)
    for p, g in zip(m.parameters(), grads):
        torch.testing.assert_close(p.grad, g)


def test_registry_has_four_backends():
    assert set(BACKENDS) == {"cuda", "triton", "torch", "reference"}
    assert set(bigmodel.available_backends()) == set(BACKENDS)
    assert bigmodel.available_backends()["torch"] == []
