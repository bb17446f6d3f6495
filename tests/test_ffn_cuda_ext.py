"""The feed-forward / activation / softmax entry points of the CUDA extension bigmodel._C
(bias_act_fwd / bias_act_bwd, act_fwd / act_bwd, softmax_fwd / softmax_bwd; contract in notes/ffn_contract.md), and
the input checks of linear_act_fwd / linear_act_bwd (the cuBLASLt linear_act; its GPU tests are in test_ffn_gpu.py).

* CPU-runnable: every entry point rejects bad input (CPU tensors, wrong dtype, unknown activation, wrong shapes
  and layouts) with a message naming the argument, what was expected and what arrived. The checks run before
  the device check, so they are exercised here with CPU tensors.
* `cuda`-marked: each entry point against fp64 PyTorch (F.gelu / F.relu with autograd, torch.softmax, bias
  column sums) at transformer sizes, fp32 / fp16 / bf16, by DESIGN.md's rule (numerics.assert_close_by_rule with
  plain PyTorch in the same dtype), vectorized and scalar (odd size / misaligned) paths, -inf and all -inf softmax
  rows, and bitwise determinism of dbias.

Skips when bigmodel._C is not built; under CI with nvcc (or BIGMODEL_REQUIRE_CUDA_EXT=1) that is a failure.
"""

import pytest
import torch
import torch.nn.functional as F

from conftest import extension_or_skip
from numerics import assert_close_by_rule


@pytest.fixture(scope="module")
def ext():
    return extension_or_skip("bias_act_fwd", "bias_act_bwd", "act_fwd", "act_bwd", "softmax_fwd", "softmax_bwd",
                             "linear_act_fwd", "linear_act_bwd")


ACTS = ["gelu", "gelu_tanh", "relu", "none"]
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16"),
          pytest.param(torch.bfloat16, id="bf16")]


# ================================================================================ input checks (CPU-runnable)
class TestBiasActChecks:
    def test_cpu_tensor(self, ext):
        z = torch.randn(4, 8)
        with pytest.raises(RuntimeError, match=r"bias_act_fwd: z must be a CUDA tensor; got a tensor on cpu"):
            ext.bias_act_fwd(z, torch.randn(8), "gelu")
        with pytest.raises(RuntimeError, match=r"bias_act_bwd: dy must be a CUDA tensor; got a tensor on cpu"):
            ext.bias_act_bwd(z, z, "gelu", True)

    def test_unknown_activation(self, ext):
        z = torch.randn(4, 8)
        msg = r"bias_act_fwd: activation must be one of 'gelu', 'gelu_tanh', 'relu', 'silu', 'none'; got 'swish'"
        with pytest.raises(RuntimeError, match=msg):
            ext.bias_act_fwd(z, None, "swish")
        with pytest.raises(RuntimeError, match=r"bias_act_bwd: activation must be one of .*; got 'GELU'"):
            ext.bias_act_bwd(z, z, "GELU", False)

    def test_dtype(self, ext):
        with pytest.raises(RuntimeError, match=r"bias_act_fwd: z must be float32, float16 or bfloat16; got Double"):
            ext.bias_act_fwd(torch.randn(4, 8, dtype=torch.float64), None, "relu")
        with pytest.raises(RuntimeError, match=r"bias_act_fwd: bias must have z's dtype \(Float\); got Half"):
            ext.bias_act_fwd(torch.randn(4, 8), torch.randn(8).half(), "gelu")
        with pytest.raises(RuntimeError, match=r"bias_act_bwd: pre must have dy's dtype \(BFloat16\); got Float"):
            ext.bias_act_bwd(torch.randn(4, 8).bfloat16(), torch.randn(4, 8), "gelu", True)
        with pytest.raises(RuntimeError, match=r"bias_act_bwd: dy must be float32, float16 or bfloat16; got Int"):
            ext.bias_act_bwd(torch.zeros(4, 8, dtype=torch.int32), torch.zeros(4, 8), "gelu", True)

    def test_shapes(self, ext):
        z = torch.randn(4, 8)
        with pytest.raises(RuntimeError, match=r"bias_act_fwd: z must be 2-D \(rows, cols\); got shape \[2, 4, 8\]"):
            ext.bias_act_fwd(torch.randn(2, 4, 8), None, "gelu")
        with pytest.raises(RuntimeError, match=r"bias_act_fwd: bias must have shape \(8,\) \(z's column count\); "
                                               r"got \[4\]"):
            ext.bias_act_fwd(z, torch.randn(4), "gelu")
        with pytest.raises(RuntimeError, match=r"bias_act_fwd: bias must be contiguous"):
            ext.bias_act_fwd(z, torch.randn(16)[::2], "gelu")
        with pytest.raises(RuntimeError, match=r"bias_act_fwd: z must have unit stride in its last dim"):
            ext.bias_act_fwd(torch.randn(8, 4).t(), None, "gelu")
        with pytest.raises(RuntimeError, match=r"bias_act_bwd: pre must have dy's shape \[4, 8\]; got \[4, 7\]"):
            ext.bias_act_bwd(z, torch.randn(4, 7), "gelu_tanh", True)
        with pytest.raises(RuntimeError, match=r"bias_act_bwd: pre \(relu: the output y\) must have dy's shape"):
            ext.bias_act_bwd(z, torch.randn(3, 8), "relu", False)

    def test_none_does_not_read_pre(self, ext):
        # "none" saves an empty tensor; the backward accepts it and only then fails on the device (CPU here).
        z = torch.randn(4, 8)
        with pytest.raises(RuntimeError, match=r"bias_act_bwd: dy must be a CUDA tensor"):
            ext.bias_act_bwd(z, torch.empty(0), "none", True)

    def test_keyword_names(self, ext):
        z = torch.randn(4, 8)
        with pytest.raises(RuntimeError, match=r"must be a CUDA tensor"):
            ext.bias_act_fwd(z=z, bias=None, activation="gelu")
        with pytest.raises(RuntimeError, match=r"must be a CUDA tensor"):
            ext.bias_act_bwd(dy=z, pre=z, activation="gelu", want_dbias=True)
        with pytest.raises(RuntimeError, match=r"must be a CUDA tensor"):
            ext.act_fwd(x=z, activation="gelu")
        with pytest.raises(RuntimeError, match=r"must be a CUDA tensor"):
            ext.act_bwd(dy=z, x=z, activation="relu")
        with pytest.raises(RuntimeError, match=r"must be a CUDA tensor"):
            ext.softmax_fwd(x=z)
        with pytest.raises(RuntimeError, match=r"must be a CUDA tensor"):
            ext.softmax_bwd(dy=z, y=z)


class TestActChecks:
    def test_cpu_tensor(self, ext):
        x = torch.randn(2, 3, 4)
        with pytest.raises(RuntimeError, match=r"act_fwd: x must be a CUDA tensor; got a tensor on cpu"):
            ext.act_fwd(x, "gelu")
        with pytest.raises(RuntimeError, match=r"act_bwd: x must be a CUDA tensor; got a tensor on cpu"):
            ext.act_bwd(x, x, "gelu_tanh")

    def test_unknown_activation(self, ext):
        x = torch.randn(5)
        msg = r"act_fwd: activation must be one of 'gelu', 'gelu_tanh', 'relu', 'silu'; got 'none'"
        with pytest.raises(RuntimeError, match=msg):
            ext.act_fwd(x, "none")
        with pytest.raises(RuntimeError, match=r"act_bwd: activation must be one of .*; got 'tanh'"):
            ext.act_bwd(x, x, "tanh")

    def test_dtype_shape_layout(self, ext):
        x = torch.randn(4, 6)
        with pytest.raises(RuntimeError, match=r"act_fwd: x must be float32, float16 or bfloat16; got Long"):
            ext.act_fwd(torch.zeros(3, dtype=torch.int64), "relu")
        with pytest.raises(RuntimeError, match=r"act_fwd: x must be contiguous; got shape \[6, 4\]"):
            ext.act_fwd(x.t(), "gelu")
        with pytest.raises(RuntimeError, match=r"act_bwd: dy must have x's dtype \(Float\); got Half"):
            ext.act_bwd(x.half(), x, "gelu")
        with pytest.raises(RuntimeError, match=r"act_bwd: dy must have x's shape \[4, 6\]; got \[24\]"):
            ext.act_bwd(x.reshape(24), x, "gelu")
        with pytest.raises(RuntimeError, match=r"act_bwd: dy must be contiguous"):
            ext.act_bwd(torch.randn(6, 4).t(), x, "gelu")


class TestSoftmaxChecks:
    def test_cpu_tensor(self, ext):
        x = torch.randn(4, 8)
        with pytest.raises(RuntimeError, match=r"softmax_fwd: x must be a CUDA tensor; got a tensor on cpu"):
            ext.softmax_fwd(x)
        with pytest.raises(RuntimeError, match=r"softmax_bwd: y must be a CUDA tensor; got a tensor on cpu"):
            ext.softmax_bwd(x, x)

    def test_dtype_shape_layout(self, ext):
        x = torch.randn(4, 8)
        with pytest.raises(RuntimeError, match=r"softmax_fwd: x must be float32, float16 or bfloat16; got Double"):
            ext.softmax_fwd(x.double())
        with pytest.raises(RuntimeError, match=r"softmax_fwd: x must be 2-D \(rows, cols\).*; got shape \[8\]"):
            ext.softmax_fwd(torch.randn(8))
        with pytest.raises(RuntimeError, match=r"softmax_fwd: x must be 2-D .*got shape \[2, 4, 8\]"):
            ext.softmax_fwd(torch.randn(2, 4, 8))
        with pytest.raises(RuntimeError, match=r"softmax_fwd: x must have unit stride in its last dim"):
            ext.softmax_fwd(torch.randn(8, 4).t())
        with pytest.raises(RuntimeError, match=r"softmax_bwd: dy must have y's dtype \(Float\); got BFloat16"):
            ext.softmax_bwd(x.bfloat16(), x)
        with pytest.raises(RuntimeError, match=r"softmax_bwd: dy must have y's shape \[4, 8\]; got \[8, 4\]"):
            ext.softmax_bwd(torch.randn(8, 4), x)
        with pytest.raises(RuntimeError, match=r"softmax_bwd: dy must have unit stride in its last dim"):
            ext.softmax_bwd(torch.randn(8, 4).t(), x)


class TestLinearActChecks:
    """linear_act_fwd / linear_act_bwd (csrc/linear_act, the cuBLASLt path); the GPU tests are in test_ffn_gpu.py."""

    def test_cpu_tensor(self, ext):
        x, w = torch.randn(4, 8), torch.randn(5, 8)
        with pytest.raises(RuntimeError, match=r"linear_act_fwd: x must be a CUDA tensor; got a tensor on cpu"):
            ext.linear_act_fwd(x, w, torch.randn(5), "gelu")
        with pytest.raises(RuntimeError, match=r"linear_act_bwd: dy must be a CUDA tensor; got a tensor on cpu"):
            ext.linear_act_bwd(torch.randn(4, 5), x, w, torch.randn(4, 5), "gelu", True)

    def test_unknown_activation(self, ext):
        x, w = torch.randn(4, 8), torch.randn(5, 8)
        msg = r"linear_act_fwd: activation must be one of 'gelu', 'gelu_tanh', 'relu', 'silu', 'none'; got 'swish'"
        with pytest.raises(RuntimeError, match=msg):
            ext.linear_act_fwd(x, w, None, "swish")
        with pytest.raises(RuntimeError, match=r"linear_act_bwd: activation must be one of .*; got 'Relu'"):
            ext.linear_act_bwd(torch.randn(4, 5), x, w, torch.empty(0), "Relu", False)

    def test_dtype(self, ext):
        x, w = torch.randn(4, 8), torch.randn(5, 8)
        with pytest.raises(RuntimeError, match=r"linear_act_fwd: x must be float32, float16 or bfloat16; got Double"):
            ext.linear_act_fwd(x.double(), w.double(), None, "none")
        with pytest.raises(RuntimeError, match=r"linear_act_fwd: weight must have x's dtype \(Float\); got Half"):
            ext.linear_act_fwd(x, w.half(), None, "relu")
        with pytest.raises(RuntimeError, match=r"linear_act_fwd: bias must have x's dtype \(BFloat16\); got Float"):
            ext.linear_act_fwd(x.bfloat16(), w.bfloat16(), torch.randn(5), "gelu")
        dy = torch.randn(4, 5)
        with pytest.raises(RuntimeError, match=r"linear_act_bwd: dy must be float32, float16 or bfloat16; got Int"):
            ext.linear_act_bwd(dy.int(), x, w, dy, "gelu", True)
        with pytest.raises(RuntimeError, match=r"linear_act_bwd: x must have dy's dtype \(Float\); got Half"):
            ext.linear_act_bwd(dy, x.half(), w, dy, "gelu", True)
        with pytest.raises(RuntimeError, match=r"linear_act_bwd: weight must have dy's dtype \(Float\); got BFloat16"):
            ext.linear_act_bwd(dy, x, w.bfloat16(), dy, "gelu", True)
        with pytest.raises(RuntimeError, match=r"linear_act_bwd: saved \(the pre-activation\) must have dy's dtype"):
            ext.linear_act_bwd(dy, x, w, dy.half(), "gelu_tanh", True)

    def test_shapes(self, ext):
        x, w = torch.randn(4, 8), torch.randn(5, 8)
        with pytest.raises(RuntimeError, match=r"linear_act_fwd: x must be 2-D \(M, K\); got shape \[2, 4, 8\]"):
            ext.linear_act_fwd(torch.randn(2, 4, 8), w, None, "gelu")
        with pytest.raises(RuntimeError, match=r"linear_act_fwd: weight must have shape \(N, 8\) \(K = x's last dim\); "
                                               r"got \[5, 7\]"):
            ext.linear_act_fwd(x, torch.randn(5, 7), None, "gelu")
        with pytest.raises(RuntimeError, match=r"linear_act_fwd: weight must have shape \(N, 8\).*got \[40\]"):
            ext.linear_act_fwd(x, torch.randn(40), None, "none")
        with pytest.raises(RuntimeError, match=r"linear_act_fwd: bias must have shape \(5,\) "
                                               r"\(N = weight's first dim\); got \[4\]"):
            ext.linear_act_fwd(x, w, torch.randn(4), "relu")
        with pytest.raises(RuntimeError, match=r"linear_act_fwd: bias must be contiguous; got strides \[2\]"):
            ext.linear_act_fwd(x, w, torch.randn(10)[::2], "gelu")
        dy = torch.randn(4, 5)
        with pytest.raises(RuntimeError, match=r"linear_act_bwd: dy must be 2-D \(M, N\); got shape \[20\]"):
            ext.linear_act_bwd(dy.reshape(20), x, w, dy, "gelu", True)
        with pytest.raises(RuntimeError, match=r"linear_act_bwd: dy must have unit stride in its last dim"):
            ext.linear_act_bwd(torch.randn(5, 4).t(), x, w, dy, "gelu", True)
        with pytest.raises(RuntimeError, match=r"linear_act_bwd: x must have shape \(4, K\) \(M = dy's rows\); "
                                               r"got \[3, 8\]"):
            ext.linear_act_bwd(dy, torch.randn(3, 8), w, dy, "gelu", True)
        with pytest.raises(RuntimeError, match=r"linear_act_bwd: weight must have shape \[5, 8\]; got \[5, 7\]"):
            ext.linear_act_bwd(dy, x, torch.randn(5, 7), dy, "gelu", True)
        with pytest.raises(RuntimeError, match=r"linear_act_bwd: saved \(the pre-activation\) must have shape "
                                               r"\[4, 5\]; got \[4, 6\]"):
            ext.linear_act_bwd(dy, x, w, torch.randn(4, 6), "gelu", True)
        with pytest.raises(RuntimeError, match=r"linear_act_bwd: saved \(relu: the output y\) must have shape"):
            ext.linear_act_bwd(dy, x, w, torch.empty(0), "relu", False)

    def test_none_does_not_read_saved(self, ext):
        # activation none saves an empty tensor; the backward accepts it and only then fails on the device (CPU here)
        dy, x, w = torch.randn(4, 5), torch.randn(4, 8), torch.randn(5, 8)
        with pytest.raises(RuntimeError, match=r"linear_act_bwd: dy must be a CUDA tensor"):
            ext.linear_act_bwd(dy, x, w, torch.empty(0), "none", True)

    def test_keyword_names(self, ext):
        x, w, dy = torch.randn(4, 8), torch.randn(5, 8), torch.randn(4, 5)
        with pytest.raises(RuntimeError, match=r"must be a CUDA tensor"):
            ext.linear_act_fwd(x=x, weight=w, bias=None, activation="none")
        with pytest.raises(RuntimeError, match=r"must be a CUDA tensor"):
            ext.linear_act_bwd(dy=dy, x=x, weight=w, saved=dy, activation="gelu", want_dbias=False)


# ================================================================================ GPU: against fp64 PyTorch
def _act64(name, t):
    if name == "gelu":
        return F.gelu(t)
    if name == "gelu_tanh":
        return F.gelu(t, approximate="tanh")
    if name == "relu":
        return F.relu(t)
    return t


def _act_grad(name, x, dy):
    """(act(x), d act(x) / dx . dy) by PyTorch autograd, in x's own dtype."""
    x = x.detach().clone().requires_grad_(True)
    y = _act64(name, x)
    if name == "none":
        return y.detach(), dy.clone()
    y.backward(dy)
    return y.detach(), x.grad


def _randn(*shape, dtype, scale=2.0):
    return (torch.randn(*shape, device="cuda") * scale).to(dtype)


BIAS_ACT_SHAPES = [(16384, 4096), (4096, 3072), (1000, 1030), (7, 5), (1, 1)]


@pytest.mark.cuda
class TestBiasActGPU:
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("act", ACTS)
    @pytest.mark.parametrize("shape", BIAS_ACT_SHAPES, ids=[f"{m}x{n}" for m, n in BIAS_ACT_SHAPES])
    @pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
    def test_fwd_bwd(self, ext, shape, act, dtype, with_bias):
        m, n = shape
        z = _randn(m, n, dtype=dtype)
        b = _randn(n, dtype=dtype, scale=0.5) if with_bias else None
        y, pre = ext.bias_act_fwd(z, b, act)
        assert y.shape == (m, n) and y.dtype == dtype and y.is_contiguous()
        pre_lowp = z + b if b is not None else z.clone()
        pre64 = z.double() + (b.double() if b is not None else 0)
        assert_close_by_rule("y", y, _act64(act, pre64), _act64(act, pre_lowp), "output")
        if act in ("gelu", "gelu_tanh"):
            assert pre.shape == (m, n) and pre.dtype == dtype
            assert_close_by_rule("pre", pre, pre64, pre_lowp, "output")
        else:
            assert pre.numel() == 0, f"{act}: pre should be empty, got shape {tuple(pre.shape)}"

        # backward from the tensors the forward saved (relu: its output y; none: the empty pre)
        dy = _randn(m, n, dtype=dtype, scale=1.0)
        saved = y if act == "relu" else pre
        for want_dbias in (True, False):
            dz, dbias = ext.bias_act_bwd(dy, saved, act, want_dbias)
            if not want_dbias:
                assert dbias.numel() == 0
        # exact: the derivative at the exact pre-activation; plain PyTorch: at its own rounded z + b
        _, dz64 = _act_grad(act, pre64, dy.double())
        _, dz_lowp = _act_grad(act, pre_lowp, dy)
        dz, dbias = ext.bias_act_bwd(dy, saved, act, True)
        assert dz.shape == (m, n) and dz.dtype == dtype
        assert_close_by_rule("dz", dz, dz64, dz_lowp, "grad")
        assert dbias.shape == (n,) and dbias.dtype == dtype
        assert_close_by_rule("dbias", dbias, dz64.sum(0), dz_lowp.sum(0), "grad")

    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("act", ["gelu", "relu"])
    def test_dbias_bitwise_deterministic(self, ext, act, dtype):
        m, n = 16384, 4096
        z = _randn(m, n, dtype=dtype)
        y, pre = ext.bias_act_fwd(z, _randn(n, dtype=dtype), act)
        saved = y if act == "relu" else pre
        dy = _randn(m, n, dtype=dtype, scale=1.0)
        first_dz, first = ext.bias_act_bwd(dy, saved, act, True)
        for _ in range(3):
            dz, dbias = ext.bias_act_bwd(dy, saved, act, True)
            assert torch.equal(dbias, first), "dbias differs between identical calls"
            assert torch.equal(dz, first_dz)

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_row_strided_inputs(self, ext, dtype):
        """z / dy / pre with a row stride larger than the row (unit last stride): vector path when aligned."""
        m, n, pad = 512, 1024, 64
        zbuf = _randn(m, n + pad, dtype=dtype)
        z = zbuf[:, :n]
        b = _randn(n, dtype=dtype, scale=0.5)
        y, pre = ext.bias_act_fwd(z, b, "gelu")
        ref_y, _ = ext.bias_act_fwd(z.contiguous(), b, "gelu")
        assert torch.equal(y, ref_y)
        dy = _randn(m, n + pad, dtype=dtype)[:, :n]
        prebuf = torch.empty(m, n + pad, device="cuda", dtype=dtype)
        prebuf[:, :n] = pre
        dz, db = ext.bias_act_bwd(dy, prebuf[:, :n], "gelu", True)
        dz_ref, db_ref = ext.bias_act_bwd(dy.contiguous(), pre, "gelu", True)
        assert torch.equal(dz, dz_ref) and torch.equal(db, db_ref)

    def test_zero_rows(self, ext):
        z = torch.empty(0, 8, device="cuda")
        y, pre = ext.bias_act_fwd(z, torch.randn(8, device="cuda"), "gelu")
        assert y.shape == (0, 8) and pre.shape == (0, 8)
        dz, dbias = ext.bias_act_bwd(z, z, "gelu", True)
        assert dz.shape == (0, 8) and torch.equal(dbias, torch.zeros(8, device="cuda"))


ACT_SHAPES = [(16384, 4096), (3, 1000, 1001), (17,), (1,)]


@pytest.mark.cuda
class TestActGPU:
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("act", ["gelu", "gelu_tanh", "relu"])
    @pytest.mark.parametrize("shape", ACT_SHAPES, ids=["x".join(map(str, s)) for s in ACT_SHAPES])
    @pytest.mark.parametrize("misaligned", [False, True], ids=["aligned", "offset1"])
    def test_fwd_bwd(self, ext, shape, act, dtype, misaligned):
        numel = 1
        for s in shape:
            numel *= s
        if misaligned:  # storage offset of one element: the scalar (VEC = 1) path
            x = _randn(numel + 1, dtype=dtype)[1:].view(shape)
            dy = _randn(numel + 1, dtype=dtype, scale=1.0)[1:].view(shape)
        else:
            x = _randn(*shape, dtype=dtype)
            dy = _randn(*shape, dtype=dtype, scale=1.0)
        y = ext.act_fwd(x, act)
        dx = ext.act_bwd(dy, x, act)
        assert y.shape == x.shape and y.dtype == dtype and dx.shape == x.shape and dx.dtype == dtype
        y64, dx64 = _act_grad(act, x.double(), dy.double())
        y_lowp, dx_lowp = _act_grad(act, x, dy)
        assert_close_by_rule("y", y, y64, y_lowp, "output")
        assert_close_by_rule("dx", dx, dx64, dx_lowp, "grad")

    def test_relu_nan_and_empty(self, ext):
        x = torch.tensor([float("nan"), -1.0, 0.0, 2.0], device="cuda")
        y = ext.act_fwd(x, "relu")
        assert torch.isnan(y[0]) and y[1:].tolist() == [0.0, 0.0, 2.0]
        e = torch.empty(0, 3, device="cuda")
        assert ext.act_fwd(e, "gelu").shape == (0, 3)
        assert ext.act_bwd(e, e, "gelu").shape == (0, 3)


SOFTMAX_COLS = [1, 65, 1000, 1023, 4096, 4097, 32768, 131072]


def _softmax_rows(n):
    return max(4, min(16384, (1 << 26) // n))


@pytest.mark.cuda
class TestSoftmaxGPU:
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("n", SOFTMAX_COLS)
    @pytest.mark.parametrize("row_pad", [0, 8], ids=["contiguous", "row_strided"])
    def test_fwd_bwd(self, ext, n, dtype, row_pad):
        m = _softmax_rows(n)
        xbuf = _randn(m, n + row_pad, dtype=dtype, scale=3.0)
        x = xbuf[:, :n]
        if n > 1:  # -inf entries in every 3rd row (about 10% of each), and one row all -inf
            mask = (torch.rand(m, n, device="cuda") < 0.1) & (torch.arange(m, device="cuda") % 3 == 0)[:, None]
            mask[:, 0] = False  # those rows keep a finite entry
            x.masked_fill_(mask, float("-inf"))
        dead = m // 2
        x[dead] = float("-inf")
        dy = _randn(m, n + row_pad, dtype=dtype, scale=1.0)[:, :n]

        y = ext.softmax_fwd(x)
        dx = ext.softmax_bwd(dy, y)
        assert y.shape == (m, n) and y.dtype == dtype and y.is_contiguous() and dx.shape == (m, n)

        x64 = x.double().requires_grad_(True)
        y64 = torch.softmax(x64, -1)
        y64.backward(dy.double())
        xl = x.clone().requires_grad_(True)
        yl = torch.softmax(xl, -1)
        yl.backward(dy)
        # the all -inf row is NaN, exactly as torch.softmax gives
        assert torch.isnan(y64[dead]).all() and torch.isnan(yl[dead]).all()
        assert torch.isnan(y[dead]).all(), f"all -inf row: expected NaN, got {y[dead][:8].tolist()}"
        live = torch.ones(m, dtype=torch.bool, device="cuda")
        live[dead] = False
        assert_close_by_rule("y", y[live], y64.detach()[live], yl.detach()[live], "output")
        assert_close_by_rule("dx", dx[live], x64.grad[live], xl.grad[live], "grad")
        if n > 1:  # -inf entries give exactly 0
            masked_rows = torch.isinf(x) & live[:, None]
            assert (y[masked_rows] == 0).all() and (dx[masked_rows] == 0).all()

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_extreme_values(self, ext, dtype):
        """Large magnitudes (the max subtraction keeps exp finite) and a row whose max comes late."""
        m, n = 64, 8192
        x = _randn(m, n, dtype=dtype, scale=1.0)
        x[:, -1] = 60.0  # the online max grows at the end of the row
        x[0] = torch.linspace(-1e4, 1e4, n, device="cuda").to(dtype)
        y = ext.softmax_fwd(x)
        y64 = torch.softmax(x.double(), -1)
        assert_close_by_rule("y", y, y64, torch.softmax(x, -1), "output")

    def test_empty(self, ext):
        assert ext.softmax_fwd(torch.empty(0, 7, device="cuda")).shape == (0, 7)
        assert ext.softmax_fwd(torch.empty(3, 0, device="cuda")).shape == (3, 0)
