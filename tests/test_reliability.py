"""Launch-level reliability: the Triton device guard, compute-capability and size limits as reasons, int64 row
indices, linear_act's bucketed autotune key, and the lazy `bigmodel.models` / `bigmodel.integrations`.
Each of these only shows on a GPU (a second device, an old GPU, 2^31 rows); these are CPU tests of the mechanism,
plus cuda-marked tests where a GPU can show the real thing."""
import contextlib
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

import bigmodel
import bigmodel.backends.cuda as cuda_backend
import bigmodel.backends.triton as triton_backend
from bigmodel.backends import BACKENDS

HERE = os.path.dirname(os.path.abspath(__file__))


# ------------------------------------------------------------------------------------------ device guard
def _run_every_op(device, backend):
    """Forward and backward of every op on `backend`; yields (op name, outputs and input gradients)."""
    def leaf(*shape):  # drawn on the CPU: the same values whatever the device
        return torch.randn(*shape).to(device).requires_grad_()

    def grads(out, *inputs):
        out.backward(torch.randn(out.shape).to(device))
        return [out.detach()] + [t.grad for t in inputs]

    x, w, b = leaf(6, 32), leaf(32), leaf(32)
    yield "layer_norm", grads(bigmodel.ops.layer_norm(x, (32,), w, b, backend=backend), x, w, b)
    q, k, v = leaf(2, 2, 20, 16), leaf(2, 2, 20, 16), leaf(2, 2, 20, 16)
    yield "attention", grads(bigmodel.ops.attention(q, k, v, is_causal=True, backend=backend), q, k, v)
    lw, lb = leaf(24, 32), leaf(24)
    x.grad = None
    yield "linear_act", grads(bigmodel.ops.linear_act(x, lw, lb, activation="gelu", backend=backend), x, lw, lb)
    x.grad = None
    yield "gelu", grads(bigmodel.ops.gelu(x, backend=backend), x)
    x.grad = None
    yield "softmax", grads(bigmodel.ops.softmax(x, dim=-1, backend=backend), x)


def test_every_triton_launch_enters_the_device_guard_of_its_inputs(interpreter, monkeypatch):
    entered = []

    def spy_guard(device):
        entered.append(device)
        return contextlib.nullcontext()

    monkeypatch.setattr(triton_backend, "device_guard", spy_guard)
    for op, _ in _run_every_op("cpu", "triton"):
        assert entered == [torch.device("cpu")] * 2, f"{op}: forward + backward entered {entered}"
        entered.clear()


def test_device_guard_makes_the_tensors_device_current():
    guard = triton_backend.device_guard(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert isinstance(triton_backend.device_guard(torch.device("cpu")), contextlib.nullcontext)


@pytest.mark.cuda
def test_triton_on_the_second_gpu_while_the_first_is_current():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA GPUs")
    torch.cuda.set_device(0)
    seed = torch.initial_seed()
    torch.manual_seed(seed)
    ours = dict(_run_every_op("cuda:1", "triton"))
    torch.manual_seed(seed)
    ref = dict(_run_every_op("cpu", "reference"))
    assert torch.cuda.current_device() == 0
    for op in ref:
        for got, want in zip(ours[op], ref[op]):
            assert got.device == torch.device("cuda", 1)
            torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4, msg=f"{op} on cuda:1")


# ------------------------------------------------------------------------------------------ compute capability
@pytest.mark.parametrize("capability, built, runs", [
    ((7, 5), (80, 90), False),   # T4: below sm_80
    ((7, 0), (80, 90), False),   # V100
    ((8, 0), (80, 90), True),
    ((8, 6), (80, 90), True),    # sm_80 SASS runs on 8.x
    ((8, 9), (80, 90), True),
    ((9, 0), (80, 90), True),
    ((10, 0), (80, 90), True),   # JIT from sm_90 PTX
    ((12, 0), (80, 90), True),
    ((8, 6), (90,), False),      # built for sm_90 only: nothing for an 8.6 GPU
    ((9, 0), (90,), True),
])
def test_cuda_backend_arch_rule(capability, built, runs):
    reasons = cuda_backend.arch_reasons(capability, built)
    assert (reasons == []) == runs, reasons
    if not runs:
        assert f"{capability[0]}.{capability[1]}" in reasons[0]


@pytest.mark.parametrize("capability", [(7, 5), (8, 6)])
def test_cuda_backend_states_the_gpus_capability_as_a_reason(monkeypatch, capability):
    class FakeExtension:
        @staticmethod
        def cuda_archs():
            return [900]

    monkeypatch.setattr(cuda_backend, "load_extension", lambda: (FakeExtension, None))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    cuda_backend._device_arch_reasons.cache_clear()
    try:
        reasons = BACKENDS["cuda"].device_reasons(torch.device("cuda", 0))
    finally:
        cuda_backend._device_arch_reasons.cache_clear()
    assert reasons and f"{capability[0]}.{capability[1]}" in reasons[0]


def test_extension_reports_the_archs_it_was_built_for():
    from conftest import extension_or_skip

    from bigmodel.cli import extension_status

    ext = extension_or_skip("cuda_archs")
    status = extension_status()  # the cubins the .so holds, read with cuobjdump: an independent account
    if "architectures unknown" in status:
        pytest.skip(status)
    cubins = sorted({int(a) for a in re.findall(r"sm_(\d+)", status)})
    assert cubins and sorted(a // 10 for a in ext.cuda_archs()) == cubins, (ext.cuda_archs(), status)


@pytest.mark.parametrize("capability, dtypes, runs", [
    ((7, 5), {torch.float16}, True),
    ((7, 5), {torch.bfloat16, torch.float16}, False),
    ((7, 0), {torch.float32}, False),
    ((8, 0), {torch.bfloat16}, True),
    ((9, 0), {torch.bfloat16}, True),
])
def test_triton_capability_rule(capability, dtypes, runs):
    reasons = triton_backend.capability_reasons(capability, dtypes)
    assert (reasons == []) == runs, reasons


def test_triton_backend_states_old_gpus_as_a_reason(monkeypatch):
    monkeypatch.setattr(triton_backend, "_capability", lambda index: (7, 0))
    reasons = BACKENDS["triton"].device_reasons(torch.device("cuda", 0))
    assert reasons and "7.0" in reasons[0]


# ------------------------------------------------------------------------------------------ size limits
HUGE = 2**31 + 5  # rows past the reach of int32


@pytest.mark.parametrize("op, inputs, backend, fragment", [
    ("layer_norm", lambda: dict(input=torch.empty(1, 16384).expand(HUGE, 16384)), "triton", "grid limit"),
    ("softmax", lambda: dict(input=torch.empty(1, 16384).expand(HUGE, 16384)), "triton", "grid limit"),
    ("linear_act", lambda: dict(input=torch.empty(1, 8).expand(HUGE, 8), weight=torch.empty(4, 8)), "triton",
     "32-bit"),
    ("layer_norm", lambda: dict(input=torch.empty(1, 8).expand(HUGE, 8)), "cuda", "rows"),
    ("softmax", lambda: dict(input=torch.empty(1, 2**30 + 1)), "cuda", "columns"),
])
def test_size_limits_are_reasons(op, inputs, backend, fragment):
    """Stride-0 views: no memory. The limit text comes from the op's `<op>_reasons`, whatever the machine."""
    reasons = getattr(BACKENDS[backend], f"{op}_reasons")(**inputs())
    assert any(fragment in r for r in reasons), reasons


def test_triton_row_kernels_take_a_huge_stride0_row_count_on_the_fused_path():
    """Rows of up to MAX_FUSED_N columns are indexed in int64: more than 2^31 rows is no reason there."""
    x = torch.empty(1, 768).expand(HUGE, 768)
    assert BACKENDS["triton"].layer_norm_reasons(input=x) == []
    assert BACKENDS["triton"].softmax_reasons(input=x) == []


def test_triton_attention_takes_70000_batches_and_states_its_program_limit():
    q = torch.empty(1, 1, 1, 64, dtype=torch.float16).expand(70000, 1, 16, 64)
    assert BACKENDS["triton"].attention_reasons(q=q, k=q, v=q) == []
    huge = torch.empty(1, 1, 1, 64, dtype=torch.float16).expand(2**20, 64, 2**16, 64)
    reasons = BACKENDS["triton"].attention_reasons(q=huge, k=huge, v=huge)
    assert any("grid limit" in r for r in reasons), reasons


def test_cuda_attention_grid_limit_is_a_reason():
    q = torch.empty(1, 1, 1, 64, dtype=torch.float16).expand(70000, 1, 16, 64)
    reasons = BACKENDS["cuda"].attention_reasons(q=q, k=q, v=q)
    assert any("65535" in r for r in reasons), reasons


# ------------------------------------------------------------------------------------------ int64 row indices
_TTIR_SCRIPT = textwrap.dedent("""
    import json, re, sys
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from bigmodel.kernels import layer_norm, softmax

    # (module, kernel name, grid axis that indexes rows)
    wanted = {("layer_norm", "_fwd_fused_kernel"): "x", ("layer_norm", "_bwd_fused_kernel"): "x",
              ("layer_norm", "_bwd_looped_kernel"): "y", ("softmax", "_fwd_fused_kernel"): "x",
              ("softmax", "_bwd_fused_kernel"): "x"}
    out = {}
    for module in (layer_norm, softmax):
        for spec in module.compile_specs(sizes=(768, 16384)):
            key = (module.__name__.rsplit(".", 1)[1], spec.fn.__name__)
            if key not in wanted or "fp16" not in spec.name or str(key) in out:
                continue
            sig = {n: spec.signature.get(n, "constexpr") for n in spec.fn.arg_names}
            src = ASTSource(fn=spec.fn, signature=sig, constexprs=dict(spec.constexprs))
            ttir = triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["ttir"]
            out[str(key)] = (wanted[key], ttir)
    json.dump(out, sys.stdout)
""")


def _uses(ttir: str, value: str) -> list[str]:
    pattern = re.compile(re.escape(value) + r"(?![\w.])")
    defines = re.compile(re.escape(value) + r" = ")
    return [line.strip() for line in ttir.splitlines() if pattern.search(line) and not defines.match(line.strip())]


def test_row_program_ids_are_widened_to_int64_before_any_arithmetic():
    """In the compiled kernels (TTIR for sm_90), the program id of the row axis feeds only a sign extension to
    i64: `pid * BLOCK_M` cannot wrap past 2^31 rows."""
    import json

    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _TTIR_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    kernels = json.loads(proc.stdout)
    assert len(kernels) == 5, sorted(kernels)
    for name, (axis, ttir) in kernels.items():
        pids = re.findall(rf"(%[\w.]+) = tt\.get_program_id {axis} : i32", ttir)
        assert pids, f"{name}: no program id on axis {axis}"
        for pid in pids:
            uses = _uses(ttir, pid)
            assert uses and all("arith.extsi" in u and "to i64" in u for u in uses), f"{name}: {pid} used as {uses}"


# ------------------------------------------------------------------------------------------ linear_act autotune key
def test_linear_act_autotunes_once_per_power_of_two_token_bucket(interpreter, monkeypatch):
    from bigmodel.kernels import linear_act as kernels

    tuner = kernels._fwd_kernel
    timed = []
    monkeypatch.setattr(tuner, "configs", tuner.configs * 2)  # two candidates, so the autotuner keys and caches
    monkeypatch.setattr(tuner, "cache", {})
    monkeypatch.setattr(tuner, "_bench", lambda *args, config, **kwargs: timed.append(config) or [1.0, 1.0, 1.0])
    w = torch.randn(24, 32)
    for m in (33, 40, 64, 65, 100):  # buckets 64, 64, 64, 128, 128
        x = torch.randn(m, 32)
        y, _ = kernels.linear_act_fwd(x, w, None, "relu")
        torch.testing.assert_close(y, torch.relu(x @ w.t()), rtol=1e-5, atol=1e-5)
    assert len(tuner.cache) == 2 and len(timed) == 4, (list(tuner.cache), len(timed))


# ------------------------------------------------------------------------------------------ lazy subpackages
def test_subpackages_are_reachable_after_a_plain_import_and_load_lazily():
    code = textwrap.dedent("""
        import sys
        import bigmodel
        early = sorted(m for m in sys.modules if m.startswith(("bigmodel.models", "bigmodel.integrations",
                                                                 "bigmodel.train", "transformers")))
        assert early == [], early
        assert bigmodel.models.Transformer is not None and bigmodel.models.TransformerConfig is not None
        assert callable(bigmodel.integrations.transformers.register)
        assert "models" in dir(bigmodel)
        try:
            bigmodel.no_such_thing
        except AttributeError as e:
            assert "no_such_thing" in str(e)
        else:
            raise SystemExit("bigmodel.no_such_thing did not raise AttributeError")
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


# ------------------------------------------------------------------------------------------ the same, on a GPU
@pytest.mark.cuda
def test_cuda_backend_has_code_for_this_gpu():
    from conftest import extension_or_skip

    extension_or_skip("cuda_archs")
    cuda_backend._device_arch_reasons.cache_clear()
    assert BACKENDS["cuda"].device_reasons(torch.device("cuda", torch.cuda.current_device())) == []


@pytest.mark.cuda
def test_triton_attention_runs_70000_batches_on_a_gpu():
    """Batch 70000 > CUDA's 65535 grid-axis limit: the folded grid runs it; spot-check batches against SDPA."""
    q, k, v = (torch.randn(70000, 1, 16, 64, device="cuda", dtype=torch.float16, requires_grad=True)
               for _ in range(3))
    out = bigmodel.ops.attention(q, k, v, is_causal=True, backend="triton")
    out.float().square().sum().backward()
    for b in (0, 65535, 69999):
        qb, kb, vb = (t.detach()[b:b + 1].double().requires_grad_() for t in (q, k, v))
        ref = torch.nn.functional.scaled_dot_product_attention(qb, kb, vb, is_causal=True)
        ref.square().sum().backward()
        torch.testing.assert_close(out[b:b + 1].double(), ref, rtol=2e-2, atol=2e-2)
        for got, want in ((q.grad, qb.grad), (k.grad, kb.grad), (v.grad, vb.grad)):
            torch.testing.assert_close(got[b:b + 1].double(), want, rtol=5e-2, atol=5e-2)


@pytest.mark.cuda
@pytest.mark.parametrize("op", ["layer_norm", "softmax"])
def test_triton_row_kernels_past_2_31_rows_on_a_gpu(op):
    """2^31 + 96 rows of 2 columns, the last 96 (all past 2^31) random: they are written where they belong."""
    rows, cols = 2**31 + 96, 2
    need = rows * cols * 2 * 2 + rows * 4 * 2  # x, y (fp16), mean / rstd (fp32)
    if torch.cuda.mem_get_info()[0] < need + 2**30:
        pytest.skip(f"needs {need / 2**30:.0f} GiB of free GPU memory")
    x = torch.empty(rows, cols, device="cuda", dtype=torch.float16)
    x[:, 0] = 1.0
    x[:, 1] = -1.0
    tail = torch.randn(96, cols, device="cuda", dtype=torch.float16)
    x[-96:] = tail
    if op == "layer_norm":
        y = bigmodel.ops.layer_norm(x, (cols,), backend="triton")
        want = torch.nn.functional.layer_norm(tail.float(), (cols,)).half()
    else:
        y = bigmodel.ops.softmax(x, dim=-1, backend="triton")
        want = torch.softmax(tail.float(), dim=-1).half()
    torch.testing.assert_close(y[-96:], want, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(y[:4], y[2**31 - 4:2**31], rtol=0, atol=0)  # the constant rows just below 2^31
