"""bigmodel.ops.rms_norm and bigmodel.ops.add_rms_norm on CPU: the reference and torch backends, and the Triton kernels
under the interpreter, forward and every gradient against F.rms_norm in fp64 with autograd, by DESIGN.md's rule
(tests/numerics.py); fresh random inputs with non-zero mean. add_rms_norm is checked against the unfused
`h = x + residual; (F.rms_norm(h), h)` with gradients flowing into both outputs."""
import pytest
import torch
import torch.nn.functional as F

import bigmodel
from bigmodel.kernels.layer_norm import MAX_FUSED_N
from numerics import OP_BACKEND_DTYPES, assert_close_by_rule, check_op_case, op_case, randn_input, requires_interpreter

BACKEND_DTYPES = OP_BACKEND_DTYPES
KERNELS = [pytest.param("reference", id="reference"), pytest.param("triton", id="triton", marks=requires_interpreter)]


def weight_of(n, dtype):
    return (torch.randn(n) * 0.5 + 1.0).to(dtype)






def rms_case(backend, x, shape, weight, eps=1e-6, dy=None):
    dy = torch.randn(x.shape).to(x.dtype) if dy is None else dy
    return op_case(lambda x, w: (bigmodel.ops.rms_norm(x, shape, w, eps, backend=backend),),
                 lambda x, w: (F.rms_norm(x, shape, w, eps),), (x, weight), (dy,))


def add_rms_case(backend, x, r, shape, weight, eps=1e-6):
    grads = (torch.randn(x.shape).to(x.dtype), torch.randn(x.shape).to(x.dtype))

    def composed(x, r, w):
        h = x + r
        return F.rms_norm(h, shape, w, eps), h

    return op_case(lambda x, r, w: bigmodel.ops.add_rms_norm(x, r, shape, w, eps, backend=backend), composed,
                 (x, r, weight), grads)


SIZES = [(8, 1), (8, 33), (100, 33), (4, 4096), (3, MAX_FUSED_N + 1), (2, 65536)]


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("rows,hidden", SIZES, ids=str)
def test_rms_norm_sizes(backend, dtype, rows, hidden):
    x = randn_input(rows, hidden, dtype=dtype)
    # Hidden 1: dx = rstd * g * (1 - x^2 / (x^2 + eps)) is a cancellation that fp32 cannot resolve at eps = 1e-6
    # (PyTorch's own fp32 error is ~1e-3 there); at eps = 0.1 it is well conditioned.
    eps = 0.1 if hidden == 1 else 1e-6
    res = rms_case(backend, x, (hidden,), weight_of(hidden, dtype), eps)
    check_op_case(res)
    assert set(res) == {"out0", "d0", "d1"} and res["out0"][0].shape == x.shape


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("rows,hidden", [(8, 33), (100, 33), (4, 4096), (3, MAX_FUSED_N + 1)], ids=str)
def test_add_rms_norm_sizes(backend, dtype, rows, hidden):
    x, r = randn_input(rows, hidden, dtype=dtype), randn_input(rows, hidden, dtype=dtype, shift=-0.5)
    res = add_rms_case(backend, x, r, (hidden,), weight_of(hidden, dtype))
    check_op_case(res)
    assert torch.equal(res["d0"][0], res["d1"][0]), "d(input) and d(residual) must be the same gradient"


@pytest.mark.parametrize("backend", KERNELS)
def test_add_rms_norm_sum_is_rounded_like_the_unfused_add(backend):
    """h is returned exactly as x + residual in the input dtype, and y normalises that rounded h."""
    x, r = randn_input(16, 40, dtype=torch.float16), randn_input(16, 40, dtype=torch.float16)
    w = weight_of(40, torch.float16)
    y, h = bigmodel.ops.add_rms_norm(x, r, 40, w, 1e-5, backend=backend)
    assert torch.equal(h, x + r)
    y_from_h = bigmodel.ops.rms_norm(x + r, 40, w, 1e-5, backend=backend)
    torch.testing.assert_close(y, y_from_h, rtol=0, atol=0)


@pytest.mark.parametrize("backend", KERNELS)
def test_rms_norm_no_weight_3d_and_multi_dim_shape(backend):
    x = randn_input(2, 5, 6, 8)
    check_op_case(rms_case(backend, x, (6, 8), None))
    check_op_case(rms_case(backend, x[:, :, 0], (8,), weight_of(8, torch.float32)))


@pytest.mark.parametrize("backend", KERNELS)
def test_rms_norm_non_contiguous_input_and_grad(backend):
    x = randn_input(48, 10).t()  # (10, 48) with column stride 10
    dy = torch.randn(48, 10).t()
    check_op_case(rms_case(backend, x, (48,), weight_of(48, torch.float32), dy=dy))
    xr = randn_input(10, 64)[:, :48]  # padded rows
    r = randn_input(10, 64)[:, 8:56]
    check_op_case(add_rms_case(backend, xr, r, (48,), weight_of(48, torch.float32)))


@pytest.mark.parametrize("backend", KERNELS)
def test_rms_norm_fp32_weight_with_fp16_input(backend):
    x = randn_input(16, 96, dtype=torch.float16)
    w = weight_of(96, torch.float32)
    y = bigmodel.ops.rms_norm(x, 96, w, 1e-5, backend=backend)
    assert y.dtype == torch.float16
    ref = F.rms_norm(x.double(), (96,), w.double(), 1e-5)
    lowp = F.rms_norm(x.float(), (96,), w, 1e-5).half()
    assert_close_by_rule("y", y, ref, lowp)


@pytest.mark.parametrize("backend", KERNELS + ["torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_default_eps_is_f_rms_norm_s(backend, dtype):
    """eps=None: F.rms_norm's, the epsilon of the dtype it computes in (fp32 for 16-bit input), not the input's."""
    x = (randn_input(4, 32) * 1e-2).to(dtype)  # small values: eps matters
    y = bigmodel.ops.rms_norm(x, 32, backend=backend)
    torch.testing.assert_close(y.float(), F.rms_norm(x, (32,)).float(), rtol=2e-3, atol=2e-3)
    assert not torch.allclose(y.float(), F.rms_norm(x.float(), (32,), eps=1e-3), rtol=1e-2)


@requires_interpreter
def test_triton_rms_norm_is_deterministic():
    x = randn_input(300, 80)
    w = weight_of(80, torch.float32).requires_grad_()
    dws = []
    for _ in range(2):
        y = bigmodel.ops.rms_norm(x, 80, w, backend="triton")
        dws.append(torch.autograd.grad(y, w, torch.ones_like(y))[0])
    assert torch.equal(dws[0], dws[1])


def test_nn_rms_norm_is_torch_rms_norm_with_the_same_state_dict():
    ours, theirs = bigmodel.nn.RMSNorm(24, eps=1e-6), torch.nn.RMSNorm(24, eps=1e-6)
    assert isinstance(ours, torch.nn.RMSNorm)
    with torch.no_grad():
        theirs.weight.copy_(torch.randn(24))
    ours.load_state_dict(theirs.state_dict())
    x = randn_input(3, 24)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)
    assert list(ours.state_dict()) == ["weight"]


def test_custom_ops_pass_opcheck():
    x, r = randn_input(6, 40).requires_grad_(), randn_input(6, 40).requires_grad_()
    w = weight_of(40, torch.float32).requires_grad_()
    torch.library.opcheck(torch.ops.bigmodel.rms_norm.default, (x, [40], w, 1e-6, "reference"))
    torch.library.opcheck(torch.ops.bigmodel.add_rms_norm.default, (x, r, [40], w, 1e-6, "reference"))


def test_compiles_fullgraph():
    x, r = randn_input(6, 40), randn_input(6, 40)
    w = weight_of(40, torch.float32)

    def block(x, r, w):
        y, h = bigmodel.ops.add_rms_norm(x, r, 40, w, 1e-6, backend="reference")
        return bigmodel.ops.rms_norm(y + h, 40, w, 1e-6, backend="reference")

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, r, w), block(x, r, w))


# ------------------------------------------------------------------------------------------ bad input
def test_bad_normalized_shape():
    with pytest.raises(ValueError, match="normalized_shape .* must match the last 1 dim"):
        bigmodel.ops.rms_norm(torch.randn(2, 8), 4)
    with pytest.raises(ValueError, match="normalized_shape must be a non-empty"):
        bigmodel.ops.rms_norm(torch.randn(2, 8), [])


def test_bad_weight_and_residual():
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\)"):
        bigmodel.ops.rms_norm(x, 8, torch.ones(4))
    with pytest.raises(TypeError, match="weight must have dtype"):
        bigmodel.ops.rms_norm(x.half(), 8, torch.ones(8, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="residual must have input's shape"):
        bigmodel.ops.add_rms_norm(x, torch.randn(2, 4), 8)
    with pytest.raises(ValueError, match="residual must have input's shape and dtype"):
        bigmodel.ops.add_rms_norm(x, x.half(), 8)
    with pytest.raises(TypeError, match="residual must be a torch.Tensor"):
        bigmodel.ops.add_rms_norm(x, None, 8)
    with pytest.raises(ValueError, match="eps must be a non-negative"):
        bigmodel.ops.rms_norm(x, 8, eps=-1.0)
    with pytest.raises(TypeError, match="input must have dtype"):
        bigmodel.ops.rms_norm(torch.ones(2, 8, dtype=torch.int32), 8)
