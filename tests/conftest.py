"""Shared test setup.

* Without a GPU, TRITON_INTERPRET=1 is set here, before anything imports triton (or bigmodel, which
  imports it), so the Triton kernels run on CPU tensors. With a GPU it is left unset: the CPU-interpreter
  tests skip and the `cuda`-marked tests cover the kernels on the device.
* `cuda`-marked tests skip without a GPU ("needs a CUDA GPU"). Markers are declared in pyproject.toml.
* Every test starts from torch.manual_seed(<a stable hash of its node id>): inputs are random but
  reproducible, and different tests get different inputs.
* The process-wide backend override (bigmodel.set_backend / use_backend) is reset around every test.
* Measured auto times nothing unless a test asks (BIGMODEL_AUTOTUNE=0 by default here: tests/test_autotune.py
  turns it on), and its cache goes to a fresh temporary folder, never the user's ~/.cache/bigmodel.
"""
import os
import sys
import tempfile
import zlib

import torch

if not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("BIGMODEL_AUTOTUNE", "0")
os.environ["BIGMODEL_CACHE_DIR"] = tempfile.mkdtemp(prefix="bigmodel-test-cache-")

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

import pytest  # noqa: E402

from numerics import INTERPRETER_SKIP_REASON, triton_interpreting  # noqa: E402,F401

HAS_GPU = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed(request):
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield


@pytest.fixture(autouse=True)
def _reset_backend_override():
    """Leave bigmodel's process-wide backend override as each test found it (None)."""
    mod = sys.modules.get("bigmodel.backends")
    before = mod._override[0] if mod is not None else None
    yield
    mod = sys.modules.get("bigmodel.backends")
    if mod is not None:
        mod._override[0] = before


@pytest.fixture(autouse=True)
def _forget_auto_decisions():
    """Auto memoises its choice per exact input signature; tests patch backends' reasons, so each starts afresh."""
    mod = sys.modules.get("bigmodel.backends.autotune")
    if mod is not None:
        mod.DECISIONS.clear()
    yield


@pytest.fixture(autouse=True)
def _free_cuda_memory(request):
    """After each cuda-marked test, hand cached GPU memory back (the fp64 references at real sizes are large)."""
    yield
    if HAS_GPU and "cuda" in request.keywords:
        torch.cuda.empty_cache()


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny models: on a shared CPU, extra intra-op threads only fight (20x slower steps here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def interpreter():
    """Use in tests that run Triton kernels on CPU tensors: skips when the interpreter is off."""
    if not triton_interpreting():
        pytest.skip(INTERPRETER_SKIP_REASON)
    return True



@pytest.fixture
def spy():
    """Records, in order, which backend's layer_norm_fwd / layer_norm_bwd ran: [(backend, fn), ...]. Backend "torch"
    (PyTorch's F.layer_norm, its own autograd) records its forward as ("torch", "layer_norm_fwd") and no backward."""
    from bigmodel.backends import BACKENDS

    calls, patched = [], []
    for name, impl in BACKENDS.items():
        fns = ("layer_norm",) if name == "torch" else ("layer_norm_fwd", "layer_norm_bwd")
        for fn in fns:
            # the class's method, looked up at call time: a test may patch the class (tests/test_autotune.py)
            def wrapper(*args, _name=name, _fn="layer_norm_fwd" if fn == "layer_norm" else fn, _impl=impl, _m=fn):
                calls.append((_name, _fn))
                return getattr(type(_impl), _m)(_impl, *args)

            assert fn not in vars(impl)
            setattr(impl, fn, wrapper)  # instance attribute shadows the method
            patched.append((impl, fn))
    try:
        yield calls
    finally:
        for impl, fn in patched:
            delattr(impl, fn)


def extension_or_skip(*names):
    """bigmodel._C with these entry points. Skips when it is not built, except where it must have been (CI with nvcc
    and a CUDA build of torch, or BIGMODEL_REQUIRE_CUDA_EXT=1): there a missing build fails."""
    import shutil

    try:
        import bigmodel._C as ext
    except ImportError as e:
        nvcc = os.path.exists(os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")) or \
            shutil.which("nvcc") is not None
        if (os.environ.get("CI") and nvcc and torch.version.cuda is not None) or \
                os.environ.get("BIGMODEL_REQUIRE_CUDA_EXT", "0") == "1":
            pytest.fail(f"bigmodel._C was supposed to be built but did not import: {e}")
        pytest.skip(f"bigmodel._C is not built here: {e}")
    missing = [n for n in names if not hasattr(ext, n)]
    assert not missing, f"bigmodel._C has no {missing} (stale build?)"
    return ext


@pytest.fixture(params=["triton", "cuda"])
def gpu_backend(request):
    """Each kernel backend in turn, for cuda-marked tests; "cuda" must exist where BIGMODEL_REQUIRE_CUDA_EXT=1."""
    from bigmodel.backends import BACKENDS

    name = request.param
    reasons = BACKENDS[name].machine_reasons()
    if reasons:
        msg = f"backend {name!r} unavailable: {'; '.join(reasons)}"
        if name == "cuda" and os.environ.get("BIGMODEL_REQUIRE_CUDA_EXT", "0") == "1":
            pytest.fail(msg + " (BIGMODEL_REQUIRE_CUDA_EXT=1: the extension was supposed to be built)")
        pytest.skip(msg)
    return name
