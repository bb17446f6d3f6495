"""Row softmax in Triton: forward and backward over the last dim of an (M, N) tensor.

Forward, per row (statistics in fp32):  m = max_j x_j,  s = sum_j exp(x_j - m),  y_j = exp(x_j - m) / s
Backward:                              dx_j = y_j (dy_j - sum_k dy_k y_k)

Rows of up to MAX_FUSED_N elements are held whole in registers: one read, one write, several short rows per
program. Longer rows (any length; tested past 128k) take a two-pass online path, one program per row:
  pass 1 keeps a running max and a rescaled running sum per lane of a BLOCK_N chunk,
      m' = max(m, x),  s' = s exp(m - m') + exp(x - m'),
  then folds the lanes into the row's (m, s); pass 2 writes exp(x - m) / s.
The looped backward likewise sums dy * y over the row first, then writes dx.

-inf follows torch.softmax: -inf entries get probability 0 (exp(-inf) = 0), and a row of only -inf has
m = -inf, so exp(-inf - (-inf)) = NaN fills it, exactly as torch gives NaN there (and NaN gradients). Inside
the online pass a lane that has only seen -inf rescales against 0 instead of its -inf max, so it carries a
sum of 0 rather than NaN into rows that do have finite entries.
"""
import torch
import triton
import triton.language as tl

from ._utils import CompileSpec, TL_DTYPE, next_pow2, warps_for

MAX_FUSED_N = 8192  # longest row kept whole in registers
LOOP_BLOCK_N = 4096  # chunk of a row on the looped path
LOOP_WARPS = 8


# --------------------------------------------------------------------------------------------- kernels
@triton.jit
def _fwd_fused_kernel(X, Y, stride_xm, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # int64: M may pass 2^31
    cols = tl.arange(0, BLOCK_N)
    mask = (rows < M)[:, None] & (cols < N)[None, :]
    x = tl.load(X + rows[:, None] * stride_xm + cols[None, :], mask=mask, other=float("-inf")).to(tl.float32)
    e = tl.exp(x - tl.max(x, axis=1)[:, None])
    y = e / tl.sum(e, axis=1)[:, None]
    tl.store(Y + rows[:, None] * N + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _fwd_looped_kernel(X, Y, stride_xm, N, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = X + row * stride_xm
    y_row = Y + row * N
    # Pass 1: per-lane running max and sum, rescaled whenever the max grows.
    m_lane = tl.full([BLOCK_N], float("-inf"), tl.float32)
    s_lane = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        x = tl.load(x_row + cols, mask=cols < N, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m_lane, x)
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # only -inf seen so far: keep the sum 0, not NaN
        s_lane = s_lane * tl.exp(m_lane - m_ref) + tl.exp(x - m_ref)
        m_lane = m_new
    m = tl.max(m_lane, axis=0)
    s = tl.sum(s_lane * tl.exp(m_lane - m), axis=0)  # NaN on an all -inf row (m = -inf), as torch
    # Pass 2: normalise.
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        cmask = cols < N
        x = tl.load(x_row + cols, mask=cmask, other=float("-inf")).to(tl.float32)
        tl.store(y_row + cols, (tl.exp(x - m) / s).to(Y.dtype.element_ty), mask=cmask)


@triton.jit
def _bwd_fused_kernel(DY, Y, DX, stride_dym, stride_ym, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # int64: M may pass 2^31
    cols = tl.arange(0, BLOCK_N)
    mask = (rows < M)[:, None] & (cols < N)[None, :]
    dy = tl.load(DY + rows[:, None] * stride_dym + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    y = tl.load(Y + rows[:, None] * stride_ym + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    dx = y * (dy - tl.sum(dy * y, axis=1)[:, None])
    tl.store(DX + rows[:, None] * N + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_looped_kernel(DY, Y, DX, stride_dym, stride_ym, N, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    dy_row = DY + row * stride_dym
    y_row = Y + row * stride_ym
    # Pass 1: sum(dy * y) over the row.
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        cmask = cols < N
        acc += (tl.load(dy_row + cols, mask=cmask, other=0.0).to(tl.float32)
                * tl.load(y_row + cols, mask=cmask, other=0.0).to(tl.float32))
    dot = tl.sum(acc, axis=0)
    # Pass 2: dx.
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        cmask = cols < N
        dy = tl.load(dy_row + cols, mask=cmask, other=0.0).to(tl.float32)
        y = tl.load(y_row + cols, mask=cmask, other=0.0).to(tl.float32)
        tl.store(DX + row * N + cols, (y * (dy - dot)).to(DX.dtype.element_ty), mask=cmask)


# --------------------------------------------------------------------------------------------- configs
def fused_config(n: int, rows_elements: int, per_thread: int) -> dict:
    """A row of n <= MAX_FUSED_N elements in one block; about `rows_elements` elements (several short rows) per
    program. The backward holds two tiles (dy, y), so it asks for fewer elements per thread."""
    block_n = next_pow2(n)
    block_m = max(1, min(64, rows_elements // block_n))
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps_for(block_m * block_n, per_thread))


def fwd_config(n: int) -> dict:
    return fused_config(n, 2048, 16)


def bwd_config(n: int) -> dict:
    return fused_config(n, 1024, 8)


# --------------------------------------------------------------------------------------------- launchers
def softmax_fwd(x: torch.Tensor) -> torch.Tensor:
    """x: (M, N) with unit column stride. Returns y = softmax(x, dim=-1), (M, N) contiguous in x.dtype."""
    assert x.dim() == 2 and (x.stride(1) == 1 or x.size(1) <= 1), "softmax_fwd expects (M, N) with unit column stride"
    M, N = x.shape
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return y
    if N > MAX_FUSED_N:
        _fwd_looped_kernel[(M,)](x, y, x.stride(0), N, BLOCK_N=LOOP_BLOCK_N, num_warps=LOOP_WARPS)
    else:
        cfg = fwd_config(N)
        _fwd_fused_kernel[(triton.cdiv(M, cfg["BLOCK_M"]),)](x, y, x.stride(0), M, N, BLOCK_M=cfg["BLOCK_M"],
                                                             BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"])
    return y


def softmax_bwd(dy: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """dy, y: (M, N) with unit column stride (y = the forward's output). Returns dx (M, N) contiguous in y.dtype."""
    assert dy.shape == y.shape and y.dim() == 2, "softmax_bwd expects dy and y of one (M, N) shape"
    assert (dy.stride(1) == 1 and y.stride(1) == 1) or y.size(1) <= 1, "softmax_bwd expects unit column strides"
    M, N = y.shape
    dx = torch.empty((M, N), dtype=y.dtype, device=y.device)
    if M == 0 or N == 0:
        return dx
    if N > MAX_FUSED_N:
        _bwd_looped_kernel[(M,)](dy, y, dx, dy.stride(0), y.stride(0), N, BLOCK_N=LOOP_BLOCK_N, num_warps=LOOP_WARPS)
    else:
        cfg = bwd_config(N)
        _bwd_fused_kernel[(triton.cdiv(M, cfg["BLOCK_M"]),)](dy, y, dx, dy.stride(0), y.stride(0), M, N,
                                                             BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                                                             num_warps=cfg["num_warps"])
    return dx


# --------------------------------------------------------------------------------------------- static compile
def compile_specs(sizes=(1, 33, 768, 1000, 4096, 8192, 131072)):
    """Every kernel at the configs the launchers pick for these row sizes, per dtype."""
    specs = {}

    def add(fn, sig, consts, num_warps, tag):
        key = (fn.__name__, tuple(sig.values()), tuple(sorted(consts.items())), num_warps)
        specs.setdefault(key, CompileSpec(f"{fn.__name__}[{tag}]", fn, sig, consts, num_warps))

    for t in TL_DTYPE.values():
        p = f"*{t}"
        for n in sizes:
            tag = f"{t},N={n}"
            if n > MAX_FUSED_N:
                add(_fwd_looped_kernel, dict(X=p, Y=p, stride_xm="i32", N="i32"), dict(BLOCK_N=LOOP_BLOCK_N),
                    LOOP_WARPS, tag)
                add(_bwd_looped_kernel, dict(DY=p, Y=p, DX=p, stride_dym="i32", stride_ym="i32", N="i32"),
                    dict(BLOCK_N=LOOP_BLOCK_N), LOOP_WARPS, tag)
                continue
            fc, bc = fwd_config(n), bwd_config(n)
            add(_fwd_fused_kernel, dict(X=p, Y=p, stride_xm="i32", M="i32", N="i32"),
                dict(BLOCK_M=fc["BLOCK_M"], BLOCK_N=fc["BLOCK_N"]), fc["num_warps"], tag)
            add(_bwd_fused_kernel, dict(DY=p, Y=p, DX=p, stride_dym="i32", stride_ym="i32", M="i32", N="i32"),
                dict(BLOCK_M=bc["BLOCK_M"], BLOCK_N=bc["BLOCK_N"]), bc["num_warps"], tag)
    return list(specs.values())
