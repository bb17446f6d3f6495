"""The model and its optimizer: config, build, DDP / FSDP2 wrapping, AdamW, the LR schedule, gradient clipping."""
from __future__ import annotations

import math

import torch

from .config import TrainConfig, TrainError
from .distributed import Dist

def model_config(cfg: TrainConfig):
    from ..models import TransformerConfig

    overrides = {"vocab_size": 256, **cfg.overrides}  # byte-level tokens whatever the preset's vocabulary
    try:
        mc = TransformerConfig.from_preset(cfg.preset, **overrides)
    except (TypeError, ValueError) as e:
        raise TrainError(f"--preset {cfg.preset} / --override: {e}")
    return mc


def check_model_config(mc, seq_len: int):
    if mc.vocab_size < 256:
        raise TrainError(f"vocab_size {mc.vocab_size} is too small for byte-level tokens (need >= 256)")
    if not mc.causal:
        raise TrainError("this preset is an encoder (causal=False); next-byte training needs a causal model "
                         "(--override causal=True)")
    if seq_len > mc.max_seq_len:
        raise TrainError(f"--seq-len {seq_len} exceeds the model's max_seq_len {mc.max_seq_len}; pass "
                         f"--override max_seq_len={seq_len} or a shorter --seq-len")


def check_backend(name: str | None):
    if name is None:
        return
    from .. import backends

    try:
        backends.check_name(name, "--backend")
    except ValueError as e:
        raise TrainError(str(e))
    reasons = backends.available_backends().get(name, [])
    if reasons:
        raise TrainError(f"--backend {name} cannot run on this machine: {'; '.join(reasons)}")


def saved_model_config(ckpt: dict):
    from ..models import TransformerConfig

    return TransformerConfig(**{**ckpt["model_config"], "backend": None})  # the backend is this run's choice


def build_model(mc, cfg: TrainConfig):
    """The same initial weights on every rank and device: seeded, built on the CPU."""
    from ..models import Transformer

    torch.manual_seed(cfg.seed)
    model = Transformer(mc)
    model.set_backend(cfg.backend)
    return model


def wrap_model(model, d: Dist, device: torch.device):
    """DDP, or FSDP2: fully_shard each block (its parameters are gathered only while it runs), then the root."""
    model.to(device)
    if d.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if d.mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in getattr(model, "blocks", []):
            fully_shard(block)
        fully_shard(model)
    return model


def unwrap(model):
    return model.module if hasattr(model, "module") else model  # DDP keeps the model in .module


def build_optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices (ndim >= 2) only: biases and norm gains are not shrunk toward 0."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then cosine down to lr * min_lr_ratio at cfg.steps (step counts from 0)."""
    warmup = cfg.warmup_steps
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.steps - warmup)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def clip_gradients(model, max_norm: float) -> torch.Tensor:
    """The global grad norm (before clipping); FSDP2's sharded grads are reduced to the full norm first."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params], 2.0)
    if hasattr(norm, "full_tensor"):  # a DTensor (FSDP2): the sum over shards
        norm = norm.full_tensor()
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm
