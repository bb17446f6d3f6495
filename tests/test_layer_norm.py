"""bigmodel.ops.layer_norm on CPU: the reference backend ("reference") and the Triton kernels under the
interpreter ("triton" on CPU tensors), forward and every gradient, against F.layer_norm in fp64 with
autograd, under DESIGN.md's rule (tests/numerics.py). Interpreter shapes are kept small."""
import pytest
import torch
import torch.nn.functional as F

import bigmodel
from bigmodel.kernels.layer_norm import MAX_FUSED_N
from numerics import (BACKEND_DTYPES, BACKENDS_CPU, assert_close_by_rule, check_layer_norm_case, layer_norm_case,
                      randn_input, requires_interpreter)


def op(backend):
    def fn(x, normalized_shape, weight, bias, eps):
        return bigmodel.ops.layer_norm(x, normalized_shape, weight, bias, eps, backend=backend)
    return fn


def params(n_shape, dtype, weight=True, bias=True, param_dtype=None):
    param_dtype = param_dtype or dtype
    w = (torch.randn(n_shape) * 0.5 + 1.0).to(param_dtype) if weight else None
    b = (torch.randn(n_shape) * 0.5).to(param_dtype) if bias else None
    return w, b


def run(backend, x, normalized_shape, weight, bias, eps=1e-5, dy=None):
    result = layer_norm_case(op(backend), x, normalized_shape, weight, bias, eps, dy)
    check_layer_norm_case(result)
    return result


# ------------------------------------------------------------------------------------------ sizes
@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("rows,hidden", [
    (1, 1000),               # one row
    (8, 1),                  # hidden 1: y = bias, dx = dweight = 0 exactly
    (8, 33),                 # not a power of two, masked columns
    (100, 33),               # several programs + a partial row block; dW/dB summed over program partials
    (8, 1000),
    (4, 4096),
    (3, MAX_FUSED_N + 1),    # above the single-block limit: the looped kernels
    (2, 65536),              # the largest hidden size the issue names, looped
], ids=lambda v: str(v))
def test_layer_norm_sizes(backend, dtype, rows, hidden):
    x = randn_input(rows, hidden, dtype=dtype)
    w, b = params(hidden, dtype)
    res = run(backend, x, (hidden,), w, b)
    assert res["y"][0].dtype == dtype and res["y"][0].shape == x.shape
    assert res["dweight"][0].dtype == dtype and res["dbias"][0].dtype == dtype


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_layer_norm_3d_input(backend, dtype):
    x = randn_input(2, 5, 48, dtype=dtype)
    w, b = params(48, dtype)
    res = run(backend, x, (48,), w, b)
    assert res["y"][0].shape == (2, 5, 48)
    assert res["dx"][0].shape == (2, 5, 48)


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_layer_norm_multi_dim_normalized_shape(backend, dtype):
    x = randn_input(2, 3, 4, 8, dtype=dtype)
    w, b = params((4, 8), dtype)
    res = run(backend, x, (4, 8), w, b)
    assert res["dweight"][0].shape == (4, 8) and res["dbias"][0].shape == (4, 8)


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_layer_norm_int_normalized_shape(backend, dtype):
    x = randn_input(6, 40, dtype=dtype)
    w, b = params(40, dtype)
    run(backend, x, 40, w, b)


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("eps", [1e-6, 0.1])
def test_layer_norm_eps(backend, dtype, eps):
    x = randn_input(8, 72, dtype=dtype, scale=0.3)  # small scale: eps=0.1 changes the result visibly
    w, b = params(72, dtype)
    run(backend, x, (72,), w, b, eps=eps)


# ------------------------------------------------------------------------------------------ layouts
@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_layer_norm_transposed_input(backend, dtype):
    x = randn_input(96, 24, dtype=dtype).t()  # (24, 96), column stride 24
    assert not x.is_contiguous() and x.stride(-1) != 1
    w, b = params(96, dtype)
    run(backend, x, (96,), w, b)


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_layer_norm_row_padded_input_and_dy(backend, dtype):
    """Sliced columns: unit column stride but row stride > hidden, for x and for dy (kernel strides)."""
    x = randn_input(12, 80 + 7, dtype=dtype)[:, :80]
    dy = torch.randn(12, 80 + 13).to(dtype)[:, :80]
    assert not x.is_contiguous() and x.stride() == (87, 1)
    assert not dy.is_contiguous() and dy.stride() == (93, 1)
    w, b = params(80, dtype)
    run(backend, x, (80,), w, b, dy=dy)


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_layer_norm_non_contiguous_3d(backend, dtype):
    x = randn_input(3, 4, 64 + 5, dtype=dtype)[:, :, :64]           # viewable as rows with a row stride
    dy = torch.randn(4, 3, 64).to(dtype).transpose(0, 1)             # leading dims permuted
    assert not x.is_contiguous() and not dy.is_contiguous()
    w, b = params(64, dtype)
    run(backend, x, (64,), w, b, dy=dy)


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_layer_norm_transposed_dy(backend, dtype):
    x = randn_input(16, 48, dtype=dtype)
    dy = torch.randn(48, 16).to(dtype).t()
    assert dy.stride() == (1, 16)
    w, b = params(48, dtype)
    run(backend, x, (48,), w, b, dy=dy)


# ------------------------------------------------------------------------------------------ parameters
@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("hidden", [33, MAX_FUSED_N + 1])
def test_layer_norm_no_affine(backend, dtype, hidden):
    x = randn_input(3, hidden, dtype=dtype)
    res = run(backend, x, (hidden,), None, None)
    assert set(res) == {"y", "dx"}


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("hidden", [33, MAX_FUSED_N + 1])
def test_layer_norm_weight_no_bias(backend, dtype, hidden):
    x = randn_input(3, hidden, dtype=dtype)
    w, _ = params(hidden, dtype, bias=False)
    res = run(backend, x, (hidden,), w, None)
    assert set(res) == {"y", "dx", "dweight"}


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_layer_norm_bias_no_weight(backend, dtype):
    x = randn_input(5, 33, dtype=dtype)
    _, b = params(33, dtype, weight=False)
    res = run(backend, x, (33,), None, b)
    assert set(res) == {"y", "dx", "dbias"}


@pytest.mark.parametrize("backend", BACKENDS_CPU)
@pytest.mark.parametrize("hidden", [1000, MAX_FUSED_N + 1])
def test_layer_norm_mixed_precision_fp32_params(backend, hidden):
    """fp16 activations with fp32 weight/bias: y and dx are fp16, dweight/dbias fp32 (and held to the fp32 rule)."""
    x = randn_input(3, hidden, dtype=torch.float16)
    w, b = params(hidden, torch.float16, param_dtype=torch.float32)
    res = run(backend, x, (hidden,), w, b)
    assert res["y"][0].dtype == torch.float16 and res["dx"][0].dtype == torch.float16
    assert res["dweight"][0].dtype == torch.float32 and res["dbias"][0].dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS_CPU)
def test_layer_norm_constant_rows(backend):
    """A constant row has variance 0: y = bias, rstd = 1/sqrt(eps), never NaN (as PyTorch)."""
    x = torch.full((4, 40), 2.5)
    x[1] = -7.0
    w, b = params(40, torch.float32)
    res = run(backend, x, (40,), w, b)
    assert torch.isfinite(res["y"][0]).all() and torch.isfinite(res["dx"][0]).all()


# ------------------------------------------------------------------------------------------ determinism
@pytest.mark.parametrize("hidden", [33, 1000, MAX_FUSED_N + 1])
@requires_interpreter
def test_triton_bitwise_deterministic(hidden):
    rows = 100 if hidden <= 1000 else 6   # several programs each summing partial dW/dB rows
    x = randn_input(rows, hidden)
    w, b = params(hidden, torch.float32)
    dy = torch.randn(rows, hidden)
    outs = []
    for _ in range(2):
        xi, wi, bi = (t.clone().requires_grad_(True) for t in (x, w, b))
        y = bigmodel.ops.layer_norm(xi, (hidden,), wi, bi, backend="triton")
        y.backward(dy)
        outs.append((y.detach(), xi.grad, wi.grad, bi.grad))
    for name, a, c in zip(("y", "dx", "dweight", "dbias"), *outs):
        assert torch.equal(a, c), f"{name} differs between two identical runs"


# ------------------------------------------------------------------------------------------ auto / default
@requires_interpreter
def test_auto_backend_on_cpu_with_interpreter_is_correct(monkeypatch):
    monkeypatch.delenv("BIGMODEL_BACKEND", raising=False)
    x = randn_input(8, 100)
    w, b = params(100, torch.float32)
    run(None, x, (100,), w, b)


def test_torch_backend_fp64():
    """fp64 inputs run on the reference in fp64: agrees with F.layer_norm to fp64 precision."""
    x = randn_input(6, 50, dtype=torch.float64)
    w, b = params(50, torch.float64)
    y = bigmodel.ops.layer_norm(x, (50,), w, b, backend="reference")
    ref = F.layer_norm(x, (50,), w, b)
    assert (y - ref).abs().max().item() <= 1e-12 * ref.abs().max().item()


def test_forward_no_grad_inputs():
    x = randn_input(4, 33)
    w, b = params(33, torch.float32)
    y = bigmodel.ops.layer_norm(x, (33,), w, b, backend="reference")
    assert not y.requires_grad
    assert_close_by_rule("y", y, F.layer_norm(x.double(), (33,), w.double(), b.double()))


# ------------------------------------------------------------------------------------------ bad input
def _args():
    return randn_input(4, 8), torch.ones(8), torch.zeros(8)


def test_bad_input_dtype():
    x, w, b = _args()
    with pytest.raises(TypeError, match=r"input must have dtype .*got int64"):
        bigmodel.ops.layer_norm(x.long(), (8,), w, b)


def test_bad_input_not_a_tensor():
    with pytest.raises(TypeError, match=r"input must be a torch\.Tensor"):
        bigmodel.ops.layer_norm([[1.0, 2.0]], (2,))


def test_bad_weight_dtype():
    x, w, b = _args()
    with pytest.raises(TypeError, match=r"weight must have dtype float32.*got float16"):
        bigmodel.ops.layer_norm(x, (8,), w.half(), b)


def test_bad_bias_dtype():
    x, w, b = _args()
    with pytest.raises(TypeError, match=r"bias must have dtype.*got bfloat16"):
        bigmodel.ops.layer_norm(x.half(), (8,), w.half(), b.bfloat16())


def test_bad_weight_bias_dtype_mismatch():
    x = torch.randn(2, 8, dtype=torch.float16)
    w, b = torch.randn(8), torch.randn(8, dtype=torch.float16)  # each allowed alone, not together
    with pytest.raises(TypeError, match=r"weight and bias must have the same dtype; got weight torch.float32"):
        bigmodel.ops.layer_norm(x, (8,), w, b)


def test_bad_weight_device():
    x, w, b = _args()
    with pytest.raises(ValueError, match=r"weight is on meta but input is on cpu"):
        bigmodel.ops.layer_norm(x, (8,), w.to("meta"), b)


def test_bad_bias_device():
    x, w, b = _args()
    with pytest.raises(ValueError, match=r"bias is on meta but input is on cpu"):
        bigmodel.ops.layer_norm(x, (8,), w, b.to("meta"))


@pytest.mark.parametrize("shape", [(7,), (2, 8), (4, 4, 8)])
def test_bad_normalized_shape(shape):
    x, _, _ = _args()
    with pytest.raises(ValueError, match=r"normalized_shape"):
        bigmodel.ops.layer_norm(x, shape)


@pytest.mark.parametrize("shape", [(), (0,), (-8,), (8.0,)])
def test_bad_normalized_shape_values(shape):
    x, _, _ = _args()
    with pytest.raises(ValueError, match=r"normalized_shape"):
        bigmodel.ops.layer_norm(x, shape)


def test_bad_weight_shape():
    x, _, b = _args()
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\).*got \(7,\)"):
        bigmodel.ops.layer_norm(x, (8,), torch.ones(7), b)


def test_bad_bias_shape():
    x, w, _ = _args()
    with pytest.raises(ValueError, match=r"bias must have shape \(8,\).*got \(1, 8\)"):
        bigmodel.ops.layer_norm(x, (8,), w, torch.zeros(1, 8))


def test_bad_eps():
    x, w, b = _args()
    with pytest.raises(ValueError, match=r"eps must be a non-negative"):
        bigmodel.ops.layer_norm(x, (8,), w, b, eps=-1e-5)


def test_unknown_backend():
    x, w, b = _args()
    with pytest.raises(ValueError, match=r"backend: expected one of .*'triton'.*got 'tritonn'"):
        bigmodel.ops.layer_norm(x, (8,), w, b, backend="tritonn")


# ------------------------------------------------------------------------------------------ found by the OpInfo run
def test_torch_backend_fp64_statistics_are_fp64():
    """In fp64 the pure-math backend keeps fp64 mean / rstd (they were rounded to fp32, so grad_w of a (1,)-shaped
    input was 1.25e-7 where torch gives 7e-17); the fake impl agrees (opcheck)."""
    x = torch.randn(1, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, dtype=torch.float64, requires_grad=True)
    y, mean, rstd = torch.ops.bigmodel.layer_norm(x, [1], w, b, 1e-5, "reference")
    assert mean.dtype == rstd.dtype == torch.float64
    g = torch.randn(1, dtype=torch.float64)
    ours = torch.autograd.grad(y, (x, w, b), g)
    theirs = torch.autograd.grad(F.layer_norm(x, (1,), w, b, 1e-5), (x, w, b), g)
    for a, t in zip(ours, theirs):
        assert (a - t).abs().max().item() < 1e-12  # fp64 noise; was 1.25e-7 with fp32 statistics
    x2 = torch.randn(3, 2, 5, dtype=torch.float64)
    torch.library.opcheck(torch.ops.bigmodel.layer_norm.default, (x2, [5], None, torch.randn(5, dtype=torch.float64),
                                                                  1e-5, "reference"))
    _y, mean, rstd = torch.ops.bigmodel.layer_norm(x2, [5], None, None, 1e-5, "reference")
    torch.library.opcheck(torch.ops.bigmodel.layer_norm_backward.default,
                          (torch.randn_like(x2), x2, [5], None, None, mean, rstd, "reference"))


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("shape", [(0, 4), (2, 0, 3)], ids=str)
def test_layer_norm_zero_rows(backend, dtype, shape, monkeypatch):
    """No rows: empty y and dx, zero dweight / dbias, like torch, and no kernel runs."""
    impl = bigmodel.backends.BACKENDS[backend]
    for fn in ("layer_norm_fwd", "layer_norm_bwd"):
        monkeypatch.setitem(vars(impl), fn, lambda *a, _fn=fn: pytest.fail(f"{_fn} ran on empty data"))
    x = torch.randn(shape).to(dtype).requires_grad_(True)
    w = torch.randn(shape[-1]).to(dtype).requires_grad_(True)
    b = torch.randn(shape[-1]).to(dtype).requires_grad_(True)
    y = bigmodel.ops.layer_norm(x, shape[-1:], w, b, backend=backend)
    assert y.shape == x.shape
    dx, dw, db = torch.autograd.grad(y, (x, w, b), torch.ones_like(y))
    assert dx.shape == x.shape and (dw == 0).all() and (db == 0).all() and dw.dtype == dtype
