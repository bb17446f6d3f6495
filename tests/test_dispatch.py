"""Backend choice: argument > use_backend() / set_backend() > BIGMODEL_BACKEND > auto; explicit choices
that cannot run raise BackendUnavailable listing every backend's reasons; auto falls back only to what can run."""
import pytest
import torch

import bigmodel
import bigmodel.backends as backends
from bigmodel.backends import BACKENDS, BackendUnavailable
from numerics import randn_input, requires_interpreter, triton_interpreting

NAMES = ("cuda", "triton", "torch", "reference")


@pytest.fixture(autouse=True)
def _no_env_backend(monkeypatch):
    monkeypatch.delenv("BIGMODEL_BACKEND", raising=False)


def ran(calls):
    """The backend(s) whose forward ran, in order."""
    return [name for name, fn in calls if fn == "layer_norm_fwd"]


def ln(x=None, backend=None):
    x = randn_input(4, 16) if x is None else x
    return bigmodel.ops.layer_norm(x, (16,), torch.ones(16, dtype=x.dtype), torch.zeros(16, dtype=x.dtype),
                                   backend=backend)


def test_spy_restored_after_use():
    for impl in BACKENDS.values():
        assert "layer_norm_fwd" not in vars(impl), "a spy leaked out of a previous test"


# ------------------------------------------------------------------------------------------ precedence
@requires_interpreter
def test_argument_beats_everything(spy, monkeypatch):
    monkeypatch.setenv("BIGMODEL_BACKEND", "triton")
    bigmodel.set_backend("triton")
    with bigmodel.use_backend("triton"):
        ln(backend="reference")
    assert ran(spy) == ["reference"]


@requires_interpreter
def test_use_backend_beats_set_backend_and_env(spy, monkeypatch):
    monkeypatch.setenv("BIGMODEL_BACKEND", "triton")
    bigmodel.set_backend("triton")
    with bigmodel.use_backend("reference"):
        ln()
    ln()  # back to set_backend's choice
    assert ran(spy) == ["reference", "triton"]


@requires_interpreter
def test_set_backend_beats_env(spy, monkeypatch):
    monkeypatch.setenv("BIGMODEL_BACKEND", "triton")
    bigmodel.set_backend("reference")
    ln()
    bigmodel.set_backend(None)  # None restores BIGMODEL_BACKEND / auto
    ln()
    assert ran(spy) == ["reference", "triton"]


@requires_interpreter
@pytest.mark.parametrize("env", ["reference", "triton"])
def test_env_beats_auto(spy, monkeypatch, env):
    monkeypatch.setenv("BIGMODEL_BACKEND", env)
    ln()
    assert ran(spy) == [env]


@requires_interpreter
def test_env_read_at_call_time(spy, monkeypatch):
    monkeypatch.setenv("BIGMODEL_BACKEND", "reference")
    ln()
    monkeypatch.setenv("BIGMODEL_BACKEND", "triton")
    ln()
    assert ran(spy) == ["reference", "triton"]


def test_env_auto_means_auto(spy, monkeypatch):
    monkeypatch.setenv("BIGMODEL_BACKEND", "auto")
    ln()
    assert ran(spy) == [backends.select("layer_norm", "auto", input=randn_input(2, 16)).name]


def test_auto_on_cpu_picks_torch_even_with_the_interpreter(spy):
    """On CPU tensors auto runs PyTorch's own op; Triton under the interpreter only when asked by name."""
    x = randn_input(4, 16).requires_grad_(True)
    y = ln(x)
    y.sum().backward()
    assert spy == [("torch", "layer_norm_fwd")]  # PyTorch's autograd ran the backward: no bigmodel backward
    assert y.grad_fn.name() == "NativeLayerNormBackward0"
    for op, inputs in (("attention", dict(q=randn_input(1, 2, 4, 8), k=randn_input(1, 2, 4, 8),
                                          v=randn_input(1, 2, 4, 8))),
                       ("softmax", dict(input=randn_input(4, 8))), ("activation", dict(input=randn_input(4, 8))),
                       ("linear_act", dict(input=randn_input(4, 8), weight=randn_input(3, 8)))):
        assert backends.select(op, "auto", **inputs).name == "torch", op


@requires_interpreter
def test_backward_uses_the_forward_backend(spy):
    x = randn_input(4, 16).requires_grad_(True)
    with bigmodel.use_backend("reference"):
        y = ln(x)
    y.sum().backward()  # outside the context: the backend chosen for the forward is recorded on the node
    assert spy == [("reference", "layer_norm_fwd"), ("reference", "layer_norm_bwd")]


@requires_interpreter
def test_nn_module_backend_kw(spy):
    m = bigmodel.nn.LayerNorm(16, backend="reference")
    with bigmodel.use_backend("triton"):
        m(randn_input(4, 16))
    assert ran(spy) == ["reference"]


# ------------------------------------------------------------------------------------------ use_backend
def test_use_backend_nests_and_restores(monkeypatch):
    monkeypatch.delenv("BIGMODEL_BACKEND", raising=False)
    bigmodel.set_backend(None)
    with bigmodel.use_backend("triton"):
        assert backends.requested() == "triton"
        with bigmodel.use_backend("reference"):
            assert backends.requested() == "reference"
            with bigmodel.use_backend("auto"):
                assert backends.requested() == "auto"
            assert backends.requested() == "reference"
        assert backends.requested() == "triton"
    assert backends._override[0] is None


def test_use_backend_restores_on_exception():
    bigmodel.set_backend("reference")
    with pytest.raises(RuntimeError, match="boom"):
        with bigmodel.use_backend("triton"):
            raise RuntimeError("boom")
    assert backends.requested() == "reference"


def test_requested_precedence_without_running(monkeypatch):
    monkeypatch.delenv("BIGMODEL_BACKEND", raising=False)
    bigmodel.set_backend(None)
    assert backends.requested() == "auto"
    monkeypatch.setenv("BIGMODEL_BACKEND", "cuda")
    assert backends.requested() == "cuda"
    bigmodel.set_backend("triton")
    assert backends.requested() == "triton"
    with bigmodel.use_backend("reference"):
        assert backends.requested() == "reference"
        assert backends.requested("cuda") == "cuda"
    monkeypatch.setenv("BIGMODEL_BACKEND", "")  # empty means unset
    bigmodel.set_backend(None)
    assert backends.requested() == "auto"


# ------------------------------------------------------------------------------------------ bad names
VALID = r"'cuda', 'triton', 'torch', 'reference', 'auto'"


@pytest.mark.parametrize("bad", ["Triton", "tritonn", "", "gpu", 3])
def test_unknown_names_raise_listing_valid(bad):
    for call in (lambda: bigmodel.set_backend(bad), lambda: bigmodel.use_backend(bad).__enter__(),
                 lambda: ln(backend=bad)):
        with pytest.raises(ValueError, match=VALID):
            call()
    assert backends._override[0] is None


def test_unknown_env_name_raises(monkeypatch):
    monkeypatch.setenv("BIGMODEL_BACKEND", "fast")
    with pytest.raises(ValueError, match=r"BIGMODEL_BACKEND: expected one of " + VALID + r", got 'fast'"):
        ln()


def test_patch_rejects_unknown_backend():
    model = torch.nn.Sequential(torch.nn.LayerNorm(16))
    with pytest.raises(ValueError, match=VALID):
        bigmodel.patch(model, backend="nope")


# ------------------------------------------------------------------------------------------ unavailable
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_explicit_cuda_on_cpu_raises_with_every_reason(monkeypatch):
    with pytest.raises(BackendUnavailable) as info:
        ln(backend="cuda")
    msg = str(info.value)
    assert "backend 'cuda' cannot run" in msg
    for name in NAMES:
        assert f"\n  {name}: " in msg, f"no line for {name} in:\n{msg}"
    cuda_line = next(line for line in msg.splitlines() if line.startswith("  cuda: "))
    for reason in BACKENDS["cuda"].not_supported_reasons("layer_norm", input=randn_input(2, 16)):
        assert reason in cuda_line
    assert "  torch: can run these inputs" in msg


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_explicit_cuda_via_use_backend_and_env_raises(monkeypatch):
    with bigmodel.use_backend("cuda"):
        with pytest.raises(BackendUnavailable, match="backend 'cuda' cannot run"):
            ln()
    monkeypatch.setenv("BIGMODEL_BACKEND", "cuda")
    with pytest.raises(BackendUnavailable, match="backend 'cuda' cannot run"):
        ln()


@pytest.fixture
def interpreter_off(monkeypatch):
    """As if triton had been imported without TRITON_INTERPRET (what the kernels' decorators saw)."""
    import bigmodel.kernels._utils as kutils
    monkeypatch.setattr(kutils, "INTERPRETING", False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def test_explicit_triton_on_cpu_without_interpreter_raises(interpreter_off):
    with pytest.raises(BackendUnavailable) as info:
        ln(backend="triton")
    msg = str(info.value)
    assert "backend 'triton' cannot run" in msg
    expected = ("Triton's CPU interpreter is off" if not torch.cuda.is_available()
                else "triton needs CUDA tensors (or TRITON_INTERPRET=1")
    assert expected in msg
    for name in NAMES:
        assert f"\n  {name}: " in msg


def test_triton_interpret_zero_means_off(monkeypatch):
    import bigmodel.kernels._utils as kutils
    for value, on in (("0", False), ("", False), ("1", True)):
        monkeypatch.setenv("TRITON_INTERPRET", value)
        assert kutils.interpreting() is on


def test_setting_triton_interpret_late_does_not_fool_the_backend(interpreter_off, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # too late: the kernels were compiled for the GPU
    with pytest.raises(BackendUnavailable, match="TRITON_INTERPRET=1"):
        ln(backend="triton")


def test_auto_on_cpu_without_interpreter_runs_torch(spy, interpreter_off):
    x = randn_input(4, 16).requires_grad_(True)
    y = ln(x)
    y.sum().backward()
    assert spy == [("torch", "layer_norm_fwd")]


@pytest.mark.parametrize("backend", [None, "auto"])
def test_float64_under_auto_runs_on_torch(spy, backend):
    ln(randn_input(4, 16, dtype=torch.float64), backend=backend)
    assert ran(spy) == ["torch"]


def test_auto_on_cpu_takes_the_reference_only_where_torch_cannot(spy, monkeypatch, caplog):
    monkeypatch.setitem(vars(BACKENDS["torch"]), "not_supported_reasons", lambda op, **inputs: ["pretend: no op"])
    with caplog.at_level("INFO", logger="bigmodel"):
        ln()
    assert ran(spy) == ["reference"]
    assert any("auto runs backend 'reference'" in r.message and "torch: pretend: no op" in r.message
               for r in caplog.records)


@pytest.mark.parametrize("name", ["triton", "reference", "torch"])
def test_explicit_backend_bypasses_auto(spy, name):
    if name == "triton" and not triton_interpreting():
        pytest.skip("needs the Triton interpreter")
    ln(backend=name)
    assert ran(spy) == [name]


# ------------------------------------------------------------------------------------------ auto on CUDA tensors
class _FakeCudaTensor:
    """Stands in for a CUDA tensor in the selection logic (no GPU here): only device, dtype and sizes are read."""

    def __init__(self, *shape, dtype=torch.float16):
        self.shape, self.dtype, self.device, self.requires_grad = torch.Size(shape), dtype, torch.device("cuda", 0), False

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[dim]


@pytest.fixture
def cuda_inputs(monkeypatch):
    """Selection on 'CUDA' inputs with every kernel backend able to run (reasons patched per test)."""
    for name in ("cuda", "triton", "torch", "reference"):
        monkeypatch.setitem(vars(BACKENDS[name]), "not_supported_reasons", lambda op, **inputs: [])
    return dict(input=_FakeCudaTensor(4, 16))


def test_auto_on_cuda_keeps_the_kernel_order(cuda_inputs):
    assert backends.select("layer_norm", "auto", **cuda_inputs).name == "triton"
    assert backends.select("softmax", "auto", **cuda_inputs).name == "cuda"
    assert backends.select("attention", "auto", q=cuda_inputs["input"]).name == "torch"  # torch first for attention


@pytest.mark.parametrize("autotune", ["0", "1"])  # static priority, and measured auto (nothing it could time)
def test_auto_on_cuda_falls_back_to_torch_with_a_logged_reason(cuda_inputs, monkeypatch, caplog, autotune):
    monkeypatch.setenv("BIGMODEL_AUTOTUNE", autotune)
    monkeypatch.setitem(vars(BACKENDS["triton"]), "not_supported_reasons", lambda op, **i: ["pretend: triton says no"])
    monkeypatch.setitem(vars(BACKENDS["cuda"]), "not_supported_reasons", lambda op, **i: ["pretend: cuda says no"])
    backends._logged.clear()
    with caplog.at_level("INFO", logger="bigmodel"):
        for _ in range(3):
            assert backends.select("layer_norm", "auto", **cuda_inputs).name == "torch"  # never the reference
    logged = [r for r in caplog.records if r.name == "bigmodel" and r.levelname == "INFO"]
    assert len(logged) == 1, [r.message for r in logged]  # once, not per call
    msg = logged[0].message
    assert "bigmodel.ops.layer_norm" in msg and "'torch'" in msg and "cuda tensors" in msg
    assert "triton: pretend: triton says no" in msg and "cuda: pretend: cuda says no" in msg


@pytest.mark.parametrize("autotune", ["0", "1"])
def test_auto_on_cuda_never_takes_the_reference(cuda_inputs, monkeypatch, autotune):
    monkeypatch.setenv("BIGMODEL_AUTOTUNE", autotune)
    for name in ("triton", "cuda", "torch"):
        monkeypatch.setitem(vars(BACKENDS[name]), "not_supported_reasons", lambda op, **i: ["pretend: no"])
    with pytest.raises(BackendUnavailable, match="no backend can run"):
        backends.select("layer_norm", "auto", **cuda_inputs)
    assert "reference" not in backends.auto_order("layer_norm", **cuda_inputs)


@requires_interpreter  # otherwise the machine-level reason (no GPU, no interpreter) is all triton reports
def test_float64_explicit_triton_raises_naming_dtype():
    with pytest.raises(BackendUnavailable, match=r"input has dtype float64; triton supports"):
        ln(randn_input(4, 16, dtype=torch.float64), backend="triton")


def test_explicit_failure_does_not_fall_back(spy, interpreter_off):
    with pytest.raises(BackendUnavailable):
        ln(backend="triton")
    assert spy == []


# ------------------------------------------------------------------------------------------ available_backends
def test_available_backends():
    av = bigmodel.available_backends()
    assert isinstance(av, dict) and set(av) == set(NAMES)
    for name, reasons in av.items():
        assert isinstance(reasons, list) and all(isinstance(r, str) and r for r in reasons), (name, reasons)
    assert av["reference"] == [] and av["torch"] == []
    assert set(av) == {"cuda", "triton", "torch", "reference"}
    if torch.cuda.is_available() or triton_interpreting():
        assert av["triton"] == []  # triton is installed in the test environment
    else:
        assert av["triton"], "triton must say why it cannot run without a GPU or the interpreter"
    if not torch.cuda.is_available():
        assert av["cuda"], "cuda must say why it cannot run on a machine without a GPU"
    assert bigmodel.available_backends is backends.available_backends


def test_registry_names():
    assert set(BACKENDS) == set(NAMES)
    for name, impl in BACKENDS.items():
        assert impl.name == name
