"""Compile an older commit's attention and linear_act kernels for sm_90 with today's tests/gpu_compile.py
measurements (hot loop, wgmma shapes, ptxas notes), adding the 16-divisibility hints the runtime gives aligned
inputs (specs before issue 12 had none). Used for issue12-sm90-before-acc238f.json:

    git worktree add /tmp/old acc238f
    mkdir -p /tmp/oldpkg && cp -r /tmp/old/bigmodel /tmp/oldpkg/ && cp -r /tmp/old/kernels /tmp/oldpkg/bigmodel/kernels
    PYTHONPATH=/tmp/oldpkg env -u TRITON_INTERPRET python benchmarks/static/compile_before.py before.json

The "after" file is `python tests/gpu_compile.py --arch 90 --only attention|linear_act --json ...` on this commit;
before_after_table.py BEFORE AFTER prints the markdown table (issue12-sm90-before-after.md)."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))
import gpu_compile as g
import bigmodel.kernels.attention as att, bigmodel.kernels.linear_act as la
g.PTXAS_VERSION = g.ptxas_version()
rows = []
for mod, name in ((att, "attention"), (la, "linear_act")):
    for spec in mod.compile_specs():
        if 90 not in getattr(spec, "archs", (80, 90)):
            continue
        ptrs = [n for n, t in spec.signature.items() if t.startswith("*")]
        if name == "attention":
            extra = [n for n in spec.fn.arg_names if n.startswith("stride_") and n[7] in "qkvd"
                     and "unaligned" not in spec.name and n in spec.signature]
        else:
            extra = [n for n in spec.signature if not spec.signature[n].startswith("*") and n not in ("M", "m_bucket")]
        object.__setattr__(spec, "aligned_args", tuple(ptrs + extra))
        object.__setattr__(spec, "allowed_perf_notes", {})
        r = g.compile_spec(spec, 90)
        rows.append(dict(module=name, **r))
        print(r["kernel"], r["registers"], r.get("hot_loop_instructions"), r.get("perf_notes"), flush=True)
json.dump(rows, open(sys.argv[1], "w"), indent=1)
