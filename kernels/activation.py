"""Elementwise GELU / ReLU / SiLU and the gated SwiGLU / GeGLU in Triton, and the activation math every kernel file
shares.

Activations (math in fp32, results cast to the tensor's dtype), with u = sqrt(2/pi) (x + 0.044715 x^3):
    "gelu"       y = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))          y' = Phi(x) + x phi(x),  phi(x) = exp(-x^2/2) / sqrt(2 pi)
    "gelu_tanh"  y = 0.5 x (1 + tanh(u)) = x s,  s = sigmoid(2u)      y' = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
                                                                         = s + 2 x s (1 - s) sqrt(2/pi) (1 + 3 * 0.044715 x^2),  t = tanh(u)
    "relu"       y = max(x, 0)                                        y' = [x > 0]  (0 at x = 0, like torch)
    "silu"       y = x s,  s = sigmoid(x)                             y' = s (1 + x (1 - s))
    "none"       y = x                                                y' = 1
gelu_tanh goes through the identity 0.5 (1 + tanh(u)) = sigmoid(2u) = 1 / (1 + exp(-2u)): one exp, no tanh
(not a core tl.math function on every Triton version), saturating to exactly 0 / 1 without inf / inf, and
1 - t^2 = 4 s (1 - s) keeps the derivative free of the cancellation in 1 - tanh^2.

`apply_activation` and `activation_grad` are the one home of these formulas: linear_act.py fuses them into its GEMM
epilogue / prologue. The relu derivative only looks at the sign of its argument, so a caller may pass the
activation's output y instead of its input (y > 0 exactly where x > 0).

Elementwise launchers: the tensor is treated as flat (any numel, contiguous), one program per BLOCK elements of
a 1-D grid; contiguous offsets let Triton vectorise the loads and stores (128-bit per thread).
    act_fwd: y = act(x)        act_bwd: dx = dy * act'(x)
    gated_fwd: y = act(g) * u  (SwiGLU: silu, GeGLU: gelu / gelu_tanh)
    gated_bwd: dg = dy * u * act'(g),  du = dy * act(g)   (one pass: g, u, dy in; dg, du out)
"""
import math

import torch
import triton
import triton.language as tl

from ._utils import CompileSpec, TL_DTYPE

# Activation ids: constexpr globals so @triton.jit code can compare against them (Python code uses .value).
ACT_NONE, ACT_RELU, ACT_GELU, ACT_GELU_TANH, ACT_SILU = (tl.constexpr(i) for i in range(5))
ACTIVATION_IDS = {"none": ACT_NONE.value, "relu": ACT_RELU.value, "gelu": ACT_GELU.value,
                  "gelu_tanh": ACT_GELU_TANH.value, "silu": ACT_SILU.value}

SQRT1_2 = tl.constexpr(math.sqrt(0.5))
INV_SQRT_2PI = tl.constexpr(1.0 / math.sqrt(2.0 * math.pi))
SQRT_2_OVER_PI = tl.constexpr(math.sqrt(2.0 / math.pi))
GELU_TANH_C = tl.constexpr(0.044715)


def activation_id(activation) -> int:
    """The kernels' constexpr id of an activation name (None means "none")."""
    name = "none" if activation is None else activation
    if name not in ACTIVATION_IDS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATION_IDS)} or None, got {activation!r}")
    return ACTIVATION_IDS[name]


# --------------------------------------------------------------------------------------------- shared math
@triton.jit
def _sigmoid_2u(x):
    """sigmoid(2u) = 0.5 (1 + tanh(u)) for the gelu_tanh argument u of x (fp32)."""
    u = SQRT_2_OVER_PI * (x + GELU_TANH_C * x * x * x)
    return 1.0 / (1.0 + tl.exp(-2.0 * u))


@triton.jit
def apply_activation(x, ACTIVATION: tl.constexpr):
    """act(x) for fp32 x."""
    if ACTIVATION == ACT_GELU:
        return 0.5 * x * (1.0 + tl.math.erf(x * SQRT1_2))
    elif ACTIVATION == ACT_GELU_TANH:
        return x * _sigmoid_2u(x)
    elif ACTIVATION == ACT_RELU:
        return tl.where(x > 0.0, x, 0.0)
    elif ACTIVATION == ACT_SILU:
        return x / (1.0 + tl.exp(-x))
    else:
        return x


@triton.jit
def activation_grad(dy, x, ACTIVATION: tl.constexpr):
    """dy * act'(x) for fp32 dy and x (for relu, x may be the activation's output: only its sign is read)."""
    if ACTIVATION == ACT_GELU:
        cdf = 0.5 * (1.0 + tl.math.erf(x * SQRT1_2))
        pdf = INV_SQRT_2PI * tl.exp(-0.5 * x * x)
        return dy * (cdf + x * pdf)
    elif ACTIVATION == ACT_GELU_TANH:
        s = _sigmoid_2u(x)
        du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_TANH_C * x * x)
        return dy * (s + 2.0 * x * s * (1.0 - s) * du)
    elif ACTIVATION == ACT_RELU:
        return tl.where(x > 0.0, dy, 0.0)
    elif ACTIVATION == ACT_SILU:
        s = 1.0 / (1.0 + tl.exp(-x))
        return dy * (s * (1.0 + x * (1.0 - s)))
    else:
        return dy


# --------------------------------------------------------------------------------------------- kernels
@triton.jit
def _act_fwd_kernel(X, Y, numel, ACTIVATION: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + offs, apply_activation(x, ACTIVATION).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _act_bwd_kernel(DY, X, DX, numel, ACTIVATION: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(DX + offs, activation_grad(dy, x, ACTIVATION).to(DX.dtype.element_ty), mask=mask)


@triton.jit
def _gated_fwd_kernel(G, U, Y, numel, ACTIVATION: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + offs, (apply_activation(g, ACTIVATION) * u).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _gated_bwd_kernel(DY, G, U, DG, DU, numel, ACTIVATION: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(DG + offs, activation_grad(dy * u, g, ACTIVATION).to(DG.dtype.element_ty), mask=mask)
    tl.store(DU + offs, (dy * apply_activation(g, ACTIVATION)).to(DU.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------- launchers
BLOCK = 2048  # elements per program: 8 per thread at 8 warps (one or two 16-byte vectors), no spills
NUM_WARPS = 8
ELEMENTWISE = ("gelu", "gelu_tanh", "relu", "silu")
GATED = ("silu", "gelu", "gelu_tanh")


def _elementwise_id(activation: str, allowed=ELEMENTWISE) -> int:
    if activation not in allowed:
        raise ValueError(f"activation must be one of {allowed}, got {activation!r}")
    return ACTIVATION_IDS[activation]


def act_fwd(x: torch.Tensor, activation: str) -> torch.Tensor:
    """y = act(x) for a contiguous x of any shape; y has x's shape and dtype."""
    assert x.is_contiguous(), "act_fwd expects a contiguous tensor"
    y = torch.empty_like(x)
    if x.numel():
        _act_fwd_kernel[(triton.cdiv(x.numel(), BLOCK),)](x, y, x.numel(), ACTIVATION=_elementwise_id(activation),
                                                          BLOCK=BLOCK, num_warps=NUM_WARPS)
    return y


def act_bwd(dy: torch.Tensor, x: torch.Tensor, activation: str) -> torch.Tensor:
    """dx = dy * act'(x) for contiguous dy and x (the forward's input) of one shape; dx in x's dtype."""
    assert x.is_contiguous() and dy.is_contiguous() and dy.shape == x.shape, "act_bwd expects contiguous dy, x of one shape"
    dx = torch.empty_like(x)
    if x.numel():
        _act_bwd_kernel[(triton.cdiv(x.numel(), BLOCK),)](dy, x, dx, x.numel(), ACTIVATION=_elementwise_id(activation),
                                                          BLOCK=BLOCK, num_warps=NUM_WARPS)
    return dx


def gated_fwd(gate: torch.Tensor, up: torch.Tensor, activation: str) -> torch.Tensor:
    """y = act(gate) * up for contiguous gate and up of one shape and dtype; y likewise."""
    assert gate.is_contiguous() and up.is_contiguous() and gate.shape == up.shape, "gated_fwd: contiguous, one shape"
    y = torch.empty_like(gate)
    if gate.numel():
        _gated_fwd_kernel[(triton.cdiv(gate.numel(), BLOCK),)](gate, up, y, gate.numel(),
                                                               ACTIVATION=_elementwise_id(activation, GATED),
                                                               BLOCK=BLOCK, num_warps=NUM_WARPS)
    return y


def gated_bwd(dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, activation: str):
    """(dgate, dup) of gated_fwd for contiguous dy, gate, up of one shape."""
    assert dy.is_contiguous() and dy.shape == gate.shape, "gated_bwd: contiguous dy of gate's shape"
    dg, du = torch.empty_like(gate), torch.empty_like(up)
    if gate.numel():
        _gated_bwd_kernel[(triton.cdiv(gate.numel(), BLOCK),)](dy, gate, up, dg, du, gate.numel(),
                                                               ACTIVATION=_elementwise_id(activation, GATED),
                                                               BLOCK=BLOCK, num_warps=NUM_WARPS)
    return dg, du


# --------------------------------------------------------------------------------------------- static compile
def compile_specs():
    """The elementwise and gated kernels, every activation and dtype, at the launchers' one config."""
    specs = []
    for t in TL_DTYPE.values():
        p = f"*{t}"
        for name in ELEMENTWISE:
            consts = dict(ACTIVATION=ACTIVATION_IDS[name], BLOCK=BLOCK)
            specs.append(CompileSpec(f"_act_fwd_kernel[{t},{name}]", _act_fwd_kernel,
                                     dict(X=p, Y=p, numel="i32"), consts, NUM_WARPS))
            specs.append(CompileSpec(f"_act_bwd_kernel[{t},{name}]", _act_bwd_kernel,
                                     dict(DY=p, X=p, DX=p, numel="i32"), consts, NUM_WARPS))
        for name in GATED:
            consts = dict(ACTIVATION=ACTIVATION_IDS[name], BLOCK=BLOCK)
            specs.append(CompileSpec(f"_gated_fwd_kernel[{t},{name}]", _gated_fwd_kernel,
                                     dict(G=p, U=p, Y=p, numel="i32"), consts, NUM_WARPS))
            specs.append(CompileSpec(f"_gated_bwd_kernel[{t},{name}]", _gated_bwd_kernel,
                                     dict(DY=p, G=p, U=p, DG=p, DU=p, numel="i32"), consts, NUM_WARPS))
    return specs
