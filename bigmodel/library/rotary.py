"""bigmodel::rotary and bigmodel::rotary_backward: x (B, H, L, D) and cos / sin as (B, H, L, R) views (stride 0 on
broadcast dims; bigmodel.ops.rotary prepares them). The backward is the transposed rotation (kernels/rotary.py);
cos and sin get no gradient (the torch backend gives them one).

bigmodel::rotary_qk (and _backward): q and k together, each with its own view of the tables, in one launch where
the backend has a fused `rotary_qk_fwd` (triton), else as two rotary launches."""
import torch
from torch import Tensor

from .. import backends
from . import autocast_off


@torch.library.custom_op("bigmodel::rotary", mutates_args=())
@autocast_off
def rotary(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool, backend: str) -> Tensor:
    impl = backends.kernel("rotary", backend, input=x, cos=cos, sin=sin, interleaved=interleaved)
    return impl.rotary_fwd(x, cos, sin, interleaved)


@rotary.register_fake
def _(x, cos, sin, interleaved, backend):
    return x.new_empty(x.shape)


@torch.library.custom_op("bigmodel::rotary_backward", mutates_args=())
@autocast_off
def rotary_backward(grad_y: Tensor, cos: Tensor, sin: Tensor, interleaved: bool, backend: str) -> Tensor:
    impl = backends.kernel("rotary", backend, input=grad_y, cos=cos, sin=sin, interleaved=interleaved)
    grad_y = grad_y if grad_y.stride(-1) == 1 else grad_y.contiguous()
    return impl.rotary_bwd(grad_y, cos, sin, interleaved)


@rotary_backward.register_fake
def _(grad_y, cos, sin, interleaved, backend):
    return grad_y.new_empty(grad_y.shape)


def _setup(ctx, inputs, output):
    _x, cos, sin, interleaved, backend = inputs
    ctx.save_for_backward(cos, sin)
    ctx.interleaved, ctx.backend = interleaved, backend


def _grad(ctx, grad_y):
    cos, sin = ctx.saved_tensors
    return torch.ops.bigmodel.rotary_backward(grad_y, cos, sin, ctx.interleaved, ctx.backend), None, None, None, None


rotary.register_autograd(_grad, setup_context=_setup)


# ------------------------------------------------------------------------------------------ q and k together
def _qk(impl, fused_name, one_name, q, k, cq, sq, ck, sk, interleaved):
    fused = getattr(impl, fused_name, None)
    if fused is not None:
        return fused(q, k, cq, sq, ck, sk, interleaved)
    one = getattr(impl, one_name)
    return one(q, cq, sq, interleaved), one(k, ck, sk, interleaved)


@torch.library.custom_op("bigmodel::rotary_qk", mutates_args=())
@autocast_off
def rotary_qk(q: Tensor, k: Tensor, cos_q: Tensor, sin_q: Tensor, cos_k: Tensor, sin_k: Tensor, interleaved: bool,
              backend: str) -> tuple[Tensor, Tensor]:
    impl = backends.kernel("rotary", backend, input=q, key=k, cos=cos_q, sin=sin_q, interleaved=interleaved)
    return _qk(impl, "rotary_qk_fwd", "rotary_fwd", q, k, cos_q, sin_q, cos_k, sin_k, interleaved)


@rotary_qk.register_fake
def _(q, k, cos_q, sin_q, cos_k, sin_k, interleaved, backend):
    return q.new_empty(q.shape), k.new_empty(k.shape)


@torch.library.custom_op("bigmodel::rotary_qk_backward", mutates_args=())
@autocast_off
def rotary_qk_backward(grad_q: Tensor, grad_k: Tensor, cos_q: Tensor, sin_q: Tensor, cos_k: Tensor, sin_k: Tensor,
                       interleaved: bool, backend: str) -> tuple[Tensor, Tensor]:
    impl = backends.kernel("rotary", backend, input=grad_q, key=grad_k, cos=cos_q, sin=sin_q,
                           interleaved=interleaved)
    grad_q, grad_k = (g if g.stride(-1) == 1 else g.contiguous() for g in (grad_q, grad_k))
    return _qk(impl, "rotary_qk_bwd", "rotary_bwd", grad_q, grad_k, cos_q, sin_q, cos_k, sin_k, interleaved)


@rotary_qk_backward.register_fake
def _(grad_q, grad_k, cos_q, sin_q, cos_k, sin_k, interleaved, backend):
    return grad_q.new_empty(grad_q.shape), grad_k.new_empty(grad_k.shape)


def _qk_setup(ctx, inputs, output):
    _q, _k, cos_q, sin_q, cos_k, sin_k, interleaved, backend = inputs
    ctx.save_for_backward(cos_q, sin_q, cos_k, sin_k)
    ctx.interleaved, ctx.backend = interleaved, backend


def _qk_grad(ctx, grad_q, grad_k):
    dq, dk = torch.ops.bigmodel.rotary_qk_backward(grad_q, grad_k, *ctx.saved_tensors, ctx.interleaved, ctx.backend)
    return dq, dk, None, None, None, None, None, None


rotary_qk.register_autograd(_qk_grad, setup_context=_qk_setup)
