"""Benchmark report: result rows (benchmarks/timing.py) -> <out>/<stem>.json, .md and .png.

Every row carries "timer": "GPU" or "CPU"; CPU timings are labelled as such everywhere (they are smoke tests,
not performance numbers). Rates (METRICS): tokens/s for a training step, TFLOP/s for GEMMs and attention, GB/s
and % of copy bandwidth for memory-bound ops. Speed-ups are against eager torch measured in the same run; an op
whose builder in cases.OPS names `baselines` (attention: the best SDPA backend, SDPA's flash backend; linear_act
and feed_forward: cuBLAS without epilogue, on a CPU torch.matmul (CPU); train_step: torch.compile) also gets
`speedup_vs_<name>` against the fastest of those providers; an op with an "auto" provider (bigmodel's measured
choice) gets speedup_vs_best_backend, against the fastest of torch, triton and cuda. Correctness: every row that ran has rel_err (against
eager torch: the pass / fail check) and max_err_vs_reference (MAX_ERR: the largest |difference| from bigmodel's
pure-math backend on the same inputs, outputs and gradients). A CPU run under Triton's interpreter says so first.
A builder's `plot_x` / `plot_panels` (attention: seqlen; headdim and mask) give its plot axis and panels; other
ops plot rate against shape (a bar per provider for an op of one shape). Cases run most important first, by tier
across ops; the tables and plots read op by op (cases.OPS order), shape by shape.
Rows with a "note" (e.g. a baseline computing a slightly different function) get it under their table.
Peak memory ("extra MiB"): GPU allocator; on a CPU only for ops whose builder sets `peak_memory` (the loss ops), from
PyTorch's CPU allocator, labelled "(CPU)"; the summary shows those ops' peaks.

    python -m benchmarks.report --summary bench-out/<stem>.json     # compact text table of a saved run
"""
from __future__ import annotations

import datetime
import itertools
import json
import os
import platform
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import torch

from . import cases, timing

REFERENCE = "torch"  # the speed baseline: provider "torch", PyTorch's own ops (= backend "torch")
HIGHLIGHT = ("triton", "cuda", "bigmodel", "bigmodel-triton", "bigmodel-cuda")  # bigmodel's own: thicker lines
# Plot colours (indices into tab10) that stay the same in every run; bigmodel-<backend> takes its backend's colour.
# Other providers take the remaining colours in order.
FIXED_COLORS = {"torch": 0, "torch.compile": 1, "cuda": 2, "triton": 3, "bigmodel": 4,
                "bigmodel-cuda": 2, "bigmodel-triton": 3}
# The auto row's yardstick: the fastest of the backends auto chooses among, same shape and run (about 1.00x or more:
# auto is never slower than the best backend beyond noise).
AUTO_BASELINE = {"best_backend": ("torch", "triton", "cuda")}
EXTRA_COLUMNS = {"best_backend": "vs fastest backend", "best_sdpa": "vs best SDPA", "sdpa_flash": "vs SDPA flash",  # speed-up column titles
                 "torch_compile": "vs torch.compile", "cublas": "vs cuBLAS", "matmul_cpu": "vs torch.matmul (CPU)",
                 "liger": "vs Liger-Kernel"}
# What a row's rate is, first present wins: a training step's tokens/s, a GEMM's TFLOP/s, a memory-bound op's GB/s.
METRICS = (("tokens_per_s", "tokens/s"), ("tflops", "TFLOP/s"), ("gbps", "GB/s"))
CPU_LABEL = "CPU timings — not performance numbers"
INTERPRETED_LABEL = "CPU timings of interpreted kernels (Triton under TRITON_INTERPRET=1) — not performance numbers"
MAX_ERR = "max err vs reference"  # the correctness column: largest |difference| from bigmodel's pure-math backend


def interpreting() -> bool:
    """Whether Triton runs under its CPU interpreter here (TRITON_INTERPRET, read as bigmodel.kernels reads it)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def cpu_label(env: dict) -> str:
    """What a CPU run's numbers are: the first line of its console output, markdown and plot."""
    return INTERPRETED_LABEL if env.get("triton_interpret") else CPU_LABEL


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
        copy_bandwidth_gbps=timing.copy_bandwidth_gbps(device), triton_interpret=interpreting(),
        reference_backend=cases.REFERENCE_BACKEND,
    )
    if device == "cuda":
        env["driver"] = driver_version()
        env["compute_capability"] = "%d.%d" % torch.cuda.get_device_capability()
        env["method"] = ("triton.testing.do_bench: CUDA events per call, warm-up, L2 flushed between calls, "
                         "rotating input sets; median, p20, p80")
    else:
        env["method"] = "time.perf_counter median over a few calls, rotating input sets (" + cpu_label(env) + ")"
    return env


def default_stem(env: dict) -> str:
    """'<date>-<gpu>' (DESIGN.md: benchmarks/results/<date>-<gpu>.{json,md,png}); '<date>-cpu' without a GPU."""
    name = env["device_name"] if env["device"] == "cuda" else "cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower().replace("nvidia", "")).strip("-")
    return f"{env['date'][:10]}-{slug}"


# ------------------------------------------------------------------------------------------ rows
def group_key(row: dict) -> tuple:
    return row["op"], row["mode"], row["dtype"], row["shape_str"]


def builder_attr(op: str, name: str, default=None):
    """An optional attribute of the op's builder in cases.OPS (baselines, plot_x, plot_panels, providers)."""
    return getattr(cases.OPS.get(op), name, default)


def baselines(op: str, rows: list[dict] | None = None) -> dict:
    """{"torch": ("torch",), plus the op's own: name -> providers whose fastest is that baseline}. With `rows`, only
    the op's own baselines that have a provider among them (linear_act: cuBLAS on a GPU, torch.matmul (CPU) on a
    CPU)."""
    own = builder_attr(op, "baselines", {})
    if "auto" in builder_attr(op, "providers", ()):
        own = {**AUTO_BASELINE, **own}
    if rows is not None:
        listed = {r["provider"] for r in rows if r["op"] == op}
        own = {name: providers for name, providers in own.items() if listed & set(providers)}
    return {REFERENCE: (REFERENCE,), **own}


def add_speedups(rows: list[dict]) -> list[dict]:
    """speedup_vs_<baseline> = the baseline's median / this provider's median, same shape (>1: faster).
    Every op has speedup_vs_torch (eager torch); attention also speedup_vs_best_sdpa and speedup_vs_sdpa_flash."""
    fastest = defaultdict(dict)  # group -> baseline -> fastest median
    per_op = {op: baselines(op, rows) for op in {r["op"] for r in rows}}
    for r in rows:
        for name, providers in per_op[r["op"]].items():
            if r["provider"] in providers and r["status"] == "ok":
                best = fastest[group_key(r)].get(name)
                fastest[group_key(r)][name] = r["median_ms"] if best is None else min(best, r["median_ms"])
    for r in rows:
        for name in per_op[r["op"]]:
            base = fastest[group_key(r)].get(name)
            r[f"speedup_vs_{name}"] = base / r["median_ms"] if base and r["status"] == "ok" else None
    return rows


def reading_order(rows: list[dict]) -> list[dict]:
    """Rows by op (cases.OPS order), mode (fwd, bwd, fwd+bwd), dtype and panel (each in the order first run), x
    (the op's plot_x, else the shape in the order first run), then the builder's provider order: cases run most
    important first (by tier, across ops); the tables and plots read op by op, shape by shape."""
    first = {}
    for i, r in enumerate(rows):
        for k in (r["op"], r["dtype"], (r["op"], panel(r)), (r["op"], r["shape_str"])):
            first.setdefault(k, i)
    ops = list(cases.OPS)

    def key(i):
        r = rows[i]
        x = builder_attr(r["op"], "plot_x")
        providers = list(builder_attr(r["op"], "providers", ()))
        at = providers.index(r["provider"]) if r["provider"] in providers else len(providers)
        where = r["shape"][x] if x else first[r["op"], r["shape_str"]]
        op = ops.index(r["op"]) if r["op"] in ops else len(ops) + first[r["op"]]
        mode = cases.MODES.index(r["mode"]) if r["mode"] in cases.MODES else len(cases.MODES)
        return op, mode, first[r["dtype"]], first[r["op"], panel(r)], where, at

    return [rows[i] for i in sorted(range(len(rows)), key=key)]


def panel(row: dict) -> tuple:
    """The values of the op's plot_panels parameters for this row, e.g. (("headdim", 64), ("mask", "causal"))."""
    return tuple((p, row["shape"][p]) for p in builder_attr(row["op"], "plot_panels", ()))


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def metric(row: dict) -> tuple[float | None, str | None]:
    """(value, unit) of the row's rate: tokens/s, TFLOP/s or GB/s (see METRICS); (None, None) if it has none."""
    return next(((row[key], unit) for key, unit in METRICS if row.get(key) is not None), (None, None))


def max_err(row: dict) -> str:
    """The row's max err vs reference ('3.1e-07', or '—' when it was not computed)."""
    return _fmt(row.get("max_err_vs_reference"), ".1e")


def peak_mem(row: dict) -> str:
    """The row's extra MiB ('812.0', '98.5 (CPU)': a CPU allocator measurement, or '—')."""
    return _fmt(row.get("peak_mem_mb"), ".1f") + (" (CPU)" if row.get("peak_mem_device") == "CPU" else "")


def rate(row: dict) -> str:
    """'2890 GB/s', '512.3 TFLOP/s' or '412.5k tokens/s' (more digits for the small numbers of CPU smoke runs)."""
    value, unit = metric(row)
    if value is None:
        return "—"
    if unit == "tokens/s" and value >= 1e4:
        return f"{value / 1e3:.1f}k {unit}"
    return f"{value:.0f} {unit}" if value >= 100 else f"{value:.3g} {unit}"


# ------------------------------------------------------------------------------------------ json / markdown
def to_json(rows: list[dict], env: dict) -> str:
    return json.dumps({"environment": env, "timer": env["timer"], "results": rows}, indent=1)


def to_markdown(rows: list[dict], env: dict) -> str:
    cpu = env["timer"] == "CPU"
    title = f"# bigmodel benchmarks — {env['device_name']} ({env['timer']} timings)"
    lines = [title, ""]
    if cpu:
        lines += [f"**{cpu_label(env)}.** No GPU on this machine: these numbers only show that every path runs, "
                  f"and how far each is from the reference (the {MAX_ERR} column).", ""]
    copy_bw = env.get("copy_bandwidth_gbps")
    lines += [
        f"- date {env['date']}, bigmodel {env['bigmodel']} ({env.get('git_commit') or 'no git'}), torch "
        f"{env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, driver {env['driver']}, python {env['python']}",
        f"- timer: {env['timer']} — {env['method']}",
        f"- copy bandwidth: {_fmt(copy_bw, '.0f', ' GB/s')} (device-to-device copy, bytes read + written)",
        "- vs torch: eager torch's median / this provider's median, same run (>1 is faster)",
        "- rate: tokens/s for a training step, TFLOP/s for GEMMs and attention, GB/s (bytes read + written at "
        "least) for memory-bound ops",
        f"- {MAX_ERR}: the largest |difference| from bigmodel's pure-math backend (\"{cases.REFERENCE_BACKEND}\") "
        "on the case's own inputs, over its outputs and, in training modes, its gradients; rel err: "
        "||out - ref|| / ||ref|| against eager torch (the pass / fail check)",
        "- extra MiB: the peak memory one call allocates on top of its inputs: torch.cuda.max_memory_allocated on a "
        "GPU; \"(CPU)\": the peak of PyTorch's CPU allocator (torch.profiler, profile_memory=True), a CPU measurement",
    ]
    for op in dict.fromkeys(r["op"] for r in rows):
        lines += [f"- {EXTRA_COLUMNS.get(name, name)} ({op}): the fastest median of {', '.join(providers)} / this "
                  "provider's median, same shape and run"
                  for name, providers in baselines(op, rows).items() if name != REFERENCE]
    lines.append("")
    unit = "CPU ms" if cpu else "GPU ms"
    groups = defaultdict(list)
    for r in reading_order(rows):
        groups[(r["op"], r["mode"], r["dtype"])].append(r)
    for (op, mode, dtype), group in groups.items():
        shape_names = " x ".join(group[0]["shape"])
        others = [name for name in baselines(op, rows) if name != REFERENCE]  # attention: best_sdpa, sdpa_flash
        lines += [f"## {op} — {mode} — {dtype}", "",
                  f"| {shape_names} | provider | median {unit} | p20–p80 {unit} | rate | % copy BW | vs torch "
                  + "".join(f"| {EXTRA_COLUMNS.get(name, name)} " for name in others)
                  + f"| extra MiB | rel err | {MAX_ERR} |",
                  "|---|---|--:|--:|--:|--:|--:|" + "--:|" * len(others) + "--:|--:|--:|"]
        skipped = {}
        for r in group:
            if r["status"] != "ok":
                skipped.setdefault((r["provider"], r["status"], r["reason"]), []).append(r["shape_str"])
                continue
            lines.append(
                f"| {r['shape_str']} | {r['provider']} | {r['median_ms']:.4f} | {r['p20_ms']:.4f}–{r['p80_ms']:.4f} "
                f"| {rate(r)} | {_fmt(r.get('pct_copy_bw'), '.0f', '%')} "
                + "".join(f"| {_fmt(r.get(f'speedup_vs_{name}'), '.2f', 'x')} " for name in (REFERENCE, *others))
                + f"| {peak_mem(r)} | {_fmt(r.get('rel_err'), '.1e')} | {max_err(r)} |")
        lines.append("")
        for (provider, status, reason), shapes in skipped.items():
            lines.append(f"- **{provider} {status}** ({', '.join(shapes)}): {reason}")
        notes = {}
        for r in group:
            if r["status"] == "ok" and r.get("note"):
                notes.setdefault((r["provider"], r["note"]), []).append(r["shape_str"])
        lines += [f"- note, {provider} ({', '.join(shapes)}): {note}" for (provider, note), shapes in notes.items()]
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ plot
def plot(rows: list[dict], env: dict, path: Path) -> Path | None:
    """One row of panels per op (per value of its plot_panels, e.g. attention's head dim and mask), one column per
    mode: rate against shape (or the op's plot_x, e.g. sequence length): tokens/s, TFLOP/s, or GB/s with the copy
    bandwidth (see METRICS). A line per provider (and dtype), in the same colour in every panel, or a bar per
    provider for an op of one shape (train_step); one legend."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = reading_order(rows)
    panels = list(dict.fromkeys((r["op"], panel(r)) for r in rows))
    modes = [m for m in cases.MODES if any(r["mode"] == m for r in rows)]
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), len(modes), figsize=(5.2 * len(modes), 3.8 * len(panels) + 1.2),
                             squeeze=False)
    # One colour per provider and one line style per dtype, the same in every panel.
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    palette = plt.get_cmap("tab10").colors + plt.get_cmap("Dark2").colors  # 18: every provider of every op
    free = itertools.cycle([c for i, c in enumerate(palette) if i not in FIXED_COLORS.values()])
    colors = {p: palette[FIXED_COLORS[p]] if p in FIXED_COLORS else next(free) for p in providers}
    copy_bw = env.get("copy_bandwidth_gbps")
    legend = {}
    for i, (op, where) in enumerate(panels):
        x = builder_attr(op, "plot_x")
        here = [r for r in rows if r["op"] == op and panel(r) == where]
        points = [r["shape"][x] if x else r["shape_str"] for r in here]
        xs = sorted(set(points)) if x else list(dict.fromkeys(points))
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            if not any(r["mode"] == mode for r in here):  # an op without this mode (train_step: fwd+bwd only)
                ax.axis("off")
                continue
            mine = [(p, r) for p, r in zip(points, here) if r["mode"] == mode and r["status"] == "ok"]
            unit = next((metric(r)[1] for _, r in mine), None)
            lines = defaultdict(dict)
            for p, r in mine:
                lines[r["provider"], r["dtype"]][p] = metric(r)[0]
            series = sorted(lines.items(), key=lambda kv: (providers.index(kv[0][0]), dtypes.index(kv[0][1])))
            for k, ((provider, dtype), values) in enumerate(series):
                label = f"{provider} {dtype}" if len(dtypes) > 1 else provider
                style = dict(color=colors[provider])
                if len(xs) == 1:  # one shape (train_step): a bar per provider
                    legend[label] = ax.bar(k, values[xs[0]], **style, hatch=("", "//", "..")[dtypes.index(dtype) % 3])
                    continue
                # NaN where a provider was skipped or failed: a gap in its line, not a bridge
                legend[label], = ax.plot(range(len(xs)), [values.get(p, float("nan")) for p in xs], marker="o",
                                         linestyle=("-", "--", ":")[dtypes.index(dtype) % 3],
                                         linewidth=2.4 if provider in HIGHLIGHT else 1.3, **style)
            if copy_bw and unit == "GB/s":
                legend["copy bandwidth"] = ax.axhline(copy_bw, color="gray", linestyle="--", linewidth=1)
            if len(xs) == 1:
                ax.set_xticks(range(len(series)), [p for (p, _), _ in series], rotation=30, ha="right", fontsize=8)
                ax.set_xlabel(f"{' x '.join(here[0]['shape'])} = {xs[0]}", fontsize=8)
            else:
                ax.set_xticks(range(len(xs)), [str(p) for p in xs], rotation=30, ha="right", fontsize=8)
                ax.set_xlabel(x or " x ".join(here[0]["shape"]), fontsize=8)
            ax.set_ylim(bottom=0)
            ax.set_ylabel(f"{unit or 'rate'} ({env['timer']} timing)")
            ax.set_title(", ".join([f"{op} {mode}"] + [f"{k} {v}" for k, v in where]), fontsize=10)
            ax.grid(alpha=0.3)
    suptitle = f"bigmodel — {env['device_name']} — {env['timer']} timings, {env['date'][:10]}"
    if env["timer"] == "CPU":
        suptitle += f"\n{cpu_label(env)}"
    fig.suptitle(suptitle, fontsize=11)
    ncol = min(len(legend), 6) or 1
    fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=ncol, fontsize=9)
    height = fig.get_figheight()  # inches kept for the legend (below) and the title (above)
    bottom, top = (0.3 * -(-len(legend) // ncol) + 0.2) / height, (0.25 * (suptitle.count("\n") + 1) + 0.1) / height
    fig.tight_layout(rect=(0, bottom, 1, 1 - top))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(rows: list[dict], env: dict, out_dir, stem: str | None = None) -> list[Path]:
    """Write <out>/<stem>.json, .md and .png; returns the paths written. `rows` gets its speed-ups and is put in
    reading order in place (the console table printed after this follows it, not the run order)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = stem or default_stem(env)
    rows[:] = reading_order(add_speedups(rows))
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    paths[0].write_text(to_json(rows, env))
    paths[1].write_text(to_markdown(rows, env))
    png = plot(rows, env, out / f"{stem}.png")
    return paths + ([png] if png else [])


# ------------------------------------------------------------------------------------------ text summary
def summary(rows: list[dict], env: dict) -> str:
    """Compact text: one line per op/mode/dtype/shape, each provider's time and rate side by side. An op with
    more baselines (attention, train_step) shows the fastest of its first (best_sdpa, torch_compile), then each
    other provider that ran with its speed-ups over them: the lines stay short (every SDPA backend's numbers are in
    the markdown)."""
    out = [f"{env['device_name']} — {env['timer']} timings"
           + (f" ({cpu_label(env)})" if env["timer"] == "CPU" else "")
           + f"; copy bandwidth {_fmt(env.get('copy_bandwidth_gbps'), '.0f', ' GB/s')}"]

    def cell(r, speedups):
        pct = f" {r['pct_copy_bw']:.0f}%" if r.get("pct_copy_bw") is not None else ""
        vs = "".join(f" {r[f'speedup_vs_{n}']:.2f}x" for n in speedups if r.get(f"speedup_vs_{n}") is not None)
        err = f" err {r['max_err_vs_reference']:.1e}" if r.get("max_err_vs_reference") is not None else ""
        mem = ""
        if builder_attr(r["op"], "peak_memory") and r.get("peak_mem_mb") is not None:  # the loss ops
            mem = f" peak {r['peak_mem_mb']:.1f} MiB" + (" (CPU)" if r.get("peak_mem_device") == "CPU" else "")
        return f"{r['provider']} {r['median_ms']:.3f}ms {rate(r)}{pct}{vs}{err}{mem}"

    groups, explained = defaultdict(list), set()
    for r in reading_order(add_speedups(rows)):
        groups[group_key(r)].append(r)
    width = max([11] + [len(r["shape_str"]) for r in rows])
    for (op, mode, dtype, shape), group in groups.items():
        others = {n: providers for n, providers in baselines(op, rows).items() if n != REFERENCE}
        cells, shown, speedups = [], group, [REFERENCE]
        if others:  # attention, train_step
            (name, sdpa) = next(iter(others.items()))
            speedups = [n for n in baselines(op, rows) if n != REFERENCE or REFERENCE not in sdpa]
            best = min((r for r in group if r["provider"] in sdpa and r["status"] == "ok"),
                       key=lambda r: r["median_ms"], default=None)
            cells.append(f"{name}: {cell(best, ()) if best else 'none ran'}")
            shown = [r for r in group if r["provider"] not in sdpa and r["status"] != "skipped"]
            if op not in explained:
                explained.add(op)
                out.append(f"{op}: {name} = the fastest of {', '.join(sdpa)}; the other providers that ran, with "
                           f"their speed-ups {', '.join(EXTRA_COLUMNS.get(n, 'vs ' + n) for n in speedups)}")
        cells += [cell(r, speedups) if r["status"] == "ok" else f"{r['provider']} {r['status']}" for r in shown]
        out.append(f"{op} {mode:7} {dtype} {shape:>{width}} | " + " | ".join(cells))
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
