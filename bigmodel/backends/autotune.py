"""Measured auto: the first call for a key times every backend that can run it and keeps the fastest.

The key: op, mode ("train" = forward + backward, when grad is enabled and an input requires grad; else "infer"),
device (name and compute capability), and per input its dtype and sizes (rounded up to a power of two, the last dim
exact: head dim, hidden size), the attention mask's kind (bool / additive / none) and broadcast dims (stride 0),
and the flags (is_causal, dropout_p > 0, ...). (The other inputs reach the backends as stride-0 stand-ins of their
sizes, so their strides say nothing.)

The first call for a key (eagerly, outside torch.compile and CUDA-graph capture) runs each candidate on fresh random
inputs of the same sizes, strides, dtypes and requires_grad (a private generator; the caller's RNG state is restored,
so timing never shifts the user's random stream): a warm-up (compiles, autotunes), then timed repeats (CUDA events;
CPU: wall clock), median. Training times forward plus backward (torch.autograd.grad of a random upstream gradient).
The fastest wins; a candidate within TIE of the fastest that comes earlier in the op's static priority wins instead
(ties within noise go to the static order). Each choice is logged once at INFO on the "bigmodel" logger.

Choices live in memory and in a JSON file, `cache_path()`: BIGMODEL_CACHE_DIR, else $XDG_CACHE_HOME/bigmodel, else
~/.cache/bigmodel; one file per (torch, triton, bigmodel) versions, the device in every key. A corrupt or stale
file is ignored (logged) and rewritten on the next choice, never an error; a cache that cannot be written stays in
memory. Committed GPU measurements (benchmarks/results/*autotune*.json, merged by benchmarks/seed_table.py into
SEED_FILE, shipped in the package) answer keys on a matching device before anything is timed.

BIGMODEL_AUTOTUNE: "0" = never time (the static priority), also under torch.use_deterministic_algorithms(True);
unset or "1" = time on CUDA tensors (on the CPU auto runs PyTorch's op without timing); "all" = also time CPU
tensors among every backend that can run them (Triton under its interpreter, the reference): for tests and demos.
"""
import importlib
import json
import logging
import math
import os
import statistics
import tempfile
import time
import zlib
from pathlib import Path

import torch

from .base import _logged, log_once, trace_constant  # noqa: F401 (_logged: tests clear it)

log = logging.getLogger("bigmodel")

ENV = "BIGMODEL_AUTOTUNE"
TIE = 0.03  # relative: a slower candidate within 3% of the fastest counts as a tie (GPU timing noise)
FORMAT = 1  # of the cache and seed files
GPU_BUDGET_MS, GPU_REPEATS = 40.0, (3, 25)  # timed repeats per candidate: about this long, within these bounds
CPU_REPEATS = 2  # the Triton interpreter is slow; CPU timings only order the candidates, they are not performance
SEED_FILE = Path(__file__).with_name("autotune_seed.json")
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
               torch.bool: "bool"}

BROADCAST_KEYED = ("attn_mask",)  # inputs whose stride-0 (broadcast) dims are part of the key
DECISIONS: dict = {}  # exact input signature -> auto's settled choice (eager calls skip re-judging: select)
LAST: dict = {}  # op -> (key or None, winner) of the latest auto choice in this process (`bigmodel bench` notes it)
_memory: dict = {}  # key -> entry {"winner", "times_ms", "source"}; filled from the file on first use
_state = {"loaded": False, "write_failed": False}
_seeds: dict = {}


# ------------------------------------------------------------------------------------------ policy and key
@trace_constant
def policy() -> str:
    """"off", "cuda" (time CUDA inputs only; the default) or "all" (CPU inputs too); see the module docstring."""
    value = os.environ.get(ENV, "1").strip().lower()
    if value in ("0", "off", "false", "no") or torch.are_deterministic_algorithms_enabled():
        return "off"
    return "all" if value == "all" else "cuda"


def measures(device_type: str) -> bool:
    """Whether auto times the candidates for inputs on this device type (else it takes the static priority)."""
    mode = policy()
    return mode == "all" or (mode == "cuda" and device_type == "cuda")


@trace_constant
def device_label(device_type: str, index) -> str:
    """"cpu", or the GPU's name and compute capability, e.g. "NVIDIA H100 80GB HBM3 (sm_90)"."""
    if device_type != "cuda":
        return device_type
    try:
        index = torch.cuda.current_device() if index is None else index
        major, minor = torch.cuda.get_device_capability(index)
        return f"{torch.cuda.get_device_name(index)} (sm_{major}{minor})"
    except Exception:  # no driver (the selection tests fake CUDA inputs): a label that matches no measurement
        return f"cuda:{index} (unknown GPU)"


def _bucket(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length() if n > 1 else int(n)


def describe(inputs: dict) -> tuple:
    """The inputs as plain values (traceable: shapes, dtypes, strides and flags only)."""
    parts = []
    for name, value in inputs.items():
        if value is None:
            parts.append((name, "-"))
        elif hasattr(value, "shape") and hasattr(value, "dtype"):
            stride = value.stride() if name in BROADCAST_KEYED and hasattr(value, "stride") else (1,) * len(value.shape)
            dims = tuple(int(s) if i == len(value.shape) - 1 else _bucket(s) for i, s in enumerate(value.shape))
            broadcast = tuple(i for i, (s, st) in enumerate(zip(value.shape, stride)) if st == 0 and s > 1)
            dtype = DTYPE_NAMES[value.dtype] if value.dtype in DTYPE_NAMES else str(value.dtype)
            parts.append((name, dtype, dims, broadcast))
        elif isinstance(value, bool) or isinstance(value, str):
            parts.append((name, str(value)))
        elif isinstance(value, (int, float)):
            parts.append((name, ">0" if value > 0 else "0"))
        else:
            parts.append((name, type(value).__name__))
    return tuple(parts)


def make_key(op: str, training: bool, label: str, desc: tuple) -> str:
    """e.g. "attention train | NVIDIA H100 (sm_90) | q=bf16[1,32,4096,128] ... is_causal=True"."""
    items = []
    for part in desc:
        if len(part) == 2:
            items.append(f"{part[0]}={part[1]}")
        else:
            name, dtype, dims, broadcast = part
            mark = f" bcast{list(broadcast)}" if broadcast else ""
            items.append(f"{name}={dtype}[{','.join(map(str, dims))}]{mark}")
    return f"{op} {'train' if training else 'infer'} | {label} | {' '.join(items)}"


# ------------------------------------------------------------------------------------------ storage
def cache_dir() -> Path:
    if os.environ.get("BIGMODEL_CACHE_DIR"):
        return Path(os.environ["BIGMODEL_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bigmodel"


def context() -> dict:
    try:
        triton_version = importlib.import_module("triton").__version__
    except ImportError:
        triton_version = "none"
    return {"torch": torch.__version__, "triton": triton_version,
            "bigmodel": getattr(importlib.import_module("bigmodel"), "__version__", "?")}


def cache_path() -> Path:
    c = context()
    safe = "-".join(f"{k}{v}".replace("+", "_").replace("/", "_") for k, v in c.items())
    return cache_dir() / f"autotune-{safe}.json"


def _read_entries(path: Path, want_context: dict | None) -> dict:
    """The entries of a cache (or seed) file; {} when missing, corrupt or for other versions (logged)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log_once(f"bigmodel auto: ignoring the unreadable tuning file {path} ({type(e).__name__}: {e}); "
                  "it is rewritten on the next measurement")
        return {}
    ok = (isinstance(data, dict) and data.get("format") == FORMAT and isinstance(data.get("entries"), dict)
          and (want_context is None or data.get("context") == want_context))
    entries = data.get("entries") if ok else None
    if ok:
        entries = {k: e for k, e in entries.items()
                   if isinstance(e, dict) and isinstance(e.get("winner"), str) and isinstance(e.get("times_ms"), dict)}
    if not ok:
        log_once(f"bigmodel auto: ignoring the tuning file {path} (wrong format or versions); it is rewritten on the "
                  "next measurement")
        return {}
    return entries


def _load() -> None:
    if not _state["loaded"]:
        _state["loaded"] = True
        for key, entry in _read_entries(cache_path(), context()).items():
            _memory.setdefault(key, {**entry, "source": "cache"})


def seeds() -> dict:
    """The shipped seed table (read once per SEED_FILE path)."""
    if _seeds.get("path") != SEED_FILE:
        _seeds.update(path=SEED_FILE, entries={k: {**e, "source": "seed"}
                                                for k, e in _read_entries(SEED_FILE, None).items()})
    return _seeds["entries"]


def entries() -> dict:
    """Every choice known here: this process's, the cache file's, then the seed table's (shown by `bigmodel info`)."""
    _load()
    return {**seeds(), **_memory}


def reset_memory() -> None:
    """Forget this process's choices (the cache file is re-read on next use); for tests and `bigmodel tune`."""
    _memory.clear()
    _seeds.clear()
    DECISIONS.clear()
    _state["loaded"] = False
    LAST.clear()


def _store(key: str, entry: dict) -> None:
    _memory[key] = entry
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        merged = _read_entries(path, context()) if path.exists() else {}
        merged[key] = {k: v for k, v in entry.items() if k != "source"}
        data = {"format": FORMAT, "context": context(), "entries": merged}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".autotune-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)  # atomic: a reader (another rank) never sees half a file
    except OSError as e:
        if not _state["write_failed"]:
            _state["write_failed"] = True
            log.warning(f"bigmodel auto: cannot write the tuning cache {path} ({e}); choices stay in memory")


@trace_constant
def cached_choice(key: str):
    """The recorded winner for `key` (this process, the cache file, the seed table), or None."""
    _load()
    entry = _memory.get(key) or seeds().get(key)
    return entry["winner"] if entry else None


# ------------------------------------------------------------------------------------------ timing
class Fresh:
    """fresh(t): a tensor like t (sizes, strides, dtype, device, requires_grad) with new random data; the same one
    again on every later run (so that making inputs is not timed). Non-float tensors (boolean masks) and non-tensors
    are returned as they are. `leaves`: the fresh tensors that require grad."""

    def __init__(self, generator):
        self.generator, self.made, self.leaves, self.i = generator, [], [], 0

    def __call__(self, t):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            return t
        if self.i < len(self.made):
            self.i += 1
            return self.made[self.i - 1]
        span = 1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride())) if t.numel() else 0
        base = torch.randn(span, generator=self.generator, device=t.device, dtype=torch.float32).to(t.dtype)
        x = base.as_strided(t.shape, t.stride()).detach().requires_grad_(t.requires_grad)
        self.made.append(x)
        self.leaves += [x] if t.requires_grad else []
        self.i += 1
        return x


def _runner(trial, name, fresh, training):
    upstream = []

    def run():
        fresh.i = 0
        out = trial(name, fresh)
        if training and fresh.leaves:
            if not upstream:
                upstream.append(torch.randn(out.shape, generator=fresh.generator, device=out.device,
                                            dtype=torch.float32).to(out.dtype))
            torch.autograd.grad(out, fresh.leaves, upstream[0], allow_unused=True)
    return run


def _time_ms(run, device) -> float:
    if device.type == "cuda":
        with torch.cuda.device(device):
            run()  # warm-up: compiles and autotunes
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            torch.cuda.synchronize()
            estimate = max(start.elapsed_time(end), 1e-3)
            n = min(max(int(GPU_BUDGET_MS / estimate), GPU_REPEATS[0]), GPU_REPEATS[1])
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
            for s, e in events:
                s.record()
                run()
                e.record()
            torch.cuda.synchronize()
            return statistics.median(s.elapsed_time(e) for s, e in events)
    run()  # warm-up
    times = []
    for _ in range(CPU_REPEATS):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def pick(times: dict, order) -> str:
    """The fastest; an earlier candidate of the static order within TIE of it wins the tie."""
    best = min(times.values())
    if not math.isfinite(best):  # nothing could be timed: the static priority
        return order[0]
    return next(name for name in order if name in times and times[name] <= best * (1 + TIE))


def measure(op: str, key: str, candidates, trial, training: bool, device) -> str:
    """Time every candidate (static order) with `trial(backend, fresh)`, record and log the winner."""
    times, errors = {}, {}
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        generator = torch.Generator(device=device).manual_seed(zlib.crc32(key.encode()))
        for name in candidates:
            try:
                times[name] = _time_ms(_runner(trial, name, Fresh(generator), training), device)
            except Exception as e:  # out of memory (the inputs twice), or a kernel that fails on these inputs:
                # not taken, said loudly (a WARNING, and in the cache entry that `bigmodel info` shows), as Triton's
                # autotuner drops a config that cannot run; the call itself goes on on a backend that works
                times[name], errors[name] = math.inf, f"{type(e).__name__}: {str(e).strip()[:300]}"
                log.warning(f"bigmodel auto: backend {name!r} failed while being timed for {key}; not taken: "
                            f"{errors[name]}")
    winner = pick(times, candidates)
    entry = {"winner": winner, "times_ms": {k: round(v, 6) if math.isfinite(v) else None for k, v in times.items()},
             "source": "measured"}
    _store(key, {**entry, "errors": errors} if errors else entry)
    shown = ", ".join(f"{k} {v:.4g} ms" for k, v in times.items())
    log.info(f"bigmodel auto: {key}: {shown} -> {winner!r}")
    return winner


def choose(op: str, candidates, inputs: dict, training: bool, trial) -> tuple[str, bool, str | None]:
    """(winner, settled, key): the winner among `candidates` (runnable, static order): recorded, else measured, else
    the first (not settled: a later call that can time will); key None when there was nothing to choose."""
    if len(candidates) == 1:
        return candidates[0], True, None
    device = next(t.device for t in inputs.values() if hasattr(t, "device"))
    key = make_key(op, training, device_label(device.type, device.index), describe(inputs))
    winner, settled = cached_choice(key), True
    if winner not in candidates:
        can_time = (trial is not None and not torch.compiler.is_compiling()
                    and not (device.type == "cuda" and torch.cuda.is_current_stream_capturing()))
        winner = measure(op, key, candidates, trial, training, device) if can_time else candidates[0]
        settled = can_time
    return winner, settled, key


def signature(op: str, training: bool, inputs: dict) -> tuple:
    """Everything a backend's reasons and auto's key read of the inputs, exactly (the DECISIONS key)."""
    parts = [op, training, torch.is_grad_enabled(), policy()]
    for name, v in inputs.items():
        if hasattr(v, "shape") and hasattr(v, "dtype"):
            parts.append((name, tuple(v.shape), v.dtype, v.device, v.stride() if hasattr(v, "stride") else None,
                          bool(getattr(v, "requires_grad", False))))
        else:
            parts.append((name, v))
    return tuple(parts)


