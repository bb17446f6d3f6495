"""Processes and devices: torchrun's environment, the process group, the device, averaging across ranks."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .config import TrainConfig, TrainError

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    mode: str = "none"  # none | ddp | fsdp
    owns_group: bool = False  # this run created the process group (and destroys it at the end)

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(cfg: TrainConfig) -> tuple[Dist, torch.device]:
    """Read torchrun's environment, pick the device, and join (or create) the process group."""
    if dist.is_initialized():  # the caller set up the group
        world, rank = dist.get_world_size(), dist.get_rank()
    else:
        world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    mode = cfg.parallel if cfg.parallel != "auto" else ("ddp" if world > 1 else "none")
    if world > 1 and mode == "none":
        raise TrainError(f"{world} processes but --parallel none: use --parallel ddp or fsdp under torchrun")
    device = pick_device(cfg.device, local_rank)
    if cfg.batch_size % world:
        raise TrainError(f"--batch-size {cfg.batch_size} (global) must be divisible by the {world} processes")
    d = Dist(rank, world, local_rank, mode)
    if mode != "none" and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if "WORLD_SIZE" in os.environ:  # torchrun: env:// rendezvous
            dist.init_process_group(backend)
        else:  # one process asked for ddp/fsdp: a 1-rank group on an in-memory store (no port opened)
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        d.owns_group = True
    return d, device


def pick_device(name: str | None, local_rank: int) -> torch.device:
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise TrainError(f"--device {name!r}: {e}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainError(f"--device {name}: no CUDA GPU is visible")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise TrainError(f"--device must be cpu or cuda[:N]; got {name!r}")
    return device


def mean_across_ranks(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        t = t.clone()
        dist.all_reduce(t)
        t /= d.world
    return t
