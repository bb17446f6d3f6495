"""pytest-benchmark suites: one bench_<op>.py per op, parametrized over the cases of benchmarks/cases.py.

    python -m pytest benchmarks -q                                   # GPU sizes with a GPU, small CPU cases without
    python -m pytest benchmarks -q --benchmark-json=bench.json       # plus pytest-benchmark's JSON
    BIGMODEL_BENCH_QUICK=1 python -m pytest benchmarks -q            # fewer sizes, shorter timing

pyproject.toml collects only tests/test_*.py; the pytest_collect_file hook below collects bench_*.py whenever
this folder is on the command line (no -o python_files=... needed). Each test records in benchmark.extra_info
the timing that counts: "timing" ("GPU": CUDA-event median from benchmarks/timing.py; "CPU": not performance
numbers), timer_median_ms, gbps / tflops / tokens_per_s, pct_copy_bw, device_name. pytest-benchmark's own statistics
time the same call with a host clock and a device sync, so they include launch overhead.
A provider that cannot run here is skipped with its reason; one that runs but gives a wrong result fails.
"""
import fnmatch

import pytest

from benchmarks import cases, timing

QUICK = cases.quick_from_env()
# result-row key -> extra_info key ("timer_*": the timer that counts, see "timing")
EXTRA_INFO = {"median_ms": "timer_median_ms", "p20_ms": "timer_p20_ms", "p80_ms": "timer_p80_ms", "gbps": "gbps",
              "tflops": "tflops", "pct_copy_bw": "pct_copy_bw", "peak_mem_mb": "peak_mem_mb", "rel_err": "rel_err",
              "bytes": "bytes", "flops": "flops", "n_input_sets": "n_input_sets", "tokens_per_s": "tokens_per_s",
              "note": "note"}


def pytest_collect_file(file_path, parent):
    if file_path.suffix != ".py" or not file_path.name.startswith("bench_"):
        return None
    # Leave files pytest collects by itself (named on the command line, or matched by python_files) to it.
    if parent.session.isinitpath(file_path) or any(
            fnmatch.fnmatch(file_path.name, p) for p in parent.config.getini("python_files")):
        return None
    return pytest.Module.from_parent(parent, path=file_path)


def pytest_benchmark_update_machine_info(config, machine_info):
    device = cases.default_device()
    machine_info["bigmodel"] = dict(device_name=timing.device_name(device), timing=timing.TIMER[device],
                                    copy_bandwidth_gbps=timing.copy_bandwidth_gbps(device))


@pytest.fixture
def bench_case(benchmark):
    """bench_case(case): check and time one case from cases.py, then let pytest-benchmark time it too."""
    def run(case):
        try:
            prepared = cases.prepare(case)
        except cases.Unavailable as e:
            pytest.skip(f"{case.provider}: {e}")
        row = timing.measure(case, prepared, quick=QUICK)
        if row["status"] != "ok":
            pytest.fail(row["reason"])
        benchmark.group = f"{case.op} {case.mode} {case.dtype} {case.shape_str}"
        benchmark.extra_info.update({"timing": row["timer"], "device_name": timing.device_name(case.device),
                                     "copy_bandwidth_gbps": timing.copy_bandwidth_gbps(case.device),
                                     **{name: row.get(key) for key, name in EXTRA_INFO.items()}})
        rounds = (10 if QUICK else 50) if case.device == "cuda" else 3
        benchmark.pedantic(timing.synced(prepared.run, case.device), rounds=rounds, warmup_rounds=1, iterations=1)
        return row
    return run
