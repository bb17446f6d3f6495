"""The CUDA extension bigmodel._C: built wherever it can be (CI has nvcc, so a skipped build fails there),
compiled for sm_80 and sm_90 without spills, and its input checks answer CPU tensors with clear errors."""
import os
import re
import shutil
import subprocess

import pytest
import torch

from conftest import extension_or_skip


@pytest.fixture(scope="module")
def ext():
    return extension_or_skip("layer_norm_fwd", "layer_norm_bwd")


def _cuobjdump():
    triton = pytest.importorskip("triton")
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return path if os.path.exists(path) else shutil.which("cuobjdump") or pytest.skip("no cuobjdump")


def test_extension_has_sm80_and_sm90_code(ext):
    out = subprocess.run([_cuobjdump(), "-lelf", ext.__file__], capture_output=True, text=True, check=True).stdout
    for arch in ("sm_80", "sm_90"):
        assert arch in out, f"bigmodel._C has no {arch} cubin:\n{out}"


def test_extension_kernels_do_not_spill(ext, capsys):
    out = subprocess.run([_cuobjdump(), "-res-usage", ext.__file__], capture_output=True, text=True,
                         check=True).stdout
    kernels = re.findall(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    assert kernels, f"cuobjdump listed no kernels:\n{out[:2000]}"
    with capsys.disabled():
        print(f"\nbigmodel._C: {len(kernels)} kernel builds")
        for name, reg, stack, shared, local in kernels:
            print(f"  regs={reg:<3} stack={stack:<3} shared={shared:<5} local={local}  {name[:110]}")
    assert {k[0] for k in kernels if "layer_norm" in k[0]}, "no LayerNorm kernels in bigmodel._C"
    spilling = [k for k in kernels if int(k[2]) or int(k[4])]
    assert not spilling, f"kernels with stack/local memory (spills): {spilling}"


def test_extension_rejects_cpu_tensors_with_clear_message(ext):
    x = torch.randn(4, 8)
    with pytest.raises(RuntimeError, match=r"layer_norm_fwd: x must be a CUDA tensor; got a tensor on cpu"):
        ext.layer_norm_fwd(x, None, None, 1e-5)
    with pytest.raises(RuntimeError, match=r"layer_norm_bwd: x must be a CUDA tensor"):
        ext.layer_norm_bwd(x, x, None, None, torch.zeros(4), torch.ones(4))


# ---- the Llama-family entry points: RMSNorm, rotary, silu and the gated activations
NEW_FUNCTIONS = ("rms_norm_fwd", "rms_norm_bwd", "add_rms_norm_fwd", "add_rms_norm_bwd", "rotary_fwd", "rotary_bwd",
                 "gated_activation_fwd", "gated_activation_bwd")


@pytest.fixture(scope="module")
def ext_llama():
    return extension_or_skip(*NEW_FUNCTIONS)


def test_extension_has_the_llama_kernels(ext_llama):
    out = subprocess.run([_cuobjdump(), "-res-usage", ext_llama.__file__], capture_output=True, text=True,
                         check=True).stdout
    for kernel in ("rotary_kernel", "gated_kernel", "ln_fwd_kernel", "ln_bwd_dx_kernel"):
        assert kernel in out, f"bigmodel._C has no {kernel}"


def _t(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


def raises(pattern, fn, *args):
    with pytest.raises(RuntimeError, match=pattern):
        fn(*args)


def test_rms_norm_rejects_bad_input(ext_llama):
    e = ext_llama
    x, w, rstd = _t(4, 8), _t(8), torch.ones(4)
    raises(r"rms_norm_fwd: x must be a CUDA tensor; got a tensor on cpu", e.rms_norm_fwd, x, w, 1e-6)
    raises(r"rms_norm_fwd: x must be a CUDA tensor; got a tensor on cpu", e.rms_norm_fwd, x, None, 1e-6)
    raises(r"rms_norm_fwd: x must be 2-D \(rows, cols\); got shape \[2, 2, 8\]", e.rms_norm_fwd, _t(2, 2, 8), w, 1e-6)
    raises(r"rms_norm_fwd: x must be float32, float16 or bfloat16; got Long", e.rms_norm_fwd,
           torch.ones(4, 8, dtype=torch.long), None, 1e-6)
    raises(r"rms_norm_fwd: x must have 1 to \d+ columns; got 0", e.rms_norm_fwd, _t(4, 0), None, 1e-6)
    raises(r"rms_norm_fwd: x must have unit stride in its last dim", e.rms_norm_fwd, _t(8, 4).t(), w, 1e-6)
    raises(r"rms_norm_fwd: weight must have shape \[8\]; got \[7\]", e.rms_norm_fwd, x, _t(7), 1e-6)
    raises(r"rms_norm_fwd: weight must have x's dtype \(bfloat16\) or float32; got float16", e.rms_norm_fwd,
           _t(4, 8, dtype=torch.bfloat16), _t(8, dtype=torch.float16), 1e-6)
    raises(r"rms_norm_fwd: weight must be contiguous", e.rms_norm_fwd, x, _t(16)[::2], 1e-6)
    raises(r"rms_norm_fwd: eps must be non-negative; got -1", e.rms_norm_fwd, x, w, -1.0)
    raises(r"rms_norm_bwd: x must be a CUDA tensor; got a tensor on cpu", e.rms_norm_bwd, x, x, w, rstd)
    raises(r"rms_norm_bwd: dy must have shape \[4, 8\]; got \[4, 9\]", e.rms_norm_bwd, _t(4, 9), x, w, rstd)
    raises(r"rms_norm_bwd: dy must have x's dtype \(Float\); got Half", e.rms_norm_bwd,
           _t(4, 8, dtype=torch.float16), x, w, rstd)
    raises(r"rms_norm_bwd: rstd must have shape \[4\]; got \[5\]", e.rms_norm_bwd, x, x, w, torch.ones(5))
    raises(r"rms_norm_bwd: rstd must be a contiguous float32 tensor; got Half", e.rms_norm_bwd, x, x, w,
           torch.ones(4, dtype=torch.float16))


def test_add_rms_norm_rejects_bad_input(ext_llama):
    e = ext_llama
    x, w, rstd = _t(4, 8), _t(8), torch.ones(4)
    raises(r"add_rms_norm_fwd: x must be a CUDA tensor; got a tensor on cpu", e.add_rms_norm_fwd, x, x, w, 1e-6)
    raises(r"add_rms_norm_fwd: residual must have shape \[4, 8\]; got \[4, 9\]", e.add_rms_norm_fwd, x, _t(4, 9),
           w, 1e-6)
    raises(r"add_rms_norm_fwd: residual must have x's dtype \(Float\); got BFloat16", e.add_rms_norm_fwd, x,
           _t(4, 8, dtype=torch.bfloat16), w, 1e-6)
    raises(r"add_rms_norm_fwd: residual must have unit stride in its last dim", e.add_rms_norm_fwd, x,
           _t(8, 4).t(), w, 1e-6)
    raises(r"add_rms_norm_bwd: h must be a CUDA tensor; got a tensor on cpu", e.add_rms_norm_bwd, x, x, x, w, rstd)
    raises(r"add_rms_norm_bwd: dh must have shape \[4, 8\]; got \[3, 8\]", e.add_rms_norm_bwd, x, _t(3, 8), x, w,
           rstd)
    raises(r"add_rms_norm_bwd: dy must have h's dtype", e.add_rms_norm_bwd, _t(4, 8, dtype=torch.float16), x, x, w,
           rstd)


def test_rotary_rejects_bad_input(ext_llama):
    e = ext_llama
    x, c = _t(2, 3, 5, 16), _t(2, 3, 5, 16)
    raises(r"rotary_fwd: x must be a CUDA tensor; got a tensor on cpu", e.rotary_fwd, x, c, c, False)
    raises(r"rotary_bwd: dy must be a CUDA tensor; got a tensor on cpu", e.rotary_bwd, x, c, c, True)
    # a broadcast (stride-0) table view is the expected layout, not an error
    cb = _t(5, 8).expand(2, 3, 5, 8)
    raises(r"rotary_fwd: x must be a CUDA tensor", e.rotary_fwd, x, cb, cb, False)
    raises(r"rotary_fwd: x must be 4-D \(B, H, L, D\); got shape \[3, 5, 16\]", e.rotary_fwd, _t(3, 5, 16), c, c,
           False)
    raises(r"rotary_fwd: x must be float32, float16 or bfloat16; got Double", e.rotary_fwd, x.double(), c, c, False)
    raises(r"rotary_fwd: x must have unit stride in its last dim", e.rotary_fwd, _t(2, 3, 16, 5).transpose(2, 3),
           _t(2, 3, 16, 5), _t(2, 3, 16, 5), False)
    raises(r"rotary_fwd: cos must have x's dtype \(bfloat16\) or float32; got float16", e.rotary_fwd,
           x.bfloat16(), c.half(), c.half(), False)
    raises(r"rotary_fwd: sin must have cos's dtype \(Float\); got BFloat16", e.rotary_fwd, x, c, c.bfloat16(), False)
    raises(r"rotary_fwd: the rotary dim R = cos.size\(-1\) must be even and in \[2, 16\] \(x's head dim\); got 7",
           e.rotary_fwd, x, _t(2, 3, 5, 7), _t(2, 3, 5, 7), False)
    raises(r"rotary_fwd: the rotary dim .* got 18", e.rotary_fwd, x, _t(2, 3, 5, 18), _t(2, 3, 5, 18), False)
    raises(r"rotary_fwd: cos must be 4-D \(B, H, L, R\)", e.rotary_fwd, x, _t(5, 16), _t(5, 16), False)
    raises(r"rotary_fwd: cos must have shape \[2, 3, 5, 16\]; got \[2, 3, 4, 16\]", e.rotary_fwd, x,
           _t(2, 3, 4, 16), _t(2, 3, 4, 16), False)
    raises(r"rotary_fwd: sin must have shape \[2, 3, 5, 16\]; got \[2, 3, 5, 8\]", e.rotary_fwd, x, c,
           _t(2, 3, 5, 8), False)
    raises(r"rotary_fwd: cos must have unit stride in its last dim", e.rotary_fwd, x, _t(2, 3, 16, 5).transpose(2, 3)[
        :, :, :5], c, False)


def test_gated_activation_rejects_bad_input(ext_llama):
    e = ext_llama
    g = _t(4, 8)
    raises(r"gated_activation_fwd: gate must be a CUDA tensor; got a tensor on cpu", e.gated_activation_fwd, g, g,
           "silu")
    raises(r"gated_activation_bwd: gate must be a CUDA tensor; got a tensor on cpu", e.gated_activation_bwd, g, g, g,
           "gelu_tanh")
    raises(r"gated_activation_fwd: activation must be one of 'silu', 'gelu', 'gelu_tanh'; got 'relu'",
           e.gated_activation_fwd, g, g, "relu")
    raises(r"gated_activation_fwd: gate must be float32, float16 or bfloat16; got Int", e.gated_activation_fwd,
           torch.ones(4, 8, dtype=torch.int), g, "silu")
    raises(r"gated_activation_fwd: gate must be contiguous", e.gated_activation_fwd, _t(8, 4).t(), g, "silu")
    raises(r"gated_activation_fwd: up must have gate's dtype \(Float\); got Half", e.gated_activation_fwd, g,
           g.half(), "silu")
    raises(r"gated_activation_fwd: up must have gate's shape \[4, 8\]; got \[4, 9\]", e.gated_activation_fwd, g,
           _t(4, 9), "gelu")
    raises(r"gated_activation_bwd: dy must have gate's shape \[4, 8\]; got \[8, 4\]", e.gated_activation_bwd,
           _t(8, 4), g, g, "silu")
    raises(r"gated_activation_bwd: up must be contiguous", e.gated_activation_bwd, g, g, _t(8, 4).t(), "silu")


def test_silu_is_a_cuda_activation(ext_llama):
    e, x = ext_llama, _t(4, 8)
    raises(r"act_fwd: x must be a CUDA tensor; got a tensor on cpu", e.act_fwd, x, "silu")
    raises(r"act_bwd: x must be a CUDA tensor; got a tensor on cpu", e.act_bwd, x, x, "silu")
    raises(r"act_fwd: activation must be one of 'gelu', 'gelu_tanh', 'relu', 'silu'; got 'swish'", e.act_fwd, x,
           "swish")
    raises(r"bias_act_fwd: z must be a CUDA tensor; got a tensor on cpu", e.bias_act_fwd, x, _t(8), "silu")
    raises(r"bias_act_bwd: dy must be a CUDA tensor; got a tensor on cpu", e.bias_act_bwd, x, x, "silu", True)
    raises(r"bias_act_bwd: pre must have dy's shape", e.bias_act_bwd, x, _t(4, 9), "silu", True)
    raises(r"linear_act_fwd: x must be a CUDA tensor; got a tensor on cpu", e.linear_act_fwd, x, _t(3, 8), None,
           "silu")
    raises(r"linear_act_bwd: saved \(the pre-activation\) must have shape \[4, 3\]; got \[0\]", e.linear_act_bwd,
           _t(4, 3), x, _t(3, 8), torch.empty(0), "silu", False)


def test_cuda_backend_offers_the_llama_ops(monkeypatch):
    """With the machine's reasons cleared, the cuda backend names only the device for CPU inputs, and its own limits."""
    from bigmodel.backends import BACKENDS

    cuda = BACKENDS["cuda"]
    monkeypatch.setattr(cuda, "machine_reasons", lambda: [])
    device = ["inputs are on cpu; the cuda backend needs CUDA tensors"]
    x, c = torch.randn(4, 8), torch.randn(1, 1, 4, 8)
    assert cuda.not_supported_reasons("rms_norm", input=x, weight=None) == device
    assert cuda.not_supported_reasons("add_rms_norm", input=x, residual=x, weight=torch.randn(8)) == device
    assert cuda.not_supported_reasons("rotary", input=x.view(1, 1, 4, 8), cos=c, sin=c, interleaved=True) == device
    for act in ("silu", "gelu", "gelu_tanh"):
        assert cuda.not_supported_reasons("gated_activation", input=x, up=x, activation=act) == device
    assert cuda.not_supported_reasons("activation", input=x, activation="silu") == device
    assert "not 'relu'" in cuda.not_supported_reasons("gated_activation", input=x, up=x, activation="relu")[-1]
    assert "at least 1 column" in cuda.not_supported_reasons("rms_norm", input=torch.randn(4, 0), weight=None)[-1]
    assert cuda.SAVES_PRE_ACTIVATION == ("gelu", "gelu_tanh", "silu")


# ---- cross-entropy (csrc/cross_entropy)
CROSS_ENTROPY_FUNCTIONS = ("cross_entropy_fwd", "cross_entropy_bwd")


@pytest.fixture(scope="module")
def ext_ce():
    return extension_or_skip(*CROSS_ENTROPY_FUNCTIONS)


def test_extension_has_the_cross_entropy_kernels(ext_ce):
    out = subprocess.run([_cuobjdump(), "-res-usage", ext_ce.__file__], capture_output=True, text=True,
                         check=True).stdout
    for kernel in ("cross_entropy_fwd_kernel", "cross_entropy_bwd_kernel"):
        assert kernel in out, f"bigmodel._C has no {kernel}"
    assert ext_ce.cross_entropy_fwd.__doc__ and "loss" in ext_ce.cross_entropy_fwd.__doc__
    assert ext_ce.cross_entropy_bwd.__doc__ and "out" in ext_ce.cross_entropy_bwd.__doc__


def test_cross_entropy_fwd_rejects_bad_input(ext_ce):
    e = ext_ce
    x, t = _t(4, 10), torch.tensor([1, 2, -100, 9])
    fwd = e.cross_entropy_fwd
    raises(r"cross_entropy_fwd: logits must be a CUDA tensor; got a tensor on cpu", fwd, x, t, -100, 0.0, 0.0)
    for dt in (torch.float16, torch.bfloat16):  # every kernel dtype passes the checks and reaches the device check
        raises(r"cross_entropy_fwd: logits must be a CUDA tensor", fwd, x.to(dt), t, -100, 0.1, 30.0)
    raises(r"cross_entropy_fwd: logits must be float32, float16 or bfloat16; got Double", fwd, x.double(), t, -100,
           0.0, 0.0)
    raises(r"cross_entropy_fwd: logits must be 2-D \(N, C\).*; got shape \[2, 2, 10\]", fwd, _t(2, 2, 10), t, -100,
           0.0, 0.0)
    raises(r"cross_entropy_fwd: logits must have 1 to \d+ columns \(classes\); got 0", fwd, _t(4, 0), t, -100, 0.0,
           0.0)
    raises(r"cross_entropy_fwd: logits must have unit stride in its last dim; got strides \[1, 4\]", fwd,
           _t(10, 4).t(), t, -100, 0.0, 0.0)
    raises(r"cross_entropy_fwd: target must be an int64 tensor of class indices; got Float", fwd, x, t.float(), -100,
           0.0, 0.0)
    raises(r"cross_entropy_fwd: target must be an int64 tensor of class indices; got Int", fwd, x, t.int(), -100,
           0.0, 0.0)
    raises(r"cross_entropy_fwd: target must have shape \(4,\) \(logits' rows\); got \[3\]", fwd, x, t[:3], -100, 0.0,
           0.0)
    raises(r"cross_entropy_fwd: target must have shape \(4,\) \(logits' rows\); got \[4, 1\]", fwd, x, t[:, None],
           -100, 0.0, 0.0)
    raises(r"cross_entropy_fwd: target must be contiguous; got strides \[2\]", fwd, x, torch.arange(8)[::2], -100,
           0.0, 0.0)
    raises(r"cross_entropy_fwd: label_smoothing must be in \[0, 1\]; got -0.1", fwd, x, t, -100, -0.1, 0.0)
    raises(r"cross_entropy_fwd: label_smoothing must be in \[0, 1\]; got 1.5", fwd, x, t, -100, 1.5, 0.0)
    raises(r"cross_entropy_fwd: softcap must be finite and non-negative \(0 = off\); got -1", fwd, x, t, -100, 0.0,
           -1.0)
    raises(r"cross_entropy_fwd: softcap must be finite and non-negative \(0 = off\); got inf", fwd, x, t, -100, 0.0,
           float("inf"))
    # a row-padded (any row stride) logits view and an empty batch pass the checks
    raises(r"cross_entropy_fwd: logits must be a CUDA tensor", fwd, _t(4, 16)[:, :10], t, -100, 0.0, 0.0)
    raises(r"cross_entropy_fwd: logits must be a CUDA tensor", fwd, _t(0, 10), torch.empty(0, dtype=torch.long),
           -100, 0.0, 0.0)


def test_cross_entropy_bwd_rejects_bad_input(ext_ce):
    e = ext_ce
    x, t, g, lse = _t(4, 10), torch.tensor([1, 2, -100, 9]), torch.ones(4), torch.zeros(4)
    bwd = e.cross_entropy_bwd
    raises(r"cross_entropy_bwd: logits must be a CUDA tensor; got a tensor on cpu", bwd, g, x, t, lse, -100, 0.0,
           0.0, torch.empty_like(x))
    raises(r"cross_entropy_bwd: logits must be a CUDA tensor", bwd, g, x, t, lse, -100, 0.0, 0.0, x)  # in place
    # grad_loss may be an expanded scalar (stride 0): a "mean" reduction's gradient
    raises(r"cross_entropy_bwd: logits must be a CUDA tensor", bwd, torch.ones(()).expand(4), x, t, lse, -100, 0.0,
           0.0, x)
    raises(r"cross_entropy_bwd: logits must be float32, float16 or bfloat16; got Long", bwd, g,
           torch.ones(4, 10, dtype=torch.long), t, lse, -100, 0.0, 0.0, x)
    raises(r"cross_entropy_bwd: logits must have unit stride in its last dim", bwd, g, _t(10, 4).t(), t, lse, -100,
           0.0, 0.0, x)
    raises(r"cross_entropy_bwd: target must be an int64 tensor of class indices; got Float", bwd, g, x, t.float(),
           lse, -100, 0.0, 0.0, x)
    raises(r"cross_entropy_bwd: target must have shape \(4,\) \(logits' rows\); got \[5\]", bwd, g, x,
           torch.zeros(5, dtype=torch.long), lse, -100, 0.0, 0.0, x)
    raises(r"cross_entropy_bwd: grad_loss must be float32; got Half", bwd, g.half(), x, t, lse, -100, 0.0, 0.0, x)
    raises(r"cross_entropy_bwd: grad_loss must have shape \(4,\) \(logits' rows\); got \[\]", bwd, torch.ones(()), x,
           t, lse, -100, 0.0, 0.0, x)
    raises(r"cross_entropy_bwd: lse must be float32; got BFloat16", bwd, g, x, t, lse.bfloat16(), -100, 0.0, 0.0, x)
    raises(r"cross_entropy_bwd: lse must have shape \(4,\) \(logits' rows\); got \[3\]", bwd, g, x, t, lse[:3], -100,
           0.0, 0.0, x)
    raises(r"cross_entropy_bwd: lse must be contiguous; got strides \[2\]", bwd, g, x, t, torch.zeros(8)[::2], -100,
           0.0, 0.0, x)
    raises(r"cross_entropy_bwd: out must have logits's dtype \(Float\); got Half", bwd, g, x, t, lse, -100, 0.0, 0.0,
           x.half())
    raises(r"cross_entropy_bwd: out must have shape \[4, 10\]; got \[4, 11\]", bwd, g, x, t, lse, -100, 0.0, 0.0,
           _t(4, 11))
    raises(r"cross_entropy_bwd: out must have unit stride in its last dim; got strides \[1, 4\]", bwd, g, x, t, lse,
           -100, 0.0, 0.0, _t(10, 4).t())
    raises(r"cross_entropy_bwd: label_smoothing must be in \[0, 1\]; got 2", bwd, g, x, t, lse, -100, 2.0, 0.0, x)
    raises(r"cross_entropy_bwd: softcap must be finite and non-negative \(0 = off\); got nan", bwd, g, x, t, lse,
           -100, 0.0, float("nan"), x)
    # out may be logits itself, but not another view of its storage (rows would race)
    big = _t(4, 20)
    raises(r"cross_entropy_bwd: out shares logits' storage, so it must be logits itself \(in place: same data "
           r"pointer and row stride\); got storage offsets 10 and 0, row strides 20 and 20", bwd, g, big[:, :10], t,
           lse, -100, 0.0, 0.0, big[:, 10:])


def test_cuda_backend_offers_cross_entropy(monkeypatch):
    """The adapter methods exist with the kernel contract's signature; with the machine's reasons cleared the cuda
    backend names only the device for CPU logits, and its own row / column limits."""
    import inspect

    from bigmodel.backends import BACKENDS

    cuda = BACKENDS["cuda"]
    assert list(inspect.signature(cuda.cross_entropy_fwd).parameters) == [
        "logits", "target", "ignore_index", "label_smoothing", "softcap"]
    assert list(inspect.signature(cuda.cross_entropy_bwd).parameters) == [
        "grad_loss", "logits", "target", "lse", "ignore_index", "label_smoothing", "softcap", "out"]
    monkeypatch.setattr(cuda, "machine_reasons", lambda: [])
    device = ["inputs are on cpu; the cuda backend needs CUDA tensors"]
    assert cuda.not_supported_reasons("cross_entropy", input=torch.randn(4, 10)) == device
    assert cuda.cross_entropy_reasons(torch.randn(4, 10)) == []
    assert "at least 1 class" in cuda.cross_entropy_reasons(torch.randn(4, 0))[-1]
    big_cols = torch.empty(1, 1).expand(1, 2**30 + 1)  # stride 0: the shape without the memory
    assert "at most 1073741824 classes" in cuda.cross_entropy_reasons(big_cols)[-1]
    many_rows = torch.empty(1, 1).expand(2**31, 1)  # stride 0: no memory
    assert "at most 2147483647 rows" in cuda.cross_entropy_reasons(many_rows)[-1]
