"""Validation of attention's extras (window, softcap, sinks, alibi_slopes) and of the packed (varlen) layout,
shared by bigmodel.ops.attention and bigmodel.ops.attention_varlen. Errors name the argument, what was expected
and what arrived. The semantics: kernels/limits.py AttentionExtras."""
import math
import numbers

import torch

from bigmodel.kernels.limits import NO_EXTRAS, AttentionExtras

from ..library.attention import make_extras
from . import _checks


def check_window(op, window):
    """window=(left, right), each an int >= 0 or None (unbounded side) -> (left, right); None -> (None, None).
    FlashAttention's -1 for an unbounded side is spelled None here: a negative size is an error."""
    if window is None:
        return None, None
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise TypeError(f"bigmodel.ops.{op}: window must be None or a (left, right) pair of ints >= 0 (None for an "
                        f"unbounded side); got {window!r}")
    sides = []
    for side, w in zip(("left", "right"), window):
        if w is None:
            sides.append(None)
            continue
        if isinstance(w, bool) or not isinstance(w, numbers.Integral):
            raise TypeError(f"bigmodel.ops.{op}: window's {side} size must be an int >= 0 or None; got "
                            f"{type(w).__name__} {w!r} (window={window!r})")
        if w < 0:
            raise ValueError(f"bigmodel.ops.{op}: window's {side} size must be >= 0 (None, not -1, for an unbounded "
                             f"side); got {w} (window={window!r})")
        sides.append(int(w))
    return sides[0], sides[1]


def check_softcap(op, softcap):
    if softcap is None:
        return None
    if isinstance(softcap, bool) or not isinstance(softcap, numbers.Real) or not (math.isfinite(softcap)
                                                                                   and softcap > 0):
        raise ValueError(f"bigmodel.ops.{op}: softcap must be a positive finite float or None; got {softcap!r}")
    return float(softcap)


def check_head_vector(op, name, t, q, heads):
    """sinks / alibi_slopes: a 1-D floating tensor of length Hq on q's device."""
    if t is None:
        return
    _checks.check_tensor(op, name, t)
    if t.dim() != 1 or t.size(0) != heads:
        raise ValueError(f"bigmodel.ops.{op}: {name} must have shape ({heads},) (one value per query head); got "
                         f"{tuple(t.shape)}")
    if t.device != q.device:
        raise ValueError(f"bigmodel.ops.{op}: {name} is on {t.device} but q is on {q.device}; all tensors must be "
                         "on one device")


def check_extras(op, q, heads, window, softcap, sinks, alibi_slopes):
    """Validated extras -> (window_left, window_right, softcap). sinks may require grad (gpt-oss learns them);
    alibi_slopes gets no gradient (as FlashAttention's), so slopes that require grad are refused."""
    left, right = check_window(op, window)
    softcap = check_softcap(op, softcap)
    check_head_vector(op, "sinks", sinks, q, heads)
    check_head_vector(op, "alibi_slopes", alibi_slopes, q, heads)
    if alibi_slopes is not None and alibi_slopes.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"bigmodel.ops.{op}: alibi_slopes gets no gradient (as in FlashAttention); it requires "
                         "grad: pass alibi_slopes.detach()")
    return left, right, softcap


def backend_extras(left, right, softcap, alibi_slopes, sinks, cu_seqlens_q=None, cu_seqlens_k=None,
                   max_seqlen_q=0, max_seqlen_k=0, fp32=True, dtype=torch.float32):
    """The AttentionExtras the backends judge (select) and run: (Hq,) tensors detached, fp32 and contiguous, as
    the custom op builds them (fp64 for dtype fp64; fp32=False keeps their dtype: the torch backend's SDPA bias); NO_EXTRAS when none
    is on."""
    if fp32:
        return make_extras(left, right, softcap, alibi_slopes, sinks, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                           max_seqlen_k, dtype)
    if left is None and right is None and softcap is None and alibi_slopes is None and sinks is None:
        return NO_EXTRAS
    detach = (lambda t: None if t is None else t.detach())
    return AttentionExtras(left, right, softcap, detach(alibi_slopes), detach(sinks))


def check_dropout_scale(op, dropout_p, scale, head_dim):
    """dropout_p in [0, 1), scale finite or None -> the scale as a float (None: 1 / sqrt(D))."""
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"bigmodel.ops.{op}: dropout_p must be a float in [0, 1); got {dropout_p!r}")
    if scale is not None and (not isinstance(scale, numbers.Real) or not math.isfinite(scale)):
        raise ValueError(f"bigmodel.ops.{op}: scale must be a finite float or None; got {scale!r}")
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def check_cu_seqlens(op, q, cu_seqlens_q, cu_seqlens_k, total_q, total_k, max_seqlen_q, max_seqlen_k):
    """cu_seqlens_q / _k: int32, 1-D, (batch + 1,) each, on q's device; on the host (one sync; skipped while
    torch.compile traces): start at 0, non-decreasing, end at total_q / total_k, and no sequence longer than
    max_seqlen_q / max_seqlen_k."""
    for name, t in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"bigmodel.ops.{op}: {name} must be a torch.Tensor (int32, shape (batch + 1,)); got "
                            f"{type(t).__name__}")
        if t.dtype != torch.int32:
            raise TypeError(f"bigmodel.ops.{op}: {name} must have dtype int32 (FlashAttention's layout); got "
                            f"{str(t.dtype).replace('torch.', '')}")
        if t.dim() != 1 or t.numel() < 1:
            raise ValueError(f"bigmodel.ops.{op}: {name} must be 1-D of shape (batch + 1,) with at least one entry; "
                             f"got shape {tuple(t.shape)}")
        if t.device != q.device:
            raise ValueError(f"bigmodel.ops.{op}: {name} is on {t.device} but q is on {q.device}; all tensors must "
                             "be on one device")
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError(f"bigmodel.ops.{op}: cu_seqlens_q and cu_seqlens_k must have the same length (batch + 1); "
                         f"got {cu_seqlens_q.numel()} and {cu_seqlens_k.numel()}")
    for name, m in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if isinstance(m, bool) or not isinstance(m, numbers.Integral) or m < 0:
            raise ValueError(f"bigmodel.ops.{op}: {name} must be an int >= 0; got {m!r}")
    if torch.compiler.is_compiling():
        return
    n = cu_seqlens_q.numel()
    both = torch.cat((cu_seqlens_q, cu_seqlens_k)).tolist()  # the one host sync
    for name, cu, total, total_name, longest_name, longest in (
            ("cu_seqlens_q", both[:n], total_q, "total_q (q.size(0))", "max_seqlen_q", max_seqlen_q),
            ("cu_seqlens_k", both[n:], total_k, "total_k (k.size(0))", "max_seqlen_k", max_seqlen_k)):
        if cu[0] != 0:
            raise ValueError(f"bigmodel.ops.{op}: {name} must start at 0; got {cu[0]} ({_show(cu)})")
        lengths = [b - a for a, b in zip(cu[:-1], cu[1:])]
        if any(length < 0 for length in lengths):
            at = next(i for i, length in enumerate(lengths) if length < 0)
            raise ValueError(f"bigmodel.ops.{op}: {name} must be non-decreasing; entry {at + 1} ({cu[at + 1]}) < "
                             f"entry {at} ({cu[at]}) ({_show(cu)})")
        if cu[-1] != total:
            raise ValueError(f"bigmodel.ops.{op}: {name}'s last entry must equal {total_name} = {total}; got "
                             f"{cu[-1]} ({_show(cu)})")
        if lengths and max(lengths) > longest:
            raise ValueError(f"bigmodel.ops.{op}: {longest_name} = {longest} is smaller than the longest sequence "
                             f"in {name}, {max(lengths)}")


def _show(cu, limit=8):
    return "[" + ", ".join(map(str, cu[:limit])) + (", ...]" if len(cu) > limit else "]")
