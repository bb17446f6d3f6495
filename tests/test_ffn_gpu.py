"""bigmodel.ops.linear_act / feed_forward / softmax / gelu / relu on a GPU at transformer sizes: backends "triton" and
"cuda", fp32 / fp16 / bf16, forward and every gradient against fp64 on the GPU under DESIGN.md's rule (plain PyTorch
in the same dtype is the yardstick). Every test here is `cuda`-marked and skips without a GPU."""
import pytest
import torch
import torch.nn.functional as F

import bigmodel
from numerics import assert_close_by_rule

pytestmark = pytest.mark.cuda

DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16"),
          pytest.param(torch.bfloat16, id="bf16")]
TORCH_ACT = {"gelu": F.gelu, "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"), "relu": F.relu,
             None: lambda z: z}


@pytest.fixture
def backend(gpu_backend):
    return gpu_backend


def compare(ours_fn, torch_fn, inputs, dtype):
    """ours_fn vs torch_fn in fp64 (reference) and in `dtype` (plain PyTorch), forward + every input gradient."""
    g = None
    runs = []
    for fn, cast in ((ours_fn, dtype), (torch_fn, torch.float64), (torch_fn, dtype)):
        leaves = [t.detach().to(cast).requires_grad_(True) if t is not None else None for t in inputs]
        out = fn(*leaves)
        if g is None:
            g = torch.randn(out.shape, device="cuda")
        out.backward(g.to(cast))
        runs.append([out] + [t.grad for t in leaves if t is not None])
    for i, (ours, ref, low) in enumerate(zip(*runs)):
        assert_close_by_rule("out" if i == 0 else f"grad[{i - 1}]", ours, ref, low, "output" if i == 0 else "grad")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu", None])
@pytest.mark.parametrize("m,k,n", [(8192, 768, 3072), (4096, 1024, 4096), (1000, 200, 300)], ids=str)
def test_linear_act_gpu(backend, dtype, activation, m, k, n):
    x = torch.randn(m, k, device="cuda")
    w, b = torch.randn(n, k, device="cuda") * k**-0.5, torch.randn(n, device="cuda")
    compare(lambda x, w, b: bigmodel.ops.linear_act(x, w, b, activation, backend=backend),
            lambda x, w, b: TORCH_ACT[activation](F.linear(x, w, b)), (x, w, b), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_feed_forward_gpu(backend, dtype):
    x = torch.randn(4, 1024, 768, device="cuda")
    w1, b1 = torch.randn(3072, 768, device="cuda") * 768**-0.5, torch.randn(3072, device="cuda")
    w2, b2 = torch.randn(768, 3072, device="cuda") * 3072**-0.5, torch.randn(768, device="cuda")
    compare(lambda *a: bigmodel.ops.feed_forward(*a, "gelu_tanh", backend=backend),
            lambda x, w1, b1, w2, b2: F.linear(F.gelu(F.linear(x, w1, b1), approximate="tanh"), w2, b2),
            (x, w1, b1, w2, b2), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,cols", [(16384, 1024), (4096, 4097), (2048, 32768), (64, 131072)], ids=str)
def test_softmax_gpu(backend, dtype, rows, cols):
    x = torch.randn(rows, cols, device="cuda") * 3
    x[::7, ::5] = float("-inf")
    compare(lambda x: bigmodel.ops.softmax(x, backend=backend), lambda x: torch.softmax(x, -1), (x,), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["gelu", "gelu_tanh", "relu"])
def test_activation_gpu(backend, dtype, name):
    ours = {"gelu": lambda x: bigmodel.ops.gelu(x, backend=backend),
            "gelu_tanh": lambda x: bigmodel.ops.gelu(x, "tanh", backend=backend),
            "relu": lambda x: bigmodel.ops.relu(x, backend=backend)}[name]
    compare(ours, TORCH_ACT[name], (torch.randn(16384, 4097, device="cuda") * 3,), dtype)


def test_linear_act_gpu_deterministic(backend):
    x, w, b = (torch.randn(*s, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for s in ((8192, 1024), (4096, 1024), (4096,)))
    g = torch.randn(8192, 4096, device="cuda", dtype=torch.bfloat16)
    runs = []
    for _ in range(2):
        y = bigmodel.ops.linear_act(x, w, b, "gelu", backend=backend)
        runs.append((y, *torch.autograd.grad(y, (x, w, b), g)))
    for name, a, c in zip(("y", "dx", "dw", "db"), *runs):
        assert torch.equal(a, c), f"{name} differs between two identical runs"
