"""bigmodel.ops.layer_norm: F.layer_norm's semantics on the fused kernels."""
import math

import torch

from .. import backends
from . import _checks


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, *, backend=None):
    """Same as `torch.nn.functional.layer_norm`; statistics are computed in fp32 for every dtype (fp64 for fp64
    input, which the reference and torch backends run).

    weight / bias may have the input's dtype or float32 (mixed precision: fp32 parameters, 16-bit
    activations); the output has the input's dtype. `backend`: "triton", "cuda", "torch", "reference" or "auto".
    """
    op = "layer_norm"
    _checks.check_tensor(op, "input", input)
    shape = _checks.normalized_shape_of(op, input, normalized_shape)
    for name, p in (("weight", weight), ("bias", bias)):
        _checks.check_tensor(op, name, p, optional=True)
        _checks.check_shape(op, name, p, shape, " (= normalized_shape)")
        _checks.check_dtype_in(op, name, p, (input.dtype, torch.float32), f"the input is {input.dtype}")
    if weight is not None and bias is not None and weight.dtype != bias.dtype:
        raise TypeError(f"bigmodel.ops.{op}: weight and bias must have the same dtype; got weight "
                        f"{weight.dtype} and bias {bias.dtype}")
    _checks.check_same_device(op, "input", input, weight=weight, bias=bias)
    _checks.check_eps(op, eps)
    n = math.prod(shape)
    def trial(name, fresh):  # what auto times, the first time it meets such inputs
        return layer_norm(fresh(input), shape, fresh(weight), fresh(bias), eps, backend=name)

    impl = backends.select(op, backends.requested(backend), training=_checks.needs_grad(input, weight, bias),
                           trial=trial, input=_checks.rows_like(input, n, input.numel() // n), weight=weight, bias=bias)
    if impl.name == "torch":
        return impl.layer_norm(input, shape, weight, bias, float(eps))
    y, _mean, _rstd = torch.ops.bigmodel.layer_norm(input, list(shape), weight, bias, float(eps), impl.name)
    return y
