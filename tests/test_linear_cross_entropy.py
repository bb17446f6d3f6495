"""bigmodel.ops.linear_cross_entropy / bigmodel.nn.LinearCrossEntropyLoss (issue 14, item 2): the chunked fused
linear + cross-entropy against fp64 F.cross_entropy(F.linear(...)) for the loss and the input / weight / bias
gradients (tests/numerics.py's rule), on the reference and torch backends (fp32, fp64, bf16) and the Triton kernels
under the interpreter (fp32, fp16). Most cases force several chunks with BIGMODEL_LCE_CHUNK_ROWS.

The memory claim (N = 4096, V = 32000, d = 256, fp32, CPU): each path runs forward + backward in its own subprocess
and reports its peak RSS above the RSS it had with the inputs allocated (VmHWM reset through /proc/self/clear_refs
where Linux allows, else getrusage's ru_maxrss); `pytest -s` prints the ratios. Both paths run with glibc's
MALLOC_MMAP_THRESHOLD_=1 MiB, so every block of 1 MiB or more is its own mapping, returned on free: RSS then tracks
the live allocations (glibc's default, a threshold that grows to 32 MiB, keeps freed ~30 MiB chunks in the heap and
makes the figure depend on fragmentation, run to run).
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from numerics import OP_BACKEND_DTYPES, assert_close_by_rule, requires_interpreter

import bigmodel
from bigmodel import ops
from bigmodel.backends import BACKENDS
from bigmodel.ops.linear_cross_entropy import CHUNK_ENV, chunk_rows

BACKEND_DTYPES = OP_BACKEND_DTYPES
BACKENDS_FP32 = ["reference", "torch", pytest.param("triton", marks=requires_interpreter)]


@pytest.fixture
def chunk8(monkeypatch):
    """Eight rows per chunk: every case below with N > 8 walks several chunks (and a ragged last one)."""
    monkeypatch.setenv(CHUNK_ENV, "8")


def _inputs(n, d, v, dtype, bias=True, ignore_every=5, lead=None):
    x = torch.randn(*(lead or (n,)), d) .to(dtype)
    w = (torch.randn(v, d) * 0.5).to(dtype)
    b = (torch.randn(v) * 0.5).to(dtype) if bias else None
    t = torch.randint(0, v, tuple(lead or (n,)))
    if ignore_every:
        t.view(-1)[::ignore_every] = -100
    return x, w, b, t


def _unfused(x, w, t, b, reduction="mean", label_smoothing=0.0, softcap=None, ignore_index=-100):
    z = F.linear(x, w, b)
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    return F.cross_entropy(z.reshape(-1, z.size(-1)), t.reshape(-1), ignore_index=ignore_index,
                           reduction=reduction, label_smoothing=label_smoothing).reshape(
        t.shape if reduction == "none" else ())


def _run(fn, x, w, b, t, grad, cast=None, **kw):
    """Loss and gradients (input, weight, bias) of fn on fresh leaves (cast to fp64 for the reference run)."""
    cast = cast or (lambda u: u)
    leaves = [None if u is None else cast(u.detach()).clone().requires_grad_(True) for u in (x, w, b)]
    loss = fn(leaves[0], leaves[1], t, leaves[2])
    g = None if grad is None else cast(grad).to(loss.dtype)
    loss.backward(g)
    return [loss.detach()] + [None if u is None else u.grad for u in leaves]


def _check(x, w, b, t, backend, reduction="mean", label_smoothing=0.0, softcap=None, ignore_index=-100):
    kw = dict(reduction=reduction, label_smoothing=label_smoothing, softcap=softcap)
    grad = torch.randn(t.shape) if reduction == "none" else None
    ours = _run(lambda *a: ops.linear_cross_entropy(*a[:3], a[3], ignore_index=ignore_index, backend=backend, **kw),
                x, w, b, t, grad)
    ref = _run(lambda *a: _unfused(*a[:3], a[3], ignore_index=ignore_index, **kw), x, w, b, t, grad,
               cast=lambda u: u.double())
    lowp = _run(lambda *a: _unfused(*a[:3], a[3], ignore_index=ignore_index, **kw), x, w, b, t, grad)
    for name, o, r, p in zip(("loss", "dinput", "dweight", "dbias"), ours, ref, lowp):
        if r is None:
            assert o is None, f"{name}: a gradient where the reference has none"
            continue
        assert o.dtype == p.dtype, f"{name}: dtype {o.dtype}, PyTorch gives {p.dtype}"
        if torch.isnan(r).all():  # mean over an all-ignored batch: nan, as PyTorch
            assert torch.isnan(o).all(), f"{name}: PyTorch gives nan, got {o}"
            continue
        assert_close_by_rule(name, o, r, p, "output" if name == "loss" else "grad")
    return ours


# ------------------------------------------------------------------------------------------ numerics
@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_matches_fp64(chunk8, backend, dtype, reduction, label_smoothing):
    x, w, b, t = _inputs(37, 16, 1000, dtype)  # V = 1000: no block multiple; 37 rows: 5 chunks, the last of 5
    _check(x, w, b, t, backend, reduction, label_smoothing)


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("softcap", [3.0, 30.0])
def test_softcap(chunk8, backend, dtype, softcap):
    x, w, b, t = _inputs(21, 16, 300, dtype)
    _check(x * 4, w, b, t, backend, "mean", 0.1, softcap=softcap)  # logits well into tanh's bend at softcap 3


@pytest.mark.parametrize("backend", BACKENDS_FP32)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored(chunk8, backend, reduction):
    """Every target ignored: "mean" gives nan (0 / 0) as F.cross_entropy, "sum" 0; every gradient is 0."""
    x, w, b, t = _inputs(19, 8, 50, torch.float32)
    t.fill_(-100)
    loss, dx, dw, db = _check(x, w, b, t, backend, reduction)
    for g in (dx, dw, db):
        assert not g.isnan().any() and (g == 0).all()


@pytest.mark.parametrize("backend", BACKENDS_FP32)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_one_row_and_no_bias(backend, reduction):
    x, w, _b, t = _inputs(1, 16, 1000, torch.float32, ignore_every=0)
    _check(x, w, None, t, backend, reduction)


@pytest.mark.parametrize("backend", BACKENDS_FP32)
def test_leading_dims_and_custom_ignore_index(chunk8, backend):
    x, w, b, t = _inputs(0, 16, 200, torch.float32, ignore_every=0, lead=(3, 7))
    t[1, 2:5] = 7  # ignore_index = 7 is a real class index elsewhere
    loss = _check(x, w, b, t, backend, "none", ignore_index=7)[0]
    assert loss.shape == (3, 7)
    _check(x, w, b, t, backend, "mean", 0.1, ignore_index=7)


def test_chunk_rule():
    """Largest power of two of rows with logits <= 256 MiB on CUDA / 32 MiB elsewhere, >= 1, <= next_pow2(N)."""
    assert chunk_rows(16384, 32000, torch.float32, "cpu") == 256
    assert chunk_rows(16384, 128256, torch.bfloat16, "cuda") == 1024
    assert chunk_rows(16384, 32000, torch.bfloat16, "cuda") == 4096
    assert chunk_rows(5, 32000, torch.float32, "cpu") == 8
    assert chunk_rows(1, 10**9, torch.float32, "cuda") == 1
    for n, v in ((4096, 32000), (37, 1000), (100000, 256000)):
        c = chunk_rows(n, v, torch.float32, "cpu")
        assert c & (c - 1) == 0 and c * v * 4 <= 32 * 2**20 or c == 1


def test_chunk_env(monkeypatch):
    monkeypatch.setenv(CHUNK_ENV, "3")
    assert chunk_rows(4096, 32000, torch.float32, "cpu") == 3
    monkeypatch.setenv(CHUNK_ENV, "zero")
    with pytest.raises(ValueError, match=CHUNK_ENV):
        chunk_rows(4096, 32000, torch.float32, "cpu")


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("rows", ["1", "8", "64"])
def test_chunk_size_does_not_change_the_answer(monkeypatch, backend, rows):
    x, w, b, t = _inputs(50, 16, 100, torch.float64)
    monkeypatch.setenv(CHUNK_ENV, rows)
    ours = _run(lambda *a: ops.linear_cross_entropy(*a[:3], a[3], backend=backend), x, w, b, t, None)
    ref = _run(lambda *a: _unfused(*a[:3], a[3]), x, w, b, t, None)
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o, r, rtol=1e-12, atol=1e-12)


def test_chunks_really_split(monkeypatch):
    """The op makes one (chunk, V) GEMM per chunk, never an (N, V) one."""
    monkeypatch.setenv(CHUNK_ENV, "8")
    x, w, b, t = _inputs(37, 16, 1000, torch.float32)
    shapes = []
    real_addmm = torch.addmm

    def spy(bias, a, m, *args, **kwargs):
        shapes.append((a.size(0), m.size(1)))
        return real_addmm(bias, a, m, *args, **kwargs)

    monkeypatch.setattr(torch, "addmm", spy)
    ops.linear_cross_entropy(x.requires_grad_(), w, t, b, backend="reference").backward()
    assert shapes == [(8, 1000)] * 4 + [(5, 1000)]


# ------------------------------------------------------------------------------------------ determinism
@pytest.mark.parametrize("backend,dtype", [("reference", torch.float32), ("torch", torch.bfloat16),
                                           pytest.param("triton", torch.float32,
                                                        marks=requires_interpreter)])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_deterministic(chunk8, backend, dtype, reduction):
    x, w, b, t = _inputs(37, 16, 300, dtype)
    grad = torch.randn(t.shape) if reduction == "none" else None
    fn = lambda *a: ops.linear_cross_entropy(*a[:3], a[3], reduction=reduction, label_smoothing=0.1,  # noqa: E731
                                             backend=backend)
    first, second = _run(fn, x, w, b, t, grad), _run(fn, x, w, b, t, grad)
    for a, c in zip(first, second):
        assert torch.equal(a, c)


# ------------------------------------------------------------------------------------------ tied, autocast
@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_tied_embeddings(chunk8, backend):
    """The head's weight is the embedding matrix: its gradient is the embedding's plus the head's."""
    torch.manual_seed(1)
    emb = torch.nn.Embedding(200, 16).double()
    ids = torch.randint(0, 200, (3, 11))
    targets = torch.randint(0, 200, (3, 11))
    results = []
    for fused in (True, False):
        emb.zero_grad()
        h = torch.tanh(emb(ids))
        loss = (ops.linear_cross_entropy(h, emb.weight, targets, backend=backend) if fused
                else _unfused(h, emb.weight, targets, None))
        loss.backward()
        results.append((loss.detach(), emb.weight.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_autocast_bf16_cpu(chunk8, backend):
    """Under CPU bf16 autocast the op computes as F.linear (bf16) + F.cross_entropy (fp32 loss) do; the fp32
    parameters get fp32 gradients through the casts."""
    x, w, b, t = _inputs(29, 16, 300, torch.float32)
    outs = {}
    for name, fn in (("ours", lambda *a: ops.linear_cross_entropy(*a[:3], a[3], backend=backend)),
                     ("torch", lambda *a: _unfused(*a[:3], a[3]))):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs[name] = _run(fn, x, w, b, t, None)
    ref = _run(lambda *a: _unfused(*a[:3], a[3]), x, w, b, t, None, cast=lambda u: u.double())
    for i, name in enumerate(("loss", "dinput", "dweight", "dbias")):
        o, p = outs["ours"][i], outs["torch"][i]
        assert o.dtype == p.dtype == torch.float32, (name, o.dtype, p.dtype)
        # both computed in bf16: compare errors as bf16 results (PyTorch's own error is the scale)
        assert_close_by_rule(name, o.bfloat16(), ref[i], p.bfloat16(), "output" if name == "loss" else "grad")


# ------------------------------------------------------------------------------------------ module
def test_module():
    x, w, b, t = _inputs(13, 16, 100, torch.float64)
    m = bigmodel.nn.LinearCrossEntropyLoss(reduction="sum", label_smoothing=0.1, softcap=10.0, backend="torch")
    assert "softcap=10.0" in repr(m) and not list(m.parameters())
    torch.testing.assert_close(m(x, w, t, b), _unfused(x, w, t, b, "sum", 0.1, 10.0), rtol=1e-12, atol=1e-12)
    assert bigmodel.nn.LinearCrossEntropyLoss()(x, w, t).shape == ()
    with pytest.raises(ValueError, match="reduction"):
        bigmodel.nn.LinearCrossEntropyLoss(reduction="avg")


def test_auto_on_cpu_runs():
    x, w, b, t = _inputs(9, 8, 40, torch.float32)
    torch.testing.assert_close(ops.linear_cross_entropy(x, w, t, b), _unfused(x, w, t, b))


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_bad_input(backend):
    x, w, b, t = _inputs(6, 8, 10, torch.float32)
    call = lambda **kw: ops.linear_cross_entropy(**{"input": x, "weight": w, "target": t, "bias": b,  # noqa: E731
                                                    "backend": backend, **kw})
    with pytest.raises(TypeError, match="target must have dtype int64.*class probabilities"):
        call(target=t.float())
    with pytest.raises(TypeError, match="target must have dtype int64"):
        call(target=t.int())
    with pytest.raises(ValueError, match=r"target must have shape \(6,\)"):
        call(target=t[:5])
    with pytest.raises(ValueError, match=r"target values must be in \[0, 10\).*got 10"):
        call(target=torch.tensor([0, 1, 2, 10, 3, 4]))
    with pytest.raises(ValueError, match=r"target values must be in \[0, 10\).*got -1"):
        call(target=torch.tensor([0, 1, 2, -1, 3, 4]))
    with pytest.raises(ValueError, match=r"weight must have shape \(num_classes, 8\)"):
        call(weight=torch.randn(10, 7))
    with pytest.raises(ValueError, match=r"bias must have shape \(10,\)"):
        call(bias=torch.randn(9))
    with pytest.raises(TypeError, match="weight must have the input's dtype"):
        call(weight=w.double())
    with pytest.raises(ValueError, match="reduction must be one of"):
        call(reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        call(label_smoothing=1.5)
    with pytest.raises(ValueError, match="softcap"):
        call(softcap=0.0)
    with pytest.raises(ValueError, match="backend"):
        call(backend="nope")


# ------------------------------------------------------------------------------------------ custom ops, compile
def _op_args(reduction, grads=True):
    x, w, b, t = _inputs(19, 8, 50, torch.float32)
    return (x.requires_grad_(), w.requires_grad_(), t, b.requires_grad_(), -100, reduction, 0.1, 5.0, 8,
            grads, grads, grads, "reference")


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_opcheck(reduction):
    torch.library.opcheck(torch.ops.bigmodel.linear_cross_entropy.default, _op_args(reduction))


def test_opcheck_backward_op():
    x, w, b, t = _inputs(19, 8, 50, torch.float32)
    torch.library.opcheck(torch.ops.bigmodel.linear_cross_entropy_backward.default,
                          (torch.randn(19), x, w, t, b, -100, 0.1, 0.0, 8, True, True, True, "reference"))


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compile_fullgraph(chunk8, backend, reduction):
    torch._dynamo.reset()
    x, w, b, t = _inputs(21, 16, 100, torch.float32)
    grad = torch.randn(t.shape) if reduction == "none" else None

    def fn(x, w, t, b):
        return ops.linear_cross_entropy(x, w, t, b, reduction=reduction, label_smoothing=0.1, softcap=20.0,
                                        backend=backend)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    for a, c in zip(_run(compiled, x, w, b, t, grad), _run(fn, x, w, b, t, grad)):
        torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------ the memory claim
_MEASURE = textwrap.dedent("""
    import json, os, resource, sys
    import torch
    import torch.nn.functional as F
    import bigmodel
    torch.set_num_threads(2)

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        return None

    path = sys.argv[1]
    torch.manual_seed(0)
    n, d, v = 4096, 256, 32000
    x = torch.randn(n, d, requires_grad=True)
    w = (torch.randn(v, d) * 0.05).requires_grad_()
    t = torch.randint(0, v, (n,))
    before = status("VmRSS")
    try:  # reset the peak-RSS mark (VmHWM) to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        how = "VmHWM"
    except OSError:
        how = "ru_maxrss"
    if path == "unfused":
        loss = F.cross_entropy(F.linear(x, w), t)
    else:
        loss = bigmodel.ops.linear_cross_entropy(x, w, t, backend=path)
    loss.backward()
    peak = status("VmHWM") if how == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"path": path, "peak_extra": peak - before, "how": how, "loss": loss.item()}))
""")


def _measure(path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop(CHUNK_ENV, None)
    env["MALLOC_MMAP_THRESHOLD_"] = str(2**20)
    out = subprocess.run([sys.executable, "-c", _MEASURE, path], capture_output=True, text=True, env=env, cwd=root,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cpu_peak_memory_below_quarter_of_unfused():
    """N = 4096, V = 32000, d = 256, fp32, CPU: forward + backward peak memory above the inputs, measured per path
    in its own process (a CPU measurement: the chunking's saving is the same on a GPU)."""
    unfused = _measure("unfused")
    for backend in ("reference", "torch"):
        ours = _measure(backend)
        assert abs(ours["loss"] - unfused["loss"]) < 1e-4 * abs(unfused["loss"])
        ratio = ours["peak_extra"] / unfused["peak_extra"]
        print(f"\nlinear_cross_entropy CPU peak memory (N=4096, V=32000, d=256, fp32, fwd+bwd, {ours['how']}): "
              f"backend {backend} {ours['peak_extra'] / 2**20:.0f} MiB vs unfused F.linear + F.cross_entropy "
              f"{unfused['peak_extra'] / 2**20:.0f} MiB: ratio {ratio:.3f}")
        assert ratio < 0.25, f"{backend}: peak {ours['peak_extra']} vs unfused {unfused['peak_extra']} ({ratio:.3f})"


def test_dw_blocked_fp32_accumulation(monkeypatch):
    """The CUDA path's fp32 dW accumulation of 16-bit chunks (torch.mm out_dtype, V in blocks), run on the CPU with
    an upcasting stand-in for aten::mm.dtype (which has no CPU kernel): every block lands, in fp32."""
    from bigmodel.library import linear_cross_entropy as lib
    monkeypatch.setattr(lib, "DW_BLOCK_BYTES", 7 * 16 * 4)  # 7 rows of V per block: 1000 = 142 * 7 + 6
    dl, xc = torch.randn(9, 1000).bfloat16(), torch.randn(9, 16).bfloat16()
    dw = torch.ones(1000, 16)
    lib._accumulate_dw(dw, dl, xc, mm=lambda a, b, out_dtype: torch.mm(a.to(out_dtype), b.to(out_dtype)))
    torch.testing.assert_close(dw, 1 + dl.float().t() @ xc.float(), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------ GPU (cuda-marked)
GPU_BACKENDS = ["triton", "cuda", "torch"]


def _gpu_backend_or_skip(backend, x, v):
    reasons = [] if backend == "torch" else BACKENDS[backend].not_supported_reasons(
        "cross_entropy", input=x.new_empty(1, 1).expand(8, v))
    if reasons:
        pytest.skip(f"{backend}: {'; '.join(reasons)}")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gpu_bf16_matches_fp64(monkeypatch, backend, reduction):
    """bf16 at a real width on the GPU (several chunks: the chunk is forced to 512 rows), by the low-precision rule."""
    x, w, b, t = _inputs(2048, 1024, 32000, torch.bfloat16)
    x, w, b, t = x.cuda(), w.cuda() * 0.1, b.cuda(), t.cuda()
    _gpu_backend_or_skip(backend, x, w.size(0))
    monkeypatch.setenv(CHUNK_ENV, "512")
    _check(x, w, b, t, backend, reduction, 0.1, softcap=30.0)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_peak_memory_below_quarter_of_unfused(backend):
    """torch.cuda.max_memory_allocated above the inputs, forward + backward, bf16, N = 16384, V = 32000, d = 1024."""
    torch.manual_seed(0)
    n, d, v = 16384, 1024, 32000
    x = torch.randn(n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(v, d, device="cuda") * 0.02).bfloat16().requires_grad_()
    t = torch.randint(0, v, (n,), device="cuda")
    _gpu_backend_or_skip(backend, x, v)
    peaks = {}
    for path in ("unfused", backend):
        x.grad = w.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        loss = F.cross_entropy(F.linear(x, w), t) if path == "unfused" else \
            ops.linear_cross_entropy(x, w, t, backend=backend)
        loss.backward()
        torch.cuda.synchronize()
        peaks[path] = torch.cuda.max_memory_allocated() - base
        del loss
    ratio = peaks[backend] / peaks["unfused"]
    print(f"\nlinear_cross_entropy GPU peak memory (N={n}, V={v}, d={d}, bf16, fwd+bwd): backend {backend} "
          f"{peaks[backend] / 2**20:.0f} MiB vs unfused {peaks['unfused'] / 2**20:.0f} MiB: ratio {ratio:.3f}")
    assert ratio < 0.25


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_fp32_variant_keeps_the_loss_unrounded(backend):
    """linear_cross_entropy_fp32 (the trainer's and patch()'s loss): bf16 inputs, an fp32 loss equal to
    F.cross_entropy(F.linear(...).float()) on the same bf16 logits; the plain op rounds it to bf16 as F.cross_entropy."""
    x, w = torch.randn(37, 32).bfloat16(), (torch.randn(300, 32) * 0.5).bfloat16()
    t = torch.randint(0, 300, (37,))
    want = F.cross_entropy(F.linear(x, w).float(), t)
    got = ops.linear_cross_entropy_fp32(x, w, t, backend=backend)
    assert got.dtype == torch.float32 and abs(got.item() - want.item()) <= 1e-5 * abs(want.item())
    assert ops.linear_cross_entropy(x, w, t, backend=backend).dtype == torch.bfloat16
