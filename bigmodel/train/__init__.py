"""Train a bigmodel Transformer on bytes: one process, or data-parallel under torchrun (DDP or FSDP2).

    python -m bigmodel train --steps 300                          # tiny preset on the built-in corpus
    python -m bigmodel train --preset llama-tiny --steps 300      # the same, Llama-shaped (RMSNorm, RoPE, SwiGLU)
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

The loss is bigmodel.ops.linear_cross_entropy on the final hidden states and the LM head's (tied) weight: the
(batch, seq, vocab) logits are never materialised. `--no-fused-loss` computes the logits and F.cross_entropy instead
(the eval loss follows the same setting).

Tokens are bytes (vocab 256). Data: `--data FILE`, or the *.txt files in bigmodel/data/; each file's last 10% is
the held-out split for the eval loss.
"""
from .cli import add_arguments, config_from_args, main, run
from .config import CHECKPOINT, METRICS, TrainConfig, TrainError
from .loop import train

__all__ = ["CHECKPOINT", "METRICS", "TrainConfig", "TrainError", "add_arguments", "config_from_args", "main", "run",
           "train"]
