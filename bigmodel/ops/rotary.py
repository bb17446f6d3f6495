"""bigmodel.ops.rotary: rotary position embeddings, x * cos + rotate_half(x) * sin, fused (forward and backward)."""
import numbers

import torch

from .. import backends
from . import _checks


def rotary(x, cos, sin, *, interleaved=False, backend=None):
    """Rotate x (..., L, D) (SDPA layout, heads before L) by the angles whose cos / sin are given, broadcastable to
    (..., L, R) as Hugging Face's rotary embeddings produce them ((B, L, R) needs an unsqueezed head dim:
    cos[:, None]). R = cos.size(-1) <= D features rotate (partial rotary, as Phi-3 / GPT-NeoX: the rest pass
    through). interleaved=False: Hugging Face's rotate_half (pairs i, i + R/2); True: GPT-J's pairs (2i, 2i + 1).
    Math in fp32; the backward is the rotation by -theta (cos / sin get a gradient on the torch backend only)."""
    op = "rotary"
    _checks.check_tensor(op, "x", x)
    _checks.check_tensor(op, "cos", cos)
    _checks.check_tensor(op, "sin", sin)
    if not isinstance(interleaved, (bool, numbers.Integral)):
        raise TypeError(f"bigmodel.ops.{op}: interleaved must be a bool; got {interleaved!r}")
    if x.dim() < 2:
        raise ValueError(f"bigmodel.ops.{op}: x must be (..., L, D); got shape {tuple(x.shape)}")
    if cos.shape != sin.shape:
        raise ValueError(f"bigmodel.ops.{op}: cos and sin must have one shape; got cos {tuple(cos.shape)} and sin "
                         f"{tuple(sin.shape)}")
    r, d = cos.size(-1) if cos.dim() else 0, x.size(-1)
    if r < 2 or r > d or r % 2:
        raise ValueError(f"bigmodel.ops.{op}: the rotary dim cos.size(-1) must be even and in [2, x.size(-1) = {d}]; "
                         f"got cos {tuple(cos.shape)}" + (" (interleaved pairs need an even dim)" if interleaved else ""))
    target = (*x.shape[:-1], r)
    try:
        ok = torch.broadcast_shapes(cos.shape, target) == torch.Size(target)
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"bigmodel.ops.{op}: cos / sin of shape {tuple(cos.shape)} do not broadcast to x's "
                         f"(..., L, R) = {target} (x is {tuple(x.shape)}; for Hugging Face's (B, L, R) tables pass "
                         "cos[:, None], as its apply_rotary_pos_emb unsqueezes them)")
    _checks.check_dtype_in(op, "cos", cos, (x.dtype, torch.float32), f"x is {x.dtype}")
    _checks.check_dtype_in(op, "sin", sin, (cos.dtype,), f"cos is {cos.dtype}")
    _checks.check_same_device(op, "x", x, cos=cos, sin=sin)
    interleaved = bool(interleaved)

    impl = backends.select(op, backends.requested(backend), training=_checks.needs_grad(x, cos, sin),
                           trial=lambda b, fresh: rotary(fresh(x), fresh(cos), fresh(sin), interleaved=interleaved,
                                                         backend=b),
                           input=x, cos=cos, sin=sin, interleaved=interleaved)
    if impl.name == "torch":
        return impl.rotary(x, cos, sin, interleaved)
    x4 = x.reshape(-1, *x.shape[-3:]) if x.dim() >= 3 else x.reshape(1, 1, *x.shape)  # (B, H, L, D)
    x4 = x4 if x4.stride(-1) == 1 else x4.contiguous()
    # Views (stride 0 on broadcast dims) with a unit last stride, which the kernel assumes; x of rank > 4 with
    # tables that cannot merge its leading dims gets copies of them.
    c4, s4 = (t.expand(target).reshape(x4.shape[:-1] + (r,)) for t in (cos, sin))
    c4, s4 = (t if t.stride(-1) == 1 else t.contiguous() for t in (c4, s4))
    y = torch.ops.bigmodel.rotary(x4, c4, s4, interleaved, impl.name)
    return y.view(x.shape)
