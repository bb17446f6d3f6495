"""The `bigmodel train` command line: its flags, and the TrainConfig they build (merged with a checkpoint's)."""
from __future__ import annotations

import argparse
import dataclasses

from .checkpoint import load_checkpoint
from .config import PARALLEL, PRECISIONS, RESUMED_FIELDS, TrainConfig, TrainError
from .loop import train

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
    p.add_argument("--backend", default=S, choices=("torch", "reference", "triton", "cuda", "auto"),
                   help="bigmodel backend for every op of the model (default: the process-wide choice)")
    p.add_argument("--parallel", default=S, choices=PARALLEL,
                   help="data parallelism under torchrun (default: auto = ddp with several processes)")
    p.add_argument("--precision", default=S, choices=PRECISIONS,
                   help="auto = bf16 autocast on GPU, fp32 on CPU")
    p.add_argument("--fused-loss", action=argparse.BooleanOptionalAction, default=S,
                   help="compute the loss with bigmodel.ops.linear_cross_entropy, never materialising the logits "
                        "(default: on; --no-fused-loss = the LM head's logits + cross_entropy)")
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
    from . import __doc__ as package_doc  # the package docstring (this module's own is about the flags)

    p = argparse.ArgumentParser(prog="bigmodel train", description=package_doc.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))
