"""Benchmark report: result rows (benchmarks/timing.py) -> <out>/<stem>.json, .md and .png.

Every row carries "timer": "GPU" or "CPU"; CPU timings are labelled as such everywhere (they are smoke tests,
not performance numbers). Speed-ups are against eager torch measured in the same run.

    python -m benchmarks.report --summary bench-out/<stem>.json     # compact text table of a saved run
"""
from __future__ import annotations

import datetime
import json
import platform
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import torch

from . import timing

REFERENCE = "torch"
CPU_LABEL = "CPU timings — not performance numbers"


# ------------------------------------------------------------------------------------------ environment
def driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: str) -> dict:
    """Versions, device and timer: what a reader needs to trust (or discount) the numbers."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    import bigmodel

    env = dict(
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        device=device, device_name=timing.device_name(device), timer=timing.TIMER[device],
        bigmodel=bigmodel.__version__, git_commit=git_commit(), torch=torch.__version__, triton=triton_version,
        cuda=torch.version.cuda, python=platform.python_version(), driver=None, compute_capability=None,
        copy_bandwidth_gbps=timing.copy_bandwidth_gbps(device),
    )
    if device == "cuda":
        env["driver"] = driver_version()
        env["compute_capability"] = "%d.%d" % torch.cuda.get_device_capability()
        env["method"] = ("triton.testing.do_bench: CUDA events per call, warm-up, L2 flushed between calls, "
                         "rotating input sets; median, p20, p80")
    else:
        env["method"] = "time.perf_counter median over a few calls, rotating input sets (" + CPU_LABEL + ")"
    return env


def default_stem(env: dict) -> str:
    """'<date>-<gpu>' (DESIGN.md: benchmarks/results/<date>-<gpu>.{json,md,png}); '<date>-cpu' without a GPU."""
    name = env["device_name"] if env["device"] == "cuda" else "cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower().replace("nvidia", "")).strip("-")
    return f"{env['date'][:10]}-{slug}"


# ------------------------------------------------------------------------------------------ rows
def group_key(row: dict) -> tuple:
    return row["op"], row["mode"], row["dtype"], row["shape_str"]


def add_speedups(rows: list[dict]) -> list[dict]:
    """speedup_vs_torch = eager torch's median / this provider's median (>1: faster than torch)."""
    ref = {group_key(r): r["median_ms"] for r in rows if r["provider"] == REFERENCE and r["status"] == "ok"}
    for r in rows:
        base = ref.get(group_key(r))
        r["speedup_vs_torch"] = base / r["median_ms"] if base and r["status"] == "ok" else None
    return rows


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def rate(row: dict) -> str:
    """'2890 GB/s' or '512.3 TFLOP/s' (more digits for the small numbers of CPU smoke runs)."""
    value, unit = (row.get("tflops"), "TFLOP/s") if row.get("tflops") is not None else (row.get("gbps"), "GB/s")
    if value is None:
        return "—"
    return f"{value:.0f} {unit}" if value >= 100 else f"{value:.3g} {unit}"


# ------------------------------------------------------------------------------------------ json / markdown
def to_json(rows: list[dict], env: dict) -> str:
    return json.dumps({"environment": env, "timer": env["timer"], "results": rows}, indent=1)


def to_markdown(rows: list[dict], env: dict) -> str:
    cpu = env["timer"] == "CPU"
    title = f"# bigmodel benchmarks — {env['device_name']} ({env['timer']} timings)"
    lines = [title, ""]
    if cpu:
        lines += [f"**{CPU_LABEL}.** No GPU on this machine: these numbers only show that every path runs.", ""]
    copy_bw = env.get("copy_bandwidth_gbps")
    lines += [
        f"- date {env['date']}, bigmodel {env['bigmodel']} ({env.get('git_commit') or 'no git'}), torch "
        f"{env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, driver {env['driver']}, python {env['python']}",
        f"- timer: {env['timer']} — {env['method']}",
        f"- copy bandwidth: {_fmt(copy_bw, '.0f', ' GB/s')} (device-to-device copy, bytes read + written)",
        "- vs torch: eager torch's median / this provider's median, same run (>1 is faster)", "",
    ]
    unit = "CPU ms" if cpu else "GPU ms"
    groups = defaultdict(list)
    for r in rows:
        groups[(r["op"], r["mode"], r["dtype"])].append(r)
    for (op, mode, dtype), group in groups.items():
        shape_names = " x ".join(group[0]["shape"])
        lines += [f"## {op} — {mode} — {dtype}", "",
                  f"| {shape_names} | provider | median {unit} | p20–p80 {unit} | rate | % copy BW | vs torch "
                  "| extra MiB | rel err |",
                  "|---|---|--:|--:|--:|--:|--:|--:|--:|"]
        skipped = {}
        for r in group:
            if r["status"] != "ok":
                skipped.setdefault((r["provider"], r["status"], r["reason"]), []).append(r["shape_str"])
                continue
            lines.append(
                f"| {r['shape_str']} | {r['provider']} | {r['median_ms']:.4f} | {r['p20_ms']:.4f}–{r['p80_ms']:.4f} "
                f"| {rate(r)} | {_fmt(r.get('pct_copy_bw'), '.0f', '%')} "
                f"| {_fmt(r.get('speedup_vs_torch'), '.2f', 'x')} | {_fmt(r.get('peak_mem_mb'), '.1f')} "
                f"| {_fmt(r.get('rel_err'), '.1e')} |")
        lines.append("")
        for (provider, status, reason), shapes in skipped.items():
            lines.append(f"- **{provider} {status}** ({', '.join(shapes)}): {reason}")
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ plot
def plot(rows: list[dict], env: dict, path: Path) -> Path | None:
    """One row of panels per op, one panel per mode: rate vs shape, a line per provider (and dtype)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ok = [r for r in rows if r["status"] == "ok"]
    ops = list(dict.fromkeys(r["op"] for r in rows))
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    if not ops:
        return None
    fig, axes = plt.subplots(len(ops), len(modes), figsize=(5.2 * len(modes), 4.2 * len(ops)), squeeze=False)
    # One colour per provider and one line style per dtype, the same in every panel.
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    colors = plt.get_cmap("tab10").colors
    copy_bw = env.get("copy_bandwidth_gbps")
    for i, op in enumerate(ops):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            mine = [r for r in ok if r["op"] == op and r["mode"] == mode]
            shapes = list(dict.fromkeys(r["shape_str"] for r in rows if r["op"] == op))
            flops = any(r.get("tflops") is not None for r in mine)
            lines = defaultdict(dict)
            for r in mine:
                lines[r["provider"], r["dtype"]][r["shape_str"]] = r["tflops"] if flops else r["gbps"]
            for (provider, dtype), points in sorted(lines.items(), key=lambda kv: providers.index(kv[0][0])):
                # NaN where a provider was skipped or failed: a gap in its line, not a bridge
                ax.plot(range(len(shapes)), [points.get(shape, float("nan")) for shape in shapes], marker="o",
                        color=colors[providers.index(provider) % len(colors)],
                        linestyle=("-", "--", ":")[dtypes.index(dtype) % 3],
                        label=f"{provider} {dtype}" if len(dtypes) > 1 else provider)
            if copy_bw and not flops:
                ax.axhline(copy_bw, color="gray", linestyle="--", linewidth=1, label="copy bandwidth")
            ax.set_xticks(range(len(shapes)), shapes, rotation=30, ha="right", fontsize=8)
            ax.set_ylim(bottom=0)
            ax.set_ylabel(("TFLOP/s" if flops else "GB/s") + f" ({env['timer']} timing)")
            ax.set_title(f"{op} {mode}", fontsize=10)
            ax.grid(alpha=0.3)
            if lines:
                ax.legend(fontsize=7)
    suptitle = f"bigmodel — {env['device_name']} — {env['timer']} timings, {env['date'][:10]}"
    if env["timer"] == "CPU":
        suptitle += f"\n{CPU_LABEL}"
    fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(rows: list[dict], env: dict, out_dir, stem: str | None = None) -> list[Path]:
    """Write <out>/<stem>.json, .md and .png; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = stem or default_stem(env)
    add_speedups(rows)
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    paths[0].write_text(to_json(rows, env))
    paths[1].write_text(to_markdown(rows, env))
    png = plot(rows, env, out / f"{stem}.png")
    return paths + ([png] if png else [])


# ------------------------------------------------------------------------------------------ text summary
def summary(rows: list[dict], env: dict) -> str:
    """Compact text: one line per op/mode/dtype/shape, each provider's time and rate side by side."""
    out = [f"{env['device_name']} — {env['timer']} timings"
           + (f" ({CPU_LABEL})" if env["timer"] == "CPU" else "")
           + f"; copy bandwidth {_fmt(env.get('copy_bandwidth_gbps'), '.0f', ' GB/s')}"]
    groups = defaultdict(list)
    for r in add_speedups(rows):
        groups[group_key(r)].append(r)
    for (op, mode, dtype, shape), group in groups.items():
        cells = []
        for r in group:
            if r["status"] != "ok":
                cells.append(f"{r['provider']} {r['status']}")
                continue
            pct = f" {r['pct_copy_bw']:.0f}%" if r.get("pct_copy_bw") is not None else ""
            vs = f" {r['speedup_vs_torch']:.2f}x" if r.get("speedup_vs_torch") is not None else ""
            cells.append(f"{r['provider']} {r['median_ms']:.3f}ms {rate(r)}{pct}{vs}")
        out.append(f"{op} {mode:7} {dtype} {shape:>11} | " + " | ".join(cells))
    reasons = {(r["provider"], r["status"], r["reason"][:200]) for r in rows if r["status"] != "ok"}
    out += [f"  {provider} {status}: {reason}" for provider, status, reason in sorted(reasons)]
    return "\n".join(out)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    parser.add_argument("--summary", metavar="JSON", required=True, help="a report written by `bigmodel bench`")
    args = parser.parse_args(argv)
    data = json.loads(Path(args.summary).read_text())
    print(summary(data["results"], data["environment"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
