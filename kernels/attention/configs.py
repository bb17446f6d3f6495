"""Launch configs of the Triton attention kernels (kernels/attention/): the tables per kernel, variant and head
dim, their selection per arch and shared memory, and the static-compile specs (what tests/gpu_compile.py builds;
build_compile_specs imports the kernels, nothing else here does)."""
import dataclasses

import torch
import triton

from .. import tma
from .._utils import TL_DTYPE, CompileSpec, next_pow2

MASK_NONE, MASK_BOOL, MASK_FLOAT = 0, 1, 2
# Vary freely: never specialised (no recompiles).
_RUNTIME_INTS = ["seed", "lq_bucket", "lk_bucket", "win_left", "win_right"]
_TMA_ROWS = {"Q": "BLOCK_M", "O": "BLOCK_M", "K": "BLOCK_N", "V": "BLOCK_N"}  # the forward's descriptor boxes

# (BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel, variant and head-dim class (BLOCK_D <= 64, 128, 256).
# BLOCK_M is the query tile and BLOCK_N the key tile in every kernel: the forward and dQ hold a query tile and
# stream key tiles, dK/dV holds a key tile (two fp32 accumulators) and streams query tiles. Every entry was
# checked with tests/gpu_compile.py: no spills on sm_80 and sm_90 (SM90_EXTRA entries: on sm_90, where used).
# The variants differ in live registers per score: the causal diagonal predicate, mask loads and Philox state
# ("heavy"), scalar addresses of unaligned rows, fp32 operands of CUDA-core dots.
CONFIGS = {
    "plain": {  # fp16 / bf16, aligned rows, no mask, no dropout, not causal: the tensor-core fast path
        "fwd": {64: [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3)], 128: [(128, 64, 8, 3), (64, 64, 8, 3)],
                256: [(64, 64, 8, 2), (64, 32, 8, 2)]},
        "dq": {64: [(128, 64, 8, 3), (128, 32, 4, 3)], 128: [(128, 32, 8, 3), (64, 64, 8, 3)], 256: [(64, 32, 8, 2)]},
        "dkdv": {64: [(32, 128, 8, 3), (64, 64, 8, 2)], 128: [(32, 64, 8, 3)], 256: [(32, 32, 8, 2)]},
    },
    "causal": {  # the same, causal
        "fwd": {64: [(128, 64, 8, 3), (64, 64, 8, 3)], 128: [(128, 32, 8, 3), (64, 64, 8, 3)], 256: [(64, 32, 8, 2)]},
        "dq": {64: [(128, 64, 8, 3)], 128: [(128, 32, 8, 3)], 256: [(64, 32, 8, 2)]},
        "dkdv": {64: [(32, 128, 8, 3)], 128: [(16, 64, 8, 3)], 256: [(16, 32, 8, 2)]},
    },
    "heavy": {  # a mask and / or dropout (causal or not)
        "fwd": {64: [(64, 64, 8, 3), (128, 32, 8, 3)], 128: [(64, 32, 8, 3), (128, 32, 8, 3)], 256: [(32, 64, 8, 2)]},
        "dq": {64: [(64, 32, 8, 3)], 128: [(64, 32, 8, 3)], 256: [(32, 32, 8, 2)]},
        "dkdv": {64: [(16, 128, 8, 3)], 128: [(16, 64, 8, 3), (32, 32, 8, 3)], 256: [(16, 32, 8, 2)]},
    },
    "unaligned": {  # fp16 / bf16 rows not on 16-byte boundaries: scalar loads, no cp.async pipeline
        "fwd": {64: [(32, 32, 8, 2)], 128: [(16, 32, 8, 2)], 256: [(16, 32, 8, 2)]},
        "dq": {64: [(16, 32, 4, 2)], 128: [(32, 32, 8, 2)], 256: [(16, 32, 8, 2)]},
        "dkdv": {64: [(16, 32, 8, 2)], 128: [(16, 32, 8, 2)], 256: [(16, 16, 8, 2)]},
    },
    "fp32": {  # "ieee" dots on CUDA cores, any variant
        "fwd": {64: [(16, 32, 8, 2)], 128: [(16, 32, 8, 2)], 256: [(16, 32, 8, 2)]},
        "dq": {64: [(16, 32, 8, 2)], 128: [(32, 32, 8, 2)], 256: [(16, 32, 8, 2)]},
        "dkdv": {64: [(16, 16, 8, 2)], 128: [(16, 32, 8, 2)], 256: [(16, 16, 8, 2)]},
    },
}
SM90_EXTRA = {  # larger tiles that only sm_90's wgmma path (operands in shared memory) keeps spill-free
    "plain": {"fwd": {128: [(128, 128, 8, 3)]}, "dq": {128: [(128, 64, 8, 3)]},
              "dkdv": {64: [(64, 128, 8, 2)]}},
    "causal": {"fwd": {128: [(128, 64, 8, 3)]}},
}
# Below sm_90 these entries replace CONFIGS': the CONFIGS ones left a stack frame (8-112 B, 255 registers) on sm_80
# under triton 3.6, the oldest supported, though not under 3.8; sm_90 keeps them (wgmma reads its operands from
# shared memory). The fp32 dq / dkdv D=64 and SM90_EXTRA dkdv D=128 entries changed for the same reason on sm_90:
# (16, 32, 4, 2) -> (16, 32, 8, 2), (16, 32, 8, 2) -> (16, 16, 8, 2), (32, 128, 8, 2) -> (16, 128, 8, 2).
SM80_CONFIGS = {
    # dq D=128: the one-loop kernels (a branch for the boundary tiles) left 16-40 B stack frames at (128, 32, 8, 3)
    "plain": {"dkdv": {64: [(32, 128, 8, 2), (16, 128, 8, 3)]},  # for (32, 128, 8, 3), (64, 64, 8, 2)
              "dq": {128: [(64, 64, 8, 3), (64, 32, 8, 3)]}},  # for (128, 32, 8, 3), (64, 64, 8, 3)
    "causal": {"dkdv": {64: [(16, 64, 4, 2)]}, "dq": {128: [(64, 64, 8, 3), (64, 32, 8, 3)]}},  # for (32, 128, 8, 3)
    "heavy": {"dkdv": {64: [(16, 32, 8, 2)], 128: [(32, 32, 8, 3)]}},  # for (16, 128, 8, 3); (16, 64, 8, 3) dropped
}
# On sm_90 these entries replace CONFIGS': a 64-row tile over 8 warps splits each MMA's N between the two warpgroups
# (m64n16 / m64n32 wgmmas) and ptxas serialised them (C7515); 128 rows give each warpgroup its own 64 rows.
# dK/dV: its score tile is keys x queries, so BLOCK_M (queries) is the MMA's N: BLOCK_M = 16 gave m64n8 / m64n16
# wgmmas; (32, 128, 8, 3 or 2) gives each warpgroup 64 keys and N = 32 (241-255 registers, no spills under triton
# 3.6 and 3.8). The heavy dK/dV
# (mask + dropout) keeps its narrow tiles: wider ones spill 16-488 B.
SM90_CONFIGS = {
    "plain": {"dq": {128: [(128, 32, 8, 3)], 256: [(64, 32, 4, 2)]},  # for (.., (64, 64, 8, 3)), (64, 32, 8, 2)
              "dkdv": {128: [(32, 128, 8, 3)]}},  # for (32, 64, 8, 3); 2 stages spilled 16-24 B under triton 3.6
    "causal": {"dkdv": {128: [(32, 128, 8, 2)]}},  # for (16, 64, 8, 3)
    "heavy": {"fwd": {64: [(128, 64, 8, 3), (128, 32, 8, 3)], 128: [(128, 32, 8, 3)]},  # for (64, .., 8, 3), ..
              "dq": {64: [(128, 32, 8, 3)], 128: [(128, 32, 8, 3)]}},  # for (64, 32, 8, 3)
}
# Under the interpreter: one small config per kernel; BLOCK_M != BLOCK_N so the diagonal logic is exercised.
INTERPRETER_CONFIGS = {"fwd": dict(BLOCK_M=32, BLOCK_N=16), "dkdv": dict(BLOCK_M=16, BLOCK_N=32),
                       "dq": dict(BLOCK_M=32, BLOCK_N=16)}
SMEM_BYTES = {80: 166912, 90: 232448}  # opt-in shared memory per block (A100, H100)


def _dim_class(block_d: int) -> int:
    return 64 if block_d <= 64 else block_d


def config_variant(dtype: torch.dtype, is_causal: bool, has_mask: bool, has_dropout: bool, aligned: bool) -> str:
    """Which CONFIGS table a call draws from."""
    if dtype == torch.float32:
        return "fp32"
    if not aligned:
        return "unaligned"
    if has_mask or has_dropout:
        return "heavy"
    return "causal" if is_causal else "plain"


def _known_old_triton_spill(kind, head_dim, cfg, extras, arch) -> bool:
    """The sm_90 dK/dV at D = 128 on its (32, 128) tiles (241-255 registers) with softcap's tanh or varlen's
    sequence bounds: a 16 B stack frame under triton 3.6 only (none under 3.8, where the gate still holds it).
    No narrower tile avoids it without m64n16 wgmmas (C7515); open."""
    old = tuple(int(x) for x in triton.__version__.split(".")[:2]) < (3, 7)
    return (old and arch >= 90 and kind == "dkdv" and head_dim == 128 and tuple(cfg[:2]) == (32, 128)
            and bool({"SOFTCAP", "VARLEN"} & set(extras)))


def extras_heavy(arch: int, softcap: bool) -> bool:
    """Whether the extras draw from the "heavy" (mask / dropout) tables. A window prunes like causal (edge tiles);
    softcap and ALiBi keep the plain / causal tables on sm_90 (spill-free there, tests/gpu_compile.py; the heavy
    dK/dV tiles are 16 query rows, narrow wgmmas), but softcap's tanh spills 8-48 B at the largest sm_80 tiles."""
    return softcap and arch < 90


def shared_memory_estimate(kind: str, cfg, block_d: int, elt_size: int, variant: str) -> int:
    """Shared memory of a config, an upper bound of what Triton 3.x allocates (fitted on sm_80 / sm_90 builds):
    the pipelined streamed tiles (K and V, or Q and dO), the resident operands wgmma reads from shared memory,
    with a mask / dropout a score-tile layout-conversion scratch, and 1 KB for barriers."""
    block_m, block_n, _, stages = cfg
    if kind == "fwd":
        tiles = 2 * stages * block_n * block_d + block_m * block_d
    elif kind == "dq":
        tiles = 2 * stages * block_n * block_d + 2 * block_m * block_d
    else:
        tiles = 2 * stages * block_m * block_d + 2 * block_n * block_d + 4 * stages * block_m
    return elt_size * tiles + (4 * block_m * block_n if variant == "heavy" else 0) + 1024


def arch_configs(kind: str, dim: int, variant: str, arch: int):
    """The table entries for compute capability `arch`, before the shared-memory check: CONFIGS (replaced below
    sm_90 where SM80_CONFIGS has an entry, on sm_90+ where SM90_CONFIGS has one), plus SM90_EXTRA on sm_90+."""
    override = (SM90_CONFIGS if arch >= 90 else SM80_CONFIGS).get(variant, {}).get(kind, {}).get(dim)
    base = override or CONFIGS[variant][kind][dim]
    return base + SM90_EXTRA.get(variant, {}).get(kind, {}).get(dim, []) if arch >= 90 else base


def candidate_configs(kind: str, block_d: int, variant: str, dtype: torch.dtype, arch: int, smem_limit: int):
    """The configs the autotuner may pick for this kernel on a device of compute capability `arch` (80, 90, ...)
    with `smem_limit` bytes of shared memory per block."""
    configs = arch_configs(kind, _dim_class(block_d), variant, arch)
    elt = torch.empty((), dtype=dtype).element_size()
    fitting = [c for c in configs if shared_memory_estimate(kind, c, block_d, elt, variant) <= smem_limit]
    return fitting or [min(configs, key=lambda c: shared_memory_estimate(kind, c, block_d, elt, variant))]


def delta_config(block_d: int) -> dict:
    """Rows per program of the delta kernel: two fp32 tiles of at most 4096 elements (no spills at D = 256)."""
    return dict(BLOCK_M=min(64, 4096 // block_d), num_warps=4)


def _kernels() -> dict:
    from . import backward, forward
    return {"fwd": forward._attn_fwd_kernel, "dkdv": backward._attn_bwd_dkdv_kernel,
            "dq": backward._attn_bwd_dq_kernel, "delta": backward._attn_bwd_delta_kernel}


_POINTERS = {"fwd": ("Q", "K", "V", "O"), "dkdv": ("Q", "K", "V", "DO", "DK", "DV"), "dq": ("Q", "K", "V", "DO", "DQ")}


def _signature(kind: str, dtype: torch.dtype, mask_kind: int) -> dict:
    fn = _kernels()[kind]
    t = TL_DTYPE[dtype]
    sig = {name: f"*{t}" for name in _POINTERS[kind]}
    sig.update(LSE="*fp32", Mask="*i1" if mask_kind == MASK_BOOL else f"*{t}", Alibi="*fp32", CuQ="*i32", CuK="*i32")
    if kind == "fwd":
        sig["Sinks"] = "*fp32"
    if kind == "dq":
        sig["RowPdP"] = "*fp32"
    if kind != "fwd":
        sig["Delta"] = "*fp32"
    for name in fn.arg_names:
        if name.startswith("stride_") or name in ("Hq", "Hkv", "Lq", "Lk", "kv_group", *_RUNTIME_INTS):
            sig[name] = "i32"
        elif name in ("qk_scale", "scale", "dropout_p", "dropout_scale", "cap_in", "cap_out"):
            sig[name] = "fp32"
    return sig


def _expect_wgmma(kind, dtype, block_m, block_n, mask_kind, dropout, aligned) -> bool:
    """The configs held (on sm_90) to wgmma in the hot loop: fp16 / bf16 with aligned rows; the forward and dQ at
    64+ query rows; dK/dV at 64+ key rows (a warpgroup's 64 rows of the keys x queries score tile)."""
    if dtype == torch.float32 or not aligned:
        return False
    if kind == "dkdv":
        return block_n >= 64
    return block_m >= 64


def _known_narrow(kind, block_m, mask_kind, dropout) -> str:
    """Why a wgmma config still has N < 32 in its hot loop ("" for none; tests/test_static_compile.py fails on any
    other narrow build, and on a listed one that is no longer narrow)."""
    if kind == "dkdv" and block_m < 32 and (mask_kind != MASK_NONE or dropout):
        return ("dK/dV with a mask or dropout keeps 16 query rows (N = 16 / 8): at 32 rows, with a float mask and "
                "dropout, it spills 16 B (D = 64) to 224 B (D = 128), 64x64 tiles 56-488 B; open (issue 12)")
    return ""


def _known_notes(kind, dtype, block_m, mask_kind, aligned, arch) -> dict:
    """ptxas notes still known on sm_90 (tests/test_static_compile.py fails on any other, and once these go)."""
    if arch >= 90 and kind == "dq" and mask_kind != MASK_NONE and dtype != torch.float32 and aligned and block_m >= 64:
        return {"C7515": "masked dQ: the mask tile feeding exp(s - lse) still serialises its wgmmas, with the mask "
                         "as the scores' accumulator (as the forward does) or added to the exponent; open (issue 12)"}
    return {}


def _aligned_args(kind: str, signature: dict, aligned: bool) -> tuple:
    """What the runtime specialises as divisible by 16 for these inputs: every pointer (torch allocations are
    16-byte aligned; the mask's too), and with aligned rows the q / k / v / dO batch, head and row strides
    (multiples of the head dim, itself a multiple of 8: launched as ALIGNED only then; a multiple of 16 at
    D = 64, 80, 128, 256). Lengths and the mask's strides are left unspecialised (any value)."""
    pointers = [n for n, t in signature.items() if t.startswith("*")]
    strides = [n for n in _kernels()[kind].arg_names if n.startswith("stride_") and n[7] in "qkvd"]
    return tuple(pointers + (strides if aligned else []))


EXTRA_FLAGS = {"fwd": ("HAS_WINDOW", "SOFTCAP", "HAS_ALIBI", "HAS_SINKS", "VARLEN"),
               "dq": ("HAS_WINDOW", "SOFTCAP", "HAS_ALIBI", "HAS_SINKS", "VARLEN"),
               "dkdv": ("HAS_WINDOW", "SOFTCAP", "HAS_ALIBI", "VARLEN")}


def _add_extras(add, kind, head_dim, dtype, plain, causal, heavy, arch):
    """The issue-15 variants at the configs the autotuner prunes them to (a window counts as causal; softcap and
    ALiBi keep the plain / causal tables): every causal config with a sliding window, every plain config with
    softcap and with ALiBi, each causal, sinks, varlen causal, and everything at once (window, softcap, ALiBi,
    sinks, varlen, dropout: the "heavy" table)."""
    for cfg in causal:
        add(kind, head_dim, dtype, cfg, arch, causal=True, extras=("HAS_WINDOW",))
    for cfg in plain:
        add(kind, head_dim, dtype, cfg, arch, extras=("HAS_ALIBI",))
    for cfg in heavy if extras_heavy(arch, True) else plain:
        add(kind, head_dim, dtype, cfg, arch, extras=("SOFTCAP",))
    add(kind, head_dim, dtype, (heavy if extras_heavy(arch, True) else causal)[0], arch, causal=True,
        extras=("SOFTCAP", "HAS_ALIBI"))
    add(kind, head_dim, dtype, plain[0], arch, extras=("HAS_SINKS",))
    add(kind, head_dim, dtype, causal[0], arch, causal=True, extras=("VARLEN",))
    add(kind, head_dim, dtype, heavy[0], arch, causal=True, dropout=True,
        extras=("HAS_WINDOW", "SOFTCAP", "HAS_ALIBI", "HAS_SINKS", "VARLEN"))


def build_compile_specs():
    """Each kernel at the configs the autotuner may pick, per arch (arch_configs), in the variants that change its
    register use. D = 64 and 128: every plain, causal and heavy candidate (fp16; heavy ones with a float mask +
    dropout, the most live registers), SM90_EXTRA, and at the first candidate bf16, causal + dropout, unaligned rows;
    at D = 64 also a bool mask, unaligned rows with a float mask + dropout, and fp32 (float mask, causal, dropout).
    D = 80: the first plain, causal and heavy candidates; D = 256: the first plain and heavy ones. The delta kernel.
    Forward fp16 / bf16 specs with BLOCK_M >= 64 must use wgmma on sm_90. Each spec is built for the archs whose
    autotuner may pick it (SM90_EXTRA: sm_90 only; SM80_CONFIGS: sm_80 only).
    The folded-grid variant (more than 65535 heads or batch entries) is built at the first plain and the first heavy
    (causal, float mask, dropout) candidate and reported, but not held to the no-spill rule: its decoded indices
    cost registers that the largest tiles do not have (stack frames of 8-264 B on sm_80 under triton 3.6, the heavy
    dK/dV also under 3.8); it is correct, only slower, and runs only where the 3-D grid cannot."""
    specs = {}

    def add(kind, head_dim, dtype, cfg, arch, mask_kind=MASK_NONE, causal=False, dropout=False, aligned=True,
            sm90_only=False, folded=False, extras=()):
        block_m, block_n, warps, stages = cfg
        consts = dict(HEAD_DIM=head_dim, BLOCK_D=next_pow2(head_dim), MASK_KIND=mask_kind, IS_CAUSAL=causal,
                      HAS_DROPOUT=dropout, ALIGNED=aligned, FOLDED=folded, BLOCK_M=block_m, BLOCK_N=block_n,
                      **{flag: flag in extras for flag in EXTRA_FLAGS[kind]})
        sig = _signature(kind, dtype, mask_kind)
        # The sm_90 forward takes tensor descriptors where the launcher would (tma.usable: aligned fp16 / bf16
        # rows, head dim 64 / 128, the 3-D grid); BIGMODEL_TRITON_TMA=0 builds the pointer path there instead.
        use_tma = (kind == "fwd" and arch >= 90 and dtype != torch.float32 and aligned and not folded
                   and "VARLEN" not in extras
                   and head_dim in tma.TMA_HEAD_DIMS and tma.TMA_MODE != "0")
        if kind == "fwd":
            consts["TMA"] = use_tma
        for name, rows in _TMA_ROWS.items() if use_tma else ():
            sig[name] = f"tensordesc<{TL_DTYPE[dtype]}[1, 1, {consts[rows]}, {head_dim}]>"
        fn = _kernels()[kind]
        key = (fn.__name__, tuple(sig.values()), tuple(sorted(consts.items())), warps, stages)
        if key in specs:
            if arch not in specs[key].archs:
                specs[key] = dataclasses.replace(specs[key], archs=specs[key].archs + (arch,))
            return
        tag = ",".join([TL_DTYPE[dtype], f"D={head_dim}", f"{block_m}x{block_n}", f"w{warps}", f"s{stages}"]
                       + ["causal"] * causal + [("", "bool-mask", "float-mask")[mask_kind]] * (mask_kind != MASK_NONE)
                       + ["dropout"] * dropout + ["unaligned"] * (not aligned) + ["folded"] * folded + ["tma"] * use_tma
                       + [flag.removeprefix("HAS_").lower() for flag in extras if flag in EXTRA_FLAGS[kind]]
                       + ["sm90-only"] * sm90_only)
        spill_ok = folded or _known_old_triton_spill(kind, head_dim, cfg, extras, arch)
        specs[key] = CompileSpec(f"{fn.__name__}[{tag}]", fn, sig, consts, warps, stages,
                                 require_no_spills=not spill_ok,
                                 expect_wgmma=_expect_wgmma(kind, dtype, block_m, block_n, mask_kind, dropout, aligned),
                                 known_narrow_wgmma=_known_narrow(kind, block_m, mask_kind, dropout),
                                 archs=(arch,), allowed_perf_notes=_known_notes(kind, dtype, block_m, mask_kind,
                                                                                aligned, arch),
                                 aligned_args=_aligned_args(kind, sig, aligned))

    fp16 = torch.float16
    for arch in (80, 90):
        def table(variant, kind, dim):  # the arch's entries without SM90_EXTRA (added with their own tag)
            override = (SM90_CONFIGS if arch >= 90 else SM80_CONFIGS).get(variant, {}).get(kind, {}).get(dim)
            return override or CONFIGS[variant][kind][dim]

        for head_dim in (64, 128, 80, 256):
            dim = _dim_class(next_pow2(head_dim))
            every = head_dim in (64, 128)
            for kind in ("fwd", "dq", "dkdv"):
                plain, causal, heavy, unaligned = (table(v, kind, dim)
                                                   for v in ("plain", "causal", "heavy", "unaligned"))
                for cfg in plain if every else plain[:1]:
                    add(kind, head_dim, fp16, cfg, arch)
                for cfg in causal if every else causal[:1] if head_dim == 80 else []:
                    add(kind, head_dim, fp16, cfg, arch, causal=True)
                for cfg in heavy if every else heavy[:1]:
                    add(kind, head_dim, fp16, cfg, arch, MASK_FLOAT, dropout=True)
                if not every:
                    continue
                for variant, is_causal in (("plain", False), ("causal", True)):
                    for cfg in SM90_EXTRA[variant].get(kind, {}).get(dim, []) if arch >= 90 else []:
                        add(kind, head_dim, fp16, cfg, arch, causal=is_causal, sm90_only=True)
                add(kind, head_dim, torch.bfloat16, plain[0], arch)
                add(kind, head_dim, fp16, heavy[0], arch, causal=True, dropout=True)
                add(kind, head_dim, fp16, plain[0], arch, folded=True)
                add(kind, head_dim, fp16, heavy[0], arch, MASK_FLOAT, causal=True, dropout=True, folded=True)
                add(kind, head_dim, fp16, unaligned[0], arch, aligned=False)
                _add_extras(add, kind, head_dim, fp16, plain, causal, heavy, arch)
                if head_dim == 64:
                    add(kind, head_dim, fp16, heavy[0], arch, MASK_BOOL)
                    add(kind, head_dim, fp16, unaligned[0], arch, MASK_FLOAT, dropout=True, aligned=False)
                    add(kind, head_dim, torch.float32, table("fp32", kind, dim)[0], arch, MASK_FLOAT, causal=True,
                        dropout=True)
    for head_dim, dtype in ((64, fp16), (128, fp16), (80, torch.float32)):
        t, block_d = TL_DTYPE[dtype], next_pow2(head_dim)
        dcfg = delta_config(block_d)
        sig = dict(O=f"*{t}", DO=f"*{t}", Delta="*fp32", stride_dob="i32", stride_doh="i32", stride_dom="i32",
                   Hq="i32", Lq="i32")
        consts = dict(HEAD_DIM=head_dim, BLOCK_D=block_d, ALIGNED=True, FOLDED=False, BLOCK_M=dcfg["BLOCK_M"])
        specs[("delta", t, head_dim)] = CompileSpec(f"_attn_bwd_delta_kernel[{t},D={head_dim}]",
                                                    _kernels()["delta"], sig, consts, dcfg["num_warps"])
    return list(specs.values())
