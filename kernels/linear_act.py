"""Linear layer with a fused bias + activation epilogue in Triton: forward and backward.

Shapes: x (M, K), W (N, K), b (N,), y (M, N); act in "gelu", "gelu_tanh", "relu", "silu", "none" (math in activation.py).
Forward, one tiled GEMM with fp32 accumulation; bias and activation applied to the accumulator in registers:
    z = x W^T + b,   y = act(z)
Backward, with dz = dy * act'(z):
    dx = dz W     (reduction over N)        dW = dz^T x   (reduction over M)        db = sum over rows of dz
dz is written once, by one elementwise pass (activation.act_bwd: dy and z in, dz out), and the two GEMMs read it.
Making dz inside the GEMMs instead (prologue fusion: dy * act'(z) as each tile loads) recomputed act' for every
element K / BLOCK_K times in each GEMM: on sm_90 the dW hot loop was ~1230 instructions (gelu) per 2 wgmmas,
issue-bound about 10x over its MMAs; one M x N write and read costs far less. (act "none": dz = dy, no pass.)
The dW programs of the first K-block also sum dz over M for db, elementwise into a (BLOCK_M, BLOCK_N) tile in the
loop and across rows once after it (no shuffles per iteration); every column of db comes from one program in a
fixed order: deterministic, no atomics.

What the backward reads to get act'(z):
  gelu / gelu_tanh / silu: the pre-activation z, written by the forward (one extra M x N store). Recomputing it instead
      would cost a second forward GEMM (2 M N K flops) to save M N elements of memory traffic -- at transformer
      sizes (K in the thousands) the extra write is hundreds of times cheaper.
  relu: the output y (y > 0 exactly where z > 0), nothing saved.    none: nothing.

Tiling: programs walk the output tiles in grouped order (GROUP row-blocks of one column-block before the next
column-block), so a group's row panels and the current column panel stay in L2. Any M, N, K: tail rows and
columns of the operands are read at a valid index (index mod size) so those loads need no mask, and the junk
they produce is never stored; the reduction tail is masked to zero.

Numerics: products and accumulation in fp32 for every dtype, z, y, dx, dW, db rounded once to the output dtype.
dz is rounded to the input dtype only as a tl.dot operand (tensor cores for fp16 / bf16), but db sums it in fp32.
Every tl.dot passes input_precision="ieee": for fp32 inputs that means true fp32 products (no TF32) as the
project's 1e-5 rule needs -- on CUDA cores, much slower than fp16 / bf16; for fp16 / bf16 it changes nothing.

Launch configs: triton.autotune on a GPU (tables for fp16/bf16 on sm_80 / sm_90 and for fp32, pruned to the
device's shared memory); under the interpreter (TRITON_INTERPRET=1) one small fixed config.
"""
import functools

import torch
import triton
import triton.language as tl

from ._utils import INTERPRETING, TL_DTYPE, CompileSpec, next_pow2
from .activation import (ACT_GELU, ACT_GELU_TANH, ACT_NONE, ACT_SILU, ACTIVATION_IDS, act_bwd, activation_id,
                         apply_activation)

SAVES_PRE_ACTIVATION = (ACT_GELU.value, ACT_GELU_TANH.value, ACT_SILU.value)


# --------------------------------------------------------------------------------------------- helpers
@triton.jit
def _grouped_tile(pid, num_rows, num_cols, GROUP: tl.constexpr):
    """(row-block, column-block) of program `pid` when GROUP row-blocks share each column-block in turn."""
    per_group = GROUP * num_cols
    first_row = (pid // per_group) * GROUP
    rows_in_group = tl.minimum(num_rows - first_row, GROUP)
    local = pid % per_group
    return first_row + local % rows_in_group, local // rows_in_group


# --------------------------------------------------------------------------------------------- configs
# (output rows, output columns, reduction, warps, stages) per tile, for fp16 / bf16 on sm_80 and sm_90: the largest
# tiles that keep every kernel free of spills on both archs (checked with 16-byte aligned operands).
# sm_90 forward: 128x256 first (m64n256 wgmmas, 144 KB of stages); its epilogue runs on two 128x128 halves of the
# accumulator, one after the other: the whole tile's gelu at once spilled 224-344 B.
FWD_TILES = ((128, 256, 64, 8, 3), (128, 128, 64, 8, 4), (64, 128, 64, 4, 4))
# sm_80 (Ampere and other pre-Hopper GPUs) swaps a tile: fp16 gelu 64x128x64 left an 8-byte stack frame under triton
# 3.6 there (sm_90's wgmma build of it is clean); 128x256 is sm_90's only (mma.sync keeps both operands in registers).
SM80_TILES = {FWD_TILES: ((128, 128, 64, 8, 4), (64, 128, 32, 4, 4))}
DX_TILES = ((128, 128, 64, 8, 4), (64, 128, 64, 4, 4))
DW_TILES = ((128, 128, 64, 8, 4), (64, 128, 64, 8, 4))
FP32_TILES = ((64, 64, 32, 4, 3),)  # fp32 "ieee" dots run on CUDA cores: small tiles
INTERPRETER_TILES = ((32, 32, 32, 4, 1),)  # the CPU interpreter: few, cheap programs
GROUP = 8
INTERPRETER_GROUP = 4  # < the row-blocks of the test shapes, so partial groups get exercised


@functools.lru_cache(maxsize=None)
def _capability(device_index: int) -> tuple:
    return torch.cuda.get_device_capability(device_index)


@functools.lru_cache(maxsize=None)
def _max_shared_memory(device_index: int) -> int:
    return triton.runtime.driver.active.utils.get_device_properties(device_index)["max_shared_mem"]


def _autotune(tiles, rows: str, cols: str, red: str, operand: str, flags=(), operands=(1, 1), fp32_tiles=None):
    """triton.autotune over `tiles` (fp16 / bf16) and `fp32_tiles` (default FP32_TILES), naming the tile sizes of one
    kernel (rows x cols output tile, `red` the reduction block); `operand` names an input tensor whose dtype picks
    the table; `flags`: constexpr arguments that enter the key; `operands`: how many (rows x red) and (cols x red)
    operand tiles each pipeline stage holds (gated_linear's forward: x and two weights, (1, 2))."""
    # M (the token count) enters the key as its power-of-two bucket: a new batch size re-uses the tuned config.
    key = ["m_bucket", "N", "K", *flags]

    def config(tile, group):
        r, c, k, warps, stages = tile
        return triton.Config({rows: r, cols: c, red: k, "GROUP": group}, num_warps=warps, num_stages=stages)

    if INTERPRETING:
        return triton.autotune([config(t, INTERPRETER_GROUP) for t in INTERPRETER_TILES], key=key)
    lowp = [config(t, GROUP) for t in tiles]
    lowp_sm80 = [config(t, GROUP) for t in SM80_TILES.get(tiles, tiles)]
    fp32 = [config(t, GROUP) for t in (fp32_tiles or FP32_TILES)]

    def prune(configs, named_args, **kwargs):
        x = named_args[operand]
        table = fp32 if x.dtype == torch.float32 else lowp if _capability(x.device.index) >= (9, 0) else lowp_sm80
        limit = _max_shared_memory(x.device.index)

        def smem(c):  # pipelined operand tiles
            a, b = operands
            return c.num_stages * (a * c.kwargs[rows] + b * c.kwargs[cols]) * c.kwargs[red] * x.element_size()

        return [c for c in table if smem(c) <= limit] or [min(table, key=smem)]

    every = list({(c.kwargs[rows], c.kwargs[cols], c.kwargs[red], c.num_warps, c.num_stages): c
                  for c in lowp + lowp_sm80 + fp32}.values())
    return triton.autotune(every, key=key, prune_configs_by={"early_config_prune": prune})


# --------------------------------------------------------------------------------------------- kernels
@_autotune(FWD_TILES, "BLOCK_M", "BLOCK_N", "BLOCK_K", "X", ("HAS_BIAS", "ACTIVATION"))
@triton.jit(do_not_specialize=["m_bucket"])
def _fwd_kernel(X, W, B, Y, Z, M, N, K, stride_xm, m_bucket,
                HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, SAVE_Z: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr):
    pid_m, pid_n = _grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    x_ptrs = X + (rm % M).to(tl.int64)[:, None] * stride_xm + rk[None, :]
    wt_ptrs = W + (rn % N).to(tl.int64)[None, :] * K + rk[:, None]  # a (BLOCK_K, BLOCK_N) tile of W^T
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = rk < K - k0
        x = tl.load(x_ptrs, mask=k_ok[None, :], other=0.0)
        wt = tl.load(wt_ptrs, mask=k_ok[:, None], other=0.0)
        acc = tl.dot(x, wt, acc, input_precision="ieee")
        x_ptrs += BLOCK_K
        wt_ptrs += BLOCK_K
    if BLOCK_N >= 256:  # the epilogue on each half of the columns in turn (fewer live registers)
        lo, hi = tl.split(acc.reshape(BLOCK_M, 2, BLOCK_N // 2).permute(0, 2, 1))
        rn_lo = pid_n * BLOCK_N + tl.arange(0, BLOCK_N // 2)
        _fwd_epilogue(lo, rm, rn_lo, B, Y, Z, M, N, HAS_BIAS, ACTIVATION, SAVE_Z)
        _fwd_epilogue(hi, rm, rn_lo + BLOCK_N // 2, B, Y, Z, M, N, HAS_BIAS, ACTIVATION, SAVE_Z)
    else:
        _fwd_epilogue(acc, rm, rn, B, Y, Z, M, N, HAS_BIAS, ACTIVATION, SAVE_Z)


@triton.jit
def _fwd_epilogue(acc, rm, rn, B, Y, Z, M, N, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr,
                  SAVE_Z: tl.constexpr):
    """z = acc + b, y = act(z) for output rows rm, columns rn; stored where in range."""
    if HAS_BIAS:
        acc += tl.load(B + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    out_offs = rm.to(tl.int64)[:, None] * N + rn[None, :]
    out_mask = (rm < M)[:, None] & (rn < N)[None, :]
    if SAVE_Z:
        tl.store(Z + out_offs, acc.to(Z.dtype.element_ty), mask=out_mask)
    tl.store(Y + out_offs, apply_activation(acc, ACTIVATION).to(Y.dtype.element_ty), mask=out_mask)


@_autotune(DX_TILES, "BLOCK_M", "BLOCK_K", "BLOCK_N", "DZ", ("TWO",))
@triton.jit(do_not_specialize=["m_bucket"])
def _bwd_dx_kernel(DZ, W, DZ2, W2, DX, M, N, K, stride_dzm, m_bucket, TWO: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr):
    """dx = dz W (+ dz2 W2 when TWO: gated_linear's gate and up halves, contiguous dz2), one (BLOCK_M, BLOCK_K)
    tile per program."""
    pid_m, pid_k = _grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(K, BLOCK_K), GROUP)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    rn = tl.arange(0, BLOCK_N)
    dz_ptrs = DZ + (rm % M).to(tl.int64)[:, None] * stride_dzm + rn[None, :]
    w_ptrs = W + rn.to(tl.int64)[:, None] * K + (rk % K)[None, :]
    dz2_ptrs = DZ2 + (rm % M).to(tl.int64)[:, None] * N + rn[None, :]
    w2_ptrs = W2 + rn.to(tl.int64)[:, None] * K + (rk % K)[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n_ok = rn < N - n0
        dz = tl.load(dz_ptrs, mask=n_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=n_ok[:, None], other=0.0)
        acc = tl.dot(dz, w, acc, input_precision="ieee")
        dz_ptrs += BLOCK_N
        w_ptrs += BLOCK_N * K
        if TWO:
            dz2 = tl.load(dz2_ptrs, mask=n_ok[None, :], other=0.0)
            w2 = tl.load(w2_ptrs, mask=n_ok[:, None], other=0.0)
            acc = tl.dot(dz2, w2, acc, input_precision="ieee")
            dz2_ptrs += BLOCK_N
            w2_ptrs += BLOCK_N * K
    mask = (rm < M)[:, None] & (rk < K)[None, :]
    tl.store(DX + rm.to(tl.int64)[:, None] * K + rk[None, :], acc.to(DX.dtype.element_ty), mask=mask)


@_autotune(DW_TILES, "BLOCK_N", "BLOCK_K", "BLOCK_M", "X", ("HAS_BIAS",))
@triton.jit(do_not_specialize=["m_bucket"])
def _bwd_dw_kernel(DZ, X, DW, DB, M, N, K, stride_dzm, stride_xm, m_bucket,
                   HAS_BIAS: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr):
    """dW = dz^T x, one (BLOCK_N, BLOCK_K) tile per program; the first K-block's programs also write db."""
    pid_n, pid_k = _grouped_tile(tl.program_id(0), tl.cdiv(N, BLOCK_N), tl.cdiv(K, BLOCK_K), GROUP)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    rm = tl.arange(0, BLOCK_M).to(tl.int64)
    dz_ptrs = DZ + rm[:, None] * stride_dzm + (rn % N)[None, :]
    x_ptrs = X + rm[:, None] * stride_xm + (rk % K)[None, :]
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    db = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)  # summed over its rows once, after the loop
    for m0 in range(0, M, BLOCK_M):
        m_ok = (rm < M - m0)[:, None]
        dz = tl.load(dz_ptrs, mask=m_ok, other=0.0)
        if HAS_BIAS:
            db += dz.to(tl.float32)
        x = tl.load(x_ptrs, mask=m_ok, other=0.0)
        acc = tl.dot(tl.trans(dz), x, acc, input_precision="ieee")
        dz_ptrs += BLOCK_M * stride_dzm
        x_ptrs += BLOCK_M * stride_xm
    mask = (rn < N)[:, None] & (rk < K)[None, :]
    tl.store(DW + rn.to(tl.int64)[:, None] * K + rk[None, :], acc.to(DW.dtype.element_ty), mask=mask)
    if HAS_BIAS:
        if pid_k == 0:
            tl.store(DB + rn, tl.sum(db, axis=0).to(DB.dtype.element_ty), mask=rn < N)


# --------------------------------------------------------------------------------------------- launchers
def linear_act_fwd(x: torch.Tensor, weight: torch.Tensor, bias, activation):
    """x (M, K) with unit column stride, weight (N, K) contiguous, bias (N,) or None, all one dtype.
    Returns y = act(x W^T + b), (M, N) contiguous in x.dtype, and `saved` for linear_act_bwd: the pre-activation
    z (M, N) for gelu / gelu_tanh, None for relu and "none" (None or "none": identity)."""
    act = activation_id(activation)
    M, K = x.shape
    N = weight.shape[0]
    assert x.stride(1) == 1 or K == 1, "linear_act_fwd expects x with unit column stride"
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    z = torch.empty_like(y) if act in SAVES_PRE_ACTIVATION else None

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    _fwd_kernel[grid](x, weight, y if bias is None else bias, y, y if z is None else z, M, N, K, x.stride(0),
                      next_pow2(M), HAS_BIAS=bias is not None, ACTIVATION=act, SAVE_Z=z is not None)
    return y, z


def linear_act_bwd(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, saved, y, activation, has_bias: bool):
    """dy (M, N) with unit column stride; x, weight as given to linear_act_fwd; saved and y: its outputs (y is
    read for relu only). Returns dx (M, K) in x.dtype, dw (N, K) and db (N,) (None when not has_bias) in
    weight.dtype."""
    act = activation_id(activation)
    M, K = x.shape
    N = weight.shape[0]
    assert dy.stride(1) == 1 or N == 1, "linear_act_bwd expects dy with unit column stride"
    if act == ACT_NONE.value:
        dz = dy
    else:  # dz = dy * act'(z), once: act' reads z for gelu, y (its sign) for relu
        name = next(n for n, i in ACTIVATION_IDS.items() if i == act)
        dz = act_bwd(dy.contiguous(), saved if act in SAVES_PRE_ACTIVATION else y, name)
    dx = torch.empty((M, K), dtype=x.dtype, device=x.device)
    dw = torch.empty((N, K), dtype=weight.dtype, device=weight.device)
    db = torch.empty(N, dtype=weight.dtype, device=weight.device) if has_bias else None

    def grid_dx(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(K, meta["BLOCK_K"]),)

    def grid_dw(meta):
        return (triton.cdiv(N, meta["BLOCK_N"]) * triton.cdiv(K, meta["BLOCK_K"]),)

    _bwd_dx_kernel[grid_dx](dz, weight, dz, weight, dx, M, N, K, dz.stride(0), next_pow2(M), TWO=False)
    _bwd_dw_kernel[grid_dw](dz, x, dw, dw if db is None else db, M, N, K, dz.stride(0), x.stride(0), next_pow2(M),
                            HAS_BIAS=has_bias)
    return dx, dw, db


# --------------------------------------------------------------------------------------------- static compile
def compile_specs():
    """The three kernels at every fp16/bf16 tile config the autotuner may pick (fp16 with gelu, bf16 with relu:
    both dtypes and both epilogue kinds at each config) and at the fp32 config (gelu). Pointers, N, K and the row
    strides are declared 16-divisible (`aligned_args`), as the runtime specialises them for aligned tensors:
    without that the loads are scalar and no GEMM tile of useful size fits in registers."""
    kernels = (  # kernel, fp16/bf16 tiles, (rows, cols, reduction) names, signature, constexpr flags
        (_fwd_kernel, FWD_TILES, ("BLOCK_M", "BLOCK_N", "BLOCK_K"),
         lambda p: dict(X=p, W=p, B=p, Y=p, Z=p, M="i32", N="i32", K="i32", stride_xm="i32", m_bucket="i32"),
         lambda act: dict(HAS_BIAS=True, ACTIVATION=act, SAVE_Z=act in SAVES_PRE_ACTIVATION)),
        (_bwd_dx_kernel, DX_TILES, ("BLOCK_M", "BLOCK_K", "BLOCK_N"),
         lambda p: dict(DZ=p, W=p, DZ2=p, W2=p, DX=p, M="i32", N="i32", K="i32", stride_dzm="i32", m_bucket="i32"),
         lambda act: dict(TWO=False)),
        (_bwd_dw_kernel, DW_TILES, ("BLOCK_N", "BLOCK_K", "BLOCK_M"),
         lambda p: dict(DZ=p, X=p, DW=p, DB=p, M="i32", N="i32", K="i32", stride_dzm="i32", stride_xm="i32",
                        m_bucket="i32"),
         lambda act: dict(HAS_BIAS=True)),
    )
    specs = []
    for kernel, tiles, names, signature, flags in kernels:
        jit_fn = kernel.fn  # the @triton.jit function under the autotuner
        sm80 = SM80_TILES.get(tiles, tiles)
        lowp = [(t, tuple(a for a, table in ((80, sm80), (90, tiles)) if t in table))
                for t in dict.fromkeys(tiles + sm80)]  # each tile with the archs whose table offers it
        cases = [(dtype, name, t, archs) for dtype, name in ((torch.float16, "gelu"), (torch.bfloat16, "relu"))
                 for t, archs in lowp]
        cases += [(torch.float32, "gelu", t, (80, 90)) for t in FP32_TILES]
        for dtype, name, (r, c, k, warps, stages), archs in cases:
            t = TL_DTYPE[dtype]
            sig = signature(f"*{t}")
            consts = dict(flags(activation_id(name)), GROUP=GROUP, **dict(zip(names, (r, c, k))))
            aligned = tuple(a for a, ty in sig.items() if ty.startswith("*") or a not in ("M", "m_bucket"))
            known = {}
            act_tag = f"{name}," if "ACTIVATION" in consts else ""
            specs.append(CompileSpec(f"{jit_fn.__name__}[{t},{act_tag}{r}x{c}x{k}]", jit_fn, sig, consts, warps,
                                     stages, expect_wgmma=dtype != torch.float32, tags=("gemm",),
                                     aligned_args=aligned, archs=archs, allowed_perf_notes=known))
    return specs
