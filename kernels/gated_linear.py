"""The gated MLP's first half in Triton: gate and up GEMMs in one kernel, act(g) * u in its epilogue.

Shapes: x (M, K), W_gate and W_up (N, K), h (M, N); act in "silu" (SwiGLU), "gelu" / "gelu_tanh" (GeGLU).
Forward, one tiled GEMM with two fp32 accumulators sharing each x tile (x is read once for both products):
    g = x W_gate^T,   u = x W_up^T,   h = act(g) * u
The epilogue writes h, and, when the backward will run, g and u (the backward needs both: act'(g) and act(g)).
Backward, with dh the gradient of h:
    dg = dh * u * act'(g),   du = dh * act(g)            (activation.gated_bwd: one elementwise pass)
    dx = dg W_gate + du W_up                              (one GEMM kernel, both products into one accumulator)
    dW_gate = dg^T x,   dW_up = du^T x                    (linear_act's dW kernel, twice)
Against two cuBLAS GEMMs + the fused elementwise pass, the forward saves reading g and u back (2 M N elements),
and without grad it writes only h (not g, u then h).

Tiling, tail handling and numerics as linear_act.py (grouped tile order, index-mod-size tail loads, fp32
accumulation, input_precision="ieee"). Configs: two (BLOCK_N, BLOCK_K) weight tiles per stage, so the tiles are
linear_act's with half the columns per accumulator (the output tile of [g; u] is as wide as linear_act's).
"""
import torch
import triton
import triton.language as tl

from ._utils import TL_DTYPE, CompileSpec, next_pow2
from .activation import ACTIVATION_IDS, activation_id, apply_activation, gated_bwd
from .linear_act import GROUP, SM80_TILES, _autotune, _bwd_dw_kernel, _bwd_dx_kernel, _grouped_tile

GATED = ("silu", "gelu", "gelu_tanh")
# (rows, columns per accumulator, reduction, warps, stages), each free of spills at sm_80 / sm_90 (static gate):
# 128x128 per accumulator holds 2 x 64 fp32 registers a thread at 8 warps (253 regs on sm_90); three stages of x +
# two weight tiles are 144 KB. At 4 warps 128x64 / 64x128 spilled 64 B on sm_90, 128x64 24-56 B on sm_80.
FWD_TILES = ((128, 128, 64, 8, 3), (128, 64, 64, 8, 4), (64, 128, 64, 8, 4))
SM80_TILES[FWD_TILES] = ((128, 64, 64, 8, 3), (64, 64, 64, 4, 4))  # mma.sync keeps operands in registers
FP32_TILES = ((32, 64, 32, 4, 3),)  # fp32 "ieee" dots run on CUDA cores: 64x64 spilled 488 B on sm_80
# The dX kernel with both (dz, W) pairs holds two of each operand tile per stage: fewer stages than linear_act's.
DX2_TILES = ((128, 128, 64, 8, 2), (64, 128, 64, 4, 3))

# linear_act's dX kernel body, autotuned over DX2_TILES for the two-pair launch
_bwd_dx2_kernel = _autotune(DX2_TILES, "BLOCK_M", "BLOCK_K", "BLOCK_N", "DZ", ("TWO",), operands=(2, 2))(
    triton.jit(do_not_specialize=["m_bucket"])(_bwd_dx_kernel.fn.fn))


@_autotune(FWD_TILES, "BLOCK_M", "BLOCK_N", "BLOCK_K", "X", ("ACTIVATION", "SAVE"), operands=(1, 2),
           fp32_tiles=FP32_TILES)
@triton.jit(do_not_specialize=["m_bucket"])
def _gated_fwd_kernel(X, WG, WU, H, G, U, M, N, K, stride_xm, m_bucket,
                      ACTIVATION: tl.constexpr, SAVE: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr):
    pid_m, pid_n = _grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    x_ptrs = X + (rm % M).to(tl.int64)[:, None] * stride_xm + rk[None, :]
    w_offs = (rn % N).to(tl.int64)[None, :] * K + rk[:, None]  # (BLOCK_K, BLOCK_N) tiles of W^T
    wg_ptrs = WG + w_offs
    wu_ptrs = WU + w_offs
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = rk < K - k0
        x = tl.load(x_ptrs, mask=k_ok[None, :], other=0.0)
        wg = tl.load(wg_ptrs, mask=k_ok[:, None], other=0.0)
        wu = tl.load(wu_ptrs, mask=k_ok[:, None], other=0.0)
        acc_g = tl.dot(x, wg, acc_g, input_precision="ieee")
        acc_u = tl.dot(x, wu, acc_u, input_precision="ieee")
        x_ptrs += BLOCK_K
        wg_ptrs += BLOCK_K
        wu_ptrs += BLOCK_K
    out_offs = rm.to(tl.int64)[:, None] * N + rn[None, :]
    out_mask = (rm < M)[:, None] & (rn < N)[None, :]
    if SAVE:
        tl.store(G + out_offs, acc_g.to(G.dtype.element_ty), mask=out_mask)
        tl.store(U + out_offs, acc_u.to(U.dtype.element_ty), mask=out_mask)
    h = apply_activation(acc_g, ACTIVATION) * acc_u
    tl.store(H + out_offs, h.to(H.dtype.element_ty), mask=out_mask)


def _check_activation(activation):
    if activation not in GATED:
        raise ValueError(f"gated_linear: activation must be one of {GATED}; got {activation!r}")


def gated_linear_fwd(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, activation: str, save: bool):
    """x (M, K) with unit column stride, w_gate / w_up (N, K) contiguous, one dtype. Returns h = act(x Wg^T) *
    (x Wu^T) (M, N) contiguous, and (g, u) when `save` (for gated_linear_bwd), else (None, None)."""
    _check_activation(activation)
    M, K = x.shape
    N = w_gate.shape[0]
    h = torch.empty((M, N), dtype=x.dtype, device=x.device)
    g, u = (torch.empty_like(h), torch.empty_like(h)) if save else (None, None)

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    _gated_fwd_kernel[grid](x, w_gate, w_up, h, h if g is None else g, h if u is None else u, M, N, K, x.stride(0),
                            next_pow2(M), ACTIVATION=activation_id(activation), SAVE=save)
    return h, g, u


def gated_linear_bwd(dh, x, w_gate, w_up, g, u, activation: str):
    """dh (M, N) contiguous; x, w_gate, w_up as given to gated_linear_fwd; g, u: its saved outputs.
    Returns (dx (M, K), dw_gate (N, K), dw_up (N, K))."""
    _check_activation(activation)
    M, K = x.shape
    N = w_gate.shape[0]
    dg, du = gated_bwd(dh, g, u, activation)
    dx = torch.empty((M, K), dtype=x.dtype, device=x.device)
    dwg, dwu = torch.empty_like(w_gate), torch.empty_like(w_up)

    def grid_dx(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(K, meta["BLOCK_K"]),)

    def grid_dw(meta):
        return (triton.cdiv(N, meta["BLOCK_N"]) * triton.cdiv(K, meta["BLOCK_K"]),)

    _bwd_dx2_kernel[grid_dx](dg, w_gate, du, w_up, dx, M, N, K, N, next_pow2(M), TWO=True)
    for dz, dw in ((dg, dwg), (du, dwu)):
        _bwd_dw_kernel[grid_dw](dz, x, dw, dw, M, N, K, N, x.stride(0), next_pow2(M), HAS_BIAS=False)
    return dx, dwg, dwu


def compile_specs():
    """The forward at every fp16/bf16 tile its autotuner may pick (silu with saves, gelu_tanh without) and the
    fp32 config, and the backward's two-pair dX kernel at linear_act's dX tiles (its dW is linear_act's)."""
    specs = []
    sm80 = SM80_TILES[FWD_TILES]
    lowp = [(t, tuple(a for a, table in ((80, sm80), (90, FWD_TILES)) if t in table))
            for t in dict.fromkeys(FWD_TILES + sm80)]
    cases = [(dtype, name, save, t, archs) for dtype, name, save in ((torch.float16, "silu", True),
                                                                      (torch.bfloat16, "gelu_tanh", False))
             for t, archs in lowp] + [(torch.float32, "silu", True, t, (80, 90)) for t in FP32_TILES]
    for dtype, name, save, (r, c, k, warps, stages), archs in cases:
        t = TL_DTYPE[dtype]
        p = f"*{t}"
        sig = dict(X=p, WG=p, WU=p, H=p, G=p, U=p, M="i32", N="i32", K="i32", stride_xm="i32", m_bucket="i32")
        consts = dict(ACTIVATION=ACTIVATION_IDS[name], SAVE=save, BLOCK_M=r, BLOCK_N=c, BLOCK_K=k, GROUP=GROUP)
        aligned = tuple(a for a, ty in sig.items() if ty.startswith("*") or a not in ("M", "m_bucket"))
        specs.append(CompileSpec(f"_gated_fwd_kernel[{t},{name}{',save' if save else ''},{r}x{c}x{k}]",
                                 _gated_fwd_kernel.fn, sig, consts, warps, stages, expect_wgmma=dtype != torch.float32,
                                 tags=("gemm",), aligned_args=aligned, archs=archs))
    for dtype in (torch.float16, torch.bfloat16):
        t = TL_DTYPE[dtype]
        p = f"*{t}"
        sig = dict(DZ=p, W=p, DZ2=p, W2=p, DX=p, M="i32", N="i32", K="i32", stride_dzm="i32", m_bucket="i32")
        aligned = tuple(a for a, ty in sig.items() if ty.startswith("*") or a not in ("M", "m_bucket"))
        for r, c, k, warps, stages in DX2_TILES:
            consts = dict(TWO=True, BLOCK_M=r, BLOCK_K=c, BLOCK_N=k, GROUP=GROUP)
            specs.append(CompileSpec(f"_bwd_dx_kernel[{t},two,{r}x{c}x{k}]", _bwd_dx2_kernel.fn, sig, consts, warps,
                                     stages, expect_wgmma=True, tags=("gemm",), aligned_args=aligned))
    return specs
