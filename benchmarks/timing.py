"""Timing of one benchmark case, and the result row it becomes.

GPU: triton.testing.do_bench - CUDA events around each call, warm-up first, L2 flushed between calls,
median (and 20th / 80th percentiles); the case rotates its input sets. The device's copy bandwidth is
measured once (a large device-to-device copy, bytes read + written) so results can say "% of copy bandwidth".
CPU (no GPU): time.perf_counter median over a few calls, labelled "CPU" - a smoke test, not performance.
Peak memory: on a GPU torch.cuda.max_memory_allocated; on a CPU, for the ops whose builder sets `peak_memory`
(the loss ops), the peak of PyTorch's CPU allocator (cpu_peak_memory_mb); the row's peak_mem_device says which.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import os
import statistics
import time
import traceback

import torch

from . import cases as cases_mod

TIMER = {"cuda": "GPU", "cpu": "CPU"}
QUANTILES = (0.5, 0.2, 0.8)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def synced(fn, device: str):
    """fn followed by a device sync: what a host timer (pytest-benchmark's) must time."""
    def call():
        out = fn()
        sync(device)
        return out
    return call


def time_gpu(fn, quick: bool = False, rep_ms: float | None = None) -> dict:
    import triton.testing

    warmup, rep = (10, 30) if quick else (25, 100)  # milliseconds, as do_bench takes them
    if rep_ms:  # slow calls (a training step): time enough of them for a median
        warmup, rep = rep_ms / 4, rep_ms
    median, p20, p80 = triton.testing.do_bench(fn, warmup=warmup, rep=rep, quantiles=list(QUANTILES))
    return dict(median_ms=median, p20_ms=p20, p80_ms=p80)


def time_cpu(fn, quick: bool = False) -> dict:
    budget_s, min_reps, max_reps = (0.1, 3, 10) if quick else (0.3, 5, 50)
    t0 = time.perf_counter()
    fn()  # warm-up
    if time.perf_counter() - t0 > budget_s:  # slow calls (the Triton interpreter): fewer repeats
        min_reps = 3
    times, start = [], time.perf_counter()
    while len(times) < min_reps or (len(times) < max_reps and time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else times * 9  # within the data
    return dict(median_ms=statistics.median(times), p20_ms=q[1], p80_ms=q[7])


def time_fn(fn, device: str, quick: bool = False, rep_ms: float | None = None) -> dict:
    return time_gpu(fn, quick, rep_ms) if device == "cuda" else time_cpu(fn, quick)


def peak_memory_mb(fn, device: str, cpu: bool = False) -> float | None:
    """Memory one call allocates on top of what was already allocated (outputs + workspace), in MiB. On a CPU only
    when `cpu` (cpu_peak_memory_mb), else None."""
    if device != "cuda":
        return cpu_peak_memory_mb(fn) if cpu else None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def cpu_peak_memory_mb(fn) -> float | None:
    """The peak of PyTorch's CPU allocator during one call, above what was allocated before it, in MiB: the allocations
    and frees torch.profiler(profile_memory=True) records, summed in time order. Memory allocated outside PyTorch's
    allocator (numpy: Triton's interpreter) is not seen. None if the profiler gives no memory events."""
    from torch.profiler import ProfilerActivity, profile

    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # no "gpuGetDeviceCount failed" on a machine without a GPU
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _no_stderr():  # the profiler's start / stop lines
        prof.__enter__()
    try:
        fn()
    finally:
        with _no_stderr():
            prof.__exit__(None, None, None)
    try:
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
                  and e.device_type() == torch.autograd.DeviceType.CPU]
    except AttributeError:  # another torch's profiler
        return None
    now = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):  # stable: same-time events keep their recorded order
        now += e.nbytes()
        peak = max(peak, now)
    return peak / 2**20 if events else None


@contextlib.contextmanager
def _no_stderr():
    """File descriptor 2 to /dev/null (C++ logging bypasses sys.stderr)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@functools.cache
def copy_bandwidth_gbps(device: str) -> float | None:
    """Device-to-device copy of 1 GiB of random data: (bytes read + bytes written) / median time."""
    if device != "cuda":
        return None
    moved, ms = _time_copy(2**28)
    torch.cuda.empty_cache()  # give the 2 GiB back before the cases allocate
    return moved / (ms * 1e-3) / 1e9


def _time_copy(numel: int) -> tuple[int, float]:
    src = torch.randn(numel, device="cuda")  # fp32, never zeros
    dst = torch.empty_like(src)
    return 2 * src.numel() * src.element_size(), time_gpu(lambda: dst.copy_(src))["median_ms"]


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:  # Linux: the processor's model name
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        model = platform.processor() or platform.machine()
    return f"CPU ({model})"


# ------------------------------------------------------------------------------------------ result rows
def base_row(case: cases_mod.Case) -> dict:
    return dict(op=case.op, mode=case.mode, dtype=case.dtype, shape=case.params, shape_str=case.shape_str,
                provider=case.provider, device=case.device, id=case.id, timer=TIMER[case.device],
                status="ok", reason="")


def skipped_row(case, reason: str, status: str = "skipped") -> dict:
    return {**base_row(case), "status": status, "reason": reason}


def measure(case, prepared, quick: bool = False) -> dict:
    """Check the result against eager torch, then time the case. A wrong result gives an "error" row. The row also
    gets max_err_vs_reference: the largest |difference| from bigmodel's pure-math backend on the same inputs,
    outputs and (training modes) gradients (informational: the rel_err against eager torch is the pass / fail)."""
    row = base_row(case)
    errors = prepared.errors()
    rel_err = errors["rel_err"]
    row.update(**errors, n_input_sets=prepared.n_sets, bytes=prepared.bytes, flops=prepared.flops,
               tokens=prepared.tokens, **prepared.extra)
    tol = cases_mod.REL_ERR_TOL[case.dtype]
    if rel_err is not None and not rel_err <= tol:
        return {**row, "status": "error", "reason": f"wrong result: relative error {rel_err:.2e} > {tol:.0e} "
                                                    "against eager torch"}
    row.update(time_fn(prepared.run, case.device, quick, prepared.rep_ms))
    cpu_peak = getattr(cases_mod.OPS.get(case.op), "peak_memory", False)
    row["peak_mem_mb"] = peak_memory_mb(prepared.run, case.device, cpu=cpu_peak)
    row["peak_mem_device"] = TIMER[case.device] if row["peak_mem_mb"] is not None else None
    seconds = row["median_ms"] * 1e-3
    row["gbps"] = prepared.bytes / seconds / 1e9 if prepared.bytes else None
    row["tflops"] = prepared.flops / seconds / 1e12 if prepared.flops else None
    row["tokens_per_s"] = prepared.tokens / seconds if prepared.tokens else None
    copy_bw = copy_bandwidth_gbps(case.device)
    row["pct_copy_bw"] = 100 * row["gbps"] / copy_bw if copy_bw and row["gbps"] else None
    return row


def run_case(case, quick: bool = False) -> dict:
    """Prepare, check and time one case; never raises: rows are "ok", "skipped" (with the reason) or "error"."""
    prepared = None
    try:
        prepared = cases_mod.prepare(case)
        return measure(case, prepared, quick)
    except cases_mod.Unavailable as e:
        return skipped_row(case, str(e))
    except Exception as e:  # a provider that claims support but fails is a bug: report it, keep going
        where = traceback.extract_tb(e.__traceback__)[-1]
        return skipped_row(case, f"{type(e).__name__}: {str(e).strip()[:400]} (at {where.filename}:{where.lineno})",
                           status="error")
    finally:
        del prepared
        gc.collect()  # free this case's inputs and graphs before the next one allocates
