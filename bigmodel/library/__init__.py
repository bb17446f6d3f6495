"""torch.library custom ops `bigmodel::<op>`: one opaque, fake-tensor-aware node per op for torch.compile.

Each op takes a concrete backend name ("triton", "cuda" or "reference") as a string argument: bigmodel.ops chose it
(backends.select, in Python, at trace time under torch.compile) and the op only checks it (backends.kernel), so
tracing never looks inside a kernel. The "torch" backend never comes here: bigmodel.ops calls PyTorch's own op.
Autograd is registered on the forward op and calls the `<op>_backward` custom op with the same backend.
"""
import functools
import math
from typing import Optional

import torch
from torch import Tensor


def row_view(t: Tensor, n: int) -> Tensor:
    """`t` as (rows, n) with unit column stride; copies only when no such view exists. n is the product of t's last
    dim(s); with n == 0 (rows of nothing) the row count is that of the leading dims, which reshape(-1, 0) cannot infer."""
    rows = t.numel() // n if n else math.prod(t.shape[:-1])
    t2 = t.reshape(rows, n)
    return t2 if t2.stride(-1) == 1 or n <= 1 else t2.contiguous()


def _flat_param(p: Optional[Tensor], n: int) -> Optional[Tensor]:
    """A weight / bias of any normalized_shape as a contiguous (n,) vector."""
    return p.reshape(n).contiguous() if p is not None else None


def autocast_off(fn):
    """Run a custom op's body with autocast off: bigmodel.ops already cast the inputs for autocast, and the
    kernels and the reference pick their own (fp32-accumulating) precision inside."""
    @functools.wraps(fn)
    def body(*args):
        device = next(a.device.type for a in args if isinstance(a, Tensor))
        with torch.autocast(device, enabled=False):
            return fn(*args)
    return body


def _empty_grad(like: Tensor) -> Tensor:
    """Placeholder output for a gradient that does not exist (custom ops cannot return None)."""
    return like.new_empty(0)


from . import attention, cross_entropy, feed_forward, layer_norm, rms_norm, rotary  # noqa: E402,F401  (each registers its ops)
from . import linear_cross_entropy  # noqa: E402,F401  (bigmodel::linear_cross_entropy, chunked)
from . import attention_decode  # noqa: E402,F401  (bigmodel::attention_decode, KV-cache decode)
