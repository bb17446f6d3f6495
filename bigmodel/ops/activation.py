"""bigmodel.ops.gelu, relu, silu, swiglu, geglu and softmax: torch's semantics on the fused kernels (swiglu /
geglu: the composition F.silu(gate) * up / F.gelu(gate) * up, fused)."""
import math
import numbers

import torch

from .. import backends
from ..library import row_view
from . import _checks


def gelu(input, approximate="none", *, backend=None):
    """Same as `F.gelu(input, approximate)`; approximate "none" (erf) or "tanh"."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"bigmodel.ops.gelu: approximate must be 'none' or 'tanh'; got {approximate!r}")
    return _activation("gelu", input, "gelu" if approximate == "none" else "gelu_tanh", backend)


def relu(input, *, backend=None):
    """Same as `F.relu(input)` (out of place)."""
    return _activation("relu", input, "relu", backend)


def silu(input, *, backend=None):
    """Same as `F.silu(input)` (out of place): x * sigmoid(x)."""
    return _activation("silu", input, "silu", backend)


def _activation(op, x, name, backend):
    _checks.check_tensor(op, "input", x)
    impl = backends.select("activation", backends.requested(backend), training=_checks.needs_grad(x),
                           trial=lambda b, fresh: _activation(op, fresh(x), name, b), input=x, activation=name)
    if impl.name == "torch":
        return impl.activation(x, name)
    return torch.ops.bigmodel.activation(x.contiguous(), name, impl.name)


def swiglu(gate, up, *, backend=None):
    """F.silu(gate) * up in one pass (forward and backward): the Llama / Mistral / Qwen MLP's gating."""
    return gated("swiglu", gate, up, "silu", backend)


def geglu(gate, up, approximate="none", *, backend=None):
    """F.gelu(gate, approximate) * up in one pass: Gemma's MLP gating (approximate="tanh")."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"bigmodel.ops.geglu: approximate must be 'none' or 'tanh'; got {approximate!r}")
    return gated("geglu", gate, up, "gelu" if approximate == "none" else "gelu_tanh", backend)


def gated(op, gate, up, name, backend):
    """act(gate) * up on the backend auto (or `backend`) picks, name in "silu", "gelu", "gelu_tanh"."""
    _checks.check_tensor(op, "gate", gate)
    _checks.check_tensor(op, "up", up)
    if gate.shape != up.shape:
        raise ValueError(f"bigmodel.ops.{op}: gate and up must have one shape; got gate {tuple(gate.shape)} and up "
                         f"{tuple(up.shape)}")
    if gate.dtype != up.dtype:
        raise TypeError(f"bigmodel.ops.{op}: gate and up must have one dtype; got gate {gate.dtype} and up {up.dtype}")
    _checks.check_same_device(op, "gate", gate, up=up)
    impl = backends.select("gated_activation", backends.requested(backend), training=_checks.needs_grad(gate, up),
                           trial=lambda b, fresh: gated(op, fresh(gate), fresh(up), name, b), input=gate, up=up,
                           activation=name)
    if impl.name == "torch":
        return impl.gated_activation(gate, up, name)
    return torch.ops.bigmodel.gated_activation(gate.contiguous(), up.contiguous(), name, impl.name)


def softmax(input, dim=-1, *, backend=None):
    """Same as `torch.softmax(input, dim)`: fp32 statistics for every dtype; a row of all -inf gives NaN, as torch."""
    _checks.check_tensor("softmax", "input", input)
    if not isinstance(dim, numbers.Integral) or not -max(input.dim(), 1) <= dim < max(input.dim(), 1):
        raise ValueError(f"bigmodel.ops.softmax: dim must be an int in [{-max(input.dim(), 1)}, "
                         f"{max(input.dim(), 1) - 1}] for an input of shape {tuple(input.shape)}; got {dim!r}")
    n = input.size(dim) if input.dim() else 1
    rows = input.numel() // n if n else math.prod(s for i, s in enumerate(input.shape) if i != dim % input.dim())
    impl = backends.select("softmax", backends.requested(backend), training=_checks.needs_grad(input),
                           trial=lambda b, fresh: softmax(fresh(input), dim, backend=b),
                           input=_checks.rows_like(input, n, rows))
    if impl.name == "torch":
        return impl.softmax(input, dim)
    x = input.movedim(dim, -1) if input.dim() else input.reshape(1)  # a view: no copy when dim is already last
    y = torch.ops.bigmodel.softmax(row_view(x, x.size(-1)), impl.name).view(x.shape)
    return y.movedim(-1, dim) if input.dim() else y.reshape(())
