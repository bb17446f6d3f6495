"""The training loop: one Run (steps, evals, logs, checkpoints), train(), and the final summary and sample."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from .checkpoint import (full_model_state, load_checkpoint, plan_changes, restore, save_checkpoint,
                         trim_metrics)
from .config import CHECKPOINT, METRICS, TrainConfig, TrainError
from .data import Corpus, check_corpus, get_batch, load_corpus
from .distributed import Dist, mean_across_ranks, setup_distributed
from .model import (build_model, build_optimizer, check_backend, check_model_config, clip_gradients, lr_at,
                    model_config, saved_model_config, unwrap, wrap_model)

LOSS_PATHS = {True: "fused (linear_cross_entropy, no logits)", False: "logits + cross_entropy (--no-fused-loss)"}


def autocast_context(precision: str, device: torch.device):
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        return precision, lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return precision, contextlib.nullcontext


def loss_fn(model, x, y, amp, fused: bool = True) -> torch.Tensor:
    """The mean next-byte loss, through the model's forward (so DDP / FSDP2 see the call). fused (the default,
    --no-fused-loss turns it off): bigmodel.ops.linear_cross_entropy from the final hidden states, never holding
    the (batch, seq, vocab) logits; otherwise the LM head's logits and F.cross_entropy on them in fp32."""
    with amp():
        _, loss = model(x, targets=y, fused_loss=fused)
    return loss.float()


@torch.no_grad()
def evaluate(model, corpus: Corpus, cfg: TrainConfig, seq_len: int, d: Dist, device, amp) -> float:
    """Mean loss on the same held-out windows every time (a fixed seed), so evals are comparable."""
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    model.eval()
    total = torch.zeros((), device=device)
    for _ in range(cfg.eval_batches):
        x, y = get_batch(corpus.val, gen, cfg.batch_size, seq_len, d.rank, d.world, device)
        total += loss_fn(model, x, y, amp, cfg.fused_loss)
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
        loss = loss_fn(self.model, x, y, self.amp, cfg.fused_loss)
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
    kv = f", n_kv_heads {mc.n_kv_heads}" if mc.n_kv_heads != mc.n_heads else ""
    shape = "" if (mc.norm, mc.positional, mc.mlp) == ("pre", "learned", "dense") else \
        f", norm {mc.norm}, positional {mc.positional}, mlp {mc.mlp}"  # e.g. Llama's rms, rotary, swiglu
    log(f"bigmodel train: {cfg.preset} (d_model {mc.d_model}, n_layers {mc.n_layers}, n_heads {mc.n_heads}{kv}"
        f"{shape}, {n_params / 1e6:.2f}M parameters) on {run.device}, {precision}, backend {cfg.backend or 'auto'}, "
        f"world size {d.world}, parallel {d.mode}, loss {LOSS_PATHS[cfg.fused_loss]}")
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
        "fused_loss": cfg.fused_loss,
        "checkpoint": str(out / CHECKPOINT) if out else None,
    }


def make_sample(run: Run) -> dict:
    """Rank 0 continues a prompt from the held-out text with model.generate (when the model has one)."""
    from ..models import Transformer

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
