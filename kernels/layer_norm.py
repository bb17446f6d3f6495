"""LayerNorm and RMSNorm (with an optional fused residual add) in Triton: forward, backward, and a deterministic
reduction for dW / dB.

Forward, per row of N elements (statistics in fp32, saved for the backward):
    LayerNorm: mean = sum(x) / N,  rstd = 1 / sqrt(sum((x - mean)^2) / N + eps),  y = (x - mean) * rstd * w + b
    RMSNorm (RMS):  rstd = 1 / sqrt(sum(x^2) / N + eps),  y = x * rstd * w        (no mean, no bias)
    Residual (HAS_RES, add_rms_norm): the row is h = x + r, rounded to the input dtype as the unfused add would be,
    written out (the block's next residual stream) and normalised.
Backward, with xhat = (x - mean) * rstd (RMS: x * rstd) and g = dy * w:
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat))     RMS: dx = rstd * (g - xhat * mean(g * xhat))
    dw = sum over rows of dy * xhat,  db = sum over rows of dy
    add_rms_norm: x is the saved h, and the gradient reaching h directly (dh, from the residual output) is added:
    d(input) = d(residual) = dx + dh, one pass.
dW/dB: each program sums its own rows into one row of an fp32 partial buffer, then a second kernel adds
the partial rows in a fixed order. No float atomics, so results are identical run to run.

A row of up to MAX_FUSED_N elements lives in registers (one read of x). Longer rows take the looped
path: the forward merges per-chunk (count, mean, M2) with Chan's formula (RMS: sums x^2), then normalizes in a
second pass; the backward computes the two row coefficients first, then dx and the partial sums per column chunk.
"""
import torch
import triton
import triton.language as tl

from ._utils import CompileSpec, TL_DTYPE, next_pow2, num_parallel_programs, warps_for

MAX_FUSED_N = 8192  # longest row kept whole in registers
LOOP_BLOCK_N = 4096  # chunk of a row on the looped path


# --------------------------------------------------------------------------------------------- kernels
@triton.jit
def _fwd_fused_kernel(X, R, Y, H, W, B, Mean, Rstd, stride_xm, stride_rm, M, N, eps,
                      RMS: tl.constexpr, HAS_RES: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # int64: M may pass 2^31
    cols = tl.arange(0, BLOCK_N)
    rmask = rows < M
    mask = rmask[:, None] & (cols < N)[None, :]
    x = tl.load(X + rows[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        h = (x + tl.load(R + rows[:, None] * stride_rm + cols[None, :], mask=mask, other=0.0).to(tl.float32))
        h = h.to(H.dtype.element_ty)
        tl.store(H + rows[:, None] * N + cols[None, :], h, mask=mask)
        x = h.to(tl.float32)
    if RMS:
        xc = x
    else:
        mean = tl.sum(x, axis=1) / N
        xc = tl.where(mask, x - mean[:, None], 0.0)
        tl.store(Mean + rows, mean, mask=rmask)
    rstd = tl.rsqrt(tl.sum(xc * xc, axis=1) / N + eps)
    y = xc * rstd[:, None]
    if HAS_W:
        y = y * tl.load(W + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        y = y + tl.load(B + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + rows[:, None] * N + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(Rstd + rows, rstd, mask=rmask)


@triton.jit
def _fwd_looped_kernel(X, R, Y, H, W, B, Mean, Rstd, stride_xm, stride_rm, N, eps,
                       RMS: tl.constexpr, HAS_RES: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                       BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = X + row * stride_xm
    y_row = Y + row * N
    # Pass 1: merge each chunk's (count, mean, M2) into the running statistics (Chan et al.); RMS: sum x^2.
    # With a residual, h = x + r is written here and pass 2 reads it back.
    count = 0.0
    mean = 0.0
    m2 = 0.0
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        x = tl.load(x_row + cols, mask=cols < N, other=0.0).to(tl.float32)
        if HAS_RES:
            h = (x + tl.load(R + row * stride_rm + cols, mask=cols < N, other=0.0).to(tl.float32))
            h = h.to(H.dtype.element_ty)
            tl.store(H + row * N + cols, h, mask=cols < N)
            x = h.to(tl.float32)
        if RMS:
            m2 += tl.sum(x * x, axis=0)
        else:
            n_b = tl.minimum(N - start, BLOCK_N).to(tl.float32)
            mean_b = tl.sum(x, axis=0) / n_b
            d = tl.where(cols < N, x - mean_b, 0.0)
            delta = mean_b - mean
            total = count + n_b
            mean = mean + delta * (n_b / total)
            m2 = m2 + tl.sum(d * d, axis=0) + delta * delta * (count * n_b / total)
            count = total
    rstd = tl.rsqrt(m2 / N + eps)
    if not RMS:
        tl.store(Mean + row, mean)
    tl.store(Rstd + row, rstd)
    # Pass 2: normalize.
    if HAS_RES:
        src = H + row * N
    else:
        src = x_row
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        cmask = cols < N
        y = (tl.load(src + cols, mask=cmask, other=0.0).to(tl.float32) - mean) * rstd
        if HAS_W:
            y = y * tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
        if HAS_B:
            y = y + tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)
        tl.store(y_row + cols, y.to(Y.dtype.element_ty), mask=cmask)


@triton.jit
def _xhat(x, mean, rstd, mask, RMS: tl.constexpr):
    """(x - mean) * rstd (RMS: x * rstd) of a (rows, cols) tile, 0 outside it."""
    if RMS:
        xhat = tl.where(mask, x * rstd[:, None], 0.0)
    else:
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
    return xhat


@triton.jit
def _bwd_fused_kernel(X, DY, DH, DX, W, Mean, Rstd, DWp, DBp, stride_xm, stride_dym, stride_dhm, M, N, rows_per_prog,
                      RMS: tl.constexpr, HAS_DH: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)  # int64: pid * rows_per_prog may pass 2^31
    cols = tl.arange(0, BLOCK_N)
    cmask = cols < N
    if HAS_W:
        w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    else:
        w = tl.full([BLOCK_N], 1.0, tl.float32)
    dw_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    row_start = pid * rows_per_prog
    row_end = tl.minimum(row_start + rows_per_prog, M)
    for r0 in range(row_start, row_end, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        rmask = rows < row_end
        mask = rmask[:, None] & cmask[None, :]
        x = tl.load(X + rows[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows[:, None] * stride_dym + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(Rstd + rows, mask=rmask, other=0.0)
        if RMS:
            xhat = _xhat(x, rstd, rstd, mask, RMS)  # (mean unused)
        else:
            xhat = _xhat(x, tl.load(Mean + rows, mask=rmask, other=0.0), rstd, mask, RMS)
        g = dy * w[None, :]
        c1 = tl.sum(g * xhat, axis=1) / N
        if RMS:
            dx = (g - xhat * c1[:, None]) * rstd[:, None]
        else:
            dx = (g - (tl.sum(g, axis=1) / N)[:, None] - xhat * c1[:, None]) * rstd[:, None]
        if HAS_DH:
            dx += tl.load(DH + rows[:, None] * stride_dhm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + rows[:, None] * N + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        dw_acc += tl.sum(dy * xhat, axis=0)
        db_acc += tl.sum(dy, axis=0)
    if HAS_W:
        tl.store(DWp + pid * N + cols, dw_acc, mask=cmask)
    if HAS_B:
        tl.store(DBp + pid * N + cols, db_acc, mask=cmask)


@triton.jit
def _bwd_row_coef_kernel(X, DY, W, Mean, Rstd, C1, C2, stride_xm, stride_dym, N,
                         RMS: tl.constexpr, HAS_W: tl.constexpr, BLOCK_N: tl.constexpr):
    """Looped path, step 1: c1 = mean(g * xhat), c2 = mean(g) (RMS: not needed) of one long row."""
    row = tl.program_id(0).to(tl.int64)
    if RMS:
        mean = 0.0
    else:
        mean = tl.load(Mean + row)
    rstd = tl.load(Rstd + row)
    s1 = tl.zeros([BLOCK_N], dtype=tl.float32)
    s2 = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        cmask = cols < N
        x = tl.load(X + row * stride_xm + cols, mask=cmask, other=0.0).to(tl.float32)
        g = tl.load(DY + row * stride_dym + cols, mask=cmask, other=0.0).to(tl.float32)
        if HAS_W:
            g = g * tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
        s1 += g * tl.where(cmask, (x - mean) * rstd, 0.0)
        s2 += g
    tl.store(C1 + row, tl.sum(s1, axis=0) / N)
    if not RMS:
        tl.store(C2 + row, tl.sum(s2, axis=0) / N)


@triton.jit
def _bwd_looped_kernel(X, DY, DH, DX, W, Mean, Rstd, C1, C2, DWp, DBp, stride_xm, stride_dym, stride_dhm, M, N,
                       rows_per_prog, RMS: tl.constexpr, HAS_DH: tl.constexpr, HAS_W: tl.constexpr,
                       HAS_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Looped path, step 2: dx for one column chunk of a group of rows, and their partial dW/dB."""
    pid_n = tl.program_id(0)
    pid_g = tl.program_id(1).to(tl.int64)  # int64: pid_g * rows_per_prog and pid_g * N may pass 2^31
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < N
    if HAS_W:
        w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    else:
        w = tl.full([BLOCK_N], 1.0, tl.float32)
    dw_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    row_start = pid_g * rows_per_prog
    row_end = tl.minimum(row_start + rows_per_prog, M)
    for r0 in range(row_start, row_end, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        rmask = rows < row_end
        mask = rmask[:, None] & cmask[None, :]
        x = tl.load(X + rows[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows[:, None] * stride_dym + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(Rstd + rows, mask=rmask, other=0.0)
        c1 = tl.load(C1 + rows, mask=rmask, other=0.0)
        if RMS:
            xhat = _xhat(x, rstd, rstd, mask, RMS)
            dx = (dy * w[None, :] - xhat * c1[:, None]) * rstd[:, None]
        else:
            mean = tl.load(Mean + rows, mask=rmask, other=0.0)
            c2 = tl.load(C2 + rows, mask=rmask, other=0.0)
            xhat = _xhat(x, mean, rstd, mask, RMS)
            dx = (dy * w[None, :] - c2[:, None] - xhat * c1[:, None]) * rstd[:, None]
        if HAS_DH:
            dx += tl.load(DH + rows[:, None] * stride_dhm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + rows[:, None] * N + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        dw_acc += tl.sum(dy * xhat, axis=0)
        db_acc += tl.sum(dy, axis=0)
    if HAS_W:
        tl.store(DWp + pid_g * N + cols, dw_acc, mask=cmask)
    if HAS_B:
        tl.store(DBp + pid_g * N + cols, db_acc, mask=cmask)


@triton.jit
def _sum_partials_kernel(P, Out, G, N, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr):
    """Out[n] = sum over g of P[g, n], in a fixed order (deterministic)."""
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for g0 in range(0, G, BLOCK_G):
        g = g0 + tl.arange(0, BLOCK_G)
        mask = (g < G)[:, None] & (cols < N)[None, :]
        acc += tl.sum(tl.load(P + g[:, None] * N + cols[None, :], mask=mask, other=0.0), axis=0)
    tl.store(Out + cols, acc.to(Out.dtype.element_ty), mask=cols < N)


# --------------------------------------------------------------------------------------------- configs
def fwd_config(n: int) -> dict:
    if n > MAX_FUSED_N:
        return dict(looped=True, BLOCK_N=LOOP_BLOCK_N, num_warps=warps_for(LOOP_BLOCK_N, 8))
    block_n = next_pow2(n)
    block_m = max(1, min(64, 2048 // block_n))  # several short rows per program
    # The widest fused row takes 32 warps (8 elements a thread): at 16 warps an 8192-wide fp32 row left an 8-byte
    # stack frame on sm_80 under triton 3.6.
    per_thread = 8 if block_n == MAX_FUSED_N else 16
    return dict(looped=False, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps_for(block_m * block_n, per_thread, 32))


def bwd_config(n: int) -> dict:
    if n > MAX_FUSED_N:
        return dict(looped=True, BLOCK_M=1, BLOCK_N=LOOP_BLOCK_N, num_warps=8)
    block_n = next_pow2(n)
    block_m = max(1, min(32, 1024 // block_n))
    return dict(looped=False, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps_for(block_m * block_n, 8))


SUM_BLOCK_G, SUM_BLOCK_N = 32, 128


# --------------------------------------------------------------------------------------------- launchers
def layer_norm_fwd(x: torch.Tensor, weight, bias, eps: float):
    """x: (M, N) with unit column stride. Returns y (M, N) contiguous in x.dtype, mean and rstd (M,) fp32."""
    y, _h, mean, rstd = _norm_fwd(x, weight, bias, eps, rms=False, residual=None)
    return y, mean, rstd


def rms_norm_fwd(x: torch.Tensor, weight, eps: float, residual=None):
    """x (and residual, if given): (M, N) with unit column stride. Returns y (M, N) = rms_norm(h) with h = x or
    x + residual, h (M, N) (None without residual) in x.dtype, contiguous, and rstd (M,) fp32."""
    y, h, _mean, rstd = _norm_fwd(x, weight, None, eps, rms=True, residual=residual)
    return y, h, rstd


def _norm_fwd(x, weight, bias, eps, rms: bool, residual):
    M, N = x.shape
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    h = torch.empty((M, N), dtype=x.dtype, device=x.device) if residual is not None else None
    mean = torch.empty(M if not rms else 0, dtype=torch.float32, device=x.device)
    rstd = torch.empty(M, dtype=torch.float32, device=x.device)
    w = weight if weight is not None else rstd  # placeholder pointers, never read
    b = bias if bias is not None else rstd
    r, hh = (residual, h) if residual is not None else (x, y)
    cfg = fwd_config(N)
    common = dict(RMS=rms, HAS_RES=residual is not None, HAS_W=weight is not None, HAS_B=bias is not None,
                  BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"])
    args = (x, r, y, hh, w, b, mean if not rms else rstd, rstd, x.stride(0), r.stride(0))
    if cfg["looped"]:
        _fwd_looped_kernel[(M,)](*args, N, eps, **common)
    else:
        grid = (triton.cdiv(M, cfg["BLOCK_M"]),)
        _fwd_fused_kernel[grid](*args, M, N, eps, BLOCK_M=cfg["BLOCK_M"], **common)
    return y, h, mean, rstd


def layer_norm_bwd(dy: torch.Tensor, x: torch.Tensor, weight, bias, mean, rstd):
    """dy, x: (M, N) with unit column stride; bias is only looked at for its presence and dtype.
    Returns dx (M, N) in x.dtype, and dw, db (N,) in the weight's / bias's dtype (None where absent)."""
    return _norm_bwd(dy, x, weight, bias, mean, rstd, rms=False, dh=None)


def rms_norm_bwd(dy: torch.Tensor, x: torch.Tensor, weight, rstd, dh=None):
    """dy, x (the normalised rows: h for add_rms_norm), dh (the gradient reaching h directly, or None): (M, N) with
    unit column stride. Returns dx (M, N) in x.dtype (plus dh when given) and dw (N,) in the weight's dtype (None
    without weight)."""
    dx, dw, _db = _norm_bwd(dy, x, weight, None, rstd, rstd, rms=True, dh=dh)
    return dx, dw


def _norm_bwd(dy, x, weight, bias, mean, rstd, rms: bool, dh):
    M, N = x.shape
    dx = torch.empty((M, N), dtype=x.dtype, device=x.device)
    cfg = bwd_config(N)
    block_m = cfg["BLOCK_M"]
    programs = max(1, min(num_parallel_programs(x.device), triton.cdiv(M, block_m)))
    rows_per_prog = triton.cdiv(triton.cdiv(M, programs), block_m) * block_m
    programs = triton.cdiv(M, rows_per_prog)
    has_w, has_bias = weight is not None, bias is not None
    dwp = torch.empty((programs, N), dtype=torch.float32, device=x.device) if has_w else rstd
    dbp = torch.empty((programs, N), dtype=torch.float32, device=x.device) if has_bias else rstd
    w = weight if has_w else rstd
    dh_arg = dh if dh is not None else dy
    common = dict(RMS=rms, HAS_DH=dh is not None, HAS_W=has_w, HAS_B=has_bias, BLOCK_M=block_m,
                  BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"])
    strides = (x.stride(0), dy.stride(0), dh_arg.stride(0))
    if cfg["looped"]:
        c1 = torch.empty(M, dtype=torch.float32, device=x.device)
        c2 = torch.empty(M if not rms else 0, dtype=torch.float32, device=x.device)
        c2_arg = c2 if not rms else c1
        _bwd_row_coef_kernel[(M,)](x, dy, w, mean, rstd, c1, c2_arg, x.stride(0), dy.stride(0), N,
                                   RMS=rms, HAS_W=has_w, BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"])
        grid = (triton.cdiv(N, cfg["BLOCK_N"]), programs)
        _bwd_looped_kernel[grid](x, dy, dh_arg, dx, w, mean, rstd, c1, c2_arg, dwp, dbp, *strides,
                                 M, N, rows_per_prog, **common)
    else:
        _bwd_fused_kernel[(programs,)](x, dy, dh_arg, dx, w, mean, rstd, dwp, dbp, *strides,
                                       M, N, rows_per_prog, **common)
    dw = _sum_partials(dwp, weight.dtype) if has_w else None
    db = _sum_partials(dbp, bias.dtype) if has_bias else None
    return dx, dw, db


def _sum_partials(partials: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    G, N = partials.shape
    out = torch.empty(N, dtype=dtype, device=partials.device)
    _sum_partials_kernel[(triton.cdiv(N, SUM_BLOCK_N),)](partials, out, G, N, BLOCK_G=SUM_BLOCK_G,
                                                          BLOCK_N=SUM_BLOCK_N, num_warps=4)
    return out


# --------------------------------------------------------------------------------------------- static compile
def compile_specs(sizes=(1, 33, 768, 1000, 4096, 8192, 16384, 65536)):
    """Every kernel at the configs the launchers pick for these row sizes, per dtype: LayerNorm (weight and bias)
    and RMSNorm with the residual add (forward) / the residual's gradient (backward), the most live values."""
    specs = {}

    def add(fn, sig, consts, num_warps, tag):
        key = (fn.__name__, tuple(sig.values()), tuple(sorted(consts.items())), num_warps)
        specs.setdefault(key, CompileSpec(f"{fn.__name__}[{tag}]", fn, sig, consts, num_warps))

    for torch_dtype, t in TL_DTYPE.items():
        p, f32 = f"*{t}", "*fp32"
        for n in sizes:
            for rms in (False, True):
                tag = f"{t},N={n}" + (",rms,residual" if rms else "")
                fc = fwd_config(n)
                fwd_flags = dict(RMS=rms, HAS_RES=rms, HAS_W=True, HAS_B=not rms)
                fwd_sig = dict(X=p, R=p, Y=p, H=p, W=p, B=p, Mean=f32, Rstd=f32, stride_xm="i32", stride_rm="i32")
                if fc["looped"]:
                    add(_fwd_looped_kernel, {**fwd_sig, "N": "i32", "eps": "fp32"},
                        dict(fwd_flags, BLOCK_N=fc["BLOCK_N"]), fc["num_warps"], tag)
                else:
                    add(_fwd_fused_kernel, {**fwd_sig, "M": "i32", "N": "i32", "eps": "fp32"},
                        dict(fwd_flags, BLOCK_M=fc["BLOCK_M"], BLOCK_N=fc["BLOCK_N"]), fc["num_warps"], tag)
                bc = bwd_config(n)
                consts = dict(RMS=rms, HAS_DH=rms, HAS_W=True, HAS_B=not rms, BLOCK_M=bc["BLOCK_M"],
                              BLOCK_N=bc["BLOCK_N"])
                strides = dict(stride_xm="i32", stride_dym="i32", stride_dhm="i32")
                if bc["looped"]:
                    add(_bwd_row_coef_kernel, dict(X=p, DY=p, W=p, Mean=f32, Rstd=f32, C1=f32, C2=f32,
                                                   stride_xm="i32", stride_dym="i32", N="i32"),
                        dict(RMS=rms, HAS_W=True, BLOCK_N=bc["BLOCK_N"]), bc["num_warps"], tag)
                    add(_bwd_looped_kernel, dict(X=p, DY=p, DH=p, DX=p, W=p, Mean=f32, Rstd=f32, C1=f32, C2=f32,
                                                 DWp=f32, DBp=f32, **strides, M="i32", N="i32",
                                                 rows_per_prog="i32"), consts, bc["num_warps"], tag)
                else:
                    add(_bwd_fused_kernel, dict(X=p, DY=p, DH=p, DX=p, W=p, Mean=f32, Rstd=f32, DWp=f32, DBp=f32,
                                                **strides, M="i32", N="i32", rows_per_prog="i32"),
                        consts, bc["num_warps"], tag)
        add(_sum_partials_kernel, dict(P="*fp32", Out=f"*{t}", G="i32", N="i32"),
            dict(BLOCK_G=SUM_BLOCK_G, BLOCK_N=SUM_BLOCK_N), 4, t)
    return list(specs.values())
