"""Train a bigmodel Transformer on bytes: one process, or data-parallel under torchrun (DDP or FSDP2).

    python -m bigmodel train --steps 300                          # tiny preset on the built-in corpus
    python -m bigmodel train --data notes.txt --out run1          # your text; checkpoint in run1/
    python -m bigmodel train --out run1 --resume --steps 600      # continue run1 (its settings are reused)
    torchrun --nproc_per_node 2 -m bigmodel train --parallel fsdp --batch-size 64

Determinism contract (what the tests check):
* Every rank draws the same global batch from one seeded generator and trains on its own slice, and gradients
  are averaged across ranks, so N processes follow the single-process loss trajectory on the same global batch
  (up to float rounding: the reductions are split differently).
* A checkpoint holds the full (unsharded) model and optimizer state keyed by parameter name, the step, the data
  generator and the RNG states, and the configs. `--resume` continues exactly: its losses equal those of a run
  that was never interrupted. It loads in any world size and parallel mode.
* The LR schedule spans --steps; --stop-at ends a run early (as an interruption would) without changing it.

Tokens are bytes (vocab 256). Data: `--data FILE`, or the *.txt files in bigmodel/data/; each file's last 10% is
the held-out split for the eval loss.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

DATA_DIR = Path(__file__).resolve().parent / "data"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
HELD_OUT = 0.1  # fraction of each text file kept for the eval loss
PARALLEL = ("auto", "none", "ddp", "fsdp")
PRECISIONS = ("auto", "bf16", "fp32")
# Settings that shape the trajectory: a resume that changes any of them no longer matches an uninterrupted run.
PLAN_FIELDS = ("preset", "overrides", "data", "steps", "batch_size", "seq_len", "lr", "min_lr_ratio", "warmup",
               "weight_decay", "betas", "grad_clip", "seed", "precision", "backend")
# What `--resume` takes from the checkpoint unless given again: the plan, and the eval / log / save rhythm.
# Not where it runs (device, parallel, out, ...): a checkpoint resumes on any machine and world size.
RESUMED_FIELDS = PLAN_FIELDS + ("eval_every", "eval_batches", "log_every", "save_every", "sample")


class TrainError(ValueError):
    """A bad setting or input, reported to the user as one clear message."""


@dataclass
class TrainConfig:
    preset: str = "tiny"
    overrides: dict = field(default_factory=dict)  # TransformerConfig fields, e.g. {"d_model": 64}
    data: str | None = None  # a text file; None = the built-in corpus
    steps: int = 500  # total optimizer steps (the LR schedule's length)
    stop_at: int | None = None  # end this run after this step (checkpointed); None = steps
    batch_size: int = 32  # global: split across ranks
    seq_len: int | None = None  # None = the model's max_seq_len
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio
    warmup: int | None = None  # linear warmup steps; None = min(100, steps // 10)
    weight_decay: float = 0.1  # on matrices only (embeddings and weights), not on biases / norms
    betas: tuple = (0.9, 0.95)
    grad_clip: float = 1.0  # max global grad norm; 0 = no clipping
    eval_every: int = 100  # steps between eval losses (and one at the end); 0 = only at the end
    eval_batches: int = 8  # batches (of batch_size) per eval; 0 = no eval
    log_every: int = 10
    save_every: int = 0  # steps between checkpoints (one is always written at the end when out is set)
    seed: int = 0
    device: str | None = None  # None = cuda if available, else cpu
    backend: str | None = None  # "torch", "triton", "cuda", "auto"; None = the process-wide choice
    parallel: str = "auto"  # auto = ddp under torchrun with several processes, none otherwise
    precision: str = "auto"  # auto = bf16 autocast on GPU, fp32 on CPU
    out: str | None = None  # checkpoint + metrics.jsonl folder
    resume: bool = False
    sample: int = 200  # bytes to generate at the end (0 = none)
    progress: bool | None = None  # tqdm bar; None = when stderr is a terminal
    verbose: bool = True  # print progress and the summary (rank 0 only)

    def validate(self) -> "TrainConfig":
        for name in ("steps", "batch_size", "log_every"):
            _check_int(name, getattr(self, name), 1)
        for name in ("eval_every", "eval_batches", "save_every", "sample"):
            _check_int(name, getattr(self, name), 0)
        for name, low in (("seq_len", 1), ("warmup", 0), ("stop_at", 1)):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), low)
        if self.stop_at is not None and self.stop_at > self.steps:
            raise TrainError(f"--stop-at {self.stop_at} is past --steps {self.steps}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise TrainError(f"--lr must be > 0 and min_lr_ratio in [0, 1]; got {self.lr}, {self.min_lr_ratio}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise TrainError(f"--weight-decay and --grad-clip must be >= 0; got {self.weight_decay}, {self.grad_clip}")
        _check_choice("parallel", self.parallel, PARALLEL)
        _check_choice("precision", self.precision, PRECISIONS)
        if self.resume and not self.out:
            raise TrainError("--resume needs --out DIR (the folder holding checkpoint.pt)")
        if self.data is not None and not Path(self.data).is_file():
            raise TrainError(f"--data {self.data}: no such file")
        return self

    @property
    def warmup_steps(self) -> int:
        return self.warmup if self.warmup is not None else min(100, self.steps // 10)

    @property
    def last_step(self) -> int:
        return self.stop_at or self.steps


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise TrainError(f"--{name.replace('_', '-')} must be an integer >= {low}; got {value!r}")


def _check_choice(name, value, choices):
    if value not in choices:
        raise TrainError(f"--{name} must be one of {', '.join(choices)}; got {value!r}")


# ------------------------------------------------------------------------------------------ data
@dataclass
class Corpus:
    train: torch.Tensor  # uint8 bytes
    val: torch.Tensor
    source: str


def load_corpus(path: str | None) -> Corpus:
    """Bytes of one user file, or of the built-in *.txt files; the last HELD_OUT of each file is held out."""
    files = [Path(path)] if path else sorted(DATA_DIR.glob("*.txt"))
    if not files:
        raise TrainError(f"no built-in corpus in {DATA_DIR} (a broken install?); pass --data FILE")
    train, val = [], []
    for f in files:
        raw = f.read_bytes()
        cut = len(raw) - int(len(raw) * HELD_OUT)
        train.append(raw[:cut])
        val.append(raw[cut:])
    source = str(files[0]) if path else f"built-in corpus ({len(files)} files in {DATA_DIR})"
    as_tensor = lambda parts: torch.frombuffer(bytearray(b"".join(parts)), dtype=torch.uint8)  # noqa: E731
    return Corpus(as_tensor(train), as_tensor(val), source)


def check_corpus(corpus: Corpus, seq_len: int, eval_batches: int):
    need = seq_len + 2  # one window of seq_len + 1 bytes, and more than one start position
    if len(corpus.train) < need:
        raise TrainError(f"{corpus.source}: {len(corpus.train)} training bytes, need at least {need} for "
                         f"--seq-len {seq_len}; use a longer file or a shorter --seq-len")
    if eval_batches and len(corpus.val) < need:
        raise TrainError(f"{corpus.source}: the held-out split ({len(corpus.val)} bytes, the last "
                         f"{HELD_OUT:.0%}) is shorter than {need} bytes for --seq-len {seq_len}; use a longer "
                         f"file, a shorter --seq-len, or --eval-batches 0")


def get_batch(data: torch.Tensor, gen: torch.Generator, batch_size: int, seq_len: int, rank: int, world: int,
              device) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's slice of a global batch of random windows: inputs and next-byte targets, (B / world, L).
    Every rank draws all batch_size starts so the generators stay in step and the slices tile the global batch."""
    starts = torch.randint(0, len(data) - seq_len, (batch_size,), generator=gen)
    per_rank = batch_size // world
    starts = starts[rank * per_rank:(rank + 1) * per_rank]
    windows = data[starts[:, None] + torch.arange(seq_len + 1)].long()  # (B / world, L + 1)
    windows = windows.to(device, non_blocking=True)
    return windows[:, :-1], windows[:, 1:]


# ------------------------------------------------------------------------------------------ distributed
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


# ------------------------------------------------------------------------------------------ model + optimizer
def model_config(cfg: TrainConfig):
    from .models import TransformerConfig

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
    from . import backends

    try:
        backends.check_name(name, "--backend")
    except ValueError as e:
        raise TrainError(str(e))
    reasons = backends.available_backends().get(name, [])
    if reasons:
        raise TrainError(f"--backend {name} cannot run on this machine: {'; '.join(reasons)}")


def saved_model_config(ckpt: dict):
    from .models import TransformerConfig

    return TransformerConfig(**{**ckpt["model_config"], "backend": None})  # the backend is this run's choice


def build_model(mc, cfg: TrainConfig):
    """The same initial weights on every rank and device: seeded, built on the CPU."""
    from .models import Transformer

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


# ------------------------------------------------------------------------------------------ checkpoints
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


# ------------------------------------------------------------------------------------------ the loop
def autocast_context(precision: str, device: torch.device):
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        return precision, lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return precision, contextlib.nullcontext


def loss_fn(model, x, y, amp) -> torch.Tensor:
    with amp():
        logits = model(x)
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))


@torch.no_grad()
def evaluate(model, corpus: Corpus, cfg: TrainConfig, seq_len: int, d: Dist, device, amp) -> float:
    """Mean loss on the same held-out windows every time (a fixed seed), so evals are comparable."""
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    model.eval()
    total = torch.zeros((), device=device)
    for _ in range(cfg.eval_batches):
        x, y = get_batch(corpus.val, gen, cfg.batch_size, seq_len, d.rank, d.world, device)
        total += loss_fn(model, x, y, amp)
    model.train()
    return mean_across_ranks(total / cfg.eval_batches, d).item()


@contextlib.contextmanager
def stop_on_ctrl_c(enabled: bool):
    """First Ctrl-C: finish the step in flight, checkpoint, stop. A second one interrupts at once.
    Only for one process: ranks that noticed it at different steps would deadlock in their collectives."""
    flag = {"stop": False}
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


class Reporter:
    """Rank 0's output: a tqdm bar on a terminal, plain lines otherwise, and out/metrics.jsonl."""

    def __init__(self, cfg: TrainConfig, d: Dist, start: int, metrics_path: Path | None):
        self.enabled = cfg.verbose and d.main
        self.metrics_path = metrics_path if d.main else None
        self.bar = None
        use_bar = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
        if self.enabled and use_bar:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=cfg.last_step, initial=start, desc="train", unit="step", dynamic_ncols=True)
            except ImportError:  # tqdm is a dev extra: plain lines then
                pass

    def log(self, text: str):
        if self.enabled:
            (self.bar.write if self.bar is not None else functools.partial(print, flush=True))(text)

    def record(self, rows: list[dict]):
        if self.metrics_path is not None:
            with self.metrics_path.open("a") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)

    def advance(self):
        if self.bar is not None:
            self.bar.update(1)

    def progress(self, row: dict, last: int):
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:,.0f}", refresh=False)
        else:
            self.log(f"step {row['step']:>{len(str(last))}}/{last}  loss {row['loss']:.4f}  lr {row['lr']:.2e}  "
                     f"grad norm {row['grad_norm']:.3f}  {row['tokens_per_s']:,.0f} tokens/s")

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@dataclass
class Run:
    """Everything one training run holds, and the steps of its loop."""

    cfg: TrainConfig
    d: Dist
    device: torch.device
    mc: object  # TransformerConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    data_gen: torch.Generator
    corpus: Corpus
    seq_len: int
    amp: object
    reporter: Reporter
    step: int = 0
    losses: list = field(default_factory=list)
    evals: list = field(default_factory=list)
    pending: list = field(default_factory=list)  # unreduced (step, loss, grad norm): one collective per log line
    train_time: float = 0.0
    interval_start: float = field(default_factory=time.perf_counter)

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.batch_size * self.seq_len

    def train_step(self):
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, cfg)
        x, y = get_batch(self.corpus.train, self.data_gen, cfg.batch_size, self.seq_len, self.d.rank, self.d.world,
                         self.device)
        loss = loss_fn(self.model, x, y, self.amp)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = clip_gradients(self.model, cfg.grad_clip)
        self.optimizer.step()
        self.step += 1
        self.pending.append((self.step, loss.detach(), grad_norm.detach().to(loss.device)))
        self.reporter.advance()

    def flush_logs(self):
        """Average the pending losses over ranks, record them, and print one line."""
        if not self.pending:
            return
        stacked = torch.stack([torch.stack([loss, norm]) for _, loss, norm in self.pending])
        values = mean_across_ranks(stacked, self.d).tolist()  # .tolist() waits for the GPU: timing is right
        elapsed = time.perf_counter() - self.interval_start
        self.train_time += elapsed
        rows = [{"step": s, "loss": v[0], "lr": lr_at(s - 1, self.cfg), "grad_norm": v[1]}
                for (s, _, _), v in zip(self.pending, values)]
        rows[-1]["tokens_per_s"] = self.tokens_per_step * len(rows) / elapsed
        self.losses.extend(r["loss"] for r in rows)
        self.reporter.record(rows)
        self.reporter.progress(rows[-1], self.cfg.last_step)
        self.pending.clear()
        self.interval_start = time.perf_counter()

    def run_eval(self):
        self.flush_logs()
        value = evaluate(self.model, self.corpus, self.cfg, self.seq_len, self.d, self.device, self.amp)
        self.evals.append({"step": self.step, "eval_loss": value})
        self.reporter.record([self.evals[-1]])
        self.reporter.log(f"eval at step {self.step}: loss {value:.4f}")
        self.interval_start = time.perf_counter()  # eval time is not training time

    def save(self, out: Path):
        self.flush_logs()
        save_checkpoint(out / CHECKPOINT, self.model, self.optimizer, self.step, self.data_gen, self.cfg, self.mc,
                        self.d, self.device)
        self.reporter.log(f"checkpoint: {out / CHECKPOINT} (step {self.step})")
        self.interval_start = time.perf_counter()

    def loop(self, out: Path | None) -> bool:
        """Train to cfg.last_step; returns True when stopped early by Ctrl-C (after a checkpoint)."""
        cfg, start = self.cfg, self.step
        every = lambda n: n and self.step % n == 0 and self.step != cfg.last_step  # noqa: E731
        self.model.train()
        self.interval_start = time.perf_counter()
        interrupted = False
        with stop_on_ctrl_c(self.d.world == 1) as ctrl_c:
            while self.step < cfg.last_step and not interrupted:
                self.train_step()
                if self.step % cfg.log_every == 0:
                    self.flush_logs()
                if cfg.eval_batches and every(cfg.eval_every):
                    self.run_eval()
                if out is not None and every(cfg.save_every):
                    self.save(out)
                interrupted = ctrl_c["stop"]
        if interrupted:
            self.flush_logs()
            self.reporter.log(f"interrupted after step {self.step}")
        elif cfg.eval_batches:
            self.run_eval()
        self.flush_logs()
        if out is not None and self.step > start:
            self.save(out)
        self.reporter.close()
        return interrupted


def train(cfg: TrainConfig) -> dict:
    """Train as cfg says and return the final metrics (rank 0 also prints them). Under torchrun every rank
    calls this; the process group is destroyed at the end if this call created it."""
    cfg.validate()
    d, device = setup_distributed(cfg)
    try:
        with warnings.catch_warnings():
            # The model returns a view of the LM head's output; the loss never modifies it in place.
            warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
            return _train(cfg, d, device)
    finally:
        if d.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, d: Dist, device: torch.device) -> dict:
    out = Path(cfg.out) if cfg.out else None
    if out is not None and not cfg.resume and (out / CHECKPOINT).exists():
        raise TrainError(f"--out {out} already holds a checkpoint; pass --resume to continue it, or choose "
                         f"another folder")
    ckpt = load_checkpoint(out) if cfg.resume else None
    check_backend(cfg.backend)
    mc = saved_model_config(ckpt) if ckpt is not None else model_config(cfg)  # resume: the saved architecture
    seq_len = cfg.seq_len or mc.max_seq_len
    check_model_config(mc, seq_len)
    corpus = load_corpus(cfg.data)
    check_corpus(corpus, seq_len, cfg.eval_batches)

    model = build_model(mc, cfg)
    if ckpt is not None:  # full weights into the plain model: right for any world size and wrapping
        model.load_state_dict(ckpt["model"])
    n_params = sum(p.numel() for p in model.parameters())
    torch.manual_seed(cfg.seed + 1 + d.rank)  # dropout: a stream of its own per rank
    model = wrap_model(model, d, device)
    optimizer = build_optimizer(model, cfg)
    precision, amp = autocast_context(cfg.precision, device)
    start = ckpt["step"] if ckpt is not None else 0
    if out is not None and d.main:
        out.mkdir(parents=True, exist_ok=True)
        if ckpt is not None:
            trim_metrics(out / METRICS, start)
    reporter = Reporter(cfg, d, start, out / METRICS if out else None)
    run = Run(cfg, d, device, mc, model, optimizer, torch.Generator().manual_seed(cfg.seed), corpus, seq_len, amp,
              reporter, step=start)
    if ckpt is not None:
        restore(ckpt, model, optimizer, run.data_gen, d, device, mc.dropout > 0, reporter.log)
        changes = plan_changes(cfg, ckpt["train_config"])
        if changes:
            reporter.log("note: resuming with changed settings, so the run will not match an uninterrupted one: "
                         + ", ".join(changes))
    del ckpt
    if start >= cfg.last_step:
        reporter.log(f"nothing to train: the checkpoint is at step {start}; pass a larger --steps")
        reporter.close()
        return {**summarize(run, precision, start, n_params, out), "interrupted": False}
    log_plan(run, n_params, precision, start)
    interrupted = run.loop(out)
    metrics = summarize(run, precision, start, n_params, out)
    metrics["interrupted"] = interrupted
    if cfg.sample and not interrupted:
        metrics.update(make_sample(run))
    if d.main and cfg.verbose:
        print_summary(metrics)
    return metrics


def log_plan(run: Run, n_params: int, precision: str, start: int):
    cfg, d, mc, corpus, log = run.cfg, run.d, run.mc, run.corpus, run.reporter.log
    log(f"bigmodel train: {cfg.preset} (d_model {mc.d_model}, n_layers {mc.n_layers}, n_heads {mc.n_heads}, "
        f"{n_params / 1e6:.2f}M parameters) on {run.device}, {precision}, backend {cfg.backend or 'auto'}, "
        f"world size {d.world}, parallel {d.mode}")
    log(f"data: {corpus.source}: {len(corpus.train):,} training bytes, {len(corpus.val):,} held out; "
        f"batch {cfg.batch_size} x {run.seq_len} = {run.tokens_per_step:,} tokens/step")
    log(f"schedule: steps {start + 1}..{cfg.last_step} of {cfg.steps}; AdamW lr {cfg.lr:g} (warmup "
        f"{cfg.warmup_steps}, cosine to {cfg.lr * cfg.min_lr_ratio:g}), weight decay {cfg.weight_decay:g}, "
        f"grad clip {cfg.grad_clip:g}, seed {cfg.seed}")


def summarize(run: Run, precision: str, start: int, n_params: int, out: Path | None) -> dict:
    cfg, d, device = run.cfg, run.d, run.device
    tail = run.losses[-cfg.log_every:]
    return {
        "start_step": start, "step": run.step, "steps": cfg.steps, "losses": run.losses,
        "train_loss": sum(tail) / len(tail) if tail else None, "train_loss_steps": len(tail),
        "eval_loss": run.evals[-1]["eval_loss"] if run.evals else None, "eval_losses": run.evals,
        "tokens_per_s": run.tokens_per_step * len(run.losses) / run.train_time if run.train_time else None,
        "train_seconds": run.train_time, "parameters": n_params, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "precision": precision, "backend": cfg.backend or "auto", "world_size": d.world, "parallel": d.mode,
        "checkpoint": str(out / CHECKPOINT) if out else None,
    }


def make_sample(run: Run) -> dict:
    """Rank 0 continues a prompt from the held-out text with model.generate (when the model has one)."""
    from .models import Transformer

    if not hasattr(Transformer, "generate"):
        return {}
    cfg, d, device, mc = run.cfg, run.d, run.device, run.mc
    model = unwrap(run.model)
    if d.mode == "fsdp":  # sharded weights: gather them (every rank takes part) into a plain copy on rank 0
        state = full_model_state(run.model)
        if not d.main:
            return {}
        model = Transformer(dataclasses.replace(mc, backend=None)).to(device)
        model.load_state_dict(state)
        model.set_backend(cfg.backend)
    if not d.main:
        return {}
    prompt_bytes = bytes(run.corpus.val[:16].tolist())
    new = min(cfg.sample, mc.max_seq_len - len(prompt_bytes))
    prompt = torch.tensor([list(prompt_bytes)], device=device)
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), run.amp():
            torch.manual_seed(cfg.seed)
            ids = model.generate(prompt, max_new_tokens=new, temperature=0.8, top_k=50)
    except Exception as e:  # the run itself succeeded (and is saved): say why there is no sample
        return {"sample_error": f"{type(e).__name__}: {e}"}
    finally:
        model.train()
    return {"sample_prompt": prompt_bytes.decode("utf-8", "replace"),
            "sample": bytes(ids[0, len(prompt_bytes):].tolist()).decode("utf-8", "replace")}


def print_summary(m: dict):
    timing = "CPU timing" if m["device_name"] == "CPU" else m["device_name"]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    print(f"\nsummary: steps {m['start_step'] + 1}..{m['step']} of {m['steps']} (world size {m['world_size']}, "
          f"parallel {m['parallel']}, {m['precision']}, backend {m['backend']})")
    print(f"  train loss {fmt(m['train_loss'])} (mean of the last {m['train_loss_steps']} steps), eval loss "
          f"{fmt(m['eval_loss'])}")
    if m["tokens_per_s"]:
        print(f"  {m['tokens_per_s']:,.0f} tokens/s ({timing}), {m['train_seconds']:.1f} s training")
    if m["checkpoint"]:
        print(f"  checkpoint: {m['checkpoint']}")
    if "sample" in m:
        print(f"  sample (continuing {m['sample_prompt']!r}):\n{m['sample_prompt']}{m['sample']}")
    elif "sample_error" in m:
        print(f"  no sample: model.generate failed: {m['sample_error']}")
    sys.stdout.flush()


# ------------------------------------------------------------------------------------------ command line
def add_arguments(p: argparse.ArgumentParser):
    """The `train` flags. Defaults are left out of the namespace (SUPPRESS) so that --resume can tell which
    settings were given and take the rest from the checkpoint."""
    S, D = argparse.SUPPRESS, TrainConfig()
    p.add_argument("--preset", default=S, help=f"model preset (default: {D.preset})")
    p.add_argument("--override", action="append", default=S, metavar="KEY=VALUE[,KEY=VALUE]",
                   help="TransformerConfig fields, e.g. d_model=64,n_layers=2 (repeatable)")
    p.add_argument("--data", default=S, metavar="FILE", help="a text file (default: the built-in corpus)")
    p.add_argument("--steps", type=int, default=S, help=f"total optimizer steps (default: {D.steps})")
    p.add_argument("--stop-at", type=int, default=S, metavar="STEP",
                   help="end this run after STEP and checkpoint it; the LR schedule still spans --steps")
    p.add_argument("--batch-size", type=int, default=S, help=f"global batch, split across processes "
                   f"(default: {D.batch_size})")
    p.add_argument("--seq-len", type=int, default=S, help="window length in bytes (default: the model's max)")
    p.add_argument("--lr", type=float, default=S, help=f"peak learning rate (default: {D.lr:g})")
    p.add_argument("--warmup", type=int, default=S, help="warmup steps (default: min(100, steps / 10))")
    p.add_argument("--weight-decay", type=float, default=S, help=f"AdamW decay of matrices (default: "
                   f"{D.weight_decay:g})")
    p.add_argument("--grad-clip", type=float, default=S, help=f"max grad norm, 0 = off (default: {D.grad_clip:g})")
    p.add_argument("--eval-every", type=int, default=S, help=f"steps between eval losses (default: "
                   f"{D.eval_every}; 0 = only at the end)")
    p.add_argument("--eval-batches", type=int, default=S, help=f"batches per eval (default: {D.eval_batches}; "
                   f"0 = no eval)")
    p.add_argument("--log-every", type=int, default=S, help=f"steps between log lines (default: {D.log_every})")
    p.add_argument("--save-every", type=int, default=S, help="steps between checkpoints (default: only at the end)")
    p.add_argument("--seed", type=int, default=S, help=f"model init and data order (default: {D.seed})")
    p.add_argument("--device", default=S, help="cpu or cuda (default: cuda when a GPU is visible)")
    p.add_argument("--backend", default=S, choices=("torch", "triton", "cuda", "auto"),
                   help="bigmodel backend for every op of the model (default: the process-wide choice)")
    p.add_argument("--parallel", default=S, choices=PARALLEL,
                   help="data parallelism under torchrun (default: auto = ddp with several processes)")
    p.add_argument("--precision", default=S, choices=PRECISIONS,
                   help="auto = bf16 autocast on GPU, fp32 on CPU")
    p.add_argument("--out", default=S, metavar="DIR", help="write checkpoint.pt and metrics.jsonl here")
    p.add_argument("--resume", action="store_true", default=S, help="continue the checkpoint in --out")
    p.add_argument("--sample", type=int, default=S, help=f"bytes to generate at the end (default: {D.sample})")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=S,
                   help="progress bar (default: when stderr is a terminal)")


def parse_overrides(items: list[str]) -> dict:
    """["d_model=64,n_layers=2", "causal=false"] -> {"d_model": 64, "n_layers": 2, "causal": False}."""
    import ast

    out = {}
    for item in items:
        for pair in filter(None, (s.strip() for s in item.split(","))):
            key, eq, value = pair.partition("=")
            if not eq or not key.strip():
                raise TrainError(f"--override {pair!r}: expected KEY=VALUE, e.g. d_model=64")
            literal = {"true": "True", "false": "False", "none": "None"}.get(value.strip().lower(), value.strip())
            try:
                out[key.strip()] = ast.literal_eval(literal)
            except (ValueError, SyntaxError):
                out[key.strip()] = value.strip()  # a plain string, e.g. activation=relu
    return out


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Given flags over the defaults, or over the checkpoint's settings with --resume."""
    given = {k: v for k, v in vars(args).items() if k not in ("command",)}
    if "override" in given:
        given["overrides"] = parse_overrides(given.pop("override"))
    base = TrainConfig()
    if given.get("resume"):
        if not given.get("out"):
            raise TrainError("--resume needs --out DIR (the folder holding checkpoint.pt)")
        saved = load_checkpoint(given["out"], mmap=True)["train_config"]
        base = dataclasses.replace(base, **{k: saved[k] for k in RESUMED_FIELDS if k in saved})
    return dataclasses.replace(base, **given)


def run(args: argparse.Namespace) -> int:
    """Entry point of `bigmodel train`: exit status 0, 130 when interrupted (a checkpoint was written)."""
    try:
        metrics = train(config_from_args(args))
    except TrainError as e:
        raise SystemExit(f"bigmodel train: {e}")
    return 130 if metrics["interrupted"] else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bigmodel train", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
