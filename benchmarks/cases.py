"""Benchmark cases: the one definition of what is timed, shared by the pytest-benchmark suites
(benchmarks/bench_*.py) and `bigmodel bench`.

A Case names one measurement: op, mode ("fwd", "bwd", "fwd+bwd"), shape, dtype, provider, device.
Each op registers a builder in OPS that lists its cases for a device and prepares one: fresh random
inputs (several sets, rotated so that caches do not flatter), a run() closure, the bytes one call must
move at least and/or the flops it must do. A provider that cannot run here raises Unavailable(reason):
it is reported as skipped with that reason, never dropped.

Adding an op: subclass OpBench like LayerNormBench (name, providers, sizes(), input_sets(), provider_fn(),
work(), and tier() so that its headline cases run early), in its own module if it is long (attention_cases.py,
ffn_cases.py, model_cases.py), and add an instance to OPS. work() gives `bytes` for a bandwidth-bound op
(reported in GB/s and % of copy bandwidth) or `flops` for a compute-bound one (TFLOP/s); a builder with its own
prepare() (model_cases.py: a training step) may give Prepared `tokens` (reported in tokens/s).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import os
import zlib
from typing import Callable

import torch
import torch.nn.functional as F

import bigmodel

MODES = ("fwd", "bwd", "fwd+bwd")
# bigmodel's pure-math backend (bigmodel/backends/reference.py): the oracle of the "max err vs reference" column.
# The one place its name is written here.
REFERENCE_BACKEND = "reference"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Sanity check of every provider against eager torch on the same inputs (tests/ hold the real numerics).
REL_ERR_TOL = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 2e-2}


class Unavailable(Exception):
    """This provider cannot run this case on this machine; the message says why."""


@dataclasses.dataclass(frozen=True)
class Case:
    op: str
    mode: str
    shape: tuple  # ((name, size), ...) in display order, e.g. (("rows", 16384), ("hidden", 4096))
    dtype: str  # a key of DTYPES
    provider: str
    device: str = "cuda"

    @property
    def params(self) -> dict:
        return dict(self.shape)

    @property
    def shape_str(self) -> str:
        return "x".join(str(size) for _, size in self.shape)

    @property
    def id(self) -> str:
        """Readable pytest id, e.g. 'fwd-bf16-16384x4096-triton'."""
        return f"{self.mode}-{self.dtype}-{self.shape_str}-{self.provider}"

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


@dataclasses.dataclass
class Prepared:
    """A case ready to time. call(i) runs once on input set i and returns its named outputs."""

    call: Callable[[int], dict]
    n_sets: int
    bytes: int | None = None  # fewest bytes one call must move through memory
    flops: int | None = None
    reference: Callable[[int], dict] | None = None  # eager torch on the same inputs; None for torch itself
    # bigmodel's pure-math backend (REFERENCE_BACKEND) on the same inputs: outputs and, in training modes, gradients
    exact: Callable[[int], dict] | None = None
    check: Callable[[int], dict] | None = None  # what is compared with reference, if not call (a training step)
    tokens: int | None = None  # tokens one call processes (a training step): the row gets tokens_per_s
    rep_ms: float | None = None  # GPU timing budget when do_bench's default (100 ms) would time too few calls
    extra: dict = dataclasses.field(default_factory=dict)  # more fields for the result row (e.g. a "note")

    def __post_init__(self):
        self._next_set = itertools.cycle(range(self.n_sets))

    def run(self):
        """One call on the next input set (the timed function)."""
        return self.call(next(self._next_set))

    def rel_err(self) -> float | None:
        """Worst ||out - ref|| / ||ref|| over the outputs both produce, on input set 0."""
        return self.errors()["rel_err"]

    def errors(self) -> dict:
        """On input set 0, from one call of the case: rel_err, the worst ||out - ref|| / ||ref|| against eager torch
        (None when there is no such reference), and max_err_vs_reference, the largest |out - exact| over every
        output and gradient both give, against bigmodel's pure-math backend (max_err_output: which one; None when
        not computed, max_err_note says why)."""
        found = dict(rel_err=None, max_err_vs_reference=None, max_err_output=None)
        if self.reference is None and self.exact is None:
            return found
        out = (self.check or self.call)(0)
        if self.reference is not None:
            found["rel_err"] = _worst(out, self.reference(0), _rel_err)[0] or 0.0
        if self.exact is not None:
            try:
                exact = self.exact(0)
            except Exception as e:  # the oracle failing must not hide the timing: the row says why instead
                found["max_err_note"] = f"reference backend failed: {type(e).__name__}: {str(e).strip()[:200]}"
            else:
                found["max_err_vs_reference"], found["max_err_output"] = _worst(out, exact, _max_abs_err)
        return found


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _max_abs_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() if a.numel() else 0.0


def _worst(out: dict, ref: dict, err: Callable) -> tuple[float | None, str | None]:
    """(largest err over the outputs both dicts name, its name); inf for a NaN / inf error."""
    worst, where = None, None
    for name in sorted(out.keys() & ref.keys()):
        a, b = out[name].detach().double(), ref[name].detach().double()
        value = err(a, b) if a.shape == b.shape else math.inf
        value = value if math.isfinite(value) else math.inf
        if worst is None or value > worst:
            worst, where = value, name
    return worst, where


def quick_from_env() -> bool:
    """BIGMODEL_BENCH_QUICK=1: fewer sizes and shorter timing (the pytest-benchmark suites read it)."""
    return os.environ.get("BIGMODEL_BENCH_QUICK", "0") not in ("", "0")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtypes(device: str) -> tuple[str, ...]:
    # bf16 is what the GPU targets are about; CPU runs are smoke tests, in fp32.
    return ("bf16",) if device == "cuda" else ("fp32",)


def seed_for(case: Case) -> None:
    """Random but reproducible inputs, different per case."""
    torch.manual_seed(zlib.crc32(f"{case.op}-{case.id}".encode()))


# ------------------------------------------------------------------------------------------ autograd modes
@dataclasses.dataclass
class InputSet:
    """One set of inputs of a single-output op: positional args (those that need gradients have
    requires_grad set), the names of their gradients in order, and the incoming gradient dy."""

    args: tuple
    grad_names: tuple
    dy: torch.Tensor | None = None

    @property
    def wrt(self) -> tuple:
        return tuple(a for a in self.args if isinstance(a, torch.Tensor) and a.requires_grad)


def mode_call(mode: str, fn: Callable, sets: list[InputSet]) -> Callable[[int], dict]:
    """call(i) for one mode. autograd.grad rather than .backward(): gradients are returned, not
    accumulated into .grad, so nothing needs resetting between timed calls."""
    if mode == "fwd":
        def call(i):
            with torch.no_grad():
                return {"y": fn(*sets[i].args)}
    elif mode == "bwd":
        ys = [fn(*s.args) for s in sets]  # forward graphs built once: only the backward is timed

        def call(i):
            s = sets[i]
            grads = torch.autograd.grad(ys[i], s.wrt, s.dy, retain_graph=True)
            return dict(zip(s.grad_names, grads))
    elif mode == "fwd+bwd":
        def call(i):
            s = sets[i]
            y = fn(*s.args)
            grads = torch.autograd.grad(y, s.wrt, s.dy)
            return {"y": y, **dict(zip(s.grad_names, grads))}
    else:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    return call


def n_input_sets(device: str) -> int:
    # do_bench also flushes L2 between calls; rotating 4 sets keeps repeated calls off warm data anyway.
    return 4 if device == "cuda" else 2


def backend_reasons(backend: str, op: str, **inputs) -> list[str]:
    return bigmodel.backends.BACKENDS[backend].not_supported_reasons(op, **inputs)


# ------------------------------------------------------------------------------------------ torch.compile
# Dynamo keeps compiled graphs on the code object of the compiled function and, past its recompile limit
# (8), silently runs eager code. Each shape is compiled statically (dynamic=False) and the cache is emptied
# when the key changes, so every case times compiled code. Cases come ordered shape by shape.
_compiled: dict = {}


def compiled(key, fn: Callable) -> Callable:
    if key not in _compiled:
        _compiled.clear()
        torch.compiler.reset()
        _compiled[key] = torch.compile(fn, dynamic=False, fullgraph=True)
    return _compiled[key]


def first_call(provider: str, build: Callable[[], Prepared]) -> Prepared:
    """Build the case and run it once (compilation, autotuning, lazy init stay out of the timings).
    A torch.compile failure is Unavailable (reported as skipped, with the error); other errors propagate."""
    try:
        bigmodel.backends.autotune.LAST.clear()
        prepared = build()
        prepared.call(0)
        if provider == "auto":
            prepared.extra["note"] = auto_note()
    except Unavailable:
        raise
    except Exception as e:
        if provider != "torch.compile":
            raise
        first_line = (str(e).strip().splitlines() or [""])[0][:300]
        raise Unavailable(f"torch.compile failed: {type(e).__name__}: {first_line}") from e
    return prepared


# ------------------------------------------------------------------------------------------ builders
def require_backend(backend: str, op: str, **inputs) -> None:
    """Unavailable (with the backend's own reasons) unless bigmodel's `backend` can run `op` on these inputs
    ("auto": unless no backend can)."""
    if backend == "auto":
        try:
            bigmodel.backends.select(op, "auto", **inputs)
        except bigmodel.backends.BackendUnavailable as e:
            raise Unavailable(str(e)) from e
        return
    reasons = backend_reasons(backend, op, **inputs)
    if reasons:
        raise Unavailable("; ".join(reasons))


def auto_note() -> str:
    """What auto chose during a case's first call (it measures then, outside the timings)."""
    chosen = dict.fromkeys(f"{winner} ({key.split(' | ')[0] if key else op})" for op, (key, winner) in
                           bigmodel.backends.autotune.LAST.items())
    return "auto ran " + ", ".join(chosen) if chosen else "auto: no choice recorded"


def require_memory(case: Case, nbytes: int, fraction: float = 0.8) -> None:
    """Unavailable when a GPU case needs more than `fraction` of the free device memory (estimated by the builder)."""
    if case.device != "cuda":
        return
    free, _ = torch.cuda.mem_get_info()
    if nbytes > fraction * free:
        raise Unavailable(f"needs ~{nbytes / 2**30:.1f} GiB; {free / 2**30:.1f} GiB free on this GPU")


class OpBench:
    """What a builder in OPS does, for an op whose providers are functions of one input set (InputSet.args).

    A subclass gives: name, providers, sizes(device, quick) -> shapes, input_sets(case), provider_fn(case, sample)
    (raises Unavailable when the provider cannot run the case) and work(case) -> {"bytes": n} or {"flops": n}.
    bigmodel_fn(case, backend, sample) is the op on one of bigmodel's backends (what the triton and cuda providers run,
    and, with REFERENCE_BACKEND, the oracle of the "max err vs reference" column: reference_backend_fn).
    It may give tier(case) (0 = most important: `bigmodel bench` and the GPU suite run cases by tier, across ops,
    so a run cut short has the important numbers of every op), has_mode(shape, mode) (some shapes only in some
    modes) and reference_fn(case, sample) (what the result is checked against, on the same inputs, forward and
    gradients; default: the "torch" provider; None: no check).
    """

    name = "?"
    providers: tuple = ()
    compiling: tuple = ("torch.compile",)  # providers whose first-call failures are reported as skipped

    def sizes(self, device: str, quick: bool) -> list[tuple]:
        raise NotImplementedError

    def tier(self, case: Case) -> int:
        return 0

    def has_mode(self, shape: tuple, mode: str) -> bool:
        return True

    def cases(self, device: str, dtypes, modes, quick: bool = False) -> list[Case]:
        every = [Case(self.name, mode, shape, dtype, provider, device)
                 for shape in self.sizes(device, quick) for dtype in dtypes for mode in modes
                 if self.has_mode(shape, mode) for provider in self.providers if self.has_provider(device, provider)]
        return sorted(every, key=lambda c: (self.tier(c), dtypes.index(c.dtype)))  # stable: shape by shape

    def torch_fn(self, case: Case, eager: Callable, key=()) -> Callable | None:
        """The eager function for provider "torch", compiled for "torch.compile", else None."""
        if case.provider == "torch":
            return eager
        if case.provider == "torch.compile":
            return compiled((case.op, case.shape, case.dtype, case.device, *key), eager)
        return None

    def extra(self, case: Case) -> dict:
        """More fields for the case's result row (e.g. a "note" the report shows under the table)."""
        return {}

    def has_provider(self, device: str, provider: str) -> bool:
        """Whether `provider` has cases on `device` (one that cannot run there is listed, as skipped, by default)."""
        return True

    def reference_fn(self, case: Case, sample: InputSet) -> Callable | None:
        if case.provider == "torch":
            return None
        return self.provider_fn(dataclasses.replace(case, provider="torch"), sample)

    def bigmodel_fn(self, case: Case, backend: str, sample: InputSet) -> Callable:
        """The op through bigmodel.ops with backend=`backend`; Unavailable (its reasons) when it cannot run `sample`."""
        raise NotImplementedError

    def reference_backend_fn(self, case: Case, sample: InputSet) -> Callable | None:
        """The case's function on bigmodel's pure-math backend (the "max err vs reference" column); None: no column."""
        try:
            return self.bigmodel_fn(case, REFERENCE_BACKEND, sample)
        except Unavailable:
            return None

    def prepare(self, case: Case) -> Prepared:
        seed_for(case)

        def build():
            sets = self.input_sets(case)
            fn, ref = self.provider_fn(case, sets[0]), self.reference_fn(case, sets[0])
            exact = self.reference_backend_fn(case, sets[0])
            check_mode = "fwd" if case.mode == "fwd" else "fwd+bwd"  # outputs and, in training modes, gradients

            def reference(i):  # fwd+bwd graphs are built per call: nothing is held until the check runs
                return mode_call(check_mode, ref, sets)(i)

            def on_reference_backend(i):
                return mode_call(check_mode, exact, sets)(i)

            return Prepared(mode_call(case.mode, fn, sets), len(sets), reference=reference if ref else None,
                            exact=on_reference_backend if exact else None, extra=self.extra(case),
                            **self.work(case))

        return first_call("torch.compile" if case.provider in self.compiling else case.provider, build)


# ------------------------------------------------------------------------------------------ layer_norm
class LayerNormBench(OpBench):
    name = "layer_norm"
    providers = ("torch", "torch.compile", "triton", "cuda", "auto")
    eps = 1e-5

    def sizes(self, device: str, quick: bool) -> list[tuple]:
        if device == "cuda":
            hidden = (1024, 4096, 16384) if quick else (768, 1024, 2048, 4096, 8192, 12288, 16384)
            return [(("rows", 16384), ("hidden", h)) for h in hidden]
        # CPU: smoke-test sizes; the numbers only show the path works. 64 rows: the Triton interpreter's time grows
        # with the rows (~0.4 s a fwd+bwd call here; 256 rows took ~1.4 s).
        return [(("rows", 64), ("hidden", h)) for h in ((768,) if quick else (768, 1024))]

    def tier(self, case: Case) -> int:
        # DESIGN.md's targets are fwd and bwd against torch; fwd+bwd next; torch.compile (compiles) last
        if case.provider == "torch.compile":
            return 2
        return 0 if case.mode != "fwd+bwd" else 1

    def work(self, case: Case) -> dict:
        rows, hidden = case.params["rows"], case.params["hidden"]
        e = case.torch_dtype.itemsize
        # fwd: read x, write y, read w and b, write mean and rstd (fp32)
        fwd = 2 * rows * hidden * e + 2 * hidden * e + 2 * rows * 4
        # bwd: read x and dy, write dx, read w, mean and rstd, write dw and db
        bwd = 3 * rows * hidden * e + hidden * e + 2 * rows * 4 + 2 * hidden * e
        return {"bytes": {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[case.mode]}

    def input_sets(self, case: Case) -> list[InputSet]:
        rows, hidden = case.params["rows"], case.params["hidden"]
        kw = dict(device=case.device, dtype=case.torch_dtype)
        grad = case.mode != "fwd"
        sets = []
        for _ in range(n_input_sets(case.device)):
            x = torch.randn(rows, hidden, **kw)
            w = (1 + 0.1 * torch.randn(hidden, device=case.device)).to(case.torch_dtype)
            b = (0.1 * torch.randn(hidden, device=case.device)).to(case.torch_dtype)
            dy = torch.randn(rows, hidden, **kw) if grad else None
            args = tuple(t.requires_grad_(grad) for t in (x, w, b))
            sets.append(InputSet(args, ("dx", "dw", "db"), dy))
        return sets

    def provider_fn(self, case: Case, sample: InputSet) -> Callable:
        hidden, eps = case.params["hidden"], self.eps

        def eager(x, w, b):
            return F.layer_norm(x, (hidden,), w, b, eps)

        return self.torch_fn(case, eager) or self.bigmodel_fn(case, case.provider, sample)

    def bigmodel_fn(self, case: Case, backend: str, sample: InputSet) -> Callable:
        hidden, eps = case.params["hidden"], self.eps
        x, w, b = sample.args
        require_backend(backend, "layer_norm", input=x, weight=w, bias=b)

        def fused(x, w, b):
            return bigmodel.ops.layer_norm(x, (hidden,), w, b, eps, backend=backend)

        return fused


from .attention_cases import AttentionBench  # noqa: E402 (these modules import the names above)
from .ffn_cases import FeedForwardBench, LinearActBench, PointwiseBench  # noqa: E402
from .decode_cases import DecodeBench  # noqa: E402
from .attention_extras_cases import BUILDERS as ATTENTION_EXTRAS_BUILDERS  # noqa: E402
from .model_cases import TrainStepBench  # noqa: E402
from .llama_cases import BUILDERS as LLAMA_BUILDERS  # noqa: E402
from .loss_cases import BUILDERS as LOSS_BUILDERS  # noqa: E402

# The order of OPS is the run order within a tier (see all_cases) and the order of the report.
OPS = {b.name: b for b in (TrainStepBench(), LinearActBench(), FeedForwardBench(), LayerNormBench(),
                           PointwiseBench.softmax(), PointwiseBench.gelu(), AttentionBench(), DecodeBench(),
                           *LLAMA_BUILDERS, *LOSS_BUILDERS, *ATTENTION_EXTRAS_BUILDERS)}


def all_cases(ops=None, modes=MODES, dtypes=None, device=None, quick=False) -> list[Case]:
    """Every case for these ops / modes / dtypes on `device` (default: the GPU if there is one), most important
    first: by tier (each builder's tier(case); 0 = DESIGN.md's headline comparisons), then dtype, then op (OPS
    order), each op's cases in its own order (shape by shape). A run cut short (--max-seconds, the GPU suite's one
    device call) thus has tier 0 of every op; the report sorts rows back by op and shape."""
    device = device or default_device()
    dtypes = tuple(dtypes or default_dtypes(device))
    unknown = [op for op in (ops or ()) if op not in OPS]
    if unknown:
        raise ValueError(f"unknown op(s) {', '.join(unknown)}; known: {', '.join(OPS)}")
    bad = [m for m in modes if m not in MODES] + [d for d in dtypes if d not in DTYPES]
    if bad:
        raise ValueError(f"unknown mode/dtype {', '.join(bad)}; modes: {', '.join(MODES)}; dtypes: {', '.join(DTYPES)}")
    every = [c for op in OPS if not ops or op in ops for c in OPS[op].cases(device, dtypes, modes, quick)]
    return sorted(every, key=lambda c: (OPS[c.op].tier(c), dtypes.index(c.dtype)))


def prepare(case: Case) -> Prepared:
    """Inputs and run closure for one case; raises Unavailable when the provider cannot run here."""
    return OPS[case.op].prepare(case)
