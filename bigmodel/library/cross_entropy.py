"""bigmodel::cross_entropy and bigmodel::cross_entropy_backward.

cross_entropy(logits (N, C), target (N,) int64, ignore_index, label_smoothing, softcap, backend) -> (loss, lse): the
per-row loss (0 on ignored rows) and the log-sum-exp of the (softcapped) logits, both fp32 (fp64 for fp64 logits, which
only the reference takes). The reduction ("mean" / "sum" / "none") and the 1 / count of "mean" live in bigmodel.ops with
torch ops, so autograd hands this op's backward the gradient of each row's loss, g_i, with any scaling in it.

Backward: dlogits_ij = g_i (softmax_ij - (1 - eps) [j == t_i] - eps / C) (x softcap's 1 - tanh^2), 0 on ignored rows:
one kernel pass over the logits, straight into the gradient buffer; no softmax or one-hot is materialised, so the
backward's only (N, C) allocation is dlogits itself.

In place: the kernels can write dlogits over the logits (Liger does). This op never does, because it cannot prove the
logits are dead: the user may hold them (a Hugging Face model returns them), another op may have saved them, and a
functional custom op may not mutate or alias its inputs. So the gradient goes to a fresh buffer, always safe. The
in-place form is for callers that own the logits, e.g. linear_cross_entropy's per-chunk logits, which die right after.
"""
import torch
from torch import Tensor

from .. import backends
from . import autocast_off


def _stat_dtype(logits: Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


@torch.library.custom_op("bigmodel::cross_entropy", mutates_args=())
@autocast_off
def cross_entropy(logits: Tensor, target: Tensor, ignore_index: int, label_smoothing: float, softcap: float,
                  backend: str) -> tuple[Tensor, Tensor]:
    """logits (N, C) with unit column stride, C >= 1; target (N,) int64 contiguous (range-checked by bigmodel.ops)."""
    impl = backends.kernel("cross_entropy", backend, input=logits)
    if logits.size(0) == 0:
        empty = logits.new_empty(0, dtype=_stat_dtype(logits))
        return empty, empty.clone()
    return impl.cross_entropy_fwd(logits, target, ignore_index, label_smoothing, softcap)


@cross_entropy.register_fake
def _(logits, target, ignore_index, label_smoothing, softcap, backend):
    dtype = _stat_dtype(logits)
    return logits.new_empty(logits.size(0), dtype=dtype), logits.new_empty(logits.size(0), dtype=dtype)


@torch.library.custom_op("bigmodel::cross_entropy_backward", mutates_args=())
@autocast_off
def cross_entropy_backward(grad_loss: Tensor, logits: Tensor, target: Tensor, lse: Tensor, ignore_index: int,
                           label_smoothing: float, softcap: float, backend: str) -> Tensor:
    """dlogits (N, C), contiguous in logits' dtype, into a fresh buffer (see the module docstring)."""
    impl = backends.kernel("cross_entropy", backend, input=logits)
    out = logits.new_empty(logits.shape)
    if logits.numel() == 0:
        return out
    g = grad_loss.to(_stat_dtype(logits)).contiguous()  # autograd may hand an expanded (stride 0) gradient
    return impl.cross_entropy_bwd(g, logits, target, lse.contiguous(), ignore_index, label_smoothing, softcap, out)


@cross_entropy_backward.register_fake
def _(grad_loss, logits, target, lse, ignore_index, label_smoothing, softcap, backend):
    return logits.new_empty(logits.shape)


def _setup(ctx, inputs, output):
    logits, target, ignore_index, label_smoothing, softcap, backend = inputs
    _loss, lse = output
    ctx.save_for_backward(logits, target, lse)
    ctx.args = (ignore_index, label_smoothing, softcap, backend)
    ctx.mark_non_differentiable(lse)


def _grad(ctx, grad_loss, _grad_lse):
    logits, target, lse = ctx.saved_tensors
    if grad_loss is None:
        return None, None, None, None, None, None
    dlogits = torch.ops.bigmodel.cross_entropy_backward(grad_loss, logits, target, lse, *ctx.args)
    return dlogits, None, None, None, None, None


cross_entropy.register_autograd(_grad, setup_context=_setup)
