"""Checkpoints: saving and restoring the full model, optimizer, data and RNG state; metrics.jsonl on resume."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from .config import CHECKPOINT, PLAN_FIELDS, TrainConfig, TrainError
from .distributed import Dist

# Full (unsharded) state dicts keyed by parameter name, on rank 0's CPU (empty elsewhere). Under FSDP these
# are collectives: every rank calls them.
FULL_ON_CPU = dict(full_state_dict=True, cpu_offload=True)


def full_model_state(model) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(**FULL_ON_CPU))


def full_optimizer_state(model, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(**FULL_ON_CPU))


def rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def save_checkpoint(path: Path, model, optimizer, step: int, data_gen: torch.Generator, cfg: TrainConfig, mc,
                    d: Dist, device: torch.device):
    model_sd, optim_sd = full_model_state(model), full_optimizer_state(model, optimizer)
    rngs = [rng_state(device)]
    if d.world > 1:  # each rank's dropout RNG, so a resume in the same world size continues it exactly
        rngs = [None] * d.world
        dist.all_gather_object(rngs, rng_state(device))
    if d.main:
        ckpt = {"model": model_sd, "optimizer": optim_sd, "step": step, "data_rng": data_gen.get_state(),
                "rng": rngs, "world_size": d.world, "train_config": config_dict(cfg),
                "model_config": dataclasses.asdict(mc), "torch_version": str(torch.__version__)}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(ckpt, tmp)
        os.replace(tmp, path)  # atomic: a crash mid-save leaves the previous checkpoint intact
    if d.world > 1:
        dist.barrier()


def load_checkpoint(out: str | os.PathLike, mmap: bool = False) -> dict:
    path = Path(out) / CHECKPOINT
    if not path.is_file():
        raise TrainError(f"--resume: no {CHECKPOINT} in {out}")
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def config_dict(cfg: TrainConfig) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def restore(ckpt: dict, model, optimizer, data_gen: torch.Generator, d: Dist, device: torch.device, dropout: bool,
            log):
    """Optimizer state by parameter name (any world size / parallel mode), then the data and RNG states.
    The model weights were loaded before wrapping (see _train)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, ckpt["optimizer"], options=StateDictOptions(full_state_dict=True))
    data_gen.set_state(ckpt["data_rng"])
    rngs = ckpt["rng"]
    if len(rngs) == d.world:
        torch.set_rng_state(rngs[d.rank]["cpu"])
        if device.type == "cuda" and "cuda" in rngs[d.rank]:
            torch.cuda.set_rng_state(rngs[d.rank]["cuda"], device)
    else:  # data order and weights still continue exactly; only dropout masks differ
        torch.manual_seed(ckpt["train_config"]["seed"] + 1 + d.rank + 1000 * ckpt["step"])
        if dropout:
            log(f"note: checkpoint from {len(rngs)} process(es), resuming in {d.world}: the dropout masks differ "
                f"from an uninterrupted run (the data order and weights continue exactly)")


def plan_changes(cfg: TrainConfig, saved: dict) -> list[str]:
    now = config_dict(cfg)
    return [f"{k} {saved.get(k)!r} -> {now[k]!r}" for k in PLAN_FIELDS if saved.get(k) != now[k]]


def trim_metrics(path: Path, step: int):
    """Drop records past the checkpoint's step (written by the run that was interrupted after it)."""
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))
