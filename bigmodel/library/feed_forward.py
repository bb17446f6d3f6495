"""bigmodel::linear_act, bigmodel::activation, bigmodel::gated_activation, bigmodel::softmax and their `_backward`
ops.

linear_act takes x as (M, K) (bigmodel.ops flattens the leading dims) and returns (y, saved): `saved` is what the
backward needs besides x and W -- the pre-activation z = x W^T + b for GELU, nothing (an empty tensor) for ReLU,
whose derivative is read off y > 0, and for no activation.
"""
from typing import Optional

import torch
from torch import Tensor

from .. import backends
from . import _empty_grad, autocast_off

SAVES_PRE_ACTIVATION = ("gelu", "gelu_tanh", "silu")  # as kernels/linear_act.py


# ------------------------------------------------------------------------------------------ linear_act
@torch.library.custom_op("bigmodel::linear_act", mutates_args=())
@autocast_off
def linear_act(x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: str,
               backend: str) -> tuple[Tensor, Tensor]:
    impl = backends.kernel("linear_act", backend, input=x, weight=weight, bias=bias)
    if x.numel() == 0 or weight.numel() == 0:
        y, saved = _linear_act_empty_fwd(x, weight, bias, activation)
    else:
        y, saved = impl.linear_act_fwd(x, weight, bias, activation)
    return y, saved if saved is not None else _empty_grad(x)


@linear_act.register_fake
def _(x, weight, bias, activation, backend):
    y = x.new_empty(x.size(0), weight.size(0))
    return y, torch.empty_like(y) if activation in SAVES_PRE_ACTIVATION else _empty_grad(x)


@torch.library.custom_op("bigmodel::linear_act_backward", mutates_args=())
@autocast_off
def linear_act_backward(grad_y: Tensor, x: Tensor, weight: Tensor, saved: Tensor, y: Optional[Tensor],
                        activation: str, has_bias: bool, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (dx, dweight, dbias); dbias is an empty tensor without a bias."""
    impl = backends.kernel("linear_act", backend, input=x, weight=weight)
    if x.numel() == 0 or weight.numel() == 0:
        dx, dw, db = _linear_act_empty_bwd(grad_y, x, weight, saved, y, activation, has_bias)
        return dx, dw, db if db is not None else _empty_grad(x)
    grad_y = grad_y if grad_y.stride(-1) == 1 else grad_y.contiguous()
    dx, dw, db = impl.linear_act_bwd(grad_y, x, weight, saved, y, activation, has_bias)
    return dx, dw, db if db is not None else _empty_grad(x)


@linear_act_backward.register_fake
def _(grad_y, x, weight, saved, y, activation, has_bias, backend):
    db = weight.new_empty(weight.size(0)) if has_bias else _empty_grad(x)
    return x.new_empty(x.shape), weight.new_empty(weight.shape), db


def _acc(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _linear_act_empty_fwd(x, weight, bias, activation):
    """linear_act with M, N or K = 0, where no kernel runs: z = x W^T + b is b (or 0) broadcast to (M, N), since a
    sum over K = 0 terms is 0, and y = act(z), computed here on the (M, N) result alone."""
    acc = _acc(x)
    z = x.new_zeros(x.size(0), weight.size(0), dtype=acc)
    if bias is not None:
        z = z + bias.to(acc)
    if activation == "gelu":
        y = torch.nn.functional.gelu(z)
    elif activation == "gelu_tanh":
        y = torch.nn.functional.gelu(z, approximate="tanh")
    elif activation == "relu":
        y = torch.relu(z)
    elif activation == "silu":
        y = torch.nn.functional.silu(z)
    else:
        y = z
    return y.to(x.dtype), z.to(x.dtype) if activation in SAVES_PRE_ACTIVATION else None


def _linear_act_empty_bwd(grad_y, x, weight, saved, y, activation, has_bias):
    """The backward of _linear_act_empty_fwd: dz = dy * act'(z); dx = dz W and dW = dz^T x are zeros (or empty),
    db = rowsum(dz)."""
    acc = _acc(x)
    dz = grad_y.to(acc)
    if activation == "silu" and dz.numel():
        dz = torch.ops.aten.silu_backward(dz, saved.to(acc))
    elif activation in SAVES_PRE_ACTIVATION and dz.numel():
        approximate = "tanh" if activation == "gelu_tanh" else "none"
        dz = torch.ops.aten.gelu_backward(dz, saved.to(acc), approximate=approximate)
    elif activation == "relu":
        dz = dz * (y > 0)
    dx = x.new_zeros(x.shape)
    dw = weight.new_zeros(weight.shape)
    return dx, dw, dz.sum(0).to(weight.dtype) if has_bias else None


def _linear_act_setup(ctx, inputs, output):
    x, weight, bias, activation, backend = inputs
    y, saved = output
    ctx.save_for_backward(x, weight, saved, y if activation == "relu" else None)
    ctx.activation, ctx.backend, ctx.has_bias = activation, backend, bias is not None
    ctx.mark_non_differentiable(saved)


def _linear_act_grad(ctx, grad_y, _grad_saved):
    x, weight, saved, y = ctx.saved_tensors
    dx, dw, db = torch.ops.bigmodel.linear_act_backward(grad_y, x, weight, saved, y, ctx.activation, ctx.has_bias,
                                                        ctx.backend)
    return dx, dw, db if ctx.has_bias else None, None, None


linear_act.register_autograd(_linear_act_grad, setup_context=_linear_act_setup)


# ------------------------------------------------------------------------------------------ activation
@torch.library.custom_op("bigmodel::activation", mutates_args=())
@autocast_off
def activation(x: Tensor, activation: str, backend: str) -> Tensor:
    """x contiguous, any shape; activation "gelu", "gelu_tanh" or "relu". No kernel runs on an empty x."""
    impl = backends.kernel("activation", backend, input=x)
    return torch.empty_like(x) if x.numel() == 0 else impl.activation_fwd(x, activation)


@activation.register_fake
def _(x, activation, backend):
    return torch.empty_like(x)


@torch.library.custom_op("bigmodel::activation_backward", mutates_args=())
@autocast_off
def activation_backward(grad_y: Tensor, x: Tensor, activation: str, backend: str) -> Tensor:
    impl = backends.kernel("activation", backend, input=x)
    return torch.empty_like(x) if x.numel() == 0 else impl.activation_bwd(grad_y.contiguous(), x, activation)


@activation_backward.register_fake
def _(grad_y, x, activation, backend):
    return torch.empty_like(x)


def _activation_setup(ctx, inputs, output):
    x, name, backend = inputs
    ctx.save_for_backward(x)
    ctx.activation, ctx.backend = name, backend


def _activation_grad(ctx, grad_y):
    (x,) = ctx.saved_tensors
    return torch.ops.bigmodel.activation_backward(grad_y, x, ctx.activation, ctx.backend), None, None


activation.register_autograd(_activation_grad, setup_context=_activation_setup)


# ------------------------------------------------------------------------------------------ softmax
@torch.library.custom_op("bigmodel::softmax", mutates_args=())
@autocast_off
def softmax(x: Tensor, backend: str) -> Tensor:
    """Softmax over the last dim of x (M, N) with unit last stride; returns (M, N) contiguous. No kernel runs when
    M or N is 0."""
    impl = backends.kernel("softmax", backend, input=x)
    return x.new_empty(x.shape) if x.numel() == 0 else impl.softmax_fwd(x)


@softmax.register_fake
def _(x, backend):
    return x.new_empty(x.shape)


@torch.library.custom_op("bigmodel::softmax_backward", mutates_args=())
@autocast_off
def softmax_backward(grad_y: Tensor, y: Tensor, backend: str) -> Tensor:
    """dx = y * (dy - rowsum(dy * y))."""
    impl = backends.kernel("softmax", backend, input=y)
    if y.numel() == 0:
        return y.new_empty(y.shape)
    return impl.softmax_bwd(grad_y if grad_y.stride(-1) == 1 else grad_y.contiguous(), y)


@softmax_backward.register_fake
def _(grad_y, y, backend):
    return y.new_empty(y.shape)


def _softmax_setup(ctx, inputs, output):
    ctx.save_for_backward(output)
    ctx.backend = inputs[1]


def _softmax_grad(ctx, grad_y):
    (y,) = ctx.saved_tensors
    return torch.ops.bigmodel.softmax_backward(grad_y, y, ctx.backend), None


softmax.register_autograd(_softmax_grad, setup_context=_softmax_setup)


# ------------------------------------------------------------------------------------------ gated activation
@torch.library.custom_op("bigmodel::gated_activation", mutates_args=())
@autocast_off
def gated_activation(gate: Tensor, up: Tensor, activation: str, backend: str) -> Tensor:
    """act(gate) * up (SwiGLU: "silu", GeGLU: "gelu" / "gelu_tanh"); gate and up contiguous, one shape."""
    impl = backends.kernel("gated_activation", backend, input=gate, up=up, activation=activation)
    return torch.empty_like(gate) if gate.numel() == 0 else impl.gated_activation_fwd(gate, up, activation)


@gated_activation.register_fake
def _(gate, up, activation, backend):
    return torch.empty_like(gate)


@torch.library.custom_op("bigmodel::gated_activation_backward", mutates_args=())
@autocast_off
def gated_activation_backward(grad_y: Tensor, gate: Tensor, up: Tensor, activation: str,
                              backend: str) -> tuple[Tensor, Tensor]:
    """(dgate, dup) = (dy * up * act'(gate), dy * act(gate))."""
    impl = backends.kernel("gated_activation", backend, input=gate, up=up, activation=activation)
    if gate.numel() == 0:
        return torch.empty_like(gate), torch.empty_like(up)
    return impl.gated_activation_bwd(grad_y.contiguous(), gate, up, activation)


@gated_activation_backward.register_fake
def _(grad_y, gate, up, activation, backend):
    return torch.empty_like(gate), torch.empty_like(up)


def _gated_setup(ctx, inputs, output):
    gate, up, activation, backend = inputs
    ctx.save_for_backward(gate, up)
    ctx.activation, ctx.backend = activation, backend


def _gated_grad(ctx, grad_y):
    gate, up = ctx.saved_tensors
    dg, du = torch.ops.bigmodel.gated_activation_backward(grad_y, gate, up, ctx.activation, ctx.backend)
    return dg, du, None, None


gated_activation.register_autograd(_gated_grad, setup_context=_gated_setup)


# ------------------------------------------------------------------------------------------ gated linear
# h = act(x W_gate^T) * (x W_up^T), saving g and u for the backward. A backend with `gated_linear_fwd` (triton: one
# GEMM kernel, act(g) * u in its epilogue) runs it whole; otherwise (cuda) cuBLAS makes g and u and the backend's
# fused gated_activation kernel makes h. Backward: dg, du by the fused gated pass, then dx = dg Wg + du Wu,
# dWg = dg^T x, dWu = du^T x.
@torch.library.custom_op("bigmodel::gated_linear", mutates_args=())
@autocast_off
def gated_linear(x: Tensor, w_gate: Tensor, w_up: Tensor, activation: str, save: bool,
                 backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """x (M, K) unit column stride, w_gate / w_up (N, K) contiguous. Returns (h, g, u); g, u empty unless save."""
    impl = backends.kernel("gated_activation", backend, input=x, weight=w_gate, weight_up=w_up, activation=activation)
    if x.numel() == 0 or w_gate.numel() == 0:  # K = 0: g = u = 0; M or N = 0: nothing to compute
        g = x.new_zeros(x.size(0), w_gate.size(0))
        h, u = g.clone(), g.clone()
    elif hasattr(impl, "gated_linear_fwd"):
        h, g, u = impl.gated_linear_fwd(x, w_gate, w_up, activation, save)
    else:
        g, u = torch.mm(x, w_gate.t()), torch.mm(x, w_up.t())
        h = impl.gated_activation_fwd(g, u, activation)
    return (h, g, u) if save else (h, _empty_grad(x), _empty_grad(x))


@gated_linear.register_fake
def _(x, w_gate, w_up, activation, save, backend):
    h = x.new_empty(x.size(0), w_gate.size(0))
    return (h, torch.empty_like(h), torch.empty_like(h)) if save else (h, _empty_grad(x), _empty_grad(x))


@torch.library.custom_op("bigmodel::gated_linear_backward", mutates_args=())
@autocast_off
def gated_linear_backward(grad_h: Tensor, x: Tensor, w_gate: Tensor, w_up: Tensor, g: Tensor, u: Tensor,
                          activation: str, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dw_gate, dw_up)."""
    impl = backends.kernel("gated_activation", backend, input=x, weight=w_gate, weight_up=w_up, activation=activation)
    grad_h = grad_h.contiguous()
    if x.numel() == 0 or w_gate.numel() == 0:
        return torch.zeros_like(x), torch.zeros_like(w_gate), torch.zeros_like(w_up)
    if hasattr(impl, "gated_linear_bwd"):
        return impl.gated_linear_bwd(grad_h, x, w_gate, w_up, g, u, activation)
    dg, du = impl.gated_activation_bwd(grad_h, g, u, activation)
    return torch.addmm(torch.mm(dg, w_gate), du, w_up), torch.mm(dg.t(), x), torch.mm(du.t(), x)


@gated_linear_backward.register_fake
def _(grad_h, x, w_gate, w_up, g, u, activation, backend):
    return torch.empty_like(x), torch.empty_like(w_gate), torch.empty_like(w_up)


def _gated_linear_setup(ctx, inputs, output):
    x, w_gate, w_up, activation, save, backend = inputs
    _h, g, u = output
    ctx.save_for_backward(x, w_gate, w_up, g, u)
    ctx.activation, ctx.backend, ctx.saved = activation, backend, save
    ctx.mark_non_differentiable(g, u)


def _gated_linear_grad(ctx, grad_h, _grad_g, _grad_u):
    if not ctx.saved:
        raise RuntimeError("bigmodel::gated_linear ran with save=False (no gradient was expected) but a backward was "
                           "requested; bigmodel.ops.gated_feed_forward sets save when an input requires grad")
    x, w_gate, w_up, g, u = ctx.saved_tensors
    dx, dwg, dwu = torch.ops.bigmodel.gated_linear_backward(grad_h, x, w_gate, w_up, g, u, ctx.activation,
                                                            ctx.backend)
    return dx, dwg, dwu, None, None, None


gated_linear.register_autograd(_gated_linear_grad, setup_context=_gated_linear_setup)
