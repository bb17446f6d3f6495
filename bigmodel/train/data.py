"""The byte corpus: loading it (train / held-out split), checking it fits the window, drawing batches."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .config import DATA_DIR, HELD_OUT, TrainError

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
