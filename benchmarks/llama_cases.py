"""Benchmark cases of the Llama-family ops (registered in benchmarks/cases.py's OPS): rms_norm, add_rms_norm, rotary,
swiglu, geglu (memory-bound: GB/s and % of copy bandwidth) and gated_feed_forward (3 GEMMs: TFLOP/s).

Shapes, bf16 on a GPU (--quick: the ones marked *):
  rms_norm, add_rms_norm  rows 16384 (8 x 2048 tokens) x hidden 1024, 2048, 4096*, 8192*; 4096 x 65536 (past the
                          Triton kernel's 8192 whole-row limit: triton is skipped with that reason)
  rotary   q (B, H, L, D) = (8, 32, 2048, 128)* and (8, 8, 2048, 128)* (Llama-3-8B's q and k) with (L, D) tables;
           (8, 32, 2048, 128) with (B, L, D) tables (Hugging Face's; passed as cos[:, None]) and with q in Hugging
           Face's storage (layout blhd: q_proj(x).view(B, L, H, D).transpose(1, 2)); head dim 80 full and with rotary
           dim 32 (Phi-2's partial rotary: the other 48 features pass through)
  swiglu   gate, up (16384, 8192), (16384, 14336)*;  geglu (Gemma's, approximate="tanh") (16384, 8192)
  gated_feed_forward  tokens 16384 (8 x 2048) x d_model x d_ff, silu: (2048, 8192) Llama-3.2-1B-like,
           (4096, 14336)* Llama-3-8B
  CPU (fp32; Triton under TRITON_INTERPRET=1): one or two tiny shapes each, smoke tests only.
Providers:
  torch          the eager composition a user writes: F.rms_norm; x + r then F.rms_norm; Hugging Face's rotate_half
                 formula (x * cos + rotate_half(x) * sin, partial: the rest concatenated); F.silu(g) * u
                 (F.gelu(g, approximate="tanh") * u); F.linear(act(F.linear(x, Wg)) * F.linear(x, Wu), Wd)
  torch.compile  that eager function compiled (cases.compiled: static shapes, one compile per shape)
  triton, cuda, auto  bigmodel.ops.<op>(..., backend=...); skipped with the backend's own reasons where it cannot run
  liger          Liger-Kernel: LigerRMSNormFunction (casting_mode "llama", in_place=False: its in-place default
                 overwrites dy), LigerFusedAddRMSNormFunction, liger_rotary_pos_emb (it rotates q and k together:
                 given a 1-head k), LigerSiLUMulFunction, LigerGELUMulFunction (tanh GELU), and for
                 gated_feed_forward F.linear + LigerSiLUMulFunction + F.linear (its LigerSwiGLUMLP). Skipped with the
                 reason when liger_kernel is not importable, and on a CPU (its ops are CUDA Triton kernels). Liger's
                 swiglu / geglu backward writes the gradients into gate / up (in place, as in its MLP) and its rotary
                 rotates a q stored as (B, L, H, D) in place: those rows are checked on fresh copies of the inputs and
                 timed on inputs it overwrote (the rows' note says so).
Bytes (the fewest one call must move; e = the dtype's bytes, N x H the rows, statistics not counted: a kernel can
recompute rstd from x, which it reads anyway):
  rms_norm      fwd read x, w, write y: 2NHe + He;  bwd read x, dy, w, write dx, dw: 3NHe + 2He
  add_rms_norm  fwd read x, r, w, write y, h: 4NHe + He;  bwd read dy, dh, h, w, write dx (= dr), dw: 4NHe + 2He
  rotary        fwd and bwd each read x (dy) and the cos / sin tables, write y (dx), all D features:
                2 x numel + 2 tables
  swiglu, geglu fwd read g, u, write y: 3 x numel;  bwd read dy, g, u, write dg, du: 5 x numel
  fwd+bwd: the sum of the two.  gated_feed_forward: flops 2 x 3 x tokens x d_model x d_ff forward, twice that backward.
Tiers: 0 = the headline shape (rms_norm / add_rms_norm 16384 x 4096, rotary (8, 32, 2048, 128), swiglu 16384 x 14336:
fwd and bwd; gated_feed_forward Llama-3-8B: fwd+bwd) for torch, triton, cuda, liger; 1 = the other shapes and modes,
auto; 2 = torch.compile. GPU, bf16: 360 cases (tier 0: 36; tier 2: 60 compiled); estimated for an H100 (not measured
yet): tier 0 ~15 s, tiers 0-1 ~3 min, all ~9 min.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
from typing import Callable

import torch
import torch.nn.functional as F

import bigmodel

from .cases import (Case, InputSet, OpBench, Prepared, Unavailable, first_call, n_input_sets, require_backend,
                    require_memory, seed_for)

LIGER_MISSING = "Liger-Kernel is not installed (pip install liger-kernel)"
LIGER_CPU = "Liger-Kernel's ops are Triton kernels for CUDA GPUs: no CPU path (this run is on cpu)"
CORE = ("torch", "triton", "cuda", "liger")  # the headline comparison (DESIGN.md's targets; Liger the peer)
EPS = 1e-5  # Llama's rms_norm_eps, passed to every provider


def liger(module: str, *names: str):
    """The first of `names` found in liger_kernel.<module>; Unavailable (with the reason) when Liger-Kernel is not
    installed, cannot be imported, or lacks them."""
    try:
        mod = importlib.import_module(f"liger_kernel.{module}")
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "liger_kernel" and importlib.util.find_spec("liger_kernel") is None:
            raise Unavailable(LIGER_MISSING) from e
        raise Unavailable(f"cannot import liger_kernel.{module}: {type(e).__name__}: {e}") from e
    except Exception as e:  # e.g. a Liger-Kernel built against other torch / triton versions
        raise Unavailable(f"cannot import liger_kernel.{module}: {type(e).__name__}: {str(e)[:200]}") from e
    for name in names:
        if hasattr(mod, name):
            return getattr(mod, name)
    try:
        version = importlib.metadata.version("liger-kernel")
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    raise Unavailable(f"Liger-Kernel {version} has no liger_kernel.{module}.{' / '.join(names)}")


def require_liger(case: Case) -> None:
    if importlib.util.find_spec("liger_kernel") is None:
        raise Unavailable(LIGER_MISSING + ("; and its ops need a CUDA GPU" if case.device != "cuda" else ""))
    if case.device != "cuda":
        raise Unavailable(LIGER_CPU)


def clone_set(s: InputSet) -> InputSet:
    """A fresh copy of an input set (same requires_grad): for providers that write into their inputs."""
    def fresh(t):
        return t.detach().clone().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t
    dy = tuple(map(fresh, s.dy)) if isinstance(s.dy, tuple) else fresh(s.dy)
    return InputSet(tuple(map(fresh, s.args)), s.grad_names, dy)


def outputs_call(mode: str, fn: Callable, sets: list[InputSet], names: tuple) -> Callable[[int], dict]:
    """cases.mode_call for ops of one or more outputs (add_rms_norm: y and h; dy then is a tuple (dy, dh))."""
    def named(out):
        return dict(zip(names, out if isinstance(out, tuple) else (out,)))

    if mode == "fwd":
        def call(i):
            with torch.no_grad():
                return named(fn(*sets[i].args))
    elif mode == "bwd":
        ys = [fn(*s.args) for s in sets]  # forward graphs built once: only the backward is timed

        def call(i):
            s = sets[i]
            return dict(zip(s.grad_names, torch.autograd.grad(ys[i], s.wrt, s.dy, retain_graph=True)))
    elif mode == "fwd+bwd":
        def call(i):
            s = sets[i]
            y = fn(*s.args)
            return {**named(y), **dict(zip(s.grad_names, torch.autograd.grad(y, s.wrt, s.dy)))}
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return call


class LlamaBench(OpBench):
    """A subclass gives name, dims (shape names), gpu / gpu_quick / cpu sizes, headline (the tier-0 size),
    eager(case), fused(case, backend), liger_fn(case), backend_inputs(case, sample) (what bigmodel's backend
    machinery is asked about), make_set(case), work(case)."""

    providers = ("torch", "torch.compile", "triton", "cuda", "auto", "liger")
    baselines = {"liger": ("liger",)}  # report.py: a speed-up column against Liger-Kernel
    outputs = ("y",)
    headline_modes = ("fwd", "bwd")
    backend_op = "?"
    dims: tuple = ()
    gpu: tuple = ()
    gpu_quick: tuple = ()
    cpu: tuple = ()
    headline: tuple = ()

    def sizes(self, device: str, quick: bool) -> list[tuple]:
        dims = (self.gpu_quick if quick else self.gpu) if device == "cuda" else self.cpu
        return [tuple(zip(self.dims, d)) for d in dims]

    def tier(self, case: Case) -> int:
        if case.provider == "torch.compile":
            return 2
        head = tuple(v for _, v in case.shape) == (self.headline if case.device == "cuda" else self.cpu[0])
        return 0 if head and case.mode in self.headline_modes and case.provider in CORE else 1

    def input_sets(self, case: Case) -> list[InputSet]:
        return [self.make_set(case) for _ in range(n_input_sets(case.device))]

    def provider_fn(self, case: Case, sample: InputSet) -> Callable:
        fn = self.torch_fn(case, self.eager(case))
        if fn is not None:
            return fn
        if case.provider == "liger":
            require_liger(case)
            return self.liger_fn(case)
        return self.bigmodel_fn(case, case.provider, sample)

    def bigmodel_fn(self, case: Case, backend: str, sample: InputSet) -> Callable:
        require_backend(backend, self.backend_op, **self.backend_inputs(case, sample))
        return self.fused(case, backend)

    def liger_mutates(self, case: Case) -> bool:
        """Whether Liger's function writes into the input set (then it is checked on fresh copies)."""
        return False

    def extra(self, case: Case) -> dict:
        if case.provider == "liger" and self.liger_mutates(case):
            return {"note": "Liger writes into its inputs' storage (in place, by design): checked on fresh copies, "
                            "timed on the inputs it overwrote (the values do not change the work)"}
        return {}

    def prepare(self, case: Case) -> Prepared:
        """OpBench.prepare with several outputs and, for a provider that overwrites its inputs, the checks on a
        pristine copy of input set 0."""
        seed_for(case)

        def build():
            sets = self.input_sets(case)
            pristine = clone_set(sets[0])
            fn, ref = self.provider_fn(case, sets[0]), self.reference_fn(case, sets[0])
            exact = self.reference_backend_fn(case, sets[0])
            check_mode = "fwd" if case.mode == "fwd" else "fwd+bwd"

            def on_pristine(f):
                return lambda i: outputs_call(check_mode, f, [clone_set(pristine)], self.outputs)(0)

            mutates = case.provider == "liger" and self.liger_mutates(case)
            return Prepared(outputs_call(case.mode, fn, sets, self.outputs), len(sets),
                            reference=on_pristine(ref) if ref else None, exact=on_pristine(exact) if exact else None,
                            check=on_pristine(fn) if mutates else None, extra=self.extra(case), **self.work(case))

        with no_donated_buffers() if case.provider in self.compiling else contextlib.nullcontext():
            return first_call("torch.compile" if case.provider in self.compiling else case.provider, build)


def no_donated_buffers():
    """torch.compile's backward may "donate" (reuse) the forward's saved buffers, which forbids retain_graph: the bwd
    mode times the backward of one graph again and again. Compiled graphs reuse each other across modes (cases.compiled
    keys by shape), so every mode compiles without donation (memory only; the same kernels)."""
    try:
        from torch._functorch import config
    except ImportError:
        return contextlib.nullcontext()
    if not hasattr(config, "donated_buffer"):
        return contextlib.nullcontext()
    return config.patch(donated_buffer=False)


def _weight(hidden: int, case: Case) -> torch.Tensor:
    return (1 + 0.1 * torch.randn(hidden, device=case.device)).to(case.torch_dtype)


# ------------------------------------------------------------------------------------------ rms_norm, add_rms_norm
class RMSNormBench(LlamaBench):
    name = "rms_norm"
    backend_op = "rms_norm"
    dims = ("rows", "hidden")
    gpu = ((16384, 1024), (16384, 2048), (16384, 4096), (16384, 8192), (4096, 65536))
    gpu_quick = ((16384, 4096), (16384, 8192))
    cpu = ((64, 512),)
    headline = (16384, 4096)
    residual = False  # add_rms_norm: x + r first, and h returned too

    def make_set(self, case: Case) -> InputSet:
        rows, hidden = case.params["rows"], case.params["hidden"]
        kw = dict(device=case.device, dtype=case.torch_dtype)
        grad = case.mode != "fwd"
        xs = [torch.randn(rows, hidden, **kw) for _ in range(2 if self.residual else 1)]
        args = tuple(t.requires_grad_(grad) for t in (*xs, _weight(hidden, case)))
        names = ("dx", "dr", "dw") if self.residual else ("dx", "dw")
        dy = None
        if grad:
            dy = (torch.randn(rows, hidden, **kw), torch.randn(rows, hidden, **kw)) if self.residual else \
                torch.randn(rows, hidden, **kw)
        return InputSet(args, names, dy)

    def work(self, case: Case) -> dict:
        rows, hidden = case.params["rows"], case.params["hidden"]
        e, nh = case.torch_dtype.itemsize, case.params["rows"] * case.params["hidden"]
        fwd = (4 if self.residual else 2) * nh * e + hidden * e
        bwd = (4 if self.residual else 3) * nh * e + 2 * hidden * e
        return {"bytes": {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[case.mode]}

    def eager(self, case: Case) -> Callable:
        shape = (case.params["hidden"],)
        if self.residual:
            def eager(x, r, w):
                h = x + r
                return F.rms_norm(h, shape, w, EPS), h
        else:
            def eager(x, w):
                return F.rms_norm(x, shape, w, EPS)
        return eager

    def backend_inputs(self, case: Case, sample: InputSet) -> dict:
        if self.residual:
            x, r, w = sample.args
            return dict(input=x, residual=r, weight=w)
        x, w = sample.args
        return dict(input=x, weight=w)

    def fused(self, case: Case, backend: str) -> Callable:
        shape = (case.params["hidden"],)
        if self.residual:
            return lambda x, r, w: bigmodel.ops.add_rms_norm(x, r, shape, w, EPS, backend=backend)
        return lambda x, w: bigmodel.ops.rms_norm(x, shape, w, EPS, backend=backend)

    def liger_fn(self, case: Case) -> Callable:
        if self.residual:
            fused = liger("ops.fused_add_rms_norm", "LigerFusedAddRMSNormFunction")
            return lambda x, r, w: fused.apply(x, r, w, EPS, 0.0, "llama", False)
        rms = liger("ops.rms_norm", "LigerRMSNormFunction")
        return lambda x, w: rms.apply(x, w, EPS, 0.0, "llama", False)  # in_place=False: keeps dy intact


class AddRMSNormBench(RMSNormBench):
    name = "add_rms_norm"
    backend_op = "add_rms_norm"
    residual = True
    outputs = ("y", "h")
    gpu = ((16384, 2048), (16384, 4096), (16384, 8192), (4096, 65536))
    gpu_quick = ((16384, 4096),)


# ------------------------------------------------------------------------------------------ rotary
def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Hugging Face's (transformers.models.llama.modeling_llama.rotate_half)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryBench(LlamaBench):
    """x (B, H, L, D); cos / sin (L, R) ("tables" L) or (B, L, R) (BL: unsqueezed at dim 1, as Hugging Face does);
    layout bhld: x contiguous; blhd: a (B, L, H, D) tensor seen as (B, H, L, D), as q_proj's output in Llama."""

    name = "rotary"
    backend_op = "rotary"
    dims = ("batch", "heads", "seqlen", "headdim", "rotary_dim", "tables", "layout")
    gpu = ((8, 32, 2048, 128, 128, "L", "bhld"), (8, 8, 2048, 128, 128, "L", "bhld"),
           (8, 32, 2048, 128, 128, "BL", "bhld"), (8, 32, 2048, 128, 128, "L", "blhd"),
           (8, 32, 2048, 80, 80, "L", "bhld"), (8, 32, 2048, 80, 32, "L", "bhld"))
    gpu_quick = gpu[:2]
    cpu = ((1, 2, 32, 64, 64, "L", "bhld"), (1, 2, 32, 80, 32, "BL", "blhd"))
    headline = gpu[0]

    def make_set(self, case: Case) -> InputSet:
        p = case.params
        b, h, n, d, r = p["batch"], p["heads"], p["seqlen"], p["headdim"], p["rotary_dim"]
        kw = dict(device=case.device, dtype=case.torch_dtype)
        x = torch.randn(b, h, n, d, **kw) if p["layout"] == "bhld" else torch.randn(b, n, h, d, **kw).transpose(1, 2)
        pos = torch.arange(n, device=case.device, dtype=torch.float32)
        if p["tables"] == "BL":  # per-sequence positions (e.g. left padding): a different offset per batch row
            pos = pos + torch.randint(0, 64, (b, 1), device=case.device)
        inv_freq = 10000.0 ** (-torch.arange(0, r, 2, device=case.device, dtype=torch.float32) / r)
        angles = pos[..., None] * inv_freq
        emb = torch.cat((angles, angles), dim=-1)  # Hugging Face's duplicated layout
        cos, sin = emb.cos().to(case.torch_dtype), emb.sin().to(case.torch_dtype)
        grad = case.mode != "fwd"
        return InputSet((x.requires_grad_(grad), cos, sin), ("dx",), torch.randn(b, h, n, d, **kw) if grad else None)

    def work(self, case: Case) -> dict:
        p = case.params
        numel = p["batch"] * p["heads"] * p["seqlen"] * p["headdim"]
        table = (p["batch"] if p["tables"] == "BL" else 1) * p["seqlen"] * p["rotary_dim"]
        one = (2 * numel + 2 * table) * case.torch_dtype.itemsize
        return {"bytes": {"fwd": one, "bwd": one, "fwd+bwd": 2 * one}[case.mode]}

    @staticmethod
    def _tables(case: Case) -> Callable:
        """cos / sin as given -> broadcastable to (B, H, L, R)."""
        return (lambda t: t[:, None]) if case.params["tables"] == "BL" else (lambda t: t)

    def eager(self, case: Case) -> Callable:
        r, d, view = case.params["rotary_dim"], case.params["headdim"], self._tables(case)

        def eager(x, cos, sin):
            cos, sin = view(cos), view(sin)
            if r == d:
                return x * cos + rotate_half(x) * sin
            x_rot, x_pass = x[..., :r], x[..., r:]
            return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x_pass), dim=-1)
        return eager

    def backend_inputs(self, case: Case, sample: InputSet) -> dict:
        x, cos, sin = sample.args
        view = self._tables(case)
        return dict(input=x, cos=view(cos), sin=view(sin), interleaved=False)

    def fused(self, case: Case, backend: str) -> Callable:
        view = self._tables(case)
        return lambda x, cos, sin: bigmodel.ops.rotary(x, view(cos), view(sin), backend=backend)

    def liger_fn(self, case: Case) -> Callable:
        rope = liger("transformers.rope", "liger_rotary_pos_emb")
        p = case.params
        # Liger rotates q and k in one kernel; the smallest k it takes: one head (B, 1, L, D), (B, L, 1, D) storage
        k = torch.zeros(p["batch"], 1, p["seqlen"], p["headdim"], device=case.device, dtype=case.torch_dtype)
        return lambda x, cos, sin: rope(x, k, cos, sin)[0]  # (L, R) and (B, L, R) tables both as given

    def liger_mutates(self, case: Case) -> bool:
        return case.params["layout"] == "blhd"  # its kernel rotates a (B, L, H, D)-stored q in place

    def extra(self, case: Case) -> dict:
        if case.provider == "liger" and not self.liger_mutates(case):
            return {"note": "Liger's rotary works on (B, L, H, D) storage: for a contiguous (B, H, L, D) q it copies "
                            "q (forward) and dy (backward) first, inside the timing; and it is given a 1-head k"}
        return super().extra(case)


# ------------------------------------------------------------------------------------------ swiglu, geglu
class GatedBench(LlamaBench):
    name = "swiglu"
    backend_op = "gated_activation"
    dims = ("rows", "cols")
    gpu = ((16384, 8192), (16384, 14336))
    gpu_quick = ((16384, 14336),)
    cpu = ((64, 512),)
    headline = (16384, 14336)
    activation = "silu"

    def make_set(self, case: Case) -> InputSet:
        shape, grad = (case.params["rows"], case.params["cols"]), case.mode != "fwd"
        kw = dict(device=case.device, dtype=case.torch_dtype)
        args = (torch.randn(shape, **kw).requires_grad_(grad), torch.randn(shape, **kw).requires_grad_(grad))
        return InputSet(args, ("dgate", "dup"), torch.randn(shape, **kw) if grad else None)

    def work(self, case: Case) -> dict:
        numel = case.params["rows"] * case.params["cols"]
        return {"bytes": {"fwd": 3, "bwd": 5, "fwd+bwd": 8}[case.mode] * numel * case.torch_dtype.itemsize}

    def eager(self, case: Case) -> Callable:
        if self.activation == "silu":
            return lambda g, u: F.silu(g) * u
        return lambda g, u: F.gelu(g, approximate="tanh") * u

    def backend_inputs(self, case: Case, sample: InputSet) -> dict:
        g, u = sample.args
        return dict(input=g, up=u, activation=self.activation)

    def fused(self, case: Case, backend: str) -> Callable:
        if self.activation == "silu":
            return lambda g, u: bigmodel.ops.swiglu(g, u, backend=backend)
        return lambda g, u: bigmodel.ops.geglu(g, u, "tanh", backend=backend)

    def liger_fn(self, case: Case) -> Callable:
        if self.activation == "silu":
            fn = liger("ops.swiglu", "LigerSiLUMulFunction")
        else:
            fn = liger("ops.geglu", "LigerGELUMulFunction", "LigerGEGLUMulFunction")
        return fn.apply

    def liger_mutates(self, case: Case) -> bool:
        return case.mode != "fwd"  # its backward writes dgate / dup into gate / up


class GeGLUBench(GatedBench):
    """Gemma's gating, F.gelu(gate, approximate="tanh") * up (Liger's GEGLU is the tanh one)."""

    name = "geglu"
    activation = "gelu_tanh"
    gpu = gpu_quick = ((16384, 8192),)
    headline = ()  # no tier 0: swiglu is the headline of the gated activations


# ------------------------------------------------------------------------------------------ gated_feed_forward
class GatedFeedForwardBench(LlamaBench):
    name = "gated_feed_forward"
    # what ops.gated_feed_forward asks the backends about (its h = act(x Wg^T) * (x Wu^T), bigmodel::gated_linear:
    # on triton one GEMM kernel for both with act(g) * u in its epilogue; on cuda cuBLAS + the fused gated kernel);
    # the down projection is F.linear on every backend
    backend_op = "gated_activation"
    dims = ("tokens", "d_model", "d_ff", "activation")
    gpu = ((16384, 2048, 8192, "silu"), (16384, 4096, 14336, "silu"))
    gpu_quick = gpu[1:]
    cpu = ((32, 64, 128, "silu"),)
    headline = gpu[1]
    headline_modes = ("fwd+bwd",)

    def make_set(self, case: Case) -> InputSet:
        m, d, f = case.params["tokens"], case.params["d_model"], case.params["d_ff"]
        kw = dict(device=case.device, dtype=case.torch_dtype)
        grad = case.mode != "fwd"
        args = (torch.randn(m, d, **kw), torch.randn(f, d, **kw) * d ** -0.5, torch.randn(f, d, **kw) * d ** -0.5,
                torch.randn(d, f, **kw) * f ** -0.5)
        return InputSet(tuple(a.requires_grad_(grad) for a in args), ("dx", "dw_gate", "dw_up", "dw_down"),
                        torch.randn(m, d, **kw) if grad else None)

    def input_sets(self, case: Case) -> list[InputSet]:
        m, d, f = case.params["tokens"], case.params["d_model"], case.params["d_ff"]
        n = n_input_sets(case.device)
        graphs = n if case.mode == "bwd" else 1  # bwd keeps every set's forward graph (gate, up, their product)
        require_memory(case, (n * (2 * m * d + 3 * f * d) + graphs * 4 * m * f) * case.torch_dtype.itemsize)
        return super().input_sets(case)

    def work(self, case: Case) -> dict:
        gemms = 2 * 3 * case.params["tokens"] * case.params["d_model"] * case.params["d_ff"]
        return {"flops": gemms * {"fwd": 1, "bwd": 2, "fwd+bwd": 3}[case.mode]}

    def eager(self, case: Case) -> Callable:
        return lambda x, wg, wu, wd: F.linear(F.silu(F.linear(x, wg)) * F.linear(x, wu), wd)

    def backend_inputs(self, case: Case, sample: InputSet) -> dict:
        x, wg, wu, _wd = sample.args
        return dict(input=x, weight=wg, weight_up=wu, activation=case.params["activation"])

    def fused(self, case: Case, backend: str) -> Callable:
        act = case.params["activation"]
        return lambda x, wg, wu, wd: bigmodel.ops.gated_feed_forward(x, wg, wu, wd, act, backend=backend)

    def liger_fn(self, case: Case) -> Callable:
        silu_mul = liger("ops.swiglu", "LigerSiLUMulFunction")  # what LigerSwiGLUMLP.forward runs
        return lambda x, wg, wu, wd: F.linear(silu_mul.apply(F.linear(x, wg), F.linear(x, wu)), wd)


BUILDERS = (RMSNormBench(), AddRMSNormBench(), RotaryBench(), GatedBench(), GeGLUBench(), GatedFeedForwardBench())
