"""Host-side tensor descriptors (TMA, Hopper's bulk tensor copy engine) for the attention kernels' (B, H, L, D) tiles.

A kernel built with TMA=True takes a triton.tools.tensor_descriptor.TensorDescriptor where it would take a data
pointer and loads a (1, 1, ROWS, D) box per tile: one copy instruction issued by one thread instead of every thread
computing addresses for cp.async, rows past L zero-filled by the copy engine (stores clipped), completion on an
mbarrier. Triton (3.6+) builds the CUtensorMap at launch from the descriptor's base / shape / strides / block shape.

The copy engine needs a 16-byte aligned base and 16-byte multiples for every stride but the last (which is 1), and no
zero strides (expanded views); head dims 64 / 128 (the box's row = the head dim, no padding columns). Where it cannot
run, the kernels take pointers (cp.async): sm_80, the interpreter (unless TMA_MODE is "1", for tests), other shapes.

BIGMODEL_TRITON_TMA: "auto" (default): sm_90+ where the inputs allow; "0": never; "1": also under the interpreter.
"""
import os

import torch

try:  # triton >= 3.4
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older triton
    TensorDescriptor = None

from ._utils import INTERPRETING

TMA_MODE = os.environ.get("BIGMODEL_TRITON_TMA", "auto")
TMA_HEAD_DIMS = (64, 128)


def usable(arch: int, *tensors) -> bool:
    """Whether the forward kernel may read / write these 4-D tensors through tensor descriptors on this arch."""
    if TensorDescriptor is None or TMA_MODE == "0":
        return False
    if INTERPRETING:
        if TMA_MODE != "1":
            return False
    elif arch < 90:
        return False
    first = tensors[0]
    if first.dtype not in (torch.float16, torch.bfloat16) or first.shape[3] not in TMA_HEAD_DIMS:
        return False
    for t in tensors:
        if t.data_ptr() % 16 or t.stride(3) != 1:
            return False
        for stride, size in zip(t.stride()[:3], t.shape[:3]):
            if size > 1 and (stride <= 0 or stride * t.element_size() % 16):
                return False
    return True


def descriptor(t: torch.Tensor, rows: int) -> "TensorDescriptor":
    """A (B, H, L, D) descriptor of t with a (1, 1, rows, D) box (the launch's pre-hook resets `rows` per config).
    The stride of a size-1 dim is never used to address anything: it is replaced by a valid one (the copy engine
    rejects strides that are not 16-byte multiples, which a size-1 dim may have)."""
    strides = list(t.stride())
    for i in (2, 1, 0):
        if t.shape[i] == 1:
            strides[i] = strides[i + 1] * t.shape[i + 1]
    return TensorDescriptor(t, list(t.shape), strides, [1, 1, rows, t.shape[3]])


def set_block_rows(nargs: dict, rows: dict) -> None:
    """Pre-launch hook: each descriptor argument named in `rows` gets the box height of the config about to run,
    e.g. {"Q": "BLOCK_M", "K": "BLOCK_N"} (the autotuner calls it with the config's values in nargs)."""
    for name, block in rows.items():
        d = nargs.get(name)
        if TensorDescriptor is not None and isinstance(d, TensorDescriptor):
            d.block_shape = [1, 1, nargs[block], d.block_shape[3]]
