"""Feed-forward benchmark cases (registered in benchmarks/cases.py's OPS): linear_act and feed_forward (GEMMs,
TFLOP/s), softmax and gelu (row-wise / elementwise, GB/s and % of copy bandwidth).

linear_act  y = act(x W^T + b): x (tokens, d_model), W (hidden, d_model), the up-projection of a Transformer MLP.
feed_forward  y = act(x W1^T + b1) W2^T + b2: the whole MLP, d_model -> hidden -> d_model.
  Shapes (tokens, d_model, hidden, activation), bf16 on a GPU:
    (8192, 768, 3072), (16384, 1024, 4096), (8192, 4096, 16384) with gelu (erf), every mode;
    (8192, 8192, 32768) gelu, fwd only (skipped when the GPU has too little free memory);
    linear_act also (16384, 1024, 4096) with relu.  --quick: (16384, 1024, 4096) and (8192, 4096, 16384).
  CPU: (64, 32, 128) gelu in fp32 (smoke test; the Triton kernels under TRITON_INTERPRET=1).
  Providers:
    torch             eager F.linear + F.gelu / F.relu (feed_forward: then F.linear): the "vs torch" reference
    addmm_activation  torch._addmm_activation(b, x, W^T, use_gelu): cuBLASLt's bias + GELU/ReLU epilogue; forward
                      only (it has no autograd formula); on CUDA its GELU is the tanh approximation (the row's note)
    torch.compile     the eager function compiled (Inductor: cuBLAS + a fused pointwise kernel, or its templates)
    cublas            bare F.linear(x, W) without bias or activation: the same FLOPs on cuBLAS, so the gap to it is
                      what the bias + activation costs (DESIGN.md: "GEMM part >= 90% of cuBLAS"); GPU only
    torch.matmul (CPU)  the same bare F.linear on a CPU (no cuBLAS there: torch's CPU GEMM), in place of cublas
    triton, cuda      bigmodel.ops.linear_act / feed_forward(..., backend=...)
  The report adds "vs cuBLAS": the cublas row's median / this provider's (>= 0.9 is DESIGN.md's GEMM target); on a
  CPU "vs torch.matmul (CPU)".
  TFLOP/s with 2 * tokens * d_model * hidden flops per GEMM: fwd 1 GEMM, bwd 2 (dx and dW; db and act' are
  free), fwd+bwd 3; feed_forward twice that.

softmax  torch.softmax(x, -1) over rows: GPU rows 16384 x cols 1024, 4096, 16384, 32768 and 4096 x 131072
  (--quick: 16384 x 4096, 32768); CPU 64 x 1024.
gelu  F.gelu(x) (erf): GPU 16384 x 4096 and 16384 x 16384 (--quick: the first); CPU 64 x 1024.
  Providers: torch (eager), torch.compile, triton, cuda. Bytes: fwd reads x and writes y; bwd reads dy and y (gelu:
  x) and writes dx; fwd+bwd both.

Tiers (cases.all_cases runs every op's tier 0 first; see gpu_suite.sh):
  0  linear_act fwd+bwd: torch, cublas, triton, cuda at the three gelu sizes; softmax fwd and bwd: torch, triton,
     cuda                                                                             (DESIGN.md's targets)
  1  the rest of torch, cublas, triton, cuda (feed_forward, gelu, relu, the fwd-only size), addmm_activation
  2  torch.compile (a compile per shape and grad mode)
GPU, bf16: linear_act 78 cases, feed_forward 60, softmax 60, gelu 24 (tier 0: 12 + 30; tier 2: 38 compiled).
Estimated for an H100 (not measured yet): tier 0 ~20 s, tiers 0-1 ~80 s, all ~4 min (torch.compile ~5 s a case).
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F

import bigmodel

from .cases import Case, InputSet, OpBench, Unavailable, n_input_sets, require_backend, require_memory

ACTIVATIONS = {"gelu": F.gelu, "gelu_tanh": functools.partial(F.gelu, approximate="tanh"), "relu": F.relu}
CPU_GEMM = "torch.matmul (CPU)"  # the bare-GEMM provider on a CPU: says what it is (no cuBLAS there)
BARE_GEMM = {"cuda": "cublas", "cpu": CPU_GEMM}  # device -> the provider of plain GEMMs (no bias, no activation)
GEMM_CORE = ("torch", "cublas", CPU_GEMM, "triton", "cuda")  # what DESIGN.md's linear_act target compares


# ------------------------------------------------------------------------------------------ linear_act, feed_forward
class LinearActBench(OpBench):
    """linear_act; FeedForwardBench (below) is the same with two layers."""

    name = "linear_act"
    layers = 1
    providers = ("torch", "addmm_activation", "torch.compile", "cublas", CPU_GEMM, "triton", "cuda", "auto")
    # report.py: a "vs cuBLAS" column (DESIGN.md: GEMM part >= 90% of cuBLAS); on a CPU "vs torch.matmul (CPU)"
    baselines = {"cublas": ("cublas",), "matmul_cpu": (CPU_GEMM,)}
    plot_panels = ("activation",)  # the relu size gets its own panel, not a point on the gelu lines
    GPU_SIZES = ((8192, 768, 3072), (16384, 1024, 4096), (8192, 4096, 16384))
    GPU_QUICK = ((16384, 1024, 4096), (8192, 4096, 16384))
    GPU_FWD_ONLY = ((8192, 8192, 32768),)  # ~3 GiB a set for feed_forward: forward only, after a memory check
    GPU_RELU = ((16384, 1024, 4096),)
    CPU_SIZES = ((64, 32, 128),)  # the interpreter's 32x32x32 tiles: 8 programs a GEMM

    def sizes(self, device: str, quick: bool) -> list[tuple]:
        if device == "cuda":
            dims = [(*d, "gelu") for d in (self.GPU_QUICK if quick else self.GPU_SIZES + self.GPU_FWD_ONLY)]
            dims += [] if quick else [(*d, "relu") for d in self.GPU_RELU]
        else:
            dims = [(*d, "gelu") for d in self.CPU_SIZES]
        return [(("tokens", m), ("d_model", k), ("hidden", n), ("activation", act)) for m, k, n, act in dims]

    def has_provider(self, device: str, provider: str) -> bool:
        return provider not in BARE_GEMM.values() or provider == BARE_GEMM[device]

    def has_mode(self, shape: tuple, mode: str) -> bool:
        p = dict(shape)
        return mode == "fwd" or (p["tokens"], p["d_model"], p["hidden"]) not in self.GPU_FWD_ONLY

    def tier(self, case: Case) -> int:
        if case.provider == "torch.compile":
            return 2
        if case.provider not in GEMM_CORE:
            return 1
        headline = case.params["activation"] == "gelu" and self.has_mode(case.shape, "bwd")
        return 0 if self.layers == 1 and case.mode == "fwd+bwd" and headline else 1

    def work(self, case: Case) -> dict:
        p = case.params
        gemm = 2 * p["tokens"] * p["d_model"] * p["hidden"]
        return {"flops": gemm * self.layers * {"fwd": 1, "bwd": 2, "fwd+bwd": 3}[case.mode]}

    def extra(self, case: Case) -> dict:
        if case.provider == "addmm_activation" and case.device == "cuda" and case.params["activation"] == "gelu":
            return {"note": "cuBLASLt's GELU epilogue is the tanh approximation (the others compute erf GELU)"}
        return {}

    def layer_dims(self, case: Case) -> list[tuple[int, int]]:
        """(in, out) features of each layer."""
        d, h = case.params["d_model"], case.params["hidden"]
        return [(d, h), (h, d)][:self.layers]

    def input_sets(self, case: Case) -> list[InputSet]:
        """x, then (W, b) per layer; no biases for the bare GEMMs (b None, no db). Weights scaled by 1/sqrt(fan_in) so
        activations stay O(1) through the layers, as in a trained model."""
        m, dims = case.params["tokens"], self.layer_dims(case)
        kw = dict(device=case.device, dtype=case.torch_dtype)
        e, n_sets = case.torch_dtype.itemsize, n_input_sets(case.device)
        per_set = m * dims[0][0] + sum(i * o + o for i, o in dims) + m * dims[-1][1]
        require_memory(case, (n_sets * per_set + 4 * m * case.params["hidden"]) * e)
        grad, bias = case.mode != "fwd", case.provider not in BARE_GEMM.values()
        suffix = (lambda i: "") if self.layers == 1 else str
        sets = []
        for _ in range(n_sets):
            args, names = [torch.randn(m, dims[0][0], **kw)], ["dx"]
            for i, (fan_in, fan_out) in enumerate(dims, 1):
                args.append(torch.randn(fan_out, fan_in, **kw) * fan_in ** -0.5)
                args.append(0.1 * torch.randn(fan_out, **kw) if bias else None)
                names += [f"dw{suffix(i)}"] + ([f"db{suffix(i)}"] if bias else [])
            args = tuple(a.requires_grad_(grad) if a is not None else None for a in args)
            sets.append(InputSet(args, tuple(names), torch.randn(m, dims[-1][1], **kw) if grad else None))
        return sets

    def compose(self, first: Callable) -> Callable:
        """The op from its first layer first(x, W1, b1): feed_forward adds the plain second linear layer."""
        if self.layers == 1:
            return first
        return lambda x, w1, b1, w2, b2: F.linear(first(x, w1, b1), w2, b2)

    def provider_fn(self, case: Case, sample: InputSet) -> Callable:
        provider, act = case.provider, case.params["activation"]
        act_fn = ACTIVATIONS[act]
        eager = self.compose(lambda x, w, b: act_fn(F.linear(x, w, b)))
        fn = self.torch_fn(case, eager)
        if fn is not None:
            return fn
        if provider in BARE_GEMM.values():  # its input sets have no biases (b None): plain GEMMs
            return self.compose(F.linear)
        if provider == "addmm_activation":
            return self.compose(self.addmm_fn(case))
        return self.bigmodel_fn(case, provider, sample)

    def bigmodel_fn(self, case: Case, backend: str, sample: InputSet) -> Callable:
        """The op on a bigmodel backend; for the bare GEMMs (no bias: the activation is off too) each layer is
        linear_act(..., activation=None)."""
        x, w, b = sample.args[:3]
        require_backend(backend, "linear_act", input=x, weight=w, bias=b)
        act = None if case.provider in BARE_GEMM.values() else case.params["activation"]
        if self.layers == 1:
            return lambda x, w, b: bigmodel.ops.linear_act(x, w, b, act, backend=backend)
        if act is None:
            def gemms(x, w1, b1, w2, b2):
                hidden = bigmodel.ops.linear_act(x, w1, b1, None, backend=backend)
                return bigmodel.ops.linear_act(hidden, w2, b2, None, backend=backend)
            return gemms
        return lambda x, w1, b1, w2, b2: bigmodel.ops.feed_forward(x, w1, b1, w2, b2, act, backend=backend)

    @staticmethod
    def addmm_fn(case: Case) -> Callable:
        act = case.params["activation"]
        if not hasattr(torch, "_addmm_activation"):
            raise Unavailable(f"torch {torch.__version__} has no torch._addmm_activation")
        if act not in ("gelu", "relu"):
            raise Unavailable(f"torch._addmm_activation has GELU and ReLU epilogues only (activation {act})")
        if case.mode != "fwd":
            raise Unavailable("torch._addmm_activation has no autograd formula: forward only")
        use_gelu = act == "gelu"
        return lambda x, w, b: torch._addmm_activation(b, x, w.t(), use_gelu=use_gelu)

    def reference_fn(self, case: Case, sample: InputSet):
        if case.provider in BARE_GEMM.values():  # the bare GEMM is torch itself
            return None
        return super().reference_fn(case, sample)


class FeedForwardBench(LinearActBench):
    name = "feed_forward"
    layers = 2
    GPU_RELU = ()


# ------------------------------------------------------------------------------------------ softmax, gelu
class PointwiseBench(OpBench):
    """A row-wise or elementwise op of one (rows, cols) input: eager(x) against bigmodel's fused(x, backend)."""

    providers = ("torch", "torch.compile", "triton", "cuda", "auto")

    def __init__(self, name: str, eager: Callable, fused: Callable, backend_op: str, gpu_sizes, gpu_quick,
                 headline_modes=(), cpu_sizes=((64, 1024),)):
        self.name, self.eager, self.fused, self.backend_op = name, eager, fused, backend_op
        self.gpu_sizes, self.gpu_quick, self.cpu_sizes = gpu_sizes, gpu_quick, cpu_sizes
        self.headline_modes = headline_modes  # tier 0 for torch, triton, cuda

    @classmethod
    def softmax(cls) -> "PointwiseBench":
        return cls("softmax", lambda x: torch.softmax(x, -1),
                   lambda x, backend: bigmodel.ops.softmax(x, -1, backend=backend), "softmax",
                   gpu_sizes=((16384, 1024), (16384, 4096), (16384, 16384), (16384, 32768), (4096, 131072)),
                   gpu_quick=((16384, 4096), (16384, 32768)), headline_modes=("fwd", "bwd"))

    @classmethod
    def gelu(cls) -> "PointwiseBench":
        return cls("gelu", F.gelu, lambda x, backend: bigmodel.ops.gelu(x, backend=backend), "activation",
                   gpu_sizes=((16384, 4096), (16384, 16384)), gpu_quick=((16384, 4096),))

    def sizes(self, device: str, quick: bool) -> list[tuple]:
        dims = (self.gpu_quick if quick else self.gpu_sizes) if device == "cuda" else self.cpu_sizes
        return [(("rows", r), ("cols", c)) for r, c in dims]

    def tier(self, case: Case) -> int:
        if case.provider == "torch.compile":
            return 2
        return 0 if case.mode in self.headline_modes else 1

    def work(self, case: Case) -> dict:
        # fwd reads x and writes y; bwd reads dy and y (softmax) or x (gelu) and writes dx
        numel = case.params["rows"] * case.params["cols"]
        return {"bytes": {"fwd": 2, "bwd": 3, "fwd+bwd": 5}[case.mode] * numel * case.torch_dtype.itemsize}

    def input_sets(self, case: Case) -> list[InputSet]:
        shape = (case.params["rows"], case.params["cols"])
        kw = dict(device=case.device, dtype=case.torch_dtype)
        grad = case.mode != "fwd"
        return [InputSet((torch.randn(shape, **kw).requires_grad_(grad),), ("dx",),
                         torch.randn(shape, **kw) if grad else None) for _ in range(n_input_sets(case.device))]

    def provider_fn(self, case: Case, sample: InputSet) -> Callable:
        return self.torch_fn(case, self.eager) or self.bigmodel_fn(case, case.provider, sample)

    def bigmodel_fn(self, case: Case, backend: str, sample: InputSet) -> Callable:
        fused = self.fused
        require_backend(backend, self.backend_op, input=sample.args[0])
        return lambda x: fused(x, backend)
