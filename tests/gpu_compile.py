"""Compile every Triton kernel of bigmodel.kernels for real GPUs, with no GPU present.

Run as a script in a process WITHOUT TRITON_INTERPRET (the interpreter replaces @triton.jit):
    python tests/gpu_compile.py [--arch 80 90] [--json out.json]
For each kernel module's `compile_specs()`, builds PTX + cubin with triton.compile for GPUTarget("cuda", arch, 32)
and reads registers, shared memory, local memory (spills) and stack from `cuobjdump -res-usage`. On sm_90, PTX that
uses wgmma is fed once more to the wheel's `ptxas -v --gpu-name=sm_90a` for its performance notes: C7515 ("wgmma.
mma_async instructions are serialized") means the tensor-core pipeline is lost (row key `wgmma_serialized`, "SERIAL"
in the table). Prints one line per kernel and config; writes the rows as JSON when asked.
"""
import argparse
import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("gpu_compile.py must run without TRITON_INTERPRET (the interpreter replaces the compiler)")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import bigmodel.kernels  # noqa: E402

CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
RES_RE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def kernel_modules():
    for info in pkgutil.iter_modules(bigmodel.kernels.__path__):
        if not info.name.startswith("_"):
            module = importlib.import_module(f"bigmodel.kernels.{info.name}")
            if hasattr(module, "compile_specs"):
                yield info.name, module


def resource_usage(cubin: bytes) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([CUOBJDUMP, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    m = RES_RE.search(out)
    if m is None:
        raise RuntimeError(f"cuobjdump -res-usage printed no resource line:\n{out}")
    return dict(zip(("registers", "stack", "shared", "local"), map(int, m.groups())))


def wgmma_serialized(ptx: str) -> bool:
    """ptxas's C7515 note on sm_90a: wgmma issued one at a time (non-wgmma instructions define its accumulators
    inside a pipeline stage)."""
    with tempfile.NamedTemporaryFile(suffix=".ptx", mode="w") as f:
        f.write(ptx)
        f.flush()
        out = subprocess.run([PTXAS, "-v", "--gpu-name=sm_90a", f.name, "-o", os.devnull], capture_output=True,
                             text=True, check=True)
    return "C7515" in out.stdout + out.stderr


def compile_spec(spec, arch: int) -> dict:
    arg_names = spec.fn.arg_names
    signature = {name: spec.signature.get(name, "constexpr") for name in arg_names}
    missing = [n for n in arg_names if n not in spec.signature and n not in spec.constexprs]
    if missing:
        raise ValueError(f"{spec.name}: compile spec gives no type or value for {missing}")
    # What Triton infers at run time for 16-byte-aligned pointers / ints divisible by 16 (the launchers' usual case):
    # without it, matmul tiles load element by element and spill.
    attrs = {(arg_names.index(a),): [["tt.divisibility", 16]] for a in spec.aligned_args}
    src = ASTSource(fn=spec.fn, signature=signature, constexprs=dict(spec.constexprs), attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options=dict(num_warps=spec.num_warps, num_stages=spec.num_stages))
    row = dict(kernel=spec.name, arch=arch, num_warps=spec.num_warps, require_no_spills=spec.require_no_spills,
               expect_wgmma=spec.expect_wgmma, uses_wgmma="wgmma" in compiled.asm["ptx"], tags=list(spec.tags))
    row.update(resource_usage(compiled.asm["cubin"]))
    row["wgmma_serialized"] = arch == 90 and row["uses_wgmma"] and wgmma_serialized(compiled.asm["ptx"])
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--only", default=None, help="compile only this kernel module (e.g. layer_norm)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    rows = []
    for module_name, module in kernel_modules():
        if args.only and module_name != args.only:
            continue
        for spec in module.compile_specs():
            for arch in (a for a in args.arch if a in spec.archs):
                row = dict(module=module_name, **compile_spec(spec, arch))
                rows.append(row)
                print(f"sm_{arch} {row['kernel']:<60} warps={row['num_warps']:<2} regs={row['registers']:<3} "
                      f"shared={row['shared']:<6} local={row['local']} stack={row['stack']}"
                      f"{' wgmma' if row['uses_wgmma'] else ''}{' SERIAL' if row['wgmma_serialized'] else ''}",
                      flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
