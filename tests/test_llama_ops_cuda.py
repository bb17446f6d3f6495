"""The Llama-family ops on a GPU at real sizes, backends "cuda" (bigmodel._C) and "triton": rms_norm, add_rms_norm,
rotary, silu / swiglu / geglu and linear_act(activation="silu"), forward and every gradient against fp64 on the GPU
under DESIGN.md's rule (tests/numerics.py), plus bitwise determinism of dweight. Every test here is `cuda`-marked and
skips without a GPU; the "cuda" backend skips only when bigmodel._C cannot be loaded, and fails instead where
BIGMODEL_REQUIRE_CUDA_EXT=1 (see tests/conftest.py's gpu_backend)."""
import pytest
import torch
import torch.nn.functional as F

import bigmodel
from numerics import check_op_case, hf_rotary, op_case, randn_input, rotary_tables

pytestmark = pytest.mark.cuda

DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16"),
          pytest.param(torch.bfloat16, id="bf16")]


@pytest.fixture
def backend(gpu_backend):
    return gpu_backend






def grad_like(x):
    return torch.randn(x.shape, device=x.device).to(x.dtype)


def weight_of(n, dtype):
    return (torch.randn(n, device="cuda") * 0.5 + 1.0).to(dtype)


# ------------------------------------------------------------------------------------------------ rms_norm
def rms_case(backend, x, weight, eps=1e-6, dy=None):
    n = x.size(-1)
    return op_case(lambda x, w: (bigmodel.ops.rms_norm(x, (n,), w, eps, backend=backend),),
                lambda x, w: (F.rms_norm(x, (n,), w, eps),), (x, weight), (grad_like(x) if dy is None else dy,))


RMS_SIZES = [(16384, 768), (16384, 1024), (16384, 4096), (16384, 8192), (512, 65536)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,hidden", RMS_SIZES, ids=[f"{m}x{n}" for m, n in RMS_SIZES])
def test_rms_norm_gpu(backend, dtype, rows, hidden):
    x = randn_input(rows, hidden, dtype=dtype, device="cuda")
    check_op_case(rms_case(backend, x, weight_of(hidden, dtype)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [1, 33, 1000])
def test_rms_norm_gpu_odd_sizes(backend, dtype, hidden):
    x = randn_input(1031, hidden, dtype=dtype, device="cuda")
    # hidden 1: dx = rstd g (1 - x^2 / (x^2 + eps)) cancels past fp32 at eps = 1e-6; eps = 0.1 is well conditioned
    check_op_case(rms_case(backend, x, weight_of(hidden, dtype), eps=0.1 if hidden == 1 else 1e-6))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight", ["none", "fp32"])
def test_rms_norm_gpu_no_weight_or_fp32_weight(backend, dtype, weight):
    x = randn_input(4096, 4096, dtype=dtype, device="cuda")
    w = None if weight == "none" else weight_of(4096, torch.float32)
    res = rms_case(backend, x, w)
    assert set(res) == {"out0", "d0"} | ({"d1"} if w is not None else set())
    if w is not None:
        assert res["d1"][0].dtype == torch.float32
    check_op_case(res)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [1024, 8192])
def test_rms_norm_gpu_non_contiguous(backend, dtype, hidden):
    x = randn_input(4096, hidden + 64, dtype=dtype, device="cuda")[:, :hidden]  # padded rows
    dy = torch.randn(hidden, 4096, device="cuda").to(dtype).t()                # transposed
    check_op_case(rms_case(backend, x, weight_of(hidden, dtype), dy=dy))


ADD_SIZES = [(16384, 4096), (4096, 8192), (512, 65536), (1031, 33)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,hidden", ADD_SIZES, ids=[f"{m}x{n}" for m, n in ADD_SIZES])
def test_add_rms_norm_gpu(backend, dtype, rows, hidden):
    x = randn_input(rows, hidden, dtype=dtype, device="cuda")
    r = randn_input(rows, hidden, dtype=dtype, device="cuda", shift=-0.5)

    def composed(x, r, w):
        h = x + r
        return F.rms_norm(h, (hidden,), w, 1e-6), h

    res = op_case(lambda x, r, w: bigmodel.ops.add_rms_norm(x, r, (hidden,), w, 1e-6, backend=backend), composed,
               (x, r, weight_of(hidden, dtype)), (grad_like(x), grad_like(x)))
    check_op_case(res)
    assert torch.equal(res["out1"][0], x + r), "h must be x + residual rounded as the unfused add"
    assert torch.equal(res["d0"][0], res["d1"][0]), "d(input) and d(residual) must be the same gradient"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,hidden", [(16384, 4096), (512, 65536)])
def test_rms_norm_gpu_bitwise_deterministic(backend, dtype, rows, hidden):
    x = randn_input(rows, hidden, dtype=dtype, device="cuda")
    r = randn_input(rows, hidden, dtype=dtype, device="cuda")
    w, dy = weight_of(hidden, dtype), grad_like(x)
    outs = []
    for _ in range(2):
        xi, ri, wi = (t.clone().requires_grad_(True) for t in (x, r, w))
        y = bigmodel.ops.rms_norm(xi, (hidden,), wi, backend=backend)
        y2, h = bigmodel.ops.add_rms_norm(xi, ri, (hidden,), wi, backend=backend)
        torch.autograd.backward((y, y2, h), (dy, dy, dy))
        torch.cuda.synchronize()
        outs.append((y.detach(), y2.detach(), h.detach(), xi.grad, ri.grad, wi.grad))
    for name, a, b in zip(("y", "y2", "h", "dx", "dresidual", "dweight"), *outs):
        assert torch.equal(a, b), f"{name} differs between two identical runs ({backend}, {dtype})"


# ------------------------------------------------------------------------------------------------ rotary




def rotary_case(backend, x, cos, sin, interleaved):
    return op_case(lambda x: (bigmodel.ops.rotary(x, cos, sin, interleaved=interleaved, backend=backend),),
                lambda x: (hf_rotary(x, cos.to(x.dtype), sin.to(x.dtype), interleaved),), (x,), (grad_like(x),))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", [False, True], ids=["rotate_half", "interleaved"])
@pytest.mark.parametrize("d,r", [(128, 128), (80, 32)], ids=["d128", "d80-partial32"])
@pytest.mark.parametrize("table", ["L", "BL"])
def test_rotary_gpu(backend, dtype, interleaved, d, r, table):
    B, H, L = 4, 32, 2048
    x = torch.randn(B, H, L, d, device="cuda").to(dtype)
    shape = (L,) if table == "L" else (B, 1, L)  # (L, R) / Hugging Face's (B, 1, L, R)
    cos, sin = rotary_tables(shape, r, interleaved, dtype, "cuda")
    check_op_case(rotary_case(backend, x, cos, sin, interleaved))


@pytest.mark.parametrize("dtype", [pytest.param(torch.float16, id="fp16"), pytest.param(torch.bfloat16, id="bf16")])
def test_rotary_gpu_fp32_tables_and_non_contiguous(backend, dtype):
    B, H, L, d = 2, 16, 1024, 128
    x = torch.randn(B, L, H, d, device="cuda").to(dtype).transpose(1, 2)  # (B, H, L, D) view of (B, L, H, D)
    cos, sin = rotary_tables((B, 1, L), d, False, torch.float32, "cuda")
    check_op_case(rotary_case(backend, x, cos, sin, False))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_gpu_odd_rotary_dim(backend, dtype):
    x = torch.randn(3, 5, 77, 10, device="cuda").to(dtype)  # D 10, R 6: no 16-byte vectors anywhere
    for interleaved in (False, True):
        cos, sin = rotary_tables((77,), 6, interleaved, dtype, "cuda")
        check_op_case(rotary_case(backend, x, cos, sin, interleaved))


# ------------------------------------------------------------------------------------------------ activations
GATED = {"swiglu": (lambda g, u, b: bigmodel.ops.swiglu(g, u, backend=b), lambda g, u: F.silu(g) * u),
         "geglu": (lambda g, u, b: bigmodel.ops.geglu(g, u, backend=b), lambda g, u: F.gelu(g) * u),
         "geglu_tanh": (lambda g, u, b: bigmodel.ops.geglu(g, u, approximate="tanh", backend=b),
                        lambda g, u: F.gelu(g, approximate="tanh") * u)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", list(GATED))
@pytest.mark.parametrize("shape", [(16384, 8192), (1031, 1001)], ids=str)
def test_gated_activation_gpu(backend, dtype, kind, shape):
    ours, theirs = GATED[kind]
    g, u = randn_input(*shape, dtype=dtype, device="cuda"), torch.randn(shape, device="cuda").to(dtype)
    check_op_case(op_case(lambda g, u: (ours(g, u, backend),), lambda g, u: (theirs(g, u),), (g, u), (grad_like(g),)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_gpu(backend, dtype):
    x = randn_input(16384, 4096, dtype=dtype, device="cuda")
    check_op_case(op_case(lambda x: (bigmodel.ops.silu(x, backend=backend),), lambda x: (F.silu(x),), (x,),
                          (grad_like(x),)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("m,k,n", [(8192, 4096, 11008), (1000, 200, 300)], ids=str)
def test_linear_act_silu_gpu(backend, dtype, with_bias, m, k, n):
    x = torch.randn(m, k, device="cuda").to(dtype)
    w = (torch.randn(n, k, device="cuda") * k**-0.5).to(dtype)
    b = torch.randn(n, device="cuda").to(dtype) if with_bias else None
    dy = torch.randn(m, n, device="cuda").to(dtype)
    check_op_case(op_case(lambda x, w, b: (bigmodel.ops.linear_act(x, w, b, "silu", backend=backend),),
               lambda x, w, b: (F.silu(F.linear(x, w, b)),), (x, w, b), (dy,)))
