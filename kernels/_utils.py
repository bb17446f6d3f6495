"""Launch helpers shared by the kernel files."""
import os
from dataclasses import dataclass, field

import torch
import triton


def interpreting() -> bool:
    """True when TRITON_INTERPRET asks Triton to run kernels on the CPU with numpy."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# What the @triton.jit decorators of the kernel files saw (each imports this module first): setting the
# variable later changes nothing, so the backend asks this, not the environment.
INTERPRETING = interpreting()


def num_parallel_programs(device: torch.device) -> int:
    """How many persistent programs fill the device: 4 per SM on a GPU; few under the interpreter,
    which runs one program instance at a time."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


@dataclass(frozen=True)
class CompileSpec:
    """One kernel at one launch config, for the static GPU-compile test (see tests/test_static_compile.py).
    `signature` maps each runtime argument to its Triton type ('*fp16', 'i32', 'fp32', ...)."""
    name: str
    fn: object
    signature: dict
    constexprs: dict
    num_warps: int = 4
    num_stages: int = 3
    require_no_spills: bool = True  # no local memory / stack frame (spills) at this config
    expect_wgmma: bool = False  # a matmul-bound kernel: its sm_90 PTX must use wgmma
    tags: tuple = field(default_factory=tuple)
    archs: tuple = (80, 90)  # the compute capabilities whose launcher can pick this config
    # Arguments the runtime specialises as divisible by 16 (pointers: 16-byte aligned; ints: multiples of 16) for
    # the inputs this spec stands for; a compile that honours it passes them as tt.divisibility attributes.
    aligned_args: tuple = ()
    # ptxas performance notes (e.g. "C7515") this config is known to get on sm_90, with the reason it still ships;
    # tests/test_static_compile.py fails on any other note, and on a listed note that has gone (update the list).
    allowed_perf_notes: dict = field(default_factory=dict)
    # Why this expect_wgmma config still issues wgmmas with N < 32 in its hot loop ("" = it must not); the test
    # fails on an unlisted narrow build and on a listed one that is no longer narrow.
    known_narrow_wgmma: str = ""


TL_DTYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def warps_for(elements: int, per_thread: int, max_warps: int = 16) -> int:
    """Warps (4 to max_warps) so that each thread holds about `per_thread` elements of a power-of-two tile."""
    return max(4, min(max_warps, elements // (32 * per_thread)))
