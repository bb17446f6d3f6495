"""Compile every Triton kernel of bigmodel.kernels for real GPUs, with no GPU present.

Run as a script in a process WITHOUT TRITON_INTERPRET (the interpreter replaces @triton.jit):
    python tests/gpu_compile.py [--arch 80 90] [--json out.json]
For each kernel module's `compile_specs()`, builds PTX + cubin with triton.compile for GPUTarget("cuda", arch, 32)
(with the 16-divisibility the runtime would give the spec's `aligned_args`) and reads, per kernel and config:
- registers, local memory (spills) and stack from `cuobjdump -res-usage`;
- dynamic shared memory from the compiled kernel's metadata (what the launch asks for: cuobjdump's SHARED counts the
  static part only, ~1 KB), and blocks per SM from registers, warps and shared memory;
- from the PTX: the wgmma shapes and their count, and how tiles are loaded ("TMA" = cp.async.bulk.tensor,
  "cp.async" = LDGSTS, "ld" = plain loads);
- from the SASS: the hot loop's instruction count (the loop holding the most tensor-core instructions, else the
  longest loop);
- on sm_90, the wheel's `ptxas -v --gpu-name=sm_90a` run once more on the PTX for its performance notes: C7515
  ("wgmma.mma_async instructions are serialized") means the tensor-core pipeline is lost ("SERIAL" in the table;
  row keys `perf_notes`, `wgmma_serialized`).
Prints one line per kernel and config; writes the rows as JSON when asked.
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
WGMMA_RE = re.compile(r"wgmma\.mma_async\.sync\.aligned\.m(\d+)n(\d+)k(\d+)")
SASS_RE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
SMEM_PER_SM = {80: 167936, 90: 233472}  # bytes of shared memory per SM (A100 164 KB, H100 228 KB)
SMEM_PER_BLOCK = {80: 166912, 90: 232448}  # the opt-in limit per block (1 KB per block is reserved)
TENSOR_OPS = ("HGMMA", "HMMA", "IMMA")
PTXAS_VERSION = None  # set in main()


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


def perf_notes(ptx: str) -> list:
    """ptxas's performance notes on sm_90a ("Potential Performance Loss: ..."), e.g. C7515: wgmma issued one at a time
    (non-wgmma instructions define its accumulators inside a pipeline stage)."""
    with tempfile.NamedTemporaryFile(suffix=".ptx", mode="w") as f:
        f.write(ptx)
        f.flush()
        out = subprocess.run([PTXAS, "-v", "--gpu-name=sm_90a", f.name, "-o", os.devnull], capture_output=True,
                             text=True, check=True)
    lines = (out.stdout + out.stderr).splitlines()
    return sorted({m.group(0) for line in lines if "Performance" in line or "C7515" in line
                   for m in [re.search(r"C\d{4}", line) or re.search(r"Performance.*", line)] if m})


def ptxas_version() -> list:
    """[major, minor] of the triton wheel's ptxas (its notes differ by version)."""
    out = subprocess.run([PTXAS, "--version"], capture_output=True, text=True, check=True).stdout
    return [int(x) for x in re.search(r"release (\d+)\.(\d+)", out).groups()]


def ptx_figures(ptx: str) -> dict:
    shapes = [tuple(map(int, m)) for m in WGMMA_RE.findall(ptx)]
    loads = "TMA" if "cp.async.bulk.tensor" in ptx else "cp.async" if "cp.async" in ptx else "ld"
    return dict(wgmma_shapes=sorted({f"m{m}n{n}k{k}" for m, n, k in shapes}), wgmma_count=len(shapes),
                min_wgmma_n=min((n for _, n, _ in shapes), default=None), loads=loads)


def hot_loop(cubin: bytes) -> dict:
    """The SASS loop (a backward branch's range) holding the most tensor-core instructions, the shortest such (an
    mbarrier wait's retry branch can span the whole kernel around the real loop), else the longest loop: its
    instruction count and tensor-core instruction count."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([CUOBJDUMP, "-sass", f.name], capture_output=True, text=True, check=True).stdout
    code = [(int(a, 16), op, rest) for a, op, rest in SASS_RE.findall(sass)]
    best = (0, 0)
    for addr, op, rest in code:
        target = re.search(r"0x([0-9a-f]+)", rest) if op.startswith("BRA") else None
        if target and int(target.group(1), 16) < addr:
            body = [o for a, o, _ in code if int(target.group(1), 16) <= a <= addr]
            mma = sum(o.startswith(TENSOR_OPS) for o in body)
            best = max(best, (mma, -len(body) if mma else len(body)))
    return dict(hot_loop_instructions=abs(best[1]), hot_loop_mma=best[0])


def blocks_per_sm(arch: int, registers: int, warps: int, shared: int) -> int:
    """Resident blocks per SM allowed by registers (allocated per warp in units of 256), threads (2048) and shared
    memory (with the 1 KB reserved per block)."""
    per_warp = -(-max(registers, 1) * 32 // 256) * 256
    by_regs = (65536 // per_warp) // warps
    by_threads = 2048 // (32 * warps)
    by_smem = SMEM_PER_SM[arch] // (shared + 1024) if shared else 32
    return max(0, min(by_regs, by_threads, by_smem, 32))


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
    row.update(ptx_figures(compiled.asm["ptx"]), **hot_loop(compiled.asm["cubin"]))
    row["dynamic_shared"] = int(compiled.metadata.shared)
    row["smem_limit"] = SMEM_PER_BLOCK[arch] if arch in SMEM_PER_BLOCK else None
    row["blocks_per_sm"] = blocks_per_sm(arch, row["registers"], spec.num_warps, row["dynamic_shared"]) \
        if arch in SMEM_PER_SM else None
    row["perf_notes"] = perf_notes(compiled.asm["ptx"]) if arch == 90 else []
    row["wgmma_serialized"] = "C7515" in row["perf_notes"]
    row["allowed_perf_notes"] = spec.allowed_perf_notes
    row["known_narrow_wgmma"] = getattr(spec, "known_narrow_wgmma", "")
    row["ptxas"] = PTXAS_VERSION
    return row


def format_row(row: dict) -> str:
    wgmma = (f" wgmma {'/'.join(s[s.index('n'):s.index('k')] for s in row['wgmma_shapes'])} x{row['wgmma_count']}"
             if row["wgmma_count"] else "")
    return (f"sm_{row['arch']} {row['kernel']:<60} w={row['num_warps']:<2} regs={row['registers']:<3} "
            f"smem={row['dynamic_shared']:<6} blk/SM={row['blocks_per_sm']} local={row['local']} "
            f"stack={row['stack']} {row['loads']} loop={row['hot_loop_instructions']}/{row['hot_loop_mma']}mma{wgmma}"
            f"{' SERIAL' if row['wgmma_serialized'] else ''}"
            f"{' notes=' + ','.join(n for n in row['perf_notes'] if n != 'C7515') if set(row['perf_notes']) - {'C7515'} else ''}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--only", default=None, help="compile only this kernel module (e.g. layer_norm)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    global PTXAS_VERSION
    PTXAS_VERSION = ptxas_version()
    rows = []
    for module_name, module in kernel_modules():
        if args.only and module_name != args.only:
            continue
        for spec in module.compile_specs():
            for arch in (a for a in args.arch if a in spec.archs):
                row = dict(module=module_name, **compile_spec(spec, arch))
                rows.append(row)
                print(format_row(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
