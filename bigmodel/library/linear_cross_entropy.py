"""bigmodel::linear_cross_entropy and bigmodel::linear_cross_entropy_backward: the fused linear + cross-entropy loss
that never holds all (N, V) logits at once (Liger-Kernel's FusedLinearCrossEntropy algorithm).

The forward walks the N rows in chunks of `chunk` rows (bigmodel.ops.linear_cross_entropy picks it, see
`chunk_rows` there). Per chunk:
  logits_c = x_c W^T (+ b)                    torch.mm / addmm in the input dtype (fp32 accumulation in the GEMM)
  loss_c, lse_c = cross_entropy_fwd(logits_c)  per-row loss and log-sum-exp in fp32
and, when a gradient is wanted and the reduction is "mean" or "sum" (the gradient of each row is then known at
forward time up to the scalar grad_output):
  dlogits_c = cross_entropy_bwd(scale, logits_c, ..., out=logits_c)   in place over the chunk's logits
  dx_c = dlogits_c W;  dW += dlogits_c^T x_c;  db += rowsum(dlogits_c)
dW and db accumulate in fp32 (fp64 for fp64 inputs) buffers, chunk by chunk in row order: a fixed order, so the
result is bitwise identical run to run. scale is 1 / (number of non-ignored targets) for "mean" (computed from
`target` as a tensor: no host sync) and 1 for "sum". The autograd backward only multiplies the stored dx / dW / db by
grad_output (a scalar). dW and db are rounded to the weight's dtype when the forward ends (the fp32 buffer is freed
then); the backward's grad_output scale rounds once more, which is exact for the usual grad_output = 1.

For reduction "none" each row's gradient weight (grad_loss_i) is unknown until the backward, so the forward computes
the losses only and the backward op (linear_cross_entropy_backward) walks the chunks again: the logits are recomputed,
one GEMM more than the "mean" / "sum" path.

16-bit dW accumulation: on CUDA, torch.mm(..., out_dtype=torch.float32) (aten::mm.dtype, present in torch 2.11 and
2.14, with a CUDA kernel only) gives the fp32 product of bf16 / fp16 operands on the tensor cores, added into the
fp32 buffer; V is split into blocks so each product's fp32 temporary is at most DW_BLOCK_BYTES (256 MiB). On the CPU
(no aten::mm.dtype kernel there in 2.11-2.14) the chunk's dlogits and x are upcast to fp32 and multiplied in fp32
(an fp32 chunk x V temporary). addmm's out_dtype variant (aten::addmm.dtype_out) is not used: PyTorch's CUDA
implementation of it checks that `self` has the operands' dtype in some versions, so it cannot accumulate into an
fp32 buffer portably. The CUDA branch has not run on a GPU yet (no device in this session); the tests run its
blocking on the CPU with an upcasting stand-in for aten::mm.dtype.
Memory at a large d: the fp32 (V, d) accumulator (2 GiB at V = 128k, d = 4096) and, at the forward's end, its
rounded copy in the weight's dtype are the largest terms after the chunk's logits.

The per-chunk cross-entropy math comes from the backend's `cross_entropy_fwd` / `cross_entropy_bwd` (the
cross_entropy op's contract). Backend "torch" runs the same chunked loop with the pure-PyTorch per-chunk math below
(log-sum-exp, gather, softmax), so its peak memory is small too.

Targets are checked on the host here (one sync): a target outside [0, V) other than ignore_index raises a ValueError,
not a device assert.
"""
from typing import Optional

import torch
from torch import Tensor

from .. import backends
from . import _empty_grad, autocast_off

REDUCTIONS = ("mean", "sum", "none")
_HAS_MM_OUT_DTYPE = hasattr(torch.ops.aten.mm, "dtype")


def _acc(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


# ------------------------------------------------------------------------------------------ per-chunk math
def torch_cross_entropy_fwd(logits, target, ignore_index, label_smoothing, softcap):
    """The cross_entropy backend contract in plain PyTorch: (loss (N,), lse (N,)) in fp32 (fp64 for fp64 logits);
    loss is 0 for ignored rows. softcap 0.0 = off."""
    z = logits.to(_acc(logits))
    if softcap:
        z = torch.tanh(z / softcap) * softcap
    lse = torch.logsumexp(z, dim=1)
    valid = target != ignore_index
    picked = z.gather(1, torch.where(valid, target, 0)[:, None])[:, 0]
    loss = lse - picked
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss + label_smoothing * (lse - z.mean(dim=1))
    return torch.where(valid, loss, 0.0), lse


def torch_cross_entropy_bwd(grad_loss, logits, target, lse, ignore_index, label_smoothing, softcap, out):
    """dlogits = grad_loss_i * (softmax - (1 - eps) onehot - eps / C) (* the softcap's derivative), 0 for ignored
    rows, written into `out` (which may be `logits`)."""
    acc = _acc(logits)
    z = logits.to(acc)
    if softcap:
        z = torch.tanh(z / softcap) * softcap
    g = torch.exp(z - lse.to(acc)[:, None])
    valid = target != ignore_index
    rows = torch.arange(g.size(0), device=g.device)
    g[rows, torch.where(valid, target, 0)] -= 1.0 - label_smoothing
    if label_smoothing:
        g -= label_smoothing / g.size(1)
    g *= torch.where(valid, grad_loss.to(acc), 0.0)[:, None]
    if softcap:
        g *= 1.0 - torch.square(z / softcap)
    out.copy_(g)
    return out


class _TorchMath:
    """Backend "torch"'s per-chunk math (the custom-op backends' adapters never run PyTorch's own ops here)."""
    name = "torch"
    cross_entropy_fwd = staticmethod(torch_cross_entropy_fwd)
    cross_entropy_bwd = staticmethod(torch_cross_entropy_bwd)


def _impl(backend: str, x: Tensor, weight: Tensor, chunk: int):
    if backend == "torch":
        return _TorchMath
    stand_in = x.new_empty(1, 1).expand(max(1, min(chunk, x.size(0))), weight.size(0))
    impl = backends.kernel("cross_entropy", backend, input=stand_in)
    return impl


def _check_targets(target: Tensor, classes: int, ignore_index: int):
    if target.numel() == 0:
        return
    bad = ((target < 0) | (target >= classes)) & (target != ignore_index)
    if bool(bad.any()):
        first = target[bad][0].item()
        raise ValueError(f"bigmodel.ops.linear_cross_entropy: target values must be in [0, {classes}) (weight has "
                         f"{classes} rows) or ignore_index={ignore_index}; got {first} at index "
                         f"{bad.nonzero()[0].tolist()}")


DW_BLOCK_BYTES = 256 * 2**20  # the fp32 product's temporary per GEMM on the out_dtype path: V split into blocks


def _accumulate_dw(dw: Tensor, dl: Tensor, xc: Tensor, mm=None):
    """dw (V, d) fp32 / fp64 += dl^T xc, the chunk's share, in the accumulator's precision. `mm` (tests only) stands
    in for torch.mm(a, b, out_dtype=...) to run the blocked CUDA branch on the CPU."""
    if dl.dtype == dw.dtype:
        dw.addmm_(dl.t(), xc)
    elif mm is not None or (dl.is_cuda and _HAS_MM_OUT_DTYPE):
        mm = mm or torch.mm
        step = max(1, DW_BLOCK_BYTES // max(1, xc.size(1) * dw.element_size()))  # V rows per fp32 temporary
        for v0 in range(0, dw.size(0), step):
            dw[v0:v0 + step].add_(mm(dl[:, v0:v0 + step].t(), xc, out_dtype=dw.dtype))
    else:
        dw.addmm_(dl.t().to(dw.dtype), xc.to(dw.dtype))


def chunked_loop(x, weight, target, bias, ignore_index, reduction, label_smoothing, softcap, chunk, grad_x, grad_w,
                 grad_b, backend, grad_rows=None):
    """The chunked walk over N (see the module doc). Returns (loss, dx, dw, db): loss () for "mean" / "sum",
    (N,) for "none", in fp32 (fp64 for fp64 inputs); a gradient is None where not asked for. With grad_rows
    ((N,) fp32, the backward of "none") the gradients are for sum_i grad_rows_i * loss_i."""
    impl = _impl(backend, x, weight, chunk)
    n, v = x.size(0), weight.size(0)
    acc = _acc(x)
    valid = target != ignore_index
    count = valid.sum()
    want = grad_x or grad_w or grad_b
    if grad_rows is None and reduction == "none":
        want = False
    if grad_rows is None:  # mean: 1 / count (an all-ignored batch has zero gradients, so clamp the 0 away)
        scale = (1.0 / count.clamp(min=1).to(acc)) if reduction == "mean" else x.new_ones((), dtype=acc)
    dx = torch.empty_like(x) if want and grad_x else None
    dw = torch.zeros(weight.shape, dtype=acc, device=x.device) if want and grad_w else None
    db = torch.zeros(v, dtype=acc, device=x.device) if want and grad_b else None
    losses = torch.empty(n, dtype=acc, device=x.device) if reduction == "none" and grad_rows is None else None
    total = torch.zeros((), dtype=acc, device=x.device)
    wt = weight.t()
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        xc, tc = x[start:stop], target[start:stop]
        logits = torch.addmm(bias, xc, wt) if bias is not None else torch.mm(xc, wt)
        loss_c, lse_c = impl.cross_entropy_fwd(logits, tc, ignore_index, label_smoothing, softcap)
        if losses is not None:
            losses[start:stop] = loss_c
        elif grad_rows is None:
            total += loss_c.sum(dtype=acc)
        if not want:
            continue
        g = grad_rows[start:stop] if grad_rows is not None else scale.expand(stop - start)
        dl = impl.cross_entropy_bwd(g.contiguous(), logits, tc, lse_c, ignore_index, label_smoothing, softcap, logits)
        if dx is not None:
            torch.mm(dl, weight, out=dx[start:stop])
        if dw is not None:
            _accumulate_dw(dw, dl, xc)
        if db is not None:
            db += dl.sum(0, dtype=acc)
        del logits, dl
    if losses is not None:
        loss = losses
    elif reduction == "mean":
        loss = total / count.to(acc)  # 0 / 0 = nan for an all-ignored batch, as F.cross_entropy
    else:
        loss = total
    return (loss, dx, None if dw is None else dw.to(weight.dtype),
            None if db is None else db.to(bias.dtype if bias is not None else weight.dtype))


def _loss_like(x, target, reduction):
    shape = (target.size(0),) if reduction == "none" else ()
    return x.new_empty(shape, dtype=_acc(x))


# ------------------------------------------------------------------------------------------ the ops
@torch.library.custom_op("bigmodel::linear_cross_entropy", mutates_args=())
@autocast_off
def linear_cross_entropy(x: Tensor, weight: Tensor, target: Tensor, bias: Optional[Tensor], ignore_index: int,
                         reduction: str, label_smoothing: float, softcap: float, chunk: int, grad_x: bool,
                         grad_w: bool, grad_b: bool, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """x (N, d) unit column stride, weight (V, d) contiguous, target (N,) int64, bias (V,) or None, one float dtype.
    Returns (loss, dx, dw, db): loss () or (N,) in fp32 (fp64 for fp64); for "mean" / "sum" the gradients of the
    loss w.r.t. x, weight, bias that grad_x / grad_w / grad_b ask for (else empty tensors); "none" returns empty
    gradients (its backward op recomputes them)."""
    _check_targets(target, weight.size(0), ignore_index)
    loss, dx, dw, db = chunked_loop(x, weight, target, bias, ignore_index, reduction, label_smoothing, softcap,
                                    chunk, grad_x, grad_w, grad_b, backend)
    return (loss, *(t if t is not None else _empty_grad(x) for t in (dx, dw, db)))


@linear_cross_entropy.register_fake
def _(x, weight, target, bias, ignore_index, reduction, label_smoothing, softcap, chunk, grad_x, grad_w, grad_b,
      backend):
    early = reduction != "none"
    dx = x.new_empty(x.shape) if early and grad_x else _empty_grad(x)
    dw = weight.new_empty(weight.shape) if early and grad_w else _empty_grad(x)
    db = bias.new_empty(bias.shape) if early and grad_b and bias is not None else _empty_grad(x)
    return _loss_like(x, target, reduction), dx, dw, db


@torch.library.custom_op("bigmodel::linear_cross_entropy_backward", mutates_args=())
@autocast_off
def linear_cross_entropy_backward(grad_loss: Tensor, x: Tensor, weight: Tensor, target: Tensor,
                                  bias: Optional[Tensor], ignore_index: int, label_smoothing: float, softcap: float,
                                  chunk: int, grad_x: bool, grad_w: bool, grad_b: bool,
                                  backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """reduction "none"'s backward: (dx, dw, db) of sum_i grad_loss_i * loss_i, recomputing the logits chunk by
    chunk; empty tensors for the gradients not asked for."""
    grad_rows = grad_loss.to(_acc(x)).contiguous()
    _, dx, dw, db = chunked_loop(x, weight, target, bias, ignore_index, "none", label_smoothing, softcap, chunk,
                                 grad_x, grad_w, grad_b and bias is not None, backend, grad_rows=grad_rows)
    return tuple(t if t is not None else _empty_grad(x) for t in (dx, dw, db))


@linear_cross_entropy_backward.register_fake
def _(grad_loss, x, weight, target, bias, ignore_index, label_smoothing, softcap, chunk, grad_x, grad_w, grad_b,
      backend):
    return (x.new_empty(x.shape) if grad_x else _empty_grad(x),
            weight.new_empty(weight.shape) if grad_w else _empty_grad(x),
            bias.new_empty(bias.shape) if grad_b and bias is not None else _empty_grad(x))


def _setup(ctx, inputs, output):
    (x, weight, target, bias, ignore_index, reduction, label_smoothing, softcap, chunk, grad_x, grad_w, grad_b,
     backend) = inputs
    _loss, dx, dw, db = output
    ctx.reduction, ctx.has_bias = reduction, bias is not None
    ctx.flags = (grad_x, grad_w, grad_b)
    ctx.mark_non_differentiable(dx, dw, db)
    if reduction == "none":
        ctx.save_for_backward(x, weight, target, bias)
        ctx.args = (ignore_index, label_smoothing, softcap, chunk, grad_x, grad_w, grad_b, backend)
    else:
        ctx.save_for_backward(dx, dw, db)


def _grad(ctx, grad_loss, _gdx, _gdw, _gdb):
    grad_x, grad_w, grad_b = ctx.flags
    if ctx.reduction == "none":
        x, weight, target, bias = ctx.saved_tensors
        dx, dw, db = torch.ops.bigmodel.linear_cross_entropy_backward(grad_loss, x, weight, target, bias, *ctx.args)
    else:
        dx, dw, db = ctx.saved_tensors
        if not (grad_x or grad_w or grad_b) and any(ctx.needs_input_grad[:4]):
            raise RuntimeError("bigmodel::linear_cross_entropy ran without gradients (grad_x / grad_w / grad_b all "
                               "False) but a backward was requested; bigmodel.ops.linear_cross_entropy sets them "
                               "from requires_grad")
        grad_loss = grad_loss.to(torch.float64 if dx.dtype == torch.float64 else torch.float32)
        dx, dw, db = (grad_loss * t if f else t for t, f in ((dx, grad_x), (dw, grad_w), (db, grad_b)))
        dx, dw, db = (t.to(ref.dtype) for t, ref in zip((dx, dw, db), ctx.saved_tensors))
    return (dx if grad_x else None, dw if grad_w else None, None, db if grad_b and ctx.has_bias else None,
            None, None, None, None, None, None, None, None, None)


linear_cross_entropy.register_autograd(_grad, setup_context=_setup)
