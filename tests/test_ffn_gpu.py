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
TORCH_ACT = {"gelu": F.gelu, "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"), "relu": F.relu, "silu": F.silu,
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
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu", "silu", None])
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
@pytest.mark.parametrize("name", ["gelu", "gelu_tanh", "relu", "silu"])
def test_activation_gpu(backend, dtype, name):
    ours = {"gelu": lambda x: bigmodel.ops.gelu(x, backend=backend),
            "gelu_tanh": lambda x: bigmodel.ops.gelu(x, "tanh", backend=backend),
            "relu": lambda x: bigmodel.ops.relu(x, backend=backend),
            "silu": lambda x: bigmodel.ops.silu(x, backend=backend)}[name]
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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu", None])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("m,k,n", [(257, 129, 131), (1, 256, 512), (3, 0, 5)], ids=str)
def test_linear_act_gpu_odd_sizes(backend, dtype, activation, with_bias, m, k, n):
    """Unaligned rows, one row (decode), K = 0 (y = act(b)); with and without bias."""
    x = torch.randn(m, k, device="cuda")
    w = torch.randn(n, k, device="cuda") * max(k, 1) ** -0.5
    b = torch.randn(n, device="cuda") if with_bias else None
    compare(lambda x, w, b: bigmodel.ops.linear_act(x, w, b, activation, backend=backend),
            lambda x, w, b: TORCH_ACT[activation](F.linear(x, w, b)), (x, w, b), dtype)


# --------------------------------------------------------------- the cuBLASLt linear_act of bigmodel._C, directly
# (M, K, N): N % 8 == 0 takes the one-GEMM GELU-aux epilogue, an odd N the GEMM + elementwise GELU path; M = 1 is
# decode, K = 1 and N = 1 are degenerate GEMMs cuBLASLt may refuse (then torch's GEMM runs), K = 0 needs no GEMM.
LT_SHAPES = [(512, 768, 1024), (257, 129, 131), (1, 256, 512), (64, 1, 40), (33, 17, 1), (5, 0, 7)]
LT_ACTS = ["gelu", "gelu_tanh", "relu", "none"]


@pytest.fixture(scope="module")
def ext():
    from conftest import extension_or_skip

    return extension_or_skip("linear_act_fwd", "linear_act_bwd")


def _lt_reference(x, w, b, activation, dy):
    """(y, pre, dx, dweight, dbias) of act(F.linear(x, w, b)) by autograd in the inputs' dtype."""
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (x, w, b)]
    z = F.linear(*leaves)
    y = TORCH_ACT[None if activation == "none" else activation](z)
    y.backward(dy)
    return (y.detach(), z.detach(), *(t.grad if t is not None else None for t in leaves))


def _lt_check(ext, x, w, b, activation, dtype):
    """linear_act_fwd / _bwd on (x, w, b) (already in dtype) against fp64 and plain PyTorch, by the rule."""
    m, n = x.size(0), w.size(0)
    dy = torch.randn(m, n, device="cuda").to(dtype)
    y, pre = ext.linear_act_fwd(x, w, b, activation)
    assert y.shape == (m, n) and y.dtype == dtype and y.is_contiguous()
    ref = _lt_reference(*(t.double() if t is not None else None for t in (x, w, b)), activation, dy.double())
    low = _lt_reference(x, w, b, activation, dy)
    assert_close_by_rule("y", y, ref[0], low[0], "output")
    if activation in ("gelu", "gelu_tanh"):
        assert pre.shape == (m, n) and pre.dtype == dtype
        assert_close_by_rule("pre", pre, ref[1], low[1], "output")
    else:
        assert pre.numel() == 0, f"{activation}: nothing is saved, got pre of shape {tuple(pre.shape)}"
    saved = y if activation == "relu" else pre
    dx, dw, db = ext.linear_act_bwd(dy, x, w, saved, activation, b is not None)
    assert_close_by_rule("dx", dx, ref[2], low[2], "grad")
    assert_close_by_rule("dweight", dw, ref[3], low[3], "grad")
    if b is not None:
        assert_close_by_rule("dbias", db, ref[4], low[4], "grad")
    else:
        assert db.numel() == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", LT_ACTS)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("m,k,n", LT_SHAPES, ids=str)
def test_cublaslt_linear_act(ext, dtype, activation, with_bias, m, k, n):
    x = torch.randn(m, k, device="cuda").to(dtype)
    w = (torch.randn(n, k, device="cuda") * max(k, 1) ** -0.5).to(dtype)
    b = torch.randn(n, device="cuda").to(dtype) if with_bias else None
    _lt_check(ext, x, w, b, activation, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["none", "gelu_tanh", "gelu"])
@pytest.mark.parametrize("layout", ["row_strided", "offset1", "transposed"])
def test_cublaslt_linear_act_layouts(ext, dtype, activation, layout):
    """Row-strided views go to cuBLASLt as they are (ld > K); pointers off by one element get kernels that take that
    alignment (or torch's GEMM); a transposed x is copied once."""
    m, k, n = 300, 256, 512
    if layout == "row_strided":
        x = torch.randn(m, k + 8, device="cuda").to(dtype)[:, :k]
        w = (torch.randn(n, k + 8, device="cuda") * k**-0.5).to(dtype)[:, :k]
        b = torch.randn(n, device="cuda").to(dtype)
    elif layout == "offset1":
        x = torch.randn(m * k + 1, device="cuda").to(dtype)[1:].view(m, k)
        w = (torch.randn(n * k + 1, device="cuda") * k**-0.5).to(dtype)[1:].view(n, k)
        b = torch.randn(n + 1, device="cuda").to(dtype)[1:]
    else:
        x = torch.randn(k, m, device="cuda").to(dtype).t()
        w = (torch.randn(n, k, device="cuda") * k**-0.5).to(dtype)
        b = torch.randn(n, device="cuda").to(dtype)
    _lt_check(ext, x, w, b, activation, dtype)


def _cuda_kernels(fn):
    """Runs fn once under the profiler; returns (fn's result, names of the GPU kernels / memsets / copies it ran)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        out = fn()
        torch.cuda.synchronize()
    return out, [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


@pytest.mark.parametrize("activation,kernels,outputs", [("none", 1, 1), ("relu", 1, 1), ("gelu_tanh", 1, 2),
                                                        ("gelu", 2, 2)])
def test_cublaslt_linear_act_launches_and_memory(ext, activation, kernels, outputs):
    """none / relu / gelu_tanh are one GEMM and allocate only y (+ the saved pre for GELU): no copy, no memset, no
    scratch. Exact GELU adds one elementwise kernel (the bytes of F.linear + F.gelu)."""
    m, k, n, dtype = 4096, 1024, 4096, torch.bfloat16
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    w = torch.randn(n, k, device="cuda", dtype=dtype) * k**-0.5
    b = torch.randn(n, device="cuda", dtype=dtype)
    ext.linear_act_fwd(x, w, b, activation)  # warm-up: cuBLASLt handle and torch's per-stream workspace
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fallbacks = ext.linear_act_fallbacks()
    (y, pre), launched = _cuda_kernels(lambda: ext.linear_act_fwd(x, w, b, activation))
    assert ext.linear_act_fallbacks() == fallbacks, f"{activation}: cuBLASLt found no epilogue algorithm"
    assert len(launched) == kernels, f"{activation}: expected {kernels} GPU kernel(s), got {launched}"
    out_bytes = outputs * m * n * dtype.itemsize  # a multiple of the allocator's 512-byte rounding
    assert torch.cuda.memory_allocated() - before == out_bytes
    assert torch.cuda.max_memory_allocated() - before == out_bytes, "transient allocation beyond the outputs"


def test_cublaslt_linear_act_backward_none_has_no_dz_copy(ext):
    """With no activation dz is dy itself: the backward allocates dx, dweight, dbias and the small fp32 dbias
    scratch, never an (M, N) copy."""
    m, k, n, dtype = 4096, 256, 4096, torch.bfloat16
    dy = torch.randn(m, n, device="cuda", dtype=dtype)
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    w = torch.randn(n, k, device="cuda", dtype=dtype)
    empty = torch.empty(0, device="cuda", dtype=dtype)
    ext.linear_act_bwd(dy, x, w, empty, "none", True)  # warm-up
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    dx, dw, db = ext.linear_act_bwd(dy, x, w, empty, "none", True)
    torch.cuda.synchronize()
    outputs = (m * k + n * k + n) * dtype.itemsize
    assert torch.cuda.max_memory_allocated() - before < outputs + m * n * dtype.itemsize // 2
    ref = _lt_reference(x.double(), w.double(), torch.zeros(n, device="cuda", dtype=torch.float64), "none",
                        dy.double())
    low = _lt_reference(x, w, torch.zeros(n, device="cuda", dtype=dtype), "none", dy)
    for i, (name, ours) in enumerate((("dx", dx), ("dweight", dw), ("dbias", db)), start=2):
        assert_close_by_rule(name, ours, ref[i], low[i], "grad")
