"""Rotary position embeddings in Triton: forward and backward, Hugging Face's rotate_half layout or GPT-J's
interleaved pairs, partial rotary (the first R = cos.size(-1) features rotate, the rest pass through).

x is (B, H, L, D) with any strides (unit last stride); cos / sin (B', H', L, R) broadcast to (B, H, L, R) through
their strides (stride 0 on broadcast dims: Hugging Face's (B, 1, L, R) costs one read per (b, l), not per head).
Math in fp32, with x1 / x2 the two halves of each rotated pair (rotate_half: x[:R/2] / x[R/2:]; interleaved:
x[0::2] / x[1::2]) and c1, c2, s1, s2 the matching halves of cos and sin:
    forward   y1 = x1 c1 - x2 s1,    y2 = x2 c2 + x1 s2          (= x cos + rotate_half(x) sin)
    backward  dx1 = dy1 c1 + dy2 s2,  dx2 = dy2 c2 - dy1 s1      (the transpose: rotation by -theta when c1 = c2,
                                                                  s1 = s2, as Hugging Face's tables are)
Features past R are copied (forward) / passed back (backward) unchanged. One program per block of rows (b, h, l
flattened) and all of a row's pairs; grids stay 1-D. The q + k variant (Hugging Face's apply_rotary_pos_emb) runs
q's row blocks and then k's in one grid: one launch instead of two.
"""
import torch
import triton
import triton.language as tl

from ._utils import TL_DTYPE, CompileSpec, next_pow2

BLOCK_ROWS = 16


@triton.jit
def _rotate_rows(X, C, S, Y, blk, rows, H, L, D, R, sxb, sxh, sxl, scb, sch, scl, ssb, ssh, ssl,
                 INTERLEAVED: tl.constexpr, BACKWARD: tl.constexpr, BLOCK_ROWS: tl.constexpr,
                 BLOCK_HALF: tl.constexpr, BLOCK_PASS: tl.constexpr):
    """Rows blk * BLOCK_ROWS ... of x (B, H, L, D) into the contiguous y."""
    r = blk.to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    r_ok = r < rows
    l = r % L
    h = (r // L) % H
    b = r // (L * H)
    x_row = b * sxb + h * sxh + l * sxl
    c_row = b * scb + h * sch + l * scl
    s_row = b * ssb + h * ssh + l * ssl
    y_row = r * D  # y is contiguous (B, H, L, D)
    j = tl.arange(0, BLOCK_HALF)
    half = R // 2
    m = r_ok[:, None] & (j < half)[None, :]
    if INTERLEAVED:
        i1, i2 = 2 * j, 2 * j + 1
    else:
        i1, i2 = j, j + half
    x1 = tl.load(X + x_row[:, None] + i1[None, :], mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(X + x_row[:, None] + i2[None, :], mask=m, other=0.0).to(tl.float32)
    c1 = tl.load(C + c_row[:, None] + i1[None, :], mask=m, other=0.0).to(tl.float32)
    c2 = tl.load(C + c_row[:, None] + i2[None, :], mask=m, other=0.0).to(tl.float32)
    s1 = tl.load(S + s_row[:, None] + i1[None, :], mask=m, other=0.0).to(tl.float32)
    s2 = tl.load(S + s_row[:, None] + i2[None, :], mask=m, other=0.0).to(tl.float32)
    if BACKWARD:
        y1 = x1 * c1 + x2 * s2
        y2 = x2 * c2 - x1 * s1
    else:
        y1 = x1 * c1 - x2 * s1
        y2 = x2 * c2 + x1 * s2
    tl.store(Y + y_row[:, None] + i1[None, :], y1.to(Y.dtype.element_ty), mask=m)
    tl.store(Y + y_row[:, None] + i2[None, :], y2.to(Y.dtype.element_ty), mask=m)
    if BLOCK_PASS > 0:  # features R .. D-1 pass through
        p = R + tl.arange(0, BLOCK_PASS)
        pm = r_ok[:, None] & (p < D)[None, :]
        tl.store(Y + y_row[:, None] + p[None, :], tl.load(X + x_row[:, None] + p[None, :], mask=pm), mask=pm)


@triton.jit
def _rotary_kernel(X, C, S, Y, rows, H, L, D, R,
                   sxb, sxh, sxl, scb, sch, scl, ssb, ssh, ssl,
                   INTERLEAVED: tl.constexpr, BACKWARD: tl.constexpr, BLOCK_ROWS: tl.constexpr,
                   BLOCK_HALF: tl.constexpr, BLOCK_PASS: tl.constexpr):
    _rotate_rows(X, C, S, Y, tl.program_id(0), rows, H, L, D, R, sxb, sxh, sxl, scb, sch, scl, ssb, ssh, ssl,
                 INTERLEAVED, BACKWARD, BLOCK_ROWS, BLOCK_HALF, BLOCK_PASS)


@triton.jit
def _rotary_qk_kernel(Q, K, CQ, SQ, CK, SK, YQ, YK, rows_q, rows_k, HQ, HK, LQ, LK, D, R,
                      sqb, sqh, sql, skb, skh, skl, cqb, cqh, cql, sqtb, sqth, sqtl, ckb, ckh, ckl, sktb, skth, sktl,
                      INTERLEAVED: tl.constexpr, BACKWARD: tl.constexpr, BLOCK_ROWS: tl.constexpr,
                      BLOCK_HALF: tl.constexpr, BLOCK_PASS: tl.constexpr):
    """q's row blocks, then k's, in one grid: one launch for both (each with its own view of the tables)."""
    pid = tl.program_id(0)
    q_blocks = tl.cdiv(rows_q, BLOCK_ROWS)
    if pid < q_blocks:
        _rotate_rows(Q, CQ, SQ, YQ, pid, rows_q, HQ, LQ, D, R, sqb, sqh, sql, cqb, cqh, cql, sqtb, sqth, sqtl,
                     INTERLEAVED, BACKWARD, BLOCK_ROWS, BLOCK_HALF, BLOCK_PASS)
    else:
        _rotate_rows(K, CK, SK, YK, pid - q_blocks, rows_k, HK, LK, D, R, skb, skh, skl, ckb, ckh, ckl,
                     sktb, skth, sktl, INTERLEAVED, BACKWARD, BLOCK_ROWS, BLOCK_HALF, BLOCK_PASS)


def _blocks(D, R):
    return dict(BLOCK_ROWS=BLOCK_ROWS, BLOCK_HALF=next_pow2(max(R // 2, 1)),
                BLOCK_PASS=next_pow2(D - R) if D > R else 0)


def _launch(x, cos, sin, interleaved: bool, backward: bool):
    """x (B, H, L, D) with unit last stride; cos / sin expanded to (B, H, L, R) views. Returns a contiguous y."""
    B, H, L, D = x.shape
    R = cos.shape[-1]
    y = torch.empty((B, H, L, D), dtype=x.dtype, device=x.device)
    rows = B * H * L
    if rows == 0:
        return y
    grid = (triton.cdiv(rows, BLOCK_ROWS),)
    _rotary_kernel[grid](x, cos, sin, y, rows, H, L, D, R, *x.stride()[:3], *cos.stride()[:3], *sin.stride()[:3],
                         INTERLEAVED=interleaved, BACKWARD=backward, **_blocks(D, R), num_warps=4)
    return y


def _launch_qk(q, k, cq, sq, ck, sk, interleaved: bool, backward: bool):
    """q (B, Hq, Lq, D), k (B', Hk, Lk, D) with unit last strides; cq / sq, ck / sk: the tables expanded to q's /
    k's (.., R) views. Returns contiguous (yq, yk) from one launch."""
    D, R = q.shape[-1], cq.shape[-1]
    yq, yk = torch.empty(q.shape, dtype=q.dtype, device=q.device), torch.empty(k.shape, dtype=k.dtype, device=k.device)
    rows_q, rows_k = q.numel() // D, k.numel() // D
    if rows_q + rows_k == 0:
        return yq, yk
    grid = (triton.cdiv(rows_q, BLOCK_ROWS) + triton.cdiv(rows_k, BLOCK_ROWS),)
    _rotary_qk_kernel[grid](q, k, cq, sq, ck, sk, yq, yk, rows_q, rows_k, q.shape[1], k.shape[1], q.shape[2],
                            k.shape[2], D, R, *q.stride()[:3], *k.stride()[:3], *cq.stride()[:3], *sq.stride()[:3],
                            *ck.stride()[:3], *sk.stride()[:3], INTERLEAVED=interleaved, BACKWARD=backward,
                            **_blocks(D, R), num_warps=4)
    return yq, yk


def rotary_fwd(x, cos, sin, interleaved: bool):
    return _launch(x, cos, sin, interleaved, backward=False)


def rotary_bwd(dy, cos, sin, interleaved: bool):
    return _launch(dy, cos, sin, interleaved, backward=True)


def rotary_qk_fwd(q, k, cq, sq, ck, sk, interleaved: bool):
    return _launch_qk(q, k, cq, sq, ck, sk, interleaved, backward=False)


def rotary_qk_bwd(dq, dk, cq, sq, ck, sk, interleaved: bool):
    return _launch_qk(dq, dk, cq, sq, ck, sk, interleaved, backward=True)


def compile_specs():
    """The kernel, forward and backward, both layouts, at head dims 64 / 128 full and 80 with rotary dim 32."""
    specs = []
    for t in TL_DTYPE.values():
        p = f"*{t}"
        sig = dict(X=p, C=p, S=p, Y=p, rows="i32", H="i32", L="i32", D="i32", R="i32",
                   **{f"s{a}{b}": "i32" for a in "xcs" for b in "bhl"})
        qk_sig = dict(Q=p, K=p, CQ=p, SQ=p, CK=p, SK=p, YQ=p, YK=p,
                      **{n: "i32" for n in ("rows_q", "rows_k", "HQ", "HK", "LQ", "LK", "D", "R")},
                      **{f"{a}{b}": "i32" for a in ("sq", "sk", "cq", "sqt", "ck", "skt") for b in "bhl"})
        for d, r in ((64, 64), (128, 128), (80, 32)):
            for interleaved in (False, True):
                for backward in (False, True):
                    consts = dict(INTERLEAVED=interleaved, BACKWARD=backward, **_blocks(d, r))
                    tag = f"{t},D={d},R={r}" + (",interleaved" if interleaved else "") + (",bwd" if backward else "")
                    specs.append(CompileSpec(f"_rotary_kernel[{tag}]", _rotary_kernel, sig, consts, 4))
                    specs.append(CompileSpec(f"_rotary_qk_kernel[{tag}]", _rotary_qk_kernel, qk_sig, consts, 4))
    return specs
