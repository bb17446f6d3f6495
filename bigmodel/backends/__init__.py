"""Backend registry: which implementation runs an op, and why the others cannot.

Four backends: "triton" (bigmodel.kernels), "cuda" (bigmodel._C), "torch" (PyTorch's own ops, with PyTorch's
autograd: SDPA, F.layer_norm, ...) and "reference" (pure-math fp32 / fp64 implementations with hand-written
backward formulas: the test oracle). Each adapter answers `not_supported_reasons(op, **inputs) -> list[str]`; an
empty list means it can run. The requested name comes from, in order: the call's `backend=` argument,
`use_backend()` / `set_backend()`, the BIGMODEL_BACKEND environment variable, then "auto".

Auto, on CUDA tensors, is measured (backends/autotune.py): among the backends that can run the inputs (the
op's PRIORITY, "torch" always among them; never the reference), the first call for a key (op, mode, device, dtype,
power-of-two size buckets, flags) times each and keeps the fastest; ties within noise go to the static priority,
which also decides when timing is off (BIGMODEL_AUTOTUNE=0, deterministic algorithms, under torch.compile with no
recorded choice). On any other device (CPU) auto runs "torch", and the reference only where PyTorch cannot run the
inputs; Triton under the interpreter runs only when asked by name (or with BIGMODEL_AUTOTUNE=all, which times
every backend that can run CPU inputs). A fallback past the op's first choice is logged once at INFO on the
"bigmodel" logger. A named backend that cannot run raises one BackendUnavailable listing every backend's reasons;
nothing falls back silently.

bigmodel.ops resolves the backend (`select`) before anything runs, in Python, so torch.compile traces the choice
(no graph break): "torch" calls PyTorch's functional directly; the others call the `torch.ops.bigmodel.*` custom
op with that concrete name (`kernel`).
"""
import contextlib
import inspect
import os

import torch

from . import autotune
from .base import Backend, BackendUnavailable, _logged, log_once, trace_constant  # noqa: F401 (_logged: tests clear it)
from .cuda import CudaBackend
from .pytorch import PyTorchBackend
from .reference import ReferenceBackend
from .triton import TritonBackend


BACKENDS: dict[str, Backend] = {b.name: b for b in (CudaBackend(), TritonBackend(), PyTorchBackend(),
                                                    ReferenceBackend())}
NAMES = tuple(BACKENDS) + ("auto",)
KERNEL_BACKENDS = ("cuda", "triton", "reference")  # the names a torch.ops.bigmodel custom op runs
# Auto's static order on CUDA tensors, per op, first choice first; ops not listed use DEFAULT_PRIORITY. "torch"
# ends every list (the fallback); attention starts with it (PyTorch's cuDNN / flash SDPA until measured otherwise).
DEFAULT_PRIORITY = ("cuda", "triton", "torch")
PRIORITY: dict[str, tuple[str, ...]] = {"layer_norm": ("triton", "cuda", "torch"),
                                         "attention": ("torch", "triton", "cuda")}
# Auto's order on every other device (CPU): PyTorch's op, and the reference only where PyTorch cannot run it;
# with BIGMODEL_AUTOTUNE=all every backend that can run the inputs is timed, in this order of priority.
OTHER_DEVICE_PRIORITY = ("torch", "reference")
OTHER_DEVICE_MEASURED = ("torch", "triton", "reference")

def _takes_extras(b: Backend) -> bool:
    """Whether a backend's attention takes `extras=` at all (torch: its `attention`; the others: attention_fwd)."""
    fn = getattr(b, "attention" if b.name == "torch" else "attention_fwd", None)
    return fn is not None and "extras" in inspect.signature(fn).parameters


# Backends whose attention has no `extras=` parameter cannot honour window / softcap / alibi / sinks / varlen:
# they are declined here (a reason), whatever their own attention_reasons say, so auto never picks one that would
# ignore an extra. Read once at import (plain data: traceable).
ATTENTION_TAKES_EXTRAS = {name: _takes_extras(b) for name, b in BACKENDS.items()}


def _reasons(name: str, op: str, inputs: dict) -> list[str]:
    """BACKENDS[name].not_supported_reasons, plus the extras guard above."""
    reasons = BACKENDS[name].not_supported_reasons(op, **inputs)
    extras = inputs.get("extras")
    if extras is not None and extras.names and not ATTENTION_TAKES_EXTRAS.get(name, False):
        reasons = reasons + [f"{name}'s attention takes no extras ({', '.join(extras.names)})"]
    return reasons


def _keyed(inputs: dict) -> dict:
    """The inputs with `extras` replaced by a plain description (its scalars, and shape / dtype / device of its
    tensors), for auto's memo and measured key: tensors inside a tuple do not hash or compare as values."""
    extras = inputs.get("extras")
    if extras is None:
        return inputs
    desc = tuple(None if v is None else (tuple(v.shape), str(v.dtype), str(v.device)) if hasattr(v, "shape") else v
                 for v in extras)
    return {**inputs, "extras": ",".join(extras.names) or "-", "extras_detail": desc}


_override: list = [None]  # set_backend / use_backend (a plain list so torch.compile reads it without a break)


def check_name(name, what="backend") -> str:
    if not isinstance(name, str) or name not in NAMES:
        raise ValueError(f"{what}: expected one of {', '.join(map(repr, NAMES))}, got {name!r}")
    return name


def set_backend(name) -> None:
    """Set the process-wide backend (None restores BIGMODEL_BACKEND / auto)."""
    _override[0] = None if name is None else check_name(name)


@contextlib.contextmanager
def use_backend(name):
    """`with bigmodel.use_backend("triton"): ...` runs every op inside on that backend."""
    previous = _override[0]
    _override[0] = check_name(name)
    try:
        yield
    finally:
        _override[0] = previous


def requested(backend=None) -> str:
    """The backend asked for: argument > use_backend/set_backend > BIGMODEL_BACKEND > "auto"."""
    if backend is not None:
        return check_name(backend, "backend")
    if _override[0] is not None:
        return _override[0]
    env = os.environ.get("BIGMODEL_BACKEND")
    return check_name(env, "BIGMODEL_BACKEND") if env else "auto"


def auto_order(op: str, **inputs) -> tuple[str, ...]:
    """Auto's candidates for `op` on these inputs, first choice (the static priority) first."""
    device = next((_device_type(t) for t in inputs.values() if _device_type(t) is not None), "cpu")
    if device == "cuda":
        extras = inputs.get("extras")
        if op == "attention" and extras is not None and extras.names:
            # SDPA would get an (Lq, Lk) mask / bias or eager (L, L) scores for window / ALiBi / softcap: the
            # fused kernels first (measured choices still decide when timing is on)
            return ("triton", "cuda", "torch")
        return PRIORITY.get(op, DEFAULT_PRIORITY)
    return OTHER_DEVICE_MEASURED if autotune.measures(device) else OTHER_DEVICE_PRIORITY


def _device_type(t):
    """The device type of a tensor input, None for the other inputs (flags, None)."""
    return t.device.type if isinstance(t, torch.Tensor) or hasattr(t, "device") else None


def _unavailable(op, name, inputs, names=None):
    names = tuple(BACKENDS) if names is None else names
    reasons = {b: _reasons(b, op, inputs) for b in names}
    lines = "\n".join(f"  {b}: {'; '.join(r) if r else 'can run these inputs'}" for b, r in reasons.items())
    asked = f"backend {name!r} cannot" if name != "auto" else "no backend can"
    return BackendUnavailable(f"bigmodel.ops.{op}: {asked} run these inputs.\n{lines}")


def select(op: str, name: str, *, training: bool = False, trial=None, **inputs) -> Backend:
    """The backend that runs `op` on these inputs; raises BackendUnavailable if none (or the named one) can.
    Runs in Python at trace time under torch.compile (no graph break; no timing there).

    Under auto, `training` (grad enabled and an input requires grad) is part of the measured key, and
    `trial(backend, fresh)` runs the public op on `backend` with fresh(t) in place of each tensor t: what
    autotune times for a key seen the first time (without it, the recorded choice or the static priority)."""
    if name != "auto":
        if _reasons(name, op, inputs):
            raise _unavailable(op, name, inputs)
        return BACKENDS[name]
    keyed = _keyed(inputs)
    memo = None if torch.compiler.is_compiling() else autotune.signature(op, training, keyed)
    if memo is not None and memo in autotune.DECISIONS:  # judged before: same sizes, dtypes, flags, modes
        autotune.LAST[op] = autotune.DECISIONS[memo]
        return BACKENDS[autotune.DECISIONS[memo][1]]
    order = auto_order(op, **inputs)
    reasons = {candidate: _reasons(candidate, op, inputs) for candidate in order}
    runnable = tuple(candidate for candidate in order if not reasons[candidate])
    if not runnable:
        raise _unavailable(op, name, inputs)
    device = next(_device_type(t) for t in inputs.values() if _device_type(t) is not None)
    winner, settled, key = autotune.choose(op, runnable, keyed, training, trial) if autotune.measures(device) \
        else (runnable[0], True, None)
    autotune.LAST[op] = (key, winner)
    if memo is not None and settled:
        autotune.DECISIONS[memo] = (key, winner)
    passed = order[:order.index(runnable[0])]  # the static first choices that cannot run these inputs
    if passed:
        why = "; ".join(f"{b}: {'; '.join(reasons[b])}" for b in passed)
        log_once(f"bigmodel.ops.{op}: auto runs backend {winner!r} on {device} tensors, because {why}")
    return BACKENDS[winner]


def kernel(op: str, name: str, **inputs) -> Backend:
    """The custom ops' backend: `name` must be a concrete custom-op backend ("cuda", "triton", "reference") that can
    run these inputs. bigmodel.ops chose it (`select`); the custom op only checks it again."""
    if name not in KERNEL_BACKENDS:
        raise ValueError(f"torch.ops.bigmodel.{op}: backend must be one of {', '.join(map(repr, KERNEL_BACKENDS))}; "
                         f"got {name!r} (bigmodel.ops resolves 'auto' before the custom op, and calls PyTorch's own "
                         "op directly for 'torch')")
    if _reasons(name, op, inputs):
        raise _unavailable(op, name, inputs)
    return BACKENDS[name]




def available_backends() -> dict[str, list[str]]:
    """{backend: reasons it cannot run on this machine} - an empty list means it is usable here."""
    return {name: b.machine_reasons() for name, b in BACKENDS.items()}


__all__ = ["BACKENDS", "Backend", "BackendUnavailable", "auto_order", "autotune", "available_backends", "kernel",
           "requested", "select",
           "set_backend", "use_backend"]
