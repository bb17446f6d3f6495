"""bigmodel.ops.linear_act and bigmodel.ops.feed_forward: GEMM + bias + activation in one fused op;
bigmodel.ops.gated_feed_forward: the Llama / Gemma MLP."""
import math

import torch
import torch.nn.functional as F

from .. import backends
from ..library import row_view
from . import _checks

ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_tanh", "relu": "relu", "silu": "silu", None: "none"}


def _activation_name(op: str, activation) -> str:
    if activation not in ACTIVATIONS:
        raise ValueError(f"bigmodel.ops.{op}: activation must be one of 'gelu', 'gelu_tanh', 'relu', 'silu' or None; "
                         f"got {activation!r}")
    return ACTIVATIONS[activation]


def _check_input(op: str, x):
    _checks.check_tensor(op, "input", x)
    if x.dim() < 1:
        raise ValueError(f"bigmodel.ops.{op}: input must have at least 1 dim (..., in_features); got a scalar")


def _check_layer(op: str, x, in_features: int, in_what: str, w_name: str, weight, b_name: str, bias):
    """weight (out, in_features) and bias (out,) or None, in x's dtype and on x's device."""
    _checks.check_tensor(op, w_name, weight)
    if weight.dim() != 2 or weight.size(1) != in_features:
        raise ValueError(f"bigmodel.ops.{op}: {w_name} must have shape (out_features, {in_features}) to match "
                         f"{in_what}; got {w_name} {tuple(weight.shape)}")
    _checks.check_tensor(op, b_name, bias, optional=True)
    _checks.check_shape(op, b_name, bias, (weight.size(0),), f" (= {w_name}'s out_features)")
    for name, t in ((w_name, weight), (b_name, bias)):
        if t is not None and t.dtype != x.dtype:
            raise TypeError(f"bigmodel.ops.{op}: {name} must have the input's dtype {x.dtype}; got {t.dtype}")
    _checks.check_same_device(op, "input", x, **{w_name: weight, b_name: bias})


def linear_act(input, weight, bias=None, activation="gelu", *, backend=None):
    """`act(F.linear(input, weight, bias))` in one fused op; activation "gelu" (erf), "gelu_tanh", "relu", "silu" or
    None.

    input (..., in_features), weight (out_features, in_features), bias (out_features,) or None, one dtype.
    The backward forms dz = grad_output * act'(z) once for the dX and dW GEMMs, and sums the bias gradient with dW.
    """
    act = _activation_name("linear_act", activation)
    input, weight, bias = _checks.autocast_inputs(input, weight, bias)  # as autocast does for F.linear
    _check_input("linear_act", input)
    _check_layer("linear_act", input, input.size(-1), f"input's last dim (input is {tuple(input.shape)})",
                 "weight", weight, "bias", bias)
    return _linear_act(input, weight, bias, act, backends.requested(backend))


def _linear_act(x, weight, bias, act, backend_name):
    rows = _checks.rows_like(x, x.size(-1), x.numel() // x.size(-1) if x.size(-1) else math.prod(x.shape[:-1]))
    impl = backends.select("linear_act", backend_name, training=_checks.needs_grad(x, weight, bias),
                           trial=lambda b, fresh: _linear_act(fresh(x), fresh(weight), fresh(bias), act, b),
                           input=rows, weight=weight, bias=bias, activation=act)
    if impl.name == "torch":
        return impl.linear_act(x, weight, bias, act)
    y, _saved = torch.ops.bigmodel.linear_act(row_view(x, x.size(-1)), weight.contiguous(),
                                              bias.contiguous() if bias is not None else None, act, impl.name)
    return y.view(*x.shape[:-1], weight.size(0))


def feed_forward(input, w1, b1, w2, b2, activation="gelu", *, backend=None):
    """`F.linear(act(F.linear(input, w1, b1)), w2, b2)`: two fused linear_act ops (the second without activation).

    w1 (d_hidden, d_model), b1 (d_hidden,) or None, w2 (d_model_out, d_hidden), b2 (d_model_out,) or None.
    """
    act = _activation_name("feed_forward", activation)
    input, w1, b1, w2, b2 = _checks.autocast_inputs(input, w1, b1, w2, b2)
    _check_input("feed_forward", input)
    _check_layer("feed_forward", input, input.size(-1), f"input's last dim (input is {tuple(input.shape)})",
                 "w1", w1, "b1", b1)
    _check_layer("feed_forward", input, w1.size(0), f"w1's out_features (w1 is {tuple(w1.shape)})", "w2", w2, "b2", b2)
    name = backends.requested(backend)
    return _linear_act(_linear_act(input, w1, b1, act, name), w2, b2, "none", name)


GATED_ACTIVATIONS = ("silu", "gelu_tanh", "gelu")


def gated_feed_forward(input, w_gate, w_up, w_down, activation="silu", *, backend=None):
    """`F.linear(act(F.linear(input, w_gate)) * F.linear(input, w_up), w_down)`: the Llama MLP (activation "silu"),
    Gemma's ("gelu_tanh"), or "gelu". w_gate / w_up (d_ff, d_model), w_down (d_model_out, d_ff), one dtype.

    The first half, h = act(x W_gate^T) * (x W_up^T), is one op (bigmodel::gated_linear): on triton one GEMM kernel
    computes both products and writes h from its epilogue (plus g and u when a gradient is needed); on cuda, cuBLAS
    GEMMs and the fused gated kernel; on torch, PyTorch's composition. The down projection is F.linear."""
    op = "gated_feed_forward"
    if activation not in GATED_ACTIVATIONS:
        raise ValueError(f"bigmodel.ops.{op}: activation must be one of {', '.join(map(repr, GATED_ACTIVATIONS))}; "
                         f"got {activation!r}")
    input, w_gate, w_up, w_down = _checks.autocast_inputs(input, w_gate, w_up, w_down)
    _check_input(op, input)
    _check_layer(op, input, input.size(-1), f"input's last dim (input is {tuple(input.shape)})", "w_gate", w_gate,
                 "b_gate", None)
    _check_layer(op, input, input.size(-1), f"input's last dim (input is {tuple(input.shape)})", "w_up", w_up,
                 "b_up", None)
    if w_up.shape != w_gate.shape:
        raise ValueError(f"bigmodel.ops.{op}: w_up must have w_gate's shape {tuple(w_gate.shape)}; got "
                         f"{tuple(w_up.shape)}")
    _check_layer(op, input, w_gate.size(0), f"w_gate's out_features (w_gate is {tuple(w_gate.shape)})", "w_down",
                 w_down, "b_down", None)
    return F.linear(_gated_linear(input, w_gate, w_up, activation, backends.requested(backend)), w_down)


def _gated_linear(x, w_gate, w_up, activation, backend_name):
    """h = act(x W_gate^T) * (x W_up^T) on the chosen backend (x (..., d_model) -> h (..., d_ff))."""
    rows = _checks.rows_like(x, x.size(-1), x.numel() // x.size(-1) if x.size(-1) else math.prod(x.shape[:-1]))
    training = _checks.needs_grad(x, w_gate, w_up)
    impl = backends.select("gated_activation", backend_name, training=training,
                           trial=lambda b, fresh: _gated_linear(fresh(x), fresh(w_gate), fresh(w_up), activation, b),
                           input=rows, weight=w_gate, weight_up=w_up, activation=activation)
    if impl.name == "torch":
        return impl.gated_activation(F.linear(x, w_gate), F.linear(x, w_up), activation)
    h, _g, _u = torch.ops.bigmodel.gated_linear(row_view(x, x.size(-1)), w_gate.contiguous(), w_up.contiguous(),
                                                activation, training, impl.name)
    return h.view(*x.shape[:-1], w_gate.size(0))
