"""The command line: `bigmodel info` and a small `bigmodel bench` run end to end (CPU timings here), and what
`bench` does without a GPU: re-execute itself under Triton's interpreter, a max err vs reference column, honest
labels."""
import json
import math
import os
import subprocess
import sys

import pytest

from bigmodel import cli


def test_info_lists_every_backend(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("cuda", "triton", "torch"):
        assert name in out
    assert "bigmodel._C: " in out  # built (with its architectures) or not built, with the reason


def test_extension_status_names_architectures():
    pytest.importorskip("bigmodel._C", reason="bigmodel._C is not built here")
    status = cli.extension_status()
    assert status.startswith("built for ") and "sm_80" in status and "sm_90" in status, status


def test_bench_writes_json_markdown_and_plot(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bigmodel", "bench", "--ops", "layer_norm", "--modes", "fwd,bwd",
                           "--providers", "torch,cuda", "--quick", "--device", "cpu", "--out", str(tmp_path),
                           "--stem", "t"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["timer"] == "CPU"
    rows = data["results"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok and all(r["provider"] == "torch" and r["median_ms"] > 0 for r in ok)
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert skipped and all(r["provider"] == "cuda" and r["reason"] for r in skipped)  # said why, not dropped
    assert "CPU" in (tmp_path / "t.md").read_text()
    assert (tmp_path / "t.png").stat().st_size > 0


def test_unknown_op_is_a_clear_error():
    with pytest.raises(SystemExit, match="attention_nope|unknown|no case"):
        cli.main(["bench", "--ops", "attention_nope", "--device", "cpu"])


# ------------------------------------------------------------------------------------------ bench without a GPU
def bench_args(*argv):
    return cli.parser().parse_args(["bench", *argv])


def test_bench_reexecutes_under_the_interpreter_only_on_a_cpu_run_left_to_it():
    environ = {"PATH": "/usr/bin", "HOME": "/root"}
    env = cli.interpreter_environment(bench_args(), environ, gpu_visible=False)
    assert env == {**environ, "TRITON_INTERPRET": "1", cli.REEXEC_MARK: "1"}
    assert "TRITON_INTERPRET" not in environ  # a copy: this process's environment is left alone
    on_cpu = cli.interpreter_environment(bench_args("--device", "cpu"), environ, gpu_visible=True)
    assert on_cpu["TRITON_INTERPRET"] == "1"
    # the user's TRITON_INTERPRET stands, whatever its value (and the re-executed process has it: no loop)
    for value in ("0", "1", ""):
        assert cli.interpreter_environment(bench_args(), {**environ, "TRITON_INTERPRET": value}, False) is None
    assert cli.interpreter_environment(bench_args("--no-interpret"), environ, gpu_visible=False) is None
    # a GPU run is unchanged: no re-execution
    assert cli.interpreter_environment(bench_args(), environ, gpu_visible=True) is None
    assert cli.interpreter_environment(bench_args("--device", "cuda"), environ, gpu_visible=True) is None


def test_bench_command_line_reexecutes_with_its_own_arguments(monkeypatch):
    calls = []

    def reexecute(argv, env):
        calls.append((argv, env))
        raise SystemExit(0)  # instead of replacing the test process

    monkeypatch.setattr(cli, "reexecute", reexecute)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    argv = ["bench", "--ops", "softmax", "--device", "cpu", "--quick"]
    monkeypatch.setattr(sys, "argv", ["bigmodel", *argv])
    with pytest.raises(SystemExit):
        cli.main()
    assert calls and calls[0][0] == argv and calls[0][1]["TRITON_INTERPRET"] == "1"
    calls.clear()
    with pytest.raises(SystemExit, match="attention_nope|unknown"):  # explicit argv (a library call): never
        cli.main(["bench", "--ops", "attention_nope", "--device", "cpu"])
    assert not calls


def test_cpu_gemm_baseline_is_labelled_as_what_it_is():
    from benchmarks import cases
    from benchmarks.ffn_cases import CPU_GEMM

    cpu = {c.provider for c in cases.all_cases(["linear_act", "feed_forward"], device="cpu")}
    gpu = {c.provider for c in cases.all_cases(["linear_act", "feed_forward"], device="cuda")}
    assert CPU_GEMM == "torch.matmul (CPU)" and CPU_GEMM in cpu and "cublas" not in cpu
    assert "cublas" in gpu and CPU_GEMM not in gpu  # GPU cases unchanged


def test_max_err_vs_reference_covers_gradients():
    from benchmarks import cases

    if not cli.load_benchmarks()[1].interpreting():
        pytest.skip("needs Triton's CPU interpreter (TRITON_INTERPRET=1, set by tests/conftest.py without a GPU)")
    (case,) = [c for c in cases.all_cases(["softmax"], ("bwd",), device="cpu") if c.provider == "triton"]
    errors = cases.prepare(case).errors()
    assert errors["max_err_output"] == "dx" and 0 <= errors["max_err_vs_reference"] < 1e-5, errors
    assert errors["rel_err"] < 1e-5


def test_bench_on_a_cpu_runs_triton_under_the_interpreter_with_its_error(tmp_path):
    """The whole path from a plain command line: re-executed under TRITON_INTERPRET=1, the triton rows run and
    carry a finite max err vs reference, the first line says what the numbers are, CPU matmul is named."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "bigmodel", "bench", "--ops", "linear_act,softmax", "--modes", "fwd",
                           "--providers", "torch,triton,torch.matmul (CPU)", "--quick", "--out", str(tmp_path),
                           "--stem", "t"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "interpreted kernels" in proc.stdout.splitlines()[0] and "not performance" in proc.stdout.splitlines()[0]
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["environment"]["triton_interpret"] is True
    rows = data["results"]
    triton = [r for r in rows if r["provider"] == "triton"]
    assert {r["op"] for r in triton} == {"linear_act", "softmax"}
    assert all(r["status"] == "ok" and math.isfinite(r["max_err_vs_reference"]) for r in triton), triton
    assert all(r["max_err_vs_reference"] < 1e-4 for r in triton)  # fp32
    assert any(r["provider"] == "torch.matmul (CPU)" and r["status"] == "ok" for r in rows)
    assert not any(r["provider"] == "cublas" for r in rows)
    md = (tmp_path / "t.md").read_text()
    assert "max err vs reference" in md and "interpreted kernels" in md and "vs torch.matmul (CPU)" in md
    assert "max err vs reference" in proc.stdout


def test_tune_fills_the_cache_that_info_shows(tmp_path):
    """`bigmodel tune` on a CPU with BIGMODEL_AUTOTUNE=all (Triton under the interpreter, re-executed as bench is):
    every backend that can run each case is timed, and a fresh `bigmodel info` prints the recorded choices."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(BIGMODEL_AUTOTUNE="all", BIGMODEL_CACHE_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "bigmodel", "tune", "--ops", "softmax", "--quick"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (cache,) = tmp_path.glob("autotune-*.json")
    entries = json.loads(cache.read_text())["entries"]
    assert {k.split(" | ")[0] for k in entries} == {"softmax infer", "softmax train"}
    assert all(set(e["times_ms"]) == {"torch", "triton", "reference"} for e in entries.values())
    info = subprocess.run([sys.executable, "-m", "bigmodel", "info"], capture_output=True, text=True, timeout=300,
                          env={**env, "COLUMNS": "250"})
    assert info.returncode == 0, info.stderr[-3000:]
    assert str(cache) in info.stdout and "auto's choices" in info.stdout and "CPU timings" in info.stdout
    for key, entry in entries.items():
        assert key.split(" | ")[0] in info.stdout and entry["winner"] in info.stdout


def test_tune_refuses_when_auto_times_nothing_here(monkeypatch):
    monkeypatch.setenv("BIGMODEL_AUTOTUNE", "1")
    with pytest.raises(SystemExit, match="auto does not time cpu inputs here.*BIGMODEL_AUTOTUNE=all"):
        cli.main(["tune", "--device", "cpu", "--ops", "softmax"])


def test_tune_shapes_replace_the_preset():
    cases = cli.load_benchmarks()[0]
    todo = [c for c in cases.all_cases(["attention"], ("fwd",), None, "cpu", True) if c.provider == "auto"]
    (case,) = cli.tune_shapes(cases, todo, ["seqlen=256,mask=none"])
    assert case.params == {**todo[0].params, "seqlen": 256, "mask": "none"}
    with pytest.raises(ValueError, match="no size named seq_len"):
        cli.tune_shapes(cases, todo, ["seq_len=256"])


def test_bench_auto_row_says_what_it_ran(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bigmodel", "bench", "--ops", "layer_norm", "--modes", "fwd",
                           "--providers", "torch,auto", "--quick", "--device", "cpu", "--out", str(tmp_path),
                           "--stem", "t", "--no-interpret"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((tmp_path / "t.json").read_text())["results"]
    (auto,) = [r for r in rows if r["provider"] == "auto"]
    assert auto["status"] == "ok" and auto["note"] == "auto ran torch (layer_norm)"  # CPU: PyTorch's op
    assert auto["speedup_vs_best_backend"] is not None
    assert "vs fastest backend" in (tmp_path / "t.md").read_text()
