"""`bigmodel train` on CPU with the reference backend: the loss falls, a resume continues exactly, a user's text
file trains, bad arguments give clear errors, and 2 gloo processes (DDP and FSDP2) follow the single-process
loss trajectory on the same global batch, with a checkpoint that resumes in one process.

The model is the tiny preset shrunk further (d_model 64, 2 layers, windows of 32 bytes, batch 8, 30 steps).
Tolerance across world sizes: rtol 1e-5 in fp32 (the runs differ only in how reductions are split, ~1e-7
relative per step). Within one process a resume is compared with ==.
"""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bigmodel import cli
from bigmodel import train as tr

ROOT = Path(__file__).resolve().parent.parent
STEPS, STOP = 30, 15
ARGS = ["--backend", "reference", "--override", "d_model=64,n_layers=2,n_heads=2", "--seq-len", "32",
        "--batch-size", "8", "--steps", str(STEPS), "--lr", "3e-3", "--eval-every", "10", "--eval-batches", "2",
        "--log-every", "5", "--sample", "0", "--seed", "7"]


def config(*args: str) -> tr.TrainConfig:
    """The TrainConfig the `bigmodel train` command line builds from these flags (resume merges included)."""
    return tr.config_from_args(cli.parser().parse_args(["train", *args]))


def metrics_file(out: Path) -> tuple[list[dict], list[dict]]:
    rows = [json.loads(line) for line in (out / tr.METRICS).read_text().splitlines()]
    return [r for r in rows if "loss" in r], [r for r in rows if "eval_loss" in r]


@pytest.fixture(scope="module")
def baseline() -> dict:
    """One uninterrupted single-process run: the trajectory every other run is compared with."""
    return tr.train(config(*ARGS))


def test_loss_falls(baseline):
    losses = baseline["losses"]
    assert len(losses) == STEPS and all(np.isfinite(losses))
    assert losses[0] == pytest.approx(np.log(256), abs=0.3)  # starts near uniform over bytes
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0
    evals = baseline["eval_losses"]
    assert [e["step"] for e in evals] == [10, 20, 30]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert baseline["tokens_per_s"] > 0 and baseline["world_size"] == 1 and baseline["precision"] == "fp32"


def test_resume_continues_exactly(baseline, tmp_path):
    out = tmp_path / "run"
    first = tr.train(config(*ARGS, "--out", str(out), "--stop-at", str(STOP)))
    assert first["step"] == STOP and (out / tr.CHECKPOINT).is_file()
    assert first["losses"] == baseline["losses"][:STOP]
    # Only --out and --resume: the other settings come from the checkpoint.
    second = tr.train(config("--out", str(out), "--resume"))
    assert second["start_step"] == STOP and second["step"] == STEPS
    assert second["losses"] == baseline["losses"][STOP:]
    assert second["eval_loss"] == baseline["eval_loss"]
    steps, evals = metrics_file(out)
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))  # each step logged once across the two runs
    assert [r["loss"] for r in steps] == baseline["losses"]
    # A finished run's folder is not overwritten by a new run.
    with pytest.raises(SystemExit, match="already holds a checkpoint.*--resume"):
        cli.main(["train", *ARGS, "--out", str(out)])


def test_user_text_file_via_python_m_bigmodel(tmp_path):
    text = tmp_path / "notes.txt"
    words = "the cat sat on the mat and the dog ran to the park while it rained".split()
    rng = np.random.default_rng(0)
    text.write_text("\n".join(" ".join(rng.choice(words, 12)) for _ in range(150)))
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "bigmodel", "train", *ARGS, "--data", str(text), "--steps", "6",
                           "--eval-every", "0", "--sample", "24", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout
    assert f"data: {text}" in log
    assert "step 5/6" in log and "step 6/6" in log  # plain lines when not on a terminal
    assert "summary:" in log and "tokens/s (CPU timing)" in log and "sample (continuing" in log
    steps, evals = metrics_file(out)
    assert len(steps) == 6 and len(evals) == 1 and evals[0]["step"] == 6


def test_fused_loss_is_the_default_and_no_fused_loss_turns_it_off(monkeypatch, capsys):
    """The training and eval losses come from bigmodel.ops.linear_cross_entropy (no logits) unless --no-fused-loss;
    both paths follow the same trajectory (fp32: rtol 1e-5)."""
    import bigmodel

    assert tr.TrainConfig().fused_loss is True and config(*ARGS).fused_loss is True
    assert config(*ARGS, "--no-fused-loss").fused_loss is False and config(*ARGS, "--fused-loss").fused_loss is True
    calls, real = [], bigmodel.ops.linear_cross_entropy_fp32

    def counting(*args, **kwargs):
        calls.append(kwargs.get("backend"))
        return real(*args, **kwargs)
    monkeypatch.setattr(bigmodel.ops, "linear_cross_entropy_fp32", counting)
    short = [*ARGS, "--steps", "4", "--eval-every", "2"]  # evals at steps 2 and 4, 2 batches each
    fused = tr.train(config(*short))
    assert calls == ["reference"] * (4 + 2 * 2) and fused["fused_loss"] is True
    assert "loss fused (linear_cross_entropy, no logits)" in capsys.readouterr().out
    calls.clear()
    unfused = tr.train(config(*short, "--no-fused-loss"))
    assert calls == [] and unfused["fused_loss"] is False
    assert "loss logits + cross_entropy (--no-fused-loss)" in capsys.readouterr().out
    np.testing.assert_allclose(fused["losses"], unfused["losses"], rtol=1e-5)
    np.testing.assert_allclose([e["eval_loss"] for e in fused["eval_losses"]],
                               [e["eval_loss"] for e in unfused["eval_losses"]], rtol=1e-5)
    with pytest.raises(tr.TrainError, match=r"fused_loss must be True or False; got 'no'"):
        tr.train(dataclasses.replace(config(*short), fused_loss="no"))


LLAMA_ARGS = ["--preset", "llama-tiny", "--backend", "torch", "--seq-len", "32", "--batch-size", "8", "--lr",
              "3e-3", "--eval-every", "0", "--eval-batches", "2", "--log-every", "5", "--seed", "7"]


def test_llama_tiny_preset_trains_and_resumes(tmp_path, capsys):
    """The Llama-shaped preset (RMSNorm, rotary, SwiGLU, GQA) through `bigmodel train` (backend torch: the quicker
    CPU path; tests/test_model_llama.py checks every backend against Hugging Face): the loss falls, the checkpoint
    keeps the architecture (a resume rebuilds it from there) and generate() samples from it."""
    out = tmp_path / "run"
    first = tr.train(config(*LLAMA_ARGS, "--steps", "20", "--stop-at", "10", "--sample", "0", "--out", str(out)))
    log = capsys.readouterr().out
    assert "bigmodel train: llama-tiny (d_model 64, n_layers 2, n_heads 4, n_kv_heads 2, norm rms, positional " \
           "rotary, mlp swiglu" in log
    saved = torch.load(out / tr.CHECKPOINT, map_location="cpu", weights_only=False)["model_config"]
    assert (saved["norm"], saved["positional"], saved["mlp"], saved["rope_theta"]) == \
        ("rms", "rotary", "swiglu", 500000.0)
    second = tr.train(config("--out", str(out), "--resume", "--sample", "16"))
    losses = first["losses"] + second["losses"]
    assert len(losses) == 20 and all(np.isfinite(losses))
    assert losses[0] == pytest.approx(np.log(256), abs=0.3)  # starts near uniform over bytes
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5
    assert np.isfinite(second["eval_loss"]) and len(second["sample"]) > 0


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], r"--steps must be an integer >= 1; got 0"),
    (["--stop-at", "40"], r"--stop-at 40 is past --steps 30"),
    (["--data", "/no/such/file.txt"], r"--data /no/such/file.txt: no such file"),
    (["--preset", "huge"], r"unknown preset 'huge'"),
    (["--override", "d_model"], r"--override 'd_model': expected KEY=VALUE"),
    (["--override", "colour=3"], r"unknown field\(s\) colour"),
    (["--seq-len", "4096"], r"--seq-len 4096 exceeds the model's max_seq_len 128"),
    (["--preset", "bert-base"], r"encoder \(causal=False\)"),
    (["--resume"], r"--resume needs --out"),
    (["--device", "tpu"], r"--device"),
])
def test_bad_arguments_are_clear_errors(args, message):
    with pytest.raises(SystemExit, match=message):
        cli.main(["train", *ARGS, *args])


def test_bad_files_and_machines_are_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"no checkpoint.pt in"):
        cli.main(["train", "--out", str(tmp_path), "--resume"])
    short = tmp_path / "short.txt"
    short.write_text("x" * 200)
    with pytest.raises(SystemExit, match=r"held-out split \(20 bytes.*--eval-batches 0"):
        cli.main(["train", *ARGS, "--data", str(short)])
    with pytest.raises(SystemExit) as e:  # argparse: exit status 2, the valid choices on stderr
        cli.main(["train", "--parallel", "pipeline"])
    assert e.value.code == 2 and "invalid choice: 'pipeline'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match=r"--device cuda: no CUDA GPU is visible"):
            cli.main(["train", *ARGS, "--device", "cuda"])
        with pytest.raises(SystemExit, match=r"--backend cuda cannot run on this machine"):
            cli.main(["train", *ARGS, "--backend", "cuda"])


# Each rank: join a 2-process gloo group through a file store (no TCP store port; gloo itself on loopback),
# then run the `bigmodel train` command line as torchrun would.
RANK_SCRIPT = """
import sys
import torch.distributed as dist
rank, store = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=2)
from bigmodel import cli
status = cli.main(sys.argv[3:])
dist.destroy_process_group()
sys.exit(status)
"""


def run_two_ranks(args: list[str], tmp_path: Path) -> list[subprocess.CompletedProcess]:
    store = tmp_path / "store"
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(rank), str(store), "train", *args],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return results


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_follow_the_single_process_run(parallel, baseline, tmp_path):
    out = tmp_path / "run"
    rank0, rank1 = run_two_ranks([*ARGS, "--parallel", parallel, "--out", str(out), "--stop-at", str(STOP)],
                                 tmp_path)
    for r in (rank0, rank1):
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"world size 2, parallel {parallel}" in rank0.stdout and "summary:" in rank0.stdout
    assert rank1.stdout.strip() == ""  # only rank 0 prints (and writes)
    steps, evals = metrics_file(out)
    np.testing.assert_allclose([r["loss"] for r in steps], baseline["losses"][:STOP], rtol=1e-5)
    assert evals[0]["step"] == 10
    np.testing.assert_allclose(evals[0]["eval_loss"], baseline["eval_losses"][0]["eval_loss"], rtol=1e-5)

    # The full-state checkpoint of the 2-process run resumes in this single process.
    resumed = tr.train(dataclasses.replace(config("--out", str(out), "--resume"), verbose=False))
    assert resumed["world_size"] == 1 and resumed["parallel"] == "none" and resumed["start_step"] == STOP
    np.testing.assert_allclose(resumed["losses"], baseline["losses"][STOP:], rtol=1e-5)
