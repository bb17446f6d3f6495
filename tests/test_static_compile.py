"""Static GPU checks with no GPU: every Triton kernel compiles for sm_80 and sm_90 at the configs its launcher
uses, and the cubin shows no local memory (spills). Runs tests/gpu_compile.py in a subprocess without
TRITON_INTERPRET, since the interpreter replaces the compiler in this process."""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    pytest.importorskip("triton")
    out = tmp_path_factory.mktemp("gpu_compile") / "rows.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "gpu_compile.py"), "--arch", "80", "90",
                           "--json", str(out)], env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"gpu_compile.py failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return proc.stdout, json.loads(out.read_text())


def test_every_kernel_compiles_for_sm80_and_sm90(compiled, capsys):
    table, rows = compiled
    with capsys.disabled():
        print("\n" + table)
    modules = {r["module"] for r in rows}
    assert {"attention", "layer_norm", "linear_act", "softmax", "activation"} <= modules
    for module in modules:
        for arch in (80, 90):
            assert any(r["module"] == module and r["arch"] == arch for r in rows), f"{module} has no sm_{arch} build"


def test_no_local_memory_or_spills(compiled):
    _, rows = compiled
    bad = [f"sm_{r['arch']} {r['kernel']} (warps={r['num_warps']}): local={r['local']} stack={r['stack']}"
           for r in rows if r["require_no_spills"] and (r["local"] or r["stack"])]
    assert not bad, "kernels with local memory / spills:\n" + "\n".join(bad)


def test_matmul_kernels_use_wgmma_on_sm90(compiled):
    _, rows = compiled
    bad = [r["kernel"] for r in rows if r["arch"] == 90 and r["expect_wgmma"] and not r["uses_wgmma"]]
    assert not bad, f"sm_90 PTX without wgmma: {bad}"
