"""bigmodel.ops.rotary: rotary position embeddings, x * cos + rotate_half(x) * sin, fused (forward and backward);
bigmodel.ops.rotary_qk: q and k together in one launch (Hugging Face's apply_rotary_pos_emb)."""
import numbers

import torch

from .. import backends
from . import _checks


def _check(op, x, cos, sin, interleaved, x_name="x"):
    """The argument checks of one rotated tensor; returns the (..., L, R) shape cos / sin broadcast to."""
    _checks.check_tensor(op, x_name, x)
    _checks.check_tensor(op, "cos", cos)
    _checks.check_tensor(op, "sin", sin)
    if not isinstance(interleaved, (bool, numbers.Integral)):
        raise TypeError(f"bigmodel.ops.{op}: interleaved must be a bool; got {interleaved!r}")
    if x.dim() < 2:
        raise ValueError(f"bigmodel.ops.{op}: {x_name} must be (..., L, D); got shape {tuple(x.shape)}")
    if cos.shape != sin.shape:
        raise ValueError(f"bigmodel.ops.{op}: cos and sin must have one shape; got cos {tuple(cos.shape)} and sin "
                         f"{tuple(sin.shape)}")
    r, d = cos.size(-1) if cos.dim() else 0, x.size(-1)
    if r < 2 or r > d or r % 2:
        raise ValueError(f"bigmodel.ops.{op}: the rotary dim cos.size(-1) must be even and in [2, {x_name}.size(-1) "
                         f"= {d}]; got cos {tuple(cos.shape)}" +
                         (" (interleaved pairs need an even dim)" if interleaved else ""))
    target = (*x.shape[:-1], r)
    try:
        ok = torch.broadcast_shapes(cos.shape, target) == torch.Size(target)
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"bigmodel.ops.{op}: cos / sin of shape {tuple(cos.shape)} do not broadcast to {x_name}'s "
                         f"(..., L, R) = {target} ({x_name} is {tuple(x.shape)}; for Hugging Face's (B, L, R) tables "
                         "pass cos[:, None], as its apply_rotary_pos_emb unsqueezes them)")
    _checks.check_dtype_in(op, "cos", cos, (x.dtype, torch.float32), f"{x_name} is {x.dtype}")
    _checks.check_dtype_in(op, "sin", sin, (cos.dtype,), f"cos is {cos.dtype}")
    _checks.check_same_device(op, x_name, x, cos=cos, sin=sin)
    return target


def _kernel_views(x, cos, sin, target):
    """x as (B, H, L, D) with a unit last stride, and cos / sin as (B, H, L, R) views of it (stride 0 on broadcast
    dims, unit last stride, which the kernels assume); x of rank > 4 with tables that cannot merge its leading dims
    gets copies of them."""
    x4 = x.reshape(-1, *x.shape[-3:]) if x.dim() >= 3 else x.reshape(1, 1, *x.shape)
    x4 = x4 if x4.stride(-1) == 1 else x4.contiguous()
    c4, s4 = (t.expand(target).reshape(x4.shape[:-1] + (target[-1],)) for t in (cos, sin))
    c4, s4 = (t if t.stride(-1) == 1 else t.contiguous() for t in (c4, s4))
    return x4, c4, s4


def rotary(x, cos, sin, *, interleaved=False, backend=None):
    """Rotate x (..., L, D) (SDPA layout, heads before L) by the angles whose cos / sin are given, broadcastable to
    (..., L, R) as Hugging Face's rotary embeddings produce them ((B, L, R) needs an unsqueezed head dim:
    cos[:, None]). R = cos.size(-1) <= D features rotate (partial rotary, as Phi-3 / GPT-NeoX: the rest pass
    through). interleaved=False: Hugging Face's rotate_half (pairs i, i + R/2); True: GPT-J's pairs (2i, 2i + 1).
    Math in fp32; the backward is the rotation by -theta (cos / sin get a gradient on the torch backend only)."""
    op = "rotary"
    target = _check(op, x, cos, sin, interleaved)
    interleaved = bool(interleaved)
    impl = backends.select(op, backends.requested(backend), training=_checks.needs_grad(x, cos, sin),
                           trial=lambda b, fresh: rotary(fresh(x), fresh(cos), fresh(sin), interleaved=interleaved,
                                                         backend=b),
                           input=x, cos=cos, sin=sin, interleaved=interleaved)
    if impl.name == "torch":
        return impl.rotary(x, cos, sin, interleaved)
    x4, c4, s4 = _kernel_views(x, cos, sin, target)
    return torch.ops.bigmodel.rotary(x4, c4, s4, interleaved, impl.name).view(x.shape)


def rotary_qk(q, k, cos, sin, *, interleaved=False, backend=None):
    """(rotary(q, cos, sin), rotary(k, cos, sin)) in one kernel launch: Hugging Face's apply_rotary_pos_emb with the
    tables already unsqueezed. q (..., Hq, L, D) and k (..., Hk, Lk, D) may differ in heads (GQA) and in the
    leading dims the tables broadcast over; cos / sin must broadcast to both. Backends without a fused q + k kernel
    run it as two rotary launches; the torch backend composes PyTorch ops (and gives cos / sin a gradient)."""
    op = "rotary_qk"
    target_q = _check(op, q, cos, sin, interleaved, "q")
    target_k = _check(op, k, cos, sin, interleaved, "k")
    if k.dtype != q.dtype or k.size(-1) != q.size(-1):
        raise ValueError(f"bigmodel.ops.{op}: k must have q's dtype and head dim ({q.dtype}, {q.size(-1)}); got "
                         f"{k.dtype}, {k.size(-1)}")
    _checks.check_same_device(op, "q", q, k=k)
    interleaved = bool(interleaved)
    impl = backends.select("rotary", backends.requested(backend), training=_checks.needs_grad(q, k, cos, sin),
                           trial=lambda b, fresh: rotary_qk(fresh(q), fresh(k), fresh(cos), fresh(sin),
                                                            interleaved=interleaved, backend=b),
                           input=q, key=k, cos=cos, sin=sin, interleaved=interleaved)
    if impl.name == "torch":
        return impl.rotary(q, cos, sin, interleaved), impl.rotary(k, cos, sin, interleaved)
    q4, cq, sq = _kernel_views(q, cos, sin, target_q)
    k4, ck, sk = _kernel_views(k, cos, sin, target_k)
    yq, yk = torch.ops.bigmodel.rotary_qk(q4, k4, cq, sq, ck, sk, interleaved, impl.name)
    return yq.view(q.shape), yk.view(k.shape)
