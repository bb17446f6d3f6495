"""bigmodel::rotary and bigmodel::rotary_backward: x (B, H, L, D) and cos / sin as (B, H, L, R) views (stride 0 on
broadcast dims; bigmodel.ops.rotary prepares them). The backward is the transposed rotation (kernels/rotary.py);
cos and sin get no gradient (the torch backend gives them one)."""
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
