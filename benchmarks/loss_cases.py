"""Benchmark cases of the loss ops (registered in benchmarks/cases.py's OPS): cross_entropy (memory-bound: GB/s and %
of copy bandwidth) and linear_cross_entropy (the LM head's GEMMs: TFLOP/s). Both report peak memory: on a GPU
torch.cuda.max_memory_allocated, on a CPU the peak of PyTorch's CPU allocator (timing.cpu_peak_memory_mb, labelled
"CPU" in the report), so the fused op's saving shows without a GPU too.

Shapes (--quick: the ones marked *):
  cross_entropy         logits (rows, classes), int64 targets, reduction "mean": rows 16384 (8 x 2048 tokens) x classes
                        32000, 128256*, 256000 in bf16 on a GPU. CPU (fp32): 64 x 1000 (not a multiple of the kernels'
                        block) and 2048 x 8192.
  linear_cross_entropy  input (tokens, d_model), weight (vocab, d_model) (an LM head, no bias), targets (tokens,):
                        tokens 16384 x d_model 2048 / 4096 x vocab 32000 / 128256 / 256000, bf16; 4096 x 128256*
                        (Llama-3-8B's head) is the headline, 2048 x 256000* (Gemma-like) the other quick one. CPU
                        (fp32): 64 x 64 x 1000 (a smoke test) and 4096 x 64 x 8192 (where the chunking saves memory:
                        the full logits are 128 MiB, a chunk 32 MiB).
  Triton on a CPU runs under its interpreter (TRITON_INTERPRET=1), one row program at a time (~20 ms a row here):
  it is skipped, with that reason, on the CPU shapes past 256 rows.
Modes:
  cross_entropy         fwd: the loss under torch.no_grad; bwd: autograd.grad of a forward built beforehand (only the
                        backward is timed); fwd+bwd: loss and dlogits.
  linear_cross_entropy  fwd: the loss under torch.no_grad (evaluation: the fused op computes no gradient then);
                        fwd+bwd: the training step, loss + dx + dweight. There is no bwd mode: the fused providers
                        (bigmodel's and Liger's) compute the gradients inside their forward when an input requires
                        grad, so their backward is only a scale of them and a "bwd" row would time nothing real;
                        compare fwd+bwd, which holds the same work for every provider.
Providers:
  torch            cross_entropy: F.cross_entropy(logits, target) on the logits as given (their dtype).
                   linear_cross_entropy: Hugging Face's path (transformers' ForCausalLMLoss): logits = F.linear(x, W)
                   in the input dtype, then F.cross_entropy(logits.float(), target) -- the upcast is what Hugging Face
                   models run (on fp32 inputs, the CPU runs, it is a no-op: exactly F.linear + F.cross_entropy).
  torch-no-upcast  (linear_cross_entropy, GPU only) F.cross_entropy(F.linear(x, W), target) on the bf16 logits: the
                   leanest unfused path (no fp32 copy of the logits), the stricter memory baseline. On a CPU (fp32)
                   it would be the torch row again, so it is not listed there.
  torch.compile    the torch function compiled (cases.compiled: static shapes, one compile per shape).
  triton, cuda, auto  bigmodel.ops.cross_entropy / linear_cross_entropy(..., backend=...); for linear_cross_entropy
                   the backend is the one whose cross-entropy kernels run on each chunk of rows (the chunk's GEMMs are
                   cuBLAS / torch.matmul). Skipped with the backend's own reasons where it cannot run.
  bigmodel-torch   (linear_cross_entropy) bigmodel.ops.linear_cross_entropy(..., backend="torch"): the same chunked
                   algorithm with PyTorch's per-chunk math; it runs everywhere (the CPU rows' fused figure).
  liger            Liger-Kernel: LigerCrossEntropyFunction and LigerFusedLinearCrossEntropyFunction with their defaults
                   (accum_dtype None: Liger accumulates dweight in the weight's dtype, bigmodel in fp32). Skipped with
                   the reason when liger_kernel is not importable, and on a CPU (CUDA Triton kernels). Liger's cross
                   entropy writes dlogits into the logits in its forward (in place, by design): those rows are checked
                   on fresh copies and timed on inputs it overwrote; it has no bwd row for the same reason as above.
Work: cross_entropy bytes (e = the dtype's bytes): fwd reads the logits and targets, N C e + 8 N; bwd reads the logits,
writes dlogits, 2 N C e + 8 N; fwd+bwd the sum. linear_cross_entropy flops: 2 N d V forward, 3x that with gradients.
Tiers: 0 = the headline (cross_entropy 16384 x 128256 fwd and fwd+bwd; linear_cross_entropy 16384 x 4096 x 128256
fwd+bwd) for torch, triton, cuda, liger; 1 = the other shapes, modes and providers; 2 = torch.compile. GPU, bf16: 150
cases (tier 0: 12; tier 2: 21 compiled); estimated for an H100 (not measured yet; the big linear_cross_entropy
calls take 0.1-0.3 s, and their checks against torch and the fp32 reference backend a few seconds): tier 0 ~40 s,
tiers 0-1 ~5 min, all ~8 min.
"""
from __future__ import annotations

import inspect
import os
from typing import Callable

import torch
import torch.nn.functional as F

import bigmodel
from bigmodel.ops import _checks

from .cases import Case, InputSet, Unavailable, n_input_sets, require_memory
from .llama_cases import LlamaBench, liger

INTERPRETER_MAX_ROWS = 256  # past this, a CPU case skips triton under the interpreter (~20 ms a row a call here)
BIG_SET = 2**30  # an input set of more bytes than this: 2 sets rotate instead of 4 (caches are moot at that size)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def liger_apply(fn, **values):
    """fn.apply(...) with these arguments by name (an autograd.Function takes positional ones only), the rest at their
    defaults (None for one without a default, as the class weight of its cross entropy): Liger's signatures grew
    arguments between versions (that weight came third)."""
    params = list(inspect.signature(fn.forward).parameters.values())[1:]  # after ctx
    names = [p.name for p in params]
    missing = [n for n in values if n not in names]
    if missing:
        raise Unavailable(f"{fn.__name__}.forward has no parameter {', '.join(missing)} (takes {', '.join(names)})")
    required = [i for i, p in enumerate(params) if p.default is inspect.Parameter.empty]
    last = max([names.index(n) for n in values] + required)
    args = [values[p.name] if p.name in values else None if p.default is inspect.Parameter.empty else p.default
            for p in params[:last + 1]]
    out = fn.apply(*args)
    return out[0] if isinstance(out, tuple) else out  # (loss, z_loss, ...) in recent versions


class LossBench(LlamaBench):
    """The loss ops' common parts: peak memory measured on a CPU too (timing.measure reads `peak_memory`), Triton
    skipped on the big CPU shapes under the interpreter, 2 input sets for the huge GPU ones."""

    peak_memory = True  # timing.measure: CPU peak (labelled CPU); report.summary: the peak in each cell

    def rows(self, case: Case) -> int:
        raise NotImplementedError

    def set_bytes(self, case: Case) -> int:
        raise NotImplementedError

    def input_sets(self, case: Case) -> list[InputSet]:
        n = n_input_sets(case.device) if self.set_bytes(case) <= BIG_SET else 2
        require_memory(case, n * self.set_bytes(case) + self.workspace_bytes(case, n))
        return [self.make_set(case) for _ in range(n)]

    def workspace_bytes(self, case: Case, n_sets: int) -> int:
        return 0

    def bigmodel_fn(self, case: Case, backend: str, sample: InputSet) -> Callable:
        if backend == "triton" and case.device == "cpu" and interpreting() and self.rows(case) > INTERPRETER_MAX_ROWS:
            raise Unavailable(f"Triton's CPU interpreter runs one row program at a time (~20 ms a row): skipped past "
                              f"{INTERPRETER_MAX_ROWS} rows on a CPU (the small CPU shape runs it)")
        return super().bigmodel_fn(case, backend, sample)


# ------------------------------------------------------------------------------------------ cross_entropy
class CrossEntropyBench(LossBench):
    name = "cross_entropy"
    backend_op = "cross_entropy"
    dims = ("rows", "classes")
    gpu = ((16384, 32000), (16384, 128256), (16384, 256000))
    gpu_quick = ((16384, 128256),)
    cpu = ((64, 1000), (2048, 8192))
    headline = (16384, 128256)
    headline_modes = ("fwd", "fwd+bwd")

    def rows(self, case: Case) -> int:
        return case.params["rows"]

    def set_bytes(self, case: Case) -> int:
        return case.params["rows"] * (case.params["classes"] * case.torch_dtype.itemsize + 8)

    def workspace_bytes(self, case: Case, n_sets: int) -> int:
        nc = case.params["rows"] * case.params["classes"] * case.torch_dtype.itemsize
        # torch keeps log_softmax's output for its backward (every set's, in bwd mode), then the gradient
        return {"fwd": 2 * nc, "bwd": (n_sets + 2) * nc, "fwd+bwd": 3 * nc}[case.mode]

    def make_set(self, case: Case) -> InputSet:
        n, c = case.params["rows"], case.params["classes"]
        logits = (2 * torch.randn(n, c, device=case.device)).to(case.torch_dtype)
        target = torch.randint(0, c, (n,), device=case.device)
        return InputSet((logits.requires_grad_(case.mode != "fwd"), target), ("dlogits",))

    def work(self, case: Case) -> dict:
        n, c, e = case.params["rows"], case.params["classes"], case.torch_dtype.itemsize
        fwd, bwd = n * c * e + 8 * n, 2 * n * c * e + 8 * n
        return {"bytes": {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[case.mode]}

    def eager(self, case: Case) -> Callable:
        return lambda logits, target: F.cross_entropy(logits, target)

    def backend_inputs(self, case: Case, sample: InputSet) -> dict:
        return dict(input=sample.args[0], reduction="mean", label_smoothing=0.0)

    def fused(self, case: Case, backend: str) -> Callable:
        return lambda logits, target: bigmodel.ops.cross_entropy(logits, target, backend=backend)

    def liger_fn(self, case: Case) -> Callable:
        if case.mode == "bwd":
            raise Unavailable("Liger's cross entropy computes dlogits inside its forward (written over the logits): "
                              "its backward only scales them, so a bwd row would time nothing real (see fwd+bwd)")
        fn = liger("ops.cross_entropy", "LigerCrossEntropyFunction")
        return lambda logits, target: liger_apply(fn, _input=logits, target=target)

    def liger_mutates(self, case: Case) -> bool:
        return case.mode != "fwd"  # its forward writes dlogits into the logits when they require grad


# ------------------------------------------------------------------------------------------ linear_cross_entropy
class LinearCrossEntropyBench(LossBench):
    name = "linear_cross_entropy"
    providers = ("torch", "torch-no-upcast", "torch.compile", "triton", "cuda", "auto", "bigmodel-torch", "liger")
    backend_op = "cross_entropy"  # each chunk's loss and dlogits run on the backend's cross-entropy kernels
    dims = ("tokens", "d_model", "vocab")
    gpu = ((16384, 2048, 32000), (16384, 2048, 128256), (16384, 2048, 256000),
           (16384, 4096, 32000), (16384, 4096, 128256), (16384, 4096, 256000))
    gpu_quick = ((16384, 4096, 128256), (16384, 2048, 256000))
    cpu = ((64, 64, 1000), (4096, 64, 8192))
    headline = (16384, 4096, 128256)
    headline_modes = ("fwd+bwd",)

    def has_mode(self, shape: tuple, mode: str) -> bool:
        return mode != "bwd"  # the fused providers' gradients come out of their forward: see the module doc

    def has_provider(self, device: str, provider: str) -> bool:
        return provider != "torch-no-upcast" or device == "cuda"  # fp32 on a CPU: the same as "torch"

    def rows(self, case: Case) -> int:
        return case.params["tokens"]

    def set_bytes(self, case: Case) -> int:
        p = case.params
        return (p["tokens"] + p["vocab"]) * p["d_model"] * case.torch_dtype.itemsize + 8 * p["tokens"]

    def workspace_bytes(self, case: Case, n_sets: int) -> int:
        p, e = case.params, case.torch_dtype.itemsize
        nv, grads = p["tokens"] * p["vocab"], (p["tokens"] + p["vocab"]) * p["d_model"] * (e + 4)
        if case.provider in ("torch", "torch.compile"):  # logits, their fp32 copy, log_softmax's, the gradients
            per = e + 4 + 4 if case.mode == "fwd" else 2 * e + 12
        elif case.provider == "torch-no-upcast":
            per = 2 * e if case.mode == "fwd" else 4 * e
        else:  # chunked: a few chunks' worth (bigmodel: 256 MiB of logits a chunk on a GPU)
            return 4 * 2**28 + grads
        return nv * per + grads

    def make_set(self, case: Case) -> InputSet:
        p, grad = case.params, case.mode != "fwd"
        kw = dict(device=case.device, dtype=case.torch_dtype)
        x = torch.randn(p["tokens"], p["d_model"], **kw)
        w = (torch.randn(p["vocab"], p["d_model"], device=case.device) * p["d_model"] ** -0.5).to(case.torch_dtype)
        target = torch.randint(0, p["vocab"], (p["tokens"],), device=case.device)
        return InputSet((x.requires_grad_(grad), w.requires_grad_(grad), target), ("dx", "dw"))

    def work(self, case: Case) -> dict:
        p = case.params
        fwd = 2 * p["tokens"] * p["d_model"] * p["vocab"]
        return {"flops": fwd if case.mode == "fwd" else 3 * fwd}

    def eager(self, case: Case) -> Callable:
        # Hugging Face's loss path: the LM head in the input dtype, the loss on the logits upcast to fp32
        return lambda x, w, target: F.cross_entropy(F.linear(x, w).float(), target)

    def provider_fn(self, case: Case, sample: InputSet) -> Callable:
        if case.provider == "torch-no-upcast":
            return lambda x, w, target: F.cross_entropy(F.linear(x, w), target)
        if case.provider == "bigmodel-torch":
            return self.bigmodel_fn(case, "torch", sample)
        return super().provider_fn(case, sample)

    def backend_inputs(self, case: Case, sample: InputSet) -> dict:
        x, w, _ = sample.args
        try:
            from bigmodel.ops.linear_cross_entropy import chunk_rows
        except ImportError as e:
            raise Unavailable(f"bigmodel.ops.linear_cross_entropy: {type(e).__name__}: {e}") from e
        chunk = min(x.size(0), chunk_rows(x.size(0), w.size(0), x.dtype, x.device.type))
        # what the op asks the backends about (its _select): a stand-in of one chunk's (rows, V) logits, and the weight
        # with fused="linear" (auto keys this choice apart from plain cross_entropy's)
        return dict(input=_checks.rows_like(x, w.size(0), chunk), weight=w, reduction="mean", label_smoothing=0.0,
                    fused="linear")

    def fused(self, case: Case, backend: str) -> Callable:
        return lambda x, w, target: bigmodel.ops.linear_cross_entropy(x, w, target, backend=backend)

    def liger_fn(self, case: Case) -> Callable:
        fn = liger("ops.fused_linear_cross_entropy", "LigerFusedLinearCrossEntropyFunction")
        return lambda x, w, target: liger_apply(fn, _input=x, weight=w, target=target)

    def extra(self, case: Case) -> dict:
        if case.provider in ("torch", "torch.compile") and case.dtype != "fp32":
            return {"note": "Hugging Face's loss path: logits = F.linear(x, W) in the input dtype, then "
                            "F.cross_entropy(logits.float(), target)"}
        if case.provider == "liger":
            return {"note": "Liger's defaults: accum_dtype None (dweight accumulated in the weight's dtype)"}
        return super().extra(case)


BUILDERS = (CrossEntropyBench(), LinearCrossEntropyBench())
