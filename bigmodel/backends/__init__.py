"""Backend registry: which implementation runs an op, and why the others cannot.

Three backends: "cuda" (bigmodel._C), "triton" (bigmodel.kernels), "torch" (pure-torch reference).
Each adapter answers `not_supported_reasons(op, **inputs) -> list[str]`; an empty list means it can run.
The requested name comes from, in order: the call's `backend=` argument, `use_backend()` /
`set_backend()`, the BIGMODEL_BACKEND environment variable, then "auto" (the op's priority list, fastest
first, the reference last). A named backend that cannot run raises one BackendUnavailable listing every
backend's reasons; nothing falls back silently.
"""
import contextlib
import os

from .base import Backend, BackendUnavailable
from .cuda import CudaBackend
from .reference import TorchBackend
from .triton import TritonBackend

BACKENDS: dict[str, Backend] = {b.name: b for b in (CudaBackend(), TritonBackend(), TorchBackend())}
NAMES = tuple(BACKENDS) + ("auto",)
# Auto order per op, fastest first; ops not listed use DEFAULT_PRIORITY.
DEFAULT_PRIORITY = ("cuda", "triton", "torch")
PRIORITY: dict[str, tuple[str, ...]] = {"layer_norm": ("triton", "cuda", "torch"),
                                         "attention": ("triton", "cuda", "torch")}

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


def select(op: str, name: str, **inputs) -> Backend:
    """The backend that runs `op` on these inputs; raises BackendUnavailable if none (or the named one) can."""
    order = PRIORITY.get(op, DEFAULT_PRIORITY) if name == "auto" else (name,)
    for candidate in order:
        if not BACKENDS[candidate].not_supported_reasons(op, **inputs):
            return BACKENDS[candidate]
    reasons = {b: BACKENDS[b].not_supported_reasons(op, **inputs) for b in BACKENDS}
    lines = "\n".join(f"  {b}: {'; '.join(r) if r else 'can run these inputs'}" for b, r in reasons.items())
    asked = f"backend {name!r} cannot" if name != "auto" else "no backend can"
    raise BackendUnavailable(f"bigmodel.ops.{op}: {asked} run these inputs.\n{lines}")


def available_backends() -> dict[str, list[str]]:
    """{backend: reasons it cannot run on this machine} - an empty list means it is usable here."""
    return {name: b.machine_reasons() for name, b in BACKENDS.items()}


__all__ = ["BACKENDS", "Backend", "BackendUnavailable", "available_backends", "requested", "select",
           "set_backend", "use_backend"]
