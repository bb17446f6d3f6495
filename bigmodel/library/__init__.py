"""torch.library custom ops `bigmodel::<op>`: one opaque, fake-tensor-aware node per op for torch.compile.

Each op takes the requested backend name as a string argument and picks the concrete backend when it
runs (backends.select), so tracing never looks inside a kernel. Autograd is registered on the forward op
and calls the `<op>_backward` custom op, which uses the same backend choice.
"""
from typing import Optional

import torch
from torch import Tensor


def row_view(t: Tensor, n: int) -> Tensor:
    """`t` as (rows, n) with unit column stride; copies only when no such view exists."""
    t2 = t.reshape(-1, n)
    return t2 if t2.stride(-1) == 1 or n == 1 else t2.contiguous()


def _flat_param(p: Optional[Tensor], n: int) -> Optional[Tensor]:
    """A weight / bias of any normalized_shape as a contiguous (n,) vector."""
    return p.reshape(n).contiguous() if p is not None else None


def _empty_grad(like: Tensor) -> Tensor:
    """Placeholder output for a gradient that does not exist (custom ops cannot return None)."""
    return like.new_empty(0)


from . import attention, feed_forward, layer_norm  # noqa: E402,F401  (each registers its torch.ops.bigmodel ops)
