"""Input validation shared by the public ops: errors name the argument, what was expected, what arrived."""
import math
import numbers

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def check_tensor(op: str, name: str, t, dtypes=FLOAT_DTYPES, optional=False):
    """`t` is a tensor of one of `dtypes` (or None when optional)."""
    if t is None and optional:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"bigmodel.ops.{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        expected = ", ".join(_dtype_name(d) for d in dtypes)
        raise TypeError(f"bigmodel.ops.{op}: {name} must have dtype {expected}; got {_dtype_name(t.dtype)}")


def check_same_device(op: str, ref_name: str, ref: torch.Tensor, **others):
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"bigmodel.ops.{op}: {name} is on {t.device} but {ref_name} is on {ref.device}; "
                             "all tensors must be on one device")


def check_dtype_in(op: str, name: str, t, allowed: tuple, why: str):
    if t is not None and t.dtype not in allowed:
        expected = " or ".join(_dtype_name(d) for d in dict.fromkeys(allowed))
        raise TypeError(f"bigmodel.ops.{op}: {name} must have dtype {expected} ({why}); got {_dtype_name(t.dtype)}")


def check_shape(op: str, name: str, t, expected: tuple, what: str = ""):
    if t is not None and tuple(t.shape) != tuple(expected):
        raise ValueError(f"bigmodel.ops.{op}: {name} must have shape {tuple(expected)}{what}; got {tuple(t.shape)}")


def normalized_shape_of(op: str, input: torch.Tensor, normalized_shape) -> tuple:
    """normalized_shape as a tuple of positive ints equal to input's last dims (F.layer_norm / F.rms_norm's rule)."""
    shape = (normalized_shape,) if isinstance(normalized_shape, numbers.Integral) else tuple(normalized_shape)
    if not shape or any(not isinstance(s, numbers.Integral) or s <= 0 for s in shape):
        raise ValueError(f"bigmodel.ops.{op}: normalized_shape must be a non-empty sequence of positive ints; "
                         f"got {normalized_shape!r}")
    k = len(shape)
    if input.dim() < k or tuple(input.shape[-k:]) != shape:
        raise ValueError(f"bigmodel.ops.{op}: normalized_shape {list(shape)} must match the last {k} dim(s) of "
                         f"input; input has shape {tuple(input.shape)}")
    return tuple(int(s) for s in shape)


def check_eps(op: str, eps):
    if not isinstance(eps, numbers.Real) or eps < 0:
        raise ValueError(f"bigmodel.ops.{op}: eps must be a non-negative float; got {eps!r}")


def autocast_inputs(*tensors):
    """Under torch.autocast, the floating tensors in the autocast dtype, as autocast does for F.linear and SDPA
    (custom ops are not on autocast's lists, so the ops cast their own inputs); otherwise unchanged."""
    first = next((t for t in tensors if isinstance(t, torch.Tensor)), None)
    if first is None or not torch.is_autocast_enabled(first.device.type):
        return tensors
    dtype = torch.get_autocast_dtype(first.device.type)
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in tensors)


def needs_grad(*tensors) -> bool:
    """Training mode for auto's measured key: grad is enabled and some input requires grad."""
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def rows_like(t: torch.Tensor, n: int, rows: int) -> torch.Tensor:
    """A stand-in with t's dtype and device shaped as the (rows, n) matrix the row kernels see, for the backends'
    not_supported_reasons (they read sizes, dtype and device only): a stride-0 expanded view of one element, so
    judging a non-contiguous input copies nothing."""
    return t.new_empty(1, 1).expand(rows, n)
