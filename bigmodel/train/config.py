"""The settings of a training run (TrainConfig), their checks, and the error reported for a bad one."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
HELD_OUT = 0.1  # fraction of each text file kept for the eval loss
PARALLEL = ("auto", "none", "ddp", "fsdp")
PRECISIONS = ("auto", "bf16", "fp32")
# Settings that shape the trajectory: a resume that changes any of them no longer matches an uninterrupted run.
PLAN_FIELDS = ("preset", "overrides", "data", "steps", "batch_size", "seq_len", "lr", "min_lr_ratio", "warmup",
               "weight_decay", "betas", "grad_clip", "seed", "precision", "backend", "fused_loss")
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
    backend: str | None = None  # "torch", "reference", "triton", "cuda", "auto"; None = the process-wide choice
    parallel: str = "auto"  # auto = ddp under torchrun with several processes, none otherwise
    precision: str = "auto"  # auto = bf16 autocast on GPU, fp32 on CPU
    fused_loss: bool = True  # loss by bigmodel.ops.linear_cross_entropy (no logits); False = logits + cross_entropy
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
        if not isinstance(self.fused_loss, bool):
            raise TrainError(f"fused_loss must be True or False; got {self.fused_loss!r}")
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
