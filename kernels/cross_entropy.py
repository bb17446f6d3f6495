"""Cross-entropy over the rows of (N, C) logits in Triton: loss and log-sum-exp forward, dlogits backward.

Per row i, with target t = t_i, eps = label_smoothing and z = softcap * tanh(x / softcap) (softcap 0: z = x, Gemma 2's
final_logit_softcapping otherwise), all in fp32:
    lse    = log sum_j exp(z_j)                       one pass over the row, online (below)
    loss   = (1 - eps) (lse - z_t) + eps (lse - mean_j z_j)      0 where t == ignore_index
Backward, given g_i = d(total loss) / d(loss_i) (already holding any 1 / count of a "mean"):
    dz_j   = g_i (exp(z_j - lse) - (1 - eps) [j == t] - eps / C)
    dx_j   = dz_j * (1 - tanh^2(x_j / softcap))        (softcap on; = 4 e / (1 + e)^2 with e = exp(-2|x| / softcap))
and 0 on ignored rows. d(mean_j z_j)/dz_j = 1 / C gives the eps / C term; d lse / dz_j = softmax_j.

One program per row; the row is walked in BLOCK_C chunks (any C: vocabularies of 256k and more), the forward keeping a
running max and a rescaled running sum per lane,  m' = max(m, z),  s' = s exp(m - m') + exp(z - m'),  folded into the
row's (m, s) at the end: the logits are read once. The backward reads each chunk, then writes dx over it: `dx` may be
the logits' own buffer (in place), since every element is read before the same program writes it.

Indexing: the row (program id) is widened to int64 before it meets the row stride, so N * C past 2^31 elements is
safe; the target is an int64 load; columns (< C <= 2^31 - 1) stay int32.
-inf logits (a masked vocabulary) follow torch: they get probability 0; a lane that has seen only -inf rescales
against 0 rather than its -inf max, so it carries 0 instead of NaN.
Targets: the host (bigmodel.ops) checks that every non-ignored target is in [0, C); a target outside it that reaches
the kernels anyway (a compiled graph skips the check) reads nothing out of bounds and gives a NaN loss and gradient row.
"""
import torch
import triton
import triton.language as tl

from ._utils import CompileSpec, TL_DTYPE, next_pow2

MAX_BLOCK_C = 4096  # chunk of a row per loop step (a row of at most this is one step)
NUM_WARPS = 8  # 16 elements per thread per chunk at MAX_BLOCK_C


@triton.jit
def _tanh(u):
    """tanh(u) = sign(u) (1 - e) / (1 + e), e = exp(-2|u|) <= 1 (no overflow); libdevice's tanh does not run under the
    interpreter."""
    e = tl.exp(-2.0 * tl.abs(u))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(u < 0, -t, t)


@triton.jit
def _fwd_kernel(X, T, LOSS, LSE, stride_x, C, ignore_index, eps, softcap,
                BLOCK_C: tl.constexpr, SOFTCAP: tl.constexpr, SMOOTH: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # int64 before any arithmetic: row * stride_x may pass 2^31
    x_row = X + row * stride_x
    m_lane = tl.full([BLOCK_C], float("-inf"), tl.float32)
    s_lane = tl.zeros([BLOCK_C], dtype=tl.float32)
    z_lane = tl.zeros([BLOCK_C], dtype=tl.float32)  # sum of z (label smoothing's mean_j z_j)
    for start in range(0, C, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        cmask = cols < C
        z = tl.load(x_row + cols, mask=cmask, other=float("-inf")).to(tl.float32)
        if SOFTCAP:
            z = tl.where(cmask, softcap * _tanh(z / softcap), float("-inf"))
        if SMOOTH:
            z_lane += tl.where(cmask, z, 0.0)
        m_new = tl.maximum(m_lane, z)
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # only -inf seen so far: keep the sum 0, not NaN
        s_lane = s_lane * tl.exp(m_lane - m_ref) + tl.exp(z - m_ref)
        m_lane = m_new
    m = tl.max(m_lane, axis=0)
    m_ref = tl.where(m == float("-inf"), 0.0, m)
    lse = m_ref + tl.log(tl.sum(s_lane * tl.exp(m_lane - m_ref), axis=0))  # -inf on an all -inf row
    t = tl.load(T + row)
    valid = t != ignore_index
    inside = (t >= 0) & (t < C)  # the host checks this; a target it could not check (compiled) gives NaN, no fault
    zt = tl.load(x_row + t, mask=valid & inside, other=0.0).to(tl.float32)  # t: int64
    if SOFTCAP:
        zt = softcap * _tanh(zt / softcap)
    loss = lse - zt
    if SMOOTH:
        loss = (1.0 - eps) * loss + eps * (lse - tl.sum(z_lane, axis=0) / C)
    tl.store(LOSS + row, tl.where(valid, tl.where(inside, loss, float("nan")), 0.0))
    tl.store(LSE + row, lse)


@triton.jit
def _bwd_kernel(G, X, T, LSE, DX, stride_x, stride_dx, C, ignore_index, eps, softcap,
                BLOCK_C: tl.constexpr, SOFTCAP: tl.constexpr, SMOOTH: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = X + row * stride_x
    dx_row = DX + row * stride_dx
    t = tl.load(T + row)
    valid = t != ignore_index
    g = tl.where(valid, tl.load(G + row), 0.0)
    g = tl.where((t >= 0) & (t < C) | ~valid, g, float("nan"))  # a target outside [0, C): NaN, as the forward's loss
    lse = tl.load(LSE + row)
    hit = (1.0 - eps) if SMOOTH else 1.0
    for start in range(0, C, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        cmask = cols < C
        x = tl.load(x_row + cols, mask=cmask, other=0.0).to(tl.float32)
        if SOFTCAP:
            e = tl.exp(-2.0 * tl.abs(x / softcap))
            z = (1.0 - e) / (1.0 + e)
            z = softcap * tl.where(x < 0, -z, z)
        else:
            z = x
        d = tl.exp(z - lse)
        if SMOOTH:
            d = d - eps / C
        d = tl.where(cols == t, d - hit, d)
        d = tl.where(valid, d * g, 0.0)  # ignored rows: exactly 0 (also where lse is not finite)
        if SOFTCAP:
            d = d * (4.0 * e / ((1.0 + e) * (1.0 + e)))  # 1 - tanh^2(x / softcap), without the cancellation
        tl.store(dx_row + cols, d.to(DX.dtype.element_ty), mask=cmask)


# --------------------------------------------------------------------------------------------- launchers
def block_c(c: int) -> int:
    return min(MAX_BLOCK_C, next_pow2(c))


def _warps(c: int) -> int:
    return max(1, min(NUM_WARPS, block_c(c) // 512))  # ~16 elements per thread; short rows need few warps


def _check(logits, target):
    assert logits.dim() == 2 and (logits.stride(1) == 1 or logits.size(1) <= 1), \
        "cross_entropy expects logits (N, C) with unit column stride"
    assert target.dim() == 1 and target.size(0) == logits.size(0) and target.dtype == torch.int64 \
        and target.is_contiguous(), "cross_entropy expects target (N,) int64 contiguous"


def cross_entropy_fwd(logits, target, ignore_index: int, label_smoothing: float, softcap: float):
    """logits (N, C), unit column stride, fp32 / fp16 / bf16; target (N,) int64 contiguous, every non-ignored entry in
    [0, C) (the caller checks). Returns (loss, lse), each (N,) fp32; loss is 0 on ignored rows."""
    _check(logits, target)
    n, c = logits.shape
    loss = torch.empty(n, dtype=torch.float32, device=logits.device)
    lse = torch.empty(n, dtype=torch.float32, device=logits.device)
    if n == 0:
        return loss, lse
    _fwd_kernel[(n,)](logits, target, loss, lse, logits.stride(0), c, int(ignore_index), float(label_smoothing),
                      float(softcap), BLOCK_C=block_c(c), SOFTCAP=bool(softcap), SMOOTH=bool(label_smoothing),
                      num_warps=_warps(c))
    return loss, lse


def cross_entropy_bwd(grad_loss, logits, target, lse, ignore_index: int, label_smoothing: float, softcap: float, out):
    """grad_loss (N,) fp32, lse (N,) fp32 from the forward; writes dlogits into `out` ((N, C), logits' dtype, unit
    column stride; may be `logits` itself) and returns it."""
    _check(logits, target)
    assert out.shape == logits.shape and out.dtype == logits.dtype and (out.stride(1) == 1 or out.size(1) <= 1), \
        "cross_entropy_bwd expects out of logits' shape and dtype with unit column stride"
    assert grad_loss.dtype == torch.float32 and lse.dtype == torch.float32, "grad_loss and lse must be fp32"
    n, c = logits.shape
    if n == 0 or c == 0:
        return out
    _bwd_kernel[(n,)](grad_loss.contiguous(), logits, target, lse.contiguous(), out, logits.stride(0), out.stride(0),
                      c, int(ignore_index), float(label_smoothing), float(softcap), BLOCK_C=block_c(c),
                      SOFTCAP=bool(softcap), SMOOTH=bool(label_smoothing), num_warps=_warps(c))
    return out


# --------------------------------------------------------------------------------------------- static compile
def compile_specs(sizes=(37, 1000, 32000, 128256, 262144)):
    """Both kernels at the block / warps the launchers pick for these vocabularies (three distinct configs: 64 x 1
    warp, 1024 x 2 warps, 4096 x 8 warps), per dtype, plain and with both softcap and smoothing on (every branch:
    the heaviest register use; the one-flag kernels lie in between)."""
    specs = {}
    common = dict(C="i32", ignore_index="i32", eps="fp32", softcap="fp32")
    for t in TL_DTYPE.values():
        p = f"*{t}"
        sigs = ((_fwd_kernel, dict(X=p, T="*i64", LOSS="*fp32", LSE="*fp32", stride_x="i32", **common)),
                (_bwd_kernel, dict(G="*fp32", X=p, T="*i64", LSE="*fp32", DX=p, stride_x="i32", stride_dx="i32",
                                   **common)))
        for c in sizes:
            for flag in (False, True):
                consts = dict(BLOCK_C=block_c(c), SOFTCAP=flag, SMOOTH=flag)
                for fn, sig in sigs:
                    key = (fn.__name__, t, tuple(sorted(consts.items())), _warps(c))
                    specs.setdefault(key, CompileSpec(f"{fn.__name__}[{t},C={c},softcap=smooth={int(flag)}]", fn, sig,
                                                      consts, _warps(c)))
    return list(specs.values())
