"""Measured auto (bigmodel/backends/autotune.py): the first call for a key times every backend that can run it and
keeps the fastest; the choice is cached in memory and in a JSON file, and reused.

On the CPU these run with BIGMODEL_AUTOTUNE=all (auto times CPU inputs too: torch, Triton under the interpreter,
the reference); a backend is made slow by wrapping its adapter method in a sleep. The timings are CPU timings: they
only order the candidates. The cuda-marked test at the end checks auto against the measured best on a GPU.
"""
import json
import logging
import os
import subprocess
import sys
import time

import pytest
import torch

import bigmodel
from bigmodel.backends import BACKENDS, autotune
from numerics import randn_input, requires_interpreter

CPU_CANDIDATES = ("torch", "triton", "reference")
SLOW_S = 0.25  # far above any of the three on these sizes (the interpreter takes a few ms)
# The adapter method each backend's layer_norm forward goes through (backend torch: bigmodel.ops calls it directly).
LN_METHOD = {"torch": "layer_norm", "triton": "layer_norm_fwd", "reference": "layer_norm_fwd"}


@pytest.fixture
def tuning(monkeypatch, tmp_path):
    """Measured auto on CPU inputs, with an empty cache in tmp_path; the cache path."""
    monkeypatch.setenv("BIGMODEL_AUTOTUNE", "all")
    monkeypatch.setenv("BIGMODEL_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("BIGMODEL_BACKEND", raising=False)
    monkeypatch.setattr(autotune, "SEED_FILE", tmp_path / "no-seed.json")
    autotune.reset_memory()
    yield autotune.cache_path()
    autotune.reset_memory()


def slow_down(monkeypatch, name):
    """Make backend `name`'s layer_norm forward SLOW_S slower (patched on its class: the `spy` fixture's instance
    wrappers call the class's method)."""
    cls = type(BACKENDS[name])
    original = getattr(cls, LN_METHOD[name])

    def slow(self, *args):
        time.sleep(SLOW_S)
        return original(self, *args)

    monkeypatch.setattr(cls, LN_METHOD[name], slow)


def ln(x, n=64, **kw):
    w = (1 + 0.1 * torch.randn(n)).requires_grad_(x.requires_grad)
    b = (0.1 * torch.randn(n)).requires_grad_(x.requires_grad)
    return bigmodel.ops.layer_norm(x, (n,), w, b, **kw)


def only_entry(path):
    data = json.loads(path.read_text())
    assert data["format"] == autotune.FORMAT and data["context"] == autotune.context()
    (key, entry), = data["entries"].items()
    return key, entry


# ------------------------------------------------------------------------------------------ the choice
@requires_interpreter
@pytest.mark.parametrize("slow", CPU_CANDIDATES)
def test_auto_avoids_an_artificially_slow_backend(tuning, monkeypatch, caplog, slow):
    slow_down(monkeypatch, slow)
    with caplog.at_level(logging.INFO, logger="bigmodel"), torch.no_grad():
        ln(randn_input(8, 64))
    key, entry = only_entry(tuning)
    assert key.startswith("layer_norm infer | cpu | ")
    assert set(entry["times_ms"]) == set(CPU_CANDIDATES)  # every backend that can run it was timed
    assert entry["times_ms"][slow] >= SLOW_S * 1e3
    assert entry["winner"] != slow
    assert entry["times_ms"][entry["winner"]] <= min(entry["times_ms"].values()) * (1 + autotune.TIE)
    assert autotune.LAST["layer_norm"] == (key, entry["winner"])
    logged = [r.message for r in caplog.records if r.message.startswith("bigmodel auto: layer_norm")]
    assert len(logged) == 1 and all(f"{b} " in logged[0] for b in CPU_CANDIDATES)
    assert logged[0].endswith(f"-> {entry['winner']!r}")


@requires_interpreter
@pytest.mark.parametrize("fast", CPU_CANDIDATES)
def test_auto_takes_the_one_fast_backend_and_keeps_it(tuning, monkeypatch, spy, fast):
    for name in CPU_CANDIDATES:
        if name != fast:
            slow_down(monkeypatch, name)
    x = randn_input(8, 64)
    with torch.no_grad():
        ln(x)
    assert only_entry(tuning)[1]["winner"] == fast
    spy.clear()
    with torch.no_grad():
        for _ in range(3):  # recorded: no more timing, every call on the winner
            ln(randn_input(8, 64))
    assert spy == [(fast, "layer_norm_fwd")] * 3


def test_ties_within_noise_go_to_the_static_priority():
    order = ("torch", "triton", "cuda")
    assert autotune.pick({"torch": 1.0, "triton": 0.99, "cuda": 0.995}, order) == "torch"
    assert autotune.pick({"torch": 1.0, "triton": 0.9, "cuda": 0.5}, order) == "cuda"
    assert autotune.pick({"torch": 1.0, "triton": 0.96}, order) == "triton"  # 4% is past the 3% tie
    assert autotune.pick({"torch": float("inf"), "triton": float("inf")}, order) == "torch"  # none timed


@requires_interpreter
def test_training_times_forward_plus_backward_and_runs_both_on_one_backend(tuning, spy):
    x = randn_input(8, 64).requires_grad_(True)
    y = ln(x)
    timed = list(spy)
    # backward was timed on each kernel backend (torch's backward is PyTorch's autograd: nothing to record)
    assert ("triton", "layer_norm_bwd") in timed and ("reference", "layer_norm_bwd") in timed
    key, entry = only_entry(tuning)
    assert key.startswith("layer_norm train | cpu | ")
    spy.clear()
    y.backward(torch.randn_like(y))
    x2 = randn_input(8, 64).requires_grad_(True)
    ln(x2).sum().backward()
    winner = entry["winner"]
    # the first call's backward, then a second step, all on the winner (torch records its forward only)
    expected = [(winner, "layer_norm_bwd"), (winner, "layer_norm_fwd"), (winner, "layer_norm_bwd")] \
        if winner != "torch" else [("torch", "layer_norm_fwd")]
    assert spy == expected
    assert x.grad is not None and torch.isfinite(x.grad).all()


@requires_interpreter
def test_timing_leaves_the_callers_random_state_alone(tuning):
    x, w, b = randn_input(8, 64), 1 + 0.1 * torch.randn(64), 0.1 * torch.randn(64)
    before = torch.get_rng_state()
    with torch.no_grad():
        bigmodel.ops.layer_norm(x, (64,), w, b)
    assert json.loads(tuning.read_text())["entries"]  # it did time
    assert torch.equal(torch.get_rng_state(), before)


def test_fresh_inputs_keep_layout_and_are_not_zeros():
    fresh = autotune.Fresh(torch.Generator().manual_seed(0))
    broadcast = torch.randn(1, 4).expand(3, 4)
    transposed = torch.randn(5, 6).t().requires_grad_(True)
    mask = torch.rand(3, 4) > 0.5
    a, b, m = fresh(broadcast), fresh(transposed), fresh(mask)
    assert a.shape == broadcast.shape and a.stride() == broadcast.stride() and a.abs().sum() > 0
    assert b.stride() == transposed.stride() and b.requires_grad and not torch.equal(b, transposed)
    assert m is mask  # a boolean mask is structure, kept as given
    assert fresh.leaves == [b]
    fresh.i = 0
    assert fresh(broadcast) is a and fresh(transposed) is b  # the same tensors on every run: nothing made in timing


def test_key_buckets_sizes_and_keeps_the_last_dim():
    q = torch.empty(3, 12, 3000, 80)
    mask = torch.zeros(1, 1, 3000, 3000, dtype=torch.bool).expand(3, 12, 3000, 3000)
    key = autotune.make_key("attention", True, "cpu", autotune.describe(
        {"q": q, "attn_mask": mask, "dropout_p": 0.1, "is_causal": False}))
    assert key == ("attention train | cpu | q=fp32[4,16,4096,80] attn_mask=bool[4,16,4096,3000] bcast[0, 1] "
                   "dropout_p=>0 is_causal=False")


# ------------------------------------------------------------------------------------------ the cache
@requires_interpreter
def test_cache_is_reread_by_a_fresh_process(tuning):
    with torch.no_grad():
        ln(randn_input(8, 64))
    key, entry = only_entry(tuning)
    # A recorded winner decides without timing: give the file one that timing would not pick here.
    forced = "reference" if entry["winner"] != "reference" else "triton"
    data = json.loads(tuning.read_text())
    data["entries"][key]["winner"] = forced
    tuning.write_text(json.dumps(data))
    script = ("import torch, bigmodel; from bigmodel.backends import autotune\n"
              "torch.manual_seed(0)\n"
              "with torch.no_grad():\n"
              "    bigmodel.ops.layer_norm(torch.randn(8, 64) * 3 + 1, (64,), 1 + 0.1 * torch.randn(64), "
              "0.1 * torch.randn(64))\n"
              "k, winner = autotune.LAST['layer_norm']\n"
              "print(winner, autotune.entries()[k]['source'])\n")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [forced, "cache"]


@requires_interpreter
@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": 999, "entries": {}}),
                                     "stale"])
def test_corrupt_or_stale_cache_is_ignored_and_rewritten(tuning, caplog, content):
    if content == "stale":  # a valid file from other versions under this name
        content = json.dumps({"format": autotune.FORMAT, "context": {**autotune.context(), "torch": "0.0.1"},
                              "entries": {"layer_norm infer | cpu | x": {"winner": "reference", "times_ms": {}}}})
    tuning.parent.mkdir(parents=True, exist_ok=True)
    tuning.write_text(content)
    autotune._logged.clear()
    with caplog.at_level(logging.INFO, logger="bigmodel"), torch.no_grad():
        y = ln(randn_input(8, 64))
    assert torch.isfinite(y).all()
    key, entry = only_entry(tuning)  # rewritten: valid, this version's context, the new measurement only
    assert entry["winner"] in CPU_CANDIDATES
    assert any("ignoring" in r.message and str(tuning) in r.message for r in caplog.records)


@requires_interpreter
def test_seed_table_answers_before_timing(tuning, monkeypatch, tmp_path):
    with torch.no_grad():
        ln(randn_input(8, 64))
    key, entry = only_entry(tuning)
    forced = "reference" if entry["winner"] != "reference" else "triton"
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps({"format": autotune.FORMAT, "entries": {key: {"winner": forced, "times_ms": {}}}}))
    monkeypatch.setattr(autotune, "SEED_FILE", seed)
    tuning.unlink()
    autotune.reset_memory()
    with torch.no_grad():
        ln(randn_input(8, 64))
    assert autotune.LAST["layer_norm"] == (key, forced)
    assert not tuning.exists()  # nothing was timed, so nothing written
    assert autotune.entries()[key]["source"] == "seed"


def test_seed_builder_keeps_gpu_keys_only(tmp_path):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks import seed_table

    run = tmp_path / "2026-12-01-h100"
    run.mkdir()
    gpu_key = "attention train | NVIDIA H100 80GB HBM3 (sm_90) | q=bf16[4,16,4096,128]"
    (run / "autotune-torch2.11.json").write_text(json.dumps({"format": autotune.FORMAT, "context": {"torch": "2.11"},
                                                             "entries": {
        gpu_key: {"winner": "cuda", "times_ms": {"torch": 1.2, "cuda": 1.0}},
        "layer_norm infer | cpu | input=fp32[8,64]": {"winner": "torch", "times_ms": {"torch": 0.1}}}}))
    table = seed_table.build(tmp_path)
    assert list(table["entries"]) == [gpu_key] and table["entries"][gpu_key]["winner"] == "cuda"
    shipped = json.loads(autotune.SEED_FILE.read_text())
    assert shipped["format"] == autotune.FORMAT  # the committed table is one the package reads


# ------------------------------------------------------------------------------------------ switches
@pytest.mark.parametrize("setting", ["0", "1", "deterministic"])
def test_switches_turn_cpu_timing_off(tuning, monkeypatch, spy, setting):
    monkeypatch.setenv("BIGMODEL_AUTOTUNE", "all" if setting == "deterministic" else setting)
    if setting == "deterministic":
        monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    with torch.no_grad():
        ln(randn_input(8, 64))
    assert spy == [("torch", "layer_norm_fwd")]  # the static priority, nothing timed
    assert not tuning.exists() and autotune.LAST["layer_norm"] == (None, "torch")  # no key: nothing was timed


def test_deterministic_algorithms_turn_timing_off(monkeypatch):
    monkeypatch.setenv("BIGMODEL_AUTOTUNE", "all")
    torch.use_deterministic_algorithms(True)
    try:
        assert autotune.policy() == "off"
    finally:
        torch.use_deterministic_algorithms(False)
    assert autotune.policy() == "all"


@requires_interpreter
@pytest.mark.parametrize("name", CPU_CANDIDATES)
def test_explicit_backend_bypasses_auto(tuning, spy, name):
    with torch.no_grad():
        ln(randn_input(8, 64), backend=name)
    assert spy == [(name, "layer_norm_fwd")]
    assert not tuning.exists() and not autotune.LAST


# ------------------------------------------------------------------------------------------ torch.compile
@requires_interpreter
def test_compile_fullgraph_uses_the_recorded_choice_and_times_nothing(tuning, spy):
    n = 64
    w, b = 1 + 0.1 * torch.randn(n), 0.1 * torch.randn(n)

    def f(x):
        return bigmodel.ops.layer_norm(x, (n,), w, b) * 2

    x = randn_input(8, n)
    with torch.no_grad():
        torch.compiler.reset()
        torch.compile(f, fullgraph=True, backend="eager")(x)  # nothing recorded: the static priority, no timing
    assert spy == [("torch", "layer_norm_fwd")] and not tuning.exists()
    with torch.no_grad():
        f(x)  # eager: measures and records
    key, entry = only_entry(tuning)
    forced = "reference" if entry["winner"] != "reference" else "triton"
    autotune._memory[key]["winner"] = forced  # the recorded choice is what the compiled graph must run
    spy.clear()
    with torch.no_grad():
        torch.compiler.reset()
        y = torch.compile(f, fullgraph=True, backend="eager")(x)
    assert spy == [(forced, "layer_norm_fwd")]
    torch.testing.assert_close(y, f(x), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------ on a GPU
@pytest.mark.cuda
@pytest.mark.parametrize("training", [False, True], ids=["infer", "train"])
def test_auto_attention_at_4k_bf16_is_within_5_percent_of_the_best(monkeypatch, tmp_path, training):
    """On a GPU: auto's measured choice for attention at L = 4k, bf16, causal is within 5% of the fastest of triton,
    cuda and torch timed here (triton.testing.do_bench, the benchmarks' timer)."""
    from triton.testing import do_bench

    monkeypatch.setenv("BIGMODEL_AUTOTUNE", "1")
    monkeypatch.setenv("BIGMODEL_CACHE_DIR", str(tmp_path))
    autotune.reset_memory()
    q, k, v = (torch.randn(4, 16, 4096, 128, device="cuda", dtype=torch.bfloat16).requires_grad_(training)
               for _ in range(3))
    dy = torch.randn_like(q)

    def run(backend):
        def once():
            out = bigmodel.ops.attention(q, k, v, is_causal=True, backend=backend)
            if training:
                torch.autograd.grad(out, (q, k, v), dy)
        return once

    with torch.set_grad_enabled(training):
        run("auto")()  # the first call measures
        times = {}
        for name in ("torch", "triton", "cuda"):
            if not BACKENDS[name].not_supported_reasons("attention", q=q, k=k, v=v, attn_mask=None, dropout_p=0.0,
                                                        is_causal=True):
                times[name] = do_bench(run(name), rep=200)
        auto_ms = do_bench(run("auto"), rep=200)
    best = min(times.values())
    assert auto_ms <= 1.05 * best, f"auto {auto_ms:.3f} ms ({autotune.LAST['attention']}) vs {times}"


@requires_interpreter
def test_a_backend_failing_while_timed_is_logged_and_not_taken(tuning, monkeypatch, caplog):
    def broken(self, *args):
        raise RuntimeError("pretend: the kernel failed")

    monkeypatch.setattr(type(BACKENDS["triton"]), "layer_norm_fwd", broken)
    with caplog.at_level(logging.WARNING, logger="bigmodel"), torch.no_grad():
        y = ln(randn_input(8, 64))
    assert torch.isfinite(y).all()
    key, entry = only_entry(tuning)
    assert entry["winner"] != "triton" and entry["times_ms"]["triton"] is None
    assert "pretend: the kernel failed" in entry["errors"]["triton"]
    assert any(r.levelname == "WARNING" and "'triton' failed while being timed" in r.message for r in caplog.records)
