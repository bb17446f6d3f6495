"""The `bigmodel` command (also `python -m bigmodel`).

    bigmodel info                      versions, device, which backends can run here (and why not), auto's choices
    bigmodel tune [--ops attention] [--modes fwd,fwd+bwd] [--dtype bf16] [--quick] [--shape seqlen=8192,...]
                                       fill measured auto's cache for the benchmark cases (or the shapes given)
    bigmodel bench [--ops layer_norm] [--modes fwd,bwd,fwd+bwd] [--dtype bf16] [--out bench-out] [--quick]
                   [--no-interpret]    time every provider side by side; writes <out>/<stem>.json, .md, .png
    bigmodel train [--preset tiny] [--data FILE] [--steps N] [--out DIR [--resume]] [--parallel ddp|fsdp]
                                       train on bytes (see bigmodel/train/); under torchrun: data-parallel

`bench` reuses the case definitions of benchmarks/cases.py (a source checkout, e.g. `pip install -e .`).
Without a GPU it runs small CPU cases, labelled as CPU timings (not performance numbers), and re-executes itself
with TRITON_INTERPRET=1 so that bigmodel's Triton kernels run under Triton's CPU interpreter (unless
TRITON_INTERPRET is already set, to any value, or --no-interpret is given: then the triton rows are skipped, with
the reason). Every row that ran shows its "max err vs reference": the largest |difference| from bigmodel's
pure-math backend on the case's own inputs, outputs and (training modes) gradients.
Exit status: 0 on success, 1 when a provider that should run failed (the report is still written),
130 when interrupted (the cases finished so far are written).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import sys
import time
from pathlib import Path

REEXEC_MARK = "BIGMODEL_BENCH_REEXECUTED"  # set in the environment of the re-executed `bigmodel bench`


# ------------------------------------------------------------------------------------------ output
class Output:
    """rich when installed (it is a dev extra), plain text otherwise."""

    def __init__(self):
        try:
            from rich.console import Console

            # Logs and pipes get wide lines (rich would wrap at 80 columns) unless COLUMNS says otherwise.
            wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
            self.console = Console(width=180 if wide else None)
        except ImportError:
            self.console = None

    def print(self, text: str = "", style: str | None = None):
        if self.console is not None:
            self.console.print(text, style=style, highlight=False, markup=False)
        else:
            print(text)

    def table(self, title: str, columns: list[str], rows: list[list[str]]):
        if self.console is not None:
            from rich.table import Table

            table = Table(title=title, title_justify="left")
            for col in columns:
                table.add_column(col, overflow="fold")
            for row in rows:
                table.add_row(*row)
            self.console.print(table)
            return
        widths = [max(len(str(x)) for x in [col] + [r[i] for r in rows]) for i, col in enumerate(columns)]
        print(title)
        for row in [columns] + rows:
            print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))

    def progress(self, total: int):
        """A progress bar on a terminal (rich), nothing otherwise (logs get one line per case)."""
        if self.console is None or not self.console.is_terminal:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=self.console, transient=True)
        progress.task = progress.add_task("benchmarking", total=total)
        return progress


# ------------------------------------------------------------------------------------------ info
def cmd_info(args, out: Output) -> int:
    import platform

    import torch

    import bigmodel
    from bigmodel import backends

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    out.print(f"bigmodel {bigmodel.__version__}", style="bold")
    out.print(f"python {platform.python_version()}, torch {torch.__version__}, triton {triton_version}, "
              f"CUDA {torch.version.cuda or 'none (CPU build of torch)'}")
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out.print(f"device: {p.name} (sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
                  f"{p.total_memory / 2**30:.0f} GiB), {torch.cuda.device_count()} visible")
    else:
        out.print("device: no GPU (torch.cuda.is_available() is False)")
    interp = os.environ.get("TRITON_INTERPRET", "")
    interpreting = interp not in ("", "0")
    out.print(f"TRITON_INTERPRET: {interp or 'unset'}" + (" (Triton runs on CPU tensors)" if interpreting else ""))
    out.print(f"bigmodel._C: {extension_status()}")
    rows = [[name, "yes" if not reasons else "no", "; ".join(reasons) or "-"]
            for name, reasons in bigmodel.available_backends().items()]
    out.table("backends", ["backend", "usable here", "why not"], rows)
    print_auto(out)
    return 0


def print_auto(out: Output):
    """How auto decides here, and its recorded choices (this machine's cache, then the shipped seed table)."""
    from bigmodel import backends
    from bigmodel.backends import autotune

    order = ", ".join(f"{op}: {' > '.join(names)}" for op, names in backends.PRIORITY.items())
    timed = {"off": "times nothing (the static priority decides)", "cuda": "times CUDA inputs on their first call",
             "all": "times CUDA and CPU inputs on their first call (CPU: every backend that can run them)"}
    out.print(f"auto: {autotune.ENV}={os.environ.get(autotune.ENV, 'unset')}"
              f"{' (deterministic algorithms on)' if autotune.policy() == 'off' and _deterministic() else ''}: "
              f"{timed[autotune.policy()]}; ties within {autotune.TIE:.0%} go to the static priority")
    out.print(f"  static priority on CUDA tensors: {order}; other ops: {' > '.join(backends.DEFAULT_PRIORITY)}")
    out.print(f"  on other devices (CPU): {' > '.join(backends.OTHER_DEVICE_PRIORITY)} (reference only where PyTorch "
              f"cannot run the inputs; triton only when asked by name, or with {autotune.ENV}=all)")
    path = autotune.cache_path()
    known = autotune.entries()
    out.print(f"  cache: {path} ({'exists' if path.exists() else 'not written yet'}); seed table: "
              f"{sum(e['source'] == 'seed' for e in known.values())} entries ({autotune.SEED_FILE.name})")
    if not known:
        out.print("  no recorded choices yet (`bigmodel tune` fills the cache)")
        return
    rows = [[key, e["winner"], ", ".join(f"{b} {_ms(t)}" for b, t in e["times_ms"].items())
             + "".join(f"; {b} failed: {why}" for b, why in e.get("errors", {}).items()), e["source"]]
            for key, e in sorted(known.items())]
    out.table("auto's choices (CPU timings are not performance numbers)" if any(" | cpu | " in k for k in known)
              else "auto's choices", ["key", "winner", "times (ms, median)", "source"], rows)


def _ms(t) -> str:
    return "n/a" if t is None else f"{t:.4g}"


def _deterministic() -> bool:
    import torch

    return torch.are_deterministic_algorithms_enabled()


def extension_status() -> str:
    """Whether bigmodel._C is built, and the GPU architectures its cubins are for (read with cuobjdump -lelf)."""
    import re
    import shutil
    import subprocess

    from bigmodel.backends.cuda import load_extension

    ext, why = load_extension()
    if ext is None:
        return f"not built ({why})"
    try:
        import triton

        bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    except ImportError:
        bundled = ""
    tool = bundled if os.path.exists(bundled) else shutil.which("cuobjdump")
    if tool is None:
        return f"built ({ext.__file__}); architectures unknown (no cuobjdump)"
    listing = subprocess.run([tool, "-lelf", ext.__file__], capture_output=True, text=True).stdout
    archs = sorted(set(re.findall(r"sm_\d+a?", listing)), key=lambda a: int(re.sub(r"\D", "", a)))
    return f"built for {', '.join(archs) or 'no architecture found'} ({ext.__file__})"


# ------------------------------------------------------------------------------------------ bench
@functools.cache
def load_benchmarks():
    """benchmarks/{cases,timing,report}.py from the source checkout next to this package."""
    root = Path(__file__).resolve().parent.parent
    if (root / "benchmarks" / "cases.py").is_file() and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        from benchmarks import cases, report, timing
    except ImportError as e:
        raise SystemExit(f"bigmodel bench needs the benchmarks/ folder of a bigmodel source checkout "
                         f"(install with `pip install -e .`); could not import it: {e}")
    return cases, report, timing


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def case_line(row: dict) -> str:
    report = load_benchmarks()[1]
    if row["status"] != "ok":
        return f"{row['status']}: {row['reason']}"
    pct = f"  {row['pct_copy_bw']:.0f}% of copy BW" if row.get("pct_copy_bw") is not None else ""
    err = f"  {report.MAX_ERR} {report.max_err(row)}" if row.get("max_err_vs_reference") is not None else ""
    return f"{row['median_ms']:.4f} {row['timer']} ms  {report.rate(row)}{pct}{err}"


def interpreter_environment(args, environ, gpu_visible: bool) -> dict | None:
    """The environment to re-execute `bigmodel bench` in, so that Triton runs under its CPU interpreter: a copy of
    `environ` with TRITON_INTERPRET=1 (and REEXEC_MARK=1), or None to go on as this process is. Re-executed only
    for a CPU run (--device cpu, or no GPU visible), and never when TRITON_INTERPRET is already set (to any value:
    the user's choice stands; it also stops a second re-execution) or --no-interpret was given. A new process,
    because TRITON_INTERPRET counts only when set before triton is imported (`import bigmodel` imports it)."""
    if args.no_interpret or "TRITON_INTERPRET" in environ:
        return None
    if (args.device or ("cuda" if gpu_visible else "cpu")) != "cpu":
        return None
    return {**environ, "TRITON_INTERPRET": "1", REEXEC_MARK: "1"}


def reexecute(argv: list[str], env: dict) -> None:
    """Replace this process by `python -m bigmodel <argv>` in `env` (POSIX exec: same pid, terminal and exit status;
    elsewhere a child process whose exit status becomes ours)."""
    command = [sys.executable, "-m", "bigmodel", *argv]
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "posix":
        os.execve(sys.executable, command, env)
    import subprocess

    raise SystemExit(subprocess.call(command, env=env))


def cmd_bench(args, out: Output, argv: list[str] | None = None) -> int:
    """`bigmodel bench`; `argv` (the command line's arguments) allows re-executing under Triton's interpreter."""
    if argv is not None:
        import torch

        env = interpreter_environment(args, os.environ, torch.cuda.is_available())
        if env is not None:
            reexecute(argv, env)
    cases, report, timing = load_benchmarks()
    device = args.device or cases.default_device()
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("bigmodel bench --device cuda: no CUDA GPU is visible")
    try:
        todo = cases.all_cases(_csv(args.ops), tuple(_csv(args.modes) or cases.MODES), _csv(args.dtype),
                               device, args.quick)
    except ValueError as e:
        raise SystemExit(f"bigmodel bench: {e}")
    providers = _csv(args.providers)
    if providers:
        todo = [c for c in todo if c.provider in providers]
    if not todo:
        raise SystemExit("bigmodel bench: no case matches these options")

    timer = timing.TIMER[device]
    env = report.environment(device)
    if timer == "CPU":  # the first line says what the numbers are
        out.print(f"{report.cpu_label(env)} (no GPU here: every path runs, with its {report.MAX_ERR})",
                  style="bold yellow")
        if env["triton_interpret"]:
            how = ("re-executed itself with TRITON_INTERPRET=1" if os.environ.get(REEXEC_MARK) else
                   "TRITON_INTERPRET is set")
            out.print(f"Triton kernels run under Triton's CPU interpreter ({how}; `--no-interpret` to skip them)")
        else:
            out.print("Triton's CPU interpreter is off (TRITON_INTERPRET unset or 0, or --no-interpret): the triton "
                      "rows are skipped")
    out.print(f"bigmodel bench: {len(todo)} cases on {timing.device_name(device)} ({timer} timings)", style="bold")
    if timer != "CPU":
        out.print(f"copy bandwidth: {timing.copy_bandwidth_gbps(device):.0f} GB/s (device-to-device copy)")

    rows, interrupted, start = [], False, time.monotonic()
    progress = out.progress(len(todo))
    with progress or contextlib.nullcontext():
        try:
            for i, case in enumerate(todo, 1):
                if args.max_seconds and time.monotonic() - start > args.max_seconds:
                    rows.append(timing.skipped_row(case, f"not run: --max-seconds {args.max_seconds:g} spent"))
                    continue
                if progress:
                    progress.update(progress.task, description=f"{case.op} {case.id}")
                rows.append(timing.run_case(case, quick=args.quick))
                out.print(f"[{i}/{len(todo)}] {case.op} {case.id}: {case_line(rows[-1])}")  # above the bar
                if progress:
                    progress.advance(progress.task)
        except KeyboardInterrupt:  # keep what finished: the report below is still written
            interrupted = True
            rows += [timing.skipped_row(c, "not run: interrupted") for c in todo[len(rows):]]
    elapsed = time.monotonic() - start

    env["elapsed_s"] = round(elapsed, 1)
    env["command"] = "bigmodel " + " ".join(sys.argv[1:])
    paths = report.write(rows, env, args.out, args.stem)
    print_results(out, rows, env)
    counts = ", ".join(f"{sum(r['status'] == s for r in rows)} {s}" for s in ("ok", "skipped", "error"))
    out.print(f"\n{len(rows)} cases ({counts}) in {elapsed:.0f} s, {timer} timings; wrote "
              + ", ".join(map(str, paths)))
    errors = [r for r in rows if r["status"] == "error"]
    if errors:
        out.print(f"{len(errors)} case(s) failed: " + ", ".join(f"{r['op']} {r['id']}" for r in errors), style="red")
    return 130 if interrupted else 1 if errors else 0


def print_results(out: Output, rows: list[dict], env: dict):
    report = load_benchmarks()[1]
    timer = env["timer"]
    unit = f"{timer} ms"
    table, notes = [], {}
    for r in rows:
        if r["status"] == "skipped":
            notes.setdefault((r["provider"], r["reason"]), []).append(f"{r['mode']} {r['shape_str']}")
            continue
        if r["status"] == "error":
            table.append([r["op"], r["mode"], r["dtype"], r["shape_str"], r["provider"], "ERROR", "", "", "", "",
                          r["reason"][:120]])
            continue
        pct = f"{r['pct_copy_bw']:.0f}%" if r.get("pct_copy_bw") is not None else "-"
        vs = f"{r['speedup_vs_torch']:.2f}x" if r.get("speedup_vs_torch") is not None else "-"
        table.append([r["op"], r["mode"], r["dtype"], r["shape_str"], r["provider"], f"{r['median_ms']:.4f}",
                      report.rate(r), pct, vs, report.max_err(r), r.get("max_err_note", "")])
    title = f"results ({report.cpu_label(env)})" if timer == "CPU" else "results (GPU timings, median)"
    out.table(title, ["op", "mode", "dtype", "shape", "provider", unit, "rate", "% copy BW", "vs torch",
                      report.MAX_ERR, "note"], table)
    for (provider, reason), where in notes.items():
        out.print(f"skipped {provider} ({len(where)} cases): {reason}")


# ------------------------------------------------------------------------------------------ tune
def cmd_tune(args, out: Output, argv: list[str] | None = None) -> int:
    """`bigmodel tune`: run each benchmark case's "auto" provider once (its first call measures the backends)."""
    if argv is not None:
        import torch

        env = interpreter_environment(args, os.environ, torch.cuda.is_available())
        if env is not None:
            reexecute(argv, env)
    from bigmodel.backends import autotune

    cases = load_benchmarks()[0]
    device = args.device or cases.default_device()
    if not autotune.measures(device):
        why = (f"{autotune.ENV}=0 or deterministic algorithms" if autotune.policy() == "off" else
               f"on {device} tensors auto runs PyTorch's op without timing; set {autotune.ENV}=all to time every "
               "backend that can run them (Triton under its interpreter, the reference)")
        raise SystemExit(f"bigmodel tune: auto does not time {device} inputs here ({why})")
    try:
        todo = [c for c in cases.all_cases(_csv(args.ops), tuple(_csv(args.modes) or ("fwd", "fwd+bwd")),
                                           _csv(args.dtype), device, args.quick) if c.provider == "auto"]
        todo = tune_shapes(cases, todo, args.shape) if args.shape else todo
    except ValueError as e:
        raise SystemExit(f"bigmodel tune: {e}")
    if not todo:
        raise SystemExit("bigmodel tune: no case matches these options")
    out.print(f"bigmodel tune: {len(todo)} cases on {device}; cache {autotune.cache_path()}", style="bold")
    failed = 0
    for i, case in enumerate(todo, 1):
        try:
            prepared = cases.prepare(case)
            line = prepared.extra.get("note", "")
        except cases.Unavailable as e:
            line = f"skipped: {e}"
        except Exception as e:  # a backend failing while timed: reported, the other cases still run
            failed += 1
            line = f"ERROR: {type(e).__name__}: {str(e)[:300]}"
        out.print(f"[{i}/{len(todo)}] {case.op} {case.mode} {case.dtype} {case.shape_str}: {line}")
    print_auto(out)
    return 1 if failed else 0


def tune_shapes(cases, todo: list, specs: list[str]) -> list:
    """The cases of `todo`'s ops, modes and dtypes at the shapes given as NAME=VALUE,... (names of the op's case
    shape; a name not given keeps the op's first size)."""
    every = []
    for op in dict.fromkeys(c.op for c in todo):
        first = next(c for c in todo if c.op == op)
        names = [n for n, _ in first.shape]
        for spec in specs:
            given = dict(item.split("=", 1) for item in spec.split(",") if "=" in item)
            unknown = sorted(set(given) - set(names))
            if unknown:
                raise ValueError(f"--shape {spec!r}: {op} has no size named {', '.join(unknown)} (its sizes: "
                                 f"{', '.join(names)})")
            shape = tuple((n, int(given[n]) if given.get(n, "").isdigit() else given.get(n, v)) for n, v in first.shape)
            every += [dataclasses.replace(c, shape=shape) for c in todo if c.op == op and c.shape == first.shape]
    return every


# ------------------------------------------------------------------------------------------ train
def cmd_train(args, out: Output) -> int:
    from bigmodel import train

    return train.run(args)


# ------------------------------------------------------------------------------------------ main
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bigmodel", description="Fused Transformer kernels: info and benchmarks.")
    sub = p.add_subparsers(dest="command")
    sub.add_parser("info", help="versions, device, and each backend's availability (with reasons)")
    b = sub.add_parser("bench", help="benchmark every provider side by side; writes JSON + markdown + PNG",
                       description="Benchmark the ops of benchmarks/cases.py on every provider.")
    b.add_argument("--ops", help="comma-separated ops (default: all)")
    b.add_argument("--modes", help="comma-separated, from fwd,bwd,fwd+bwd (default: all)")
    b.add_argument("--dtype", help="comma-separated, from bf16,fp16,fp32 (default: bf16 on GPU, fp32 on CPU)")
    b.add_argument("--providers", help="comma-separated subset, e.g. torch,triton (default: all)")
    b.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when a GPU is visible")
    b.add_argument("--out", default="bench-out", help="output folder (default: bench-out/)")
    b.add_argument("--stem", help="file name stem (default: <date>-<gpu> or <date>-cpu)")
    b.add_argument("--quick", action="store_true", help="fewer sizes, shorter timing")
    b.add_argument("--max-seconds", type=float, help="start no new case after this long (the rest: skipped)")
    b.add_argument("--no-interpret", action="store_true",
                   help="on a CPU, do not re-run under TRITON_INTERPRET=1 (Triton's CPU interpreter, which `bench` "
                        "otherwise turns on by itself when TRITON_INTERPRET is unset): the triton rows are skipped")
    t = sub.add_parser("tune", help="fill measured auto's cache: time every backend on the benchmark cases' shapes",
                       description="Run each benchmark case's 'auto' provider once: its first call times every "
                                   "backend that can run the case and records the fastest in the cache that "
                                   "`bigmodel info` shows.")
    t.add_argument("--ops", help="comma-separated ops (default: all)")
    t.add_argument("--modes", help="comma-separated, from fwd,bwd,fwd+bwd (default: fwd,fwd+bwd = inference and "
                                   "training)")
    t.add_argument("--dtype", help="comma-separated, from bf16,fp16,fp32 (default: bf16 on GPU, fp32 on CPU)")
    t.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when a GPU is visible")
    t.add_argument("--quick", action="store_true", help="the benchmark's --quick sizes")
    t.add_argument("--shape", action="append", help="NAME=VALUE,... in the op's case sizes (e.g. "
                                                    "seqlen=8192,headdim=128), instead of the preset; repeatable")
    t.add_argument("--no-interpret", action="store_true", help="on a CPU, do not re-run under TRITON_INTERPRET=1")
    from bigmodel import train

    t = sub.add_parser("train", help="train a model on bytes (one process, or DDP / FSDP under torchrun)",
                       description="Train a bigmodel Transformer on a byte-level corpus; under `torchrun "
                                   "--nproc_per_node N -m bigmodel train` the global batch is split across ranks.")
    train.add_arguments(t)
    return p


def main(argv=None) -> int:
    """The command line (argv None: sys.argv; only then may `bench` re-execute itself under Triton's interpreter)."""
    args = parser().parse_args(argv)
    out = Output()
    if args.command == "info":
        return cmd_info(args, out)
    if args.command == "bench":
        return cmd_bench(args, out, sys.argv[1:] if argv is None else None)
    if args.command == "tune":
        return cmd_tune(args, out, sys.argv[1:] if argv is None else None)
    if args.command == "train":
        return cmd_train(args, out)
    parser().print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
