"""bigmodel.ops.cross_entropy / bigmodel.nn.CrossEntropyLoss and the backends' cross_entropy_fwd / _bwd (issue 14).

Every backend (reference and torch at fp32 / fp64 / bf16, Triton under the interpreter at fp32 / fp16) against fp64
F.cross_entropy by DESIGN.md's rule, for the loss and the logits' gradient: ignore_index present and every target
ignored, each reduction, label smoothing 0 / 0.1, C not a multiple of the block and past one block (the Triton loop
runs more than once), N = 1; the kernel contract itself (softcap, in-place backward, int64 row offsets, -inf logits);
determinism; bad input; opcheck; torch.compile(fullgraph=True).
"""
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import bigmodel
from bigmodel.backends import BACKENDS
from numerics import OP_BACKEND_DTYPES, assert_close_by_rule, requires_interpreter

KERNEL_CPU = ["reference", pytest.param("triton", marks=requires_interpreter)]
BLOCK = 4096  # kernels/cross_entropy.py MAX_BLOCK_C (read below without importing triton at collection)


def _targets(n, c, ignore=(), ignore_index=-100):
    t = torch.randint(0, c, (n,))
    for i in ignore:
        t[i] = ignore_index
    return t


def _logits(n, c, dtype, scale=4.0):
    return (torch.randn(n, c, dtype=torch.float64) * scale + 1.0).to(dtype)


def _case(fn, x, *grad_weight):
    """fn(x) and d(sum(fn(x) * w)) / dx with a fixed random w of fn's output shape."""
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    w = grad_weight[0] if grad_weight else torch.randn(y.shape, dtype=torch.float64, device=y.device)
    (gx,) = torch.autograd.grad((y.double() * w).sum(), x)
    return y.detach(), gx, w


def check_against_fp64(backend, dtype, x, t, **kw):
    ours, g_ours, w = _case(lambda z: bigmodel.ops.cross_entropy(z, t, backend=backend, **kw), x)
    ref, g_ref, _ = _case(lambda z: F.cross_entropy(z, t, **kw), x.double(), w)
    lowp = g_lowp = None
    if dtype in (torch.float16, torch.bfloat16):
        lowp, g_lowp, _ = _case(lambda z: F.cross_entropy(z, t, **kw), x, w)
    assert ours.dtype == dtype and ours.shape == ref.shape
    assert_close_by_rule("loss", ours, ref, lowp, "output")
    assert_close_by_rule("dlogits", g_ours, g_ref, g_lowp, "grad")


@pytest.mark.parametrize("backend,dtype", OP_BACKEND_DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_matches_fp64(backend, dtype, reduction, label_smoothing):
    x, t = _logits(8, 1000, dtype), _targets(8, 1000, ignore=(2, 5))
    check_against_fp64(backend, dtype, x, t, reduction=reduction, label_smoothing=label_smoothing)


@pytest.mark.parametrize("backend,dtype", OP_BACKEND_DTYPES)
@pytest.mark.parametrize("n,c", [(1, 1000), (3, BLOCK + 1), (4, 3 * BLOCK - 5), (5, 1), (2, 37)],
                         ids=["N1", "block+1", "3blocks", "C1", "C37"])
def test_shapes(backend, dtype, n, c):
    x, t = _logits(n, c, dtype), _targets(n, c)
    check_against_fp64(backend, dtype, x, t, label_smoothing=0.1)
    check_against_fp64(backend, dtype, x, t, reduction="none")


@pytest.mark.parametrize("backend,dtype", OP_BACKEND_DTYPES)
def test_other_ignore_index(backend, dtype):
    x, t = _logits(6, 50, dtype), _targets(6, 50, ignore=(0, 4), ignore_index=7)
    t[t == 7] = 7  # class 7 itself is ignored, as torch
    check_against_fp64(backend, dtype, x, t, ignore_index=7, label_smoothing=0.1)


@pytest.mark.parametrize("backend,dtype", OP_BACKEND_DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored(backend, dtype, reduction):
    """Every target ignored: "mean" is NaN (0 / 0) as torch; "sum" / "none" are 0; the gradient is 0, as torch's."""
    x = _logits(4, 300, dtype).requires_grad_()
    t = torch.full((4,), -100)
    ours = bigmodel.ops.cross_entropy(x, t, reduction=reduction, label_smoothing=0.1, backend=backend)
    (g,) = torch.autograd.grad(ours.sum(), x)
    theirs = F.cross_entropy(x.detach().double(), t, reduction=reduction, label_smoothing=0.1)
    torch.testing.assert_close(ours.double(), theirs, equal_nan=True)
    assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("backend", KERNEL_CPU + ["torch"])
def test_empty_batch(backend):
    x = torch.randn(0, 10, requires_grad=True)
    t = torch.zeros(0, dtype=torch.int64)
    for reduction in ("mean", "sum", "none"):
        ours = bigmodel.ops.cross_entropy(x, t, reduction=reduction, backend=backend)
        torch.testing.assert_close(ours, F.cross_entropy(x, t, reduction=reduction), equal_nan=True)


@pytest.mark.parametrize("backend", KERNEL_CPU + ["torch"])
def test_minus_inf_logits_like_torch(backend):
    """A masked vocabulary (-inf logits, never the target) gives torch's finite loss and zero gradient there."""
    x = _logits(3, BLOCK + 10, torch.float32)
    x[:, 100:200] = float("-inf")
    x[1, : BLOCK] = float("-inf")  # a whole first chunk of -inf: that lane's running sum must stay 0, not NaN
    t = torch.tensor([5, BLOCK + 3, 250])
    check_against_fp64(backend, torch.float32, x, t, reduction="sum")


@pytest.mark.parametrize("backend", KERNEL_CPU)
def test_strided_rows(backend):
    """Logits as a column slice of a wider buffer (row stride > C): the kernels read through the row stride."""
    wide = _logits(5, 700, torch.float32)
    x = wide[:, 3:503]
    assert x.stride() == (700, 1)
    t = _targets(5, 500, ignore=(1,))
    impl = BACKENDS[backend]
    loss, lse = impl.cross_entropy_fwd(x, t, -100, 0.0, 0.0)
    ref_loss, ref_lse = BACKENDS["reference"].cross_entropy_fwd(x.contiguous(), t, -100, 0.0, 0.0)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(lse, ref_lse)
    out = torch.empty(5, 900)[:, 100:600]  # a strided gradient buffer too
    impl.cross_entropy_bwd(torch.ones(5), x, t, lse, -100, 0.0, 0.0, out)
    torch.testing.assert_close(out, BACKENDS["reference"].cross_entropy_bwd(
        torch.ones(5), x.contiguous(), t, ref_lse, -100, 0.0, 0.0, torch.empty(5, 500)))


# ------------------------------------------------------------------------------------------ kernel contract
KERNEL_DTYPES = [pytest.param("reference", torch.float32, id="reference-fp32"),
                 pytest.param("reference", torch.float64, id="reference-fp64"),
                 pytest.param("reference", torch.bfloat16, id="reference-bf16"),
                 pytest.param("triton", torch.float32, id="triton-fp32", marks=requires_interpreter),
                 pytest.param("triton", torch.float16, id="triton-fp16", marks=requires_interpreter)]


@pytest.mark.parametrize("backend,dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("softcap", [0.0, 5.0])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("c", [1000, BLOCK + 1])
def test_kernel_contract_softcap(backend, dtype, softcap, label_smoothing, c):
    """cross_entropy_fwd / _bwd against fp64 F.cross_entropy of softcap * tanh(x / softcap) (Gemma 2), per row:
    loss (fp32; 0 on ignored rows), lse of the softcapped logits, dlogits = g_i * d loss_i / d x."""
    n = 6
    x, t = _logits(n, c, dtype, scale=6.0), _targets(n, c, ignore=(3,))
    g = torch.randn(n)
    impl = BACKENDS[backend]

    def composed(z):
        z = softcap * torch.tanh(z / softcap) if softcap else z
        return F.cross_entropy(z, t, reduction="none", label_smoothing=label_smoothing)

    loss, lse = impl.cross_entropy_fwd(x, t, -100, label_smoothing, softcap)
    stat = torch.float64 if dtype == torch.float64 else torch.float32
    assert loss.dtype == lse.dtype == stat and loss.shape == lse.shape == (n,)
    ref, g_ref, _ = _case(composed, x.double(), g.double())
    z64 = softcap * torch.tanh(x.double() / softcap) if softcap else x.double()
    assert_close_by_rule("loss", loss, ref, kind="output")
    assert_close_by_rule("lse", lse, torch.logsumexp(z64, 1), kind="output")
    assert loss[3] == 0
    out = impl.cross_entropy_bwd(g.to(stat), x, t, lse, -100, label_smoothing, softcap, torch.empty_like(x))
    assert out.dtype == dtype
    lowp = None
    if dtype in (torch.float16, torch.bfloat16):
        _, lowp, _ = _case(composed, x, g.double())
    assert_close_by_rule("dlogits", out, g_ref, lowp, "grad")
    assert torch.equal(out[3], torch.zeros_like(out[3]))


@pytest.mark.parametrize("backend,dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("softcap", [0.0, 30.0])
def test_kernel_backward_in_place(backend, dtype, softcap):
    """out may be the logits themselves: the in-place result is bitwise the out-of-place one."""
    x, t = _logits(4, BLOCK + 7, dtype), _targets(4, BLOCK + 7, ignore=(1,))
    impl = BACKENDS[backend]
    loss, lse = impl.cross_entropy_fwd(x, t, -100, 0.1, softcap)
    g = torch.rand(4, dtype=lse.dtype)
    fresh = impl.cross_entropy_bwd(g, x, t, lse, -100, 0.1, softcap, torch.empty_like(x))
    buf = x.clone()
    same = impl.cross_entropy_bwd(g, buf, t, lse, -100, 0.1, softcap, buf)
    assert same.data_ptr() == buf.data_ptr()
    assert torch.equal(same, fresh)


@pytest.mark.parametrize("backend", KERNEL_CPU)
def test_out_of_range_target_gives_nan_rows_not_a_fault(backend):
    """What a target outside [0, C) does if it gets past the host check (under torch.compile): NaN rows only."""
    x, t = _logits(4, 50, torch.float32), torch.tensor([1, 50, -100, -3])
    impl = BACKENDS[backend]
    loss, lse = impl.cross_entropy_fwd(x, t, -100, 0.0, 0.0)
    assert loss.isnan().tolist() == [False, True, False, True]
    dx = impl.cross_entropy_bwd(torch.ones(4), x, t, lse, -100, 0.0, 0.0, torch.empty_like(x))
    assert dx.isnan().any(1).tolist() == [False, True, False, True]


@requires_interpreter
def test_vocab_256k():
    """A Gemma-sized row (262,144 classes: 64 chunks) in fp32 against fp64."""
    c = 262144
    x, t = _logits(2, c, torch.float32), torch.tensor([c - 1, 12345])
    check_against_fp64("triton", torch.float32, x, t, label_smoothing=0.1)


# ------------------------------------------------------------------------------------------ determinism
@pytest.mark.parametrize("backend", KERNEL_CPU)
def test_deterministic(backend):
    x, t = _logits(6, BLOCK + 100, torch.float32), _targets(6, BLOCK + 100, ignore=(2,))
    runs = [_case(lambda z: bigmodel.ops.cross_entropy(z, t, label_smoothing=0.1, backend=backend), x,
                  torch.tensor(1.0, dtype=torch.float64))[:2] for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


# ------------------------------------------------------------------------------------------ bad input
X, T = torch.randn(4, 10), torch.tensor([1, 2, 3, 4])
BAD = [
    (lambda: bigmodel.ops.cross_entropy(X, T.float()), TypeError, r"target must hold int64 class indices; got "
                                                                 r"dtype float32"),
    (lambda: bigmodel.ops.cross_entropy(X, T.int()), TypeError, r"target must hold int64 .* int32"),
    (lambda: bigmodel.ops.cross_entropy(X, T[:3]), ValueError, r"target must have shape \(4,\).*got \(3,\)"),
    (lambda: bigmodel.ops.cross_entropy(X, T[:, None]), ValueError, r"target must have shape \(4,\)"),
    (lambda: bigmodel.ops.cross_entropy(X, torch.tensor([1, 2, 10, 4])), ValueError,
     r"target must hold class indices in \[0, 10\) or ignore_index \(-100\); got target\[2\] = 10"),
    (lambda: bigmodel.ops.cross_entropy(X, torch.tensor([1, -1, 3, 4])), ValueError, r"got target\[1\] = -1"),
    (lambda: bigmodel.ops.cross_entropy(X, torch.tensor([1, -100, 3, 4]), ignore_index=0), ValueError,
     r"ignore_index \(0\); got target\[1\] = -100"),
    (lambda: bigmodel.ops.cross_entropy(X[0], T[0]), ValueError, r"input must be 2-D logits \(N, C\); got shape"),
    (lambda: bigmodel.ops.cross_entropy(X.view(2, 2, 10), T), ValueError, r"input must be 2-D"),
    (lambda: bigmodel.ops.cross_entropy(torch.randn(4, 0), T), ValueError, r"at least one class"),
    (lambda: bigmodel.ops.cross_entropy(X.long(), T), TypeError, r"input must have dtype"),
    (lambda: bigmodel.ops.cross_entropy(X, T, reduction="avg"), ValueError, r"reduction must be one of"),
    (lambda: bigmodel.ops.cross_entropy(X, T, label_smoothing=1.5), ValueError, r"label_smoothing must be a float"),
    (lambda: bigmodel.ops.cross_entropy(X, T, ignore_index=1.0), TypeError, r"ignore_index must be an int"),
    (lambda: bigmodel.ops.cross_entropy(X, [1, 2, 3, 4]), TypeError, r"target must be a torch.Tensor"),
    (lambda: bigmodel.ops.cross_entropy(X, T, backend="liger"), ValueError, r"backend: expected one of"),
    (lambda: bigmodel.nn.CrossEntropyLoss(weight=torch.ones(10), backend="triton"), ValueError,
     r"class weights \(weight=\) are not supported by the 'triton' kernels"),
]


@pytest.mark.parametrize("call,error,match", BAD, ids=[
    "float-target", "int32-target", "short-target", "2d-target", "target>=C", "target<0", "ignored-only-by-index",
    "1d-logits", "3d-logits", "no-classes", "int-logits", "reduction", "smoothing", "ignore-float", "list-target",
    "backend", "module-weight"])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_bad_target_is_caught_on_every_backend():
    for backend in ("reference", "torch"):
        with pytest.raises(ValueError, match=r"target\[0\] = 11"):
            bigmodel.ops.cross_entropy(X, torch.tensor([11, 0, 0, 0]), backend=backend)


def test_triton_row_limit_is_a_reason():
    huge = torch.empty(1, 1).expand(2**31 + 1, 8)
    assert any("grid limit" in r for r in BACKENDS["triton"].cross_entropy_reasons(input=huge))


# ------------------------------------------------------------------------------------------ custom ops, compile
@pytest.mark.parametrize("backend", KERNEL_CPU)
@pytest.mark.parametrize("softcap", [0.0, 5.0])
def test_opcheck(backend, softcap):
    x = torch.randn(5, 40, requires_grad=True)
    t = torch.tensor([1, -100, 39, 0, 7])
    torch.library.opcheck(torch.ops.bigmodel.cross_entropy.default, (x, t, -100, 0.1, softcap, backend))
    _, lse = torch.ops.bigmodel.cross_entropy(x.detach(), t, -100, 0.1, softcap, backend)
    torch.library.opcheck(torch.ops.bigmodel.cross_entropy_backward.default,
                          (torch.rand(5), x.detach(), t, lse, -100, 0.1, softcap, backend))


def test_custom_op_softcap_autograd_matches_fp64():
    """Through the custom op (the path linear_cross_entropy's softcap takes): autograd gives the composed gradient."""
    x, t = _logits(5, 300, torch.float64), _targets(5, 300, ignore=(0,))
    ours, g_ours, w = _case(lambda z: torch.ops.bigmodel.cross_entropy(z, t, -100, 0.0, 20.0, "reference")[0], x)
    ref, g_ref, _ = _case(lambda z: F.cross_entropy(20.0 * torch.tanh(z / 20.0), t, reduction="none"), x, w)
    assert_close_by_rule("loss", ours, ref)
    assert_close_by_rule("dlogits", g_ours, g_ref, kind="grad")


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compile_fullgraph(reduction):
    torch._dynamo.reset()
    loss_fn = bigmodel.nn.CrossEntropyLoss(reduction=reduction, label_smoothing=0.1, backend="reference")

    def f(x, t):
        return loss_fn(x, t).sum()

    x, t = torch.randn(6, 50, requires_grad=True), _targets(6, 50, ignore=(4,))
    explanation = torch._dynamo.explain(f)(x, t)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    y = compiled(x, t)
    torch.testing.assert_close(y, f(x, t))
    torch.testing.assert_close(torch.autograd.grad(y, x)[0], torch.autograd.grad(f(x, t), x)[0])
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------------ module, autocast
@pytest.mark.parametrize("backend", KERNEL_CPU + ["torch", None])
def test_module_is_a_drop_in(backend):
    ours = bigmodel.nn.CrossEntropyLoss(ignore_index=3, reduction="sum", label_smoothing=0.05, backend=backend)
    theirs = torch.nn.CrossEntropyLoss(ignore_index=3, reduction="sum", label_smoothing=0.05)
    assert isinstance(ours, torch.nn.CrossEntropyLoss) and ours.state_dict().keys() == theirs.state_dict().keys()
    x, t = torch.randn(7, 20), _targets(7, 20, ignore=(1,), ignore_index=3)
    torch.testing.assert_close(ours(x, t), theirs(x, t))


def test_module_with_class_weights_runs_pytorch():
    w = torch.rand(20)
    x, t = torch.randn(7, 20), _targets(7, 20)
    torch.testing.assert_close(bigmodel.nn.CrossEntropyLoss(weight=w)(x, t), F.cross_entropy(x, t, weight=w))
    with bigmodel.use_backend("reference"):
        with pytest.raises(ValueError, match="class weights"):
            bigmodel.nn.CrossEntropyLoss(weight=w)(x, t)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_autocast_gives_fp32_as_torch(backend):
    x, t = torch.randn(4, 30), _targets(4, 30)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = bigmodel.ops.cross_entropy(x.bfloat16(), t, backend=backend)
        theirs = F.cross_entropy(x.bfloat16(), t)
    assert ours.dtype == theirs.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------------------------------ int64 offsets
_TTIR_SCRIPT = textwrap.dedent("""
    import json, sys
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from bigmodel.kernels import cross_entropy

    out = {}
    for spec in cross_entropy.compile_specs(sizes=(32000,)):
        if "fp16" not in spec.name or spec.fn.__name__ in out:
            continue
        sig = {n: spec.signature.get(n, "constexpr") for n in spec.fn.arg_names}
        src = ASTSource(fn=spec.fn, signature=sig, constexprs=dict(spec.constexprs))
        out[spec.fn.__name__] = triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["ttir"]
    json.dump(out, sys.stdout)
""")


def test_row_program_id_is_widened_to_int64():
    """N * C may pass 2^31 elements: in the compiled TTIR (sm_90) the row's program id feeds only a sign extension
    to i64, so row * stride is 64-bit (a strided 2^31-element view cannot be allocated in a test)."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _TTIR_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    kernels = json.loads(proc.stdout)
    assert sorted(kernels) == ["_bwd_kernel", "_fwd_kernel"]
    for name, ttir in kernels.items():
        pids = re.findall(r"(%[\w.]+) = tt\.get_program_id x : i32", ttir)
        assert pids, name
        for pid in pids:
            uses = [line.strip() for line in ttir.splitlines()
                    if re.search(re.escape(pid) + r"(?![\w.])", line) and not line.strip().startswith(pid + " =")]
            assert uses and all("arith.extsi" in u and "to i64" in u for u in uses), f"{name}: {pid} used as {uses}"


# ------------------------------------------------------------------------------------------ GPU (skips here)
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("c", [32000, 128256])
def test_triton_gpu_vocab_sizes(dtype, c):
    """The Triton kernels on a GPU at Llama-size vocabularies, bf16 included, against fp64."""
    x = _logits(64, c, dtype).cuda()
    t = _targets(64, c, ignore=(3, 40)).cuda()
    for kw in (dict(), dict(label_smoothing=0.1, reduction="sum")):
        ours, g_ours, w = _case(lambda z: bigmodel.ops.cross_entropy(z, t, backend="triton", **kw), x)
        ref, g_ref, _ = _case(lambda z: F.cross_entropy(z, t, **kw), x.double(), w)
        lowp, g_lowp, _ = _case(lambda z: F.cross_entropy(z, t, **kw), x, w)
        assert_close_by_rule("loss", ours, ref, lowp if dtype != torch.float32 else None)
        assert_close_by_rule("dlogits", g_ours, g_ref, g_lowp if dtype != torch.float32 else None, "grad")
