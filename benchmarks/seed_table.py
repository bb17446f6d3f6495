"""Build bigmodel/backends/autotune_seed.json, measured auto's seed table, from committed GPU measurements.

    python benchmarks/seed_table.py            # rewrites the seed file from benchmarks/results/**/autotune-*.json

Each input is an autotune cache file written on a lent GPU (benchmarks/gpu_suite.sh copies it into
benchmarks/results/<run>/): its keys name the device, so a seed answers only on a matching GPU. A key measured in
several runs keeps the latest run's (file names sort by date). CPU keys are left out: CPU timings are not
performance. The seed file is package data (setup.py), read by bigmodel/backends/autotune.py.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SEED = ROOT / "bigmodel" / "backends" / "autotune_seed.json"
FORMAT = 1  # bigmodel.backends.autotune.FORMAT (not imported: this script runs without torch)


def build(results: Path = RESULTS) -> dict:
    entries = {}
    for path in sorted(results.glob("**/autotune-*.json")):
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            print(f"skipping {path}: format {data.get('format')!r}, expected {FORMAT}", file=sys.stderr)
            continue
        for key, entry in data.get("entries", {}).items():
            if " | cpu | " in key:
                continue
            entries[key] = {"winner": entry["winner"], "times_ms": entry["times_ms"],
                            "measured_with": data.get("context", {}), "file": str(path.relative_to(results))}
    return {"format": FORMAT, "entries": dict(sorted(entries.items()))}


def main() -> int:
    table = build()
    SEED.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote {SEED.relative_to(ROOT)}: {len(table['entries'])} entries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
