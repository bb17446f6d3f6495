"""The command line: `bigmodel info` and a small `bigmodel bench` run end to end (CPU timings here)."""
import json
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
