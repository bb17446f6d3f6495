"""Build script: the Python packages, plus the CUDA extension `bigmodel._C` when it can be built.

The extension is built whenever the CUDA build of torch and nvcc are present, GPU or not.
  BIGMODEL_SKIP_CUDA_BUILD=1   skip it (the package still works: Triton + reference backends)
  BIGMODEL_CUDA_ARCHS="80;90"  compute capabilities to build for; PTX is added for the newest
  MAX_JOBS=N                   parallel compile jobs (honoured by torch's ninja build)
Install with `pip install --no-build-isolation -e .` so the extension is built against the installed torch.
"""
import glob
import os
import shutil
import sys
import warnings

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
PACKAGES = [
    "bigmodel",
    "bigmodel.backends",
    "bigmodel.library",
    "bigmodel.ops",
    "bigmodel.nn",
    "bigmodel.models",
    "bigmodel.integrations",
    "bigmodel.kernels",
    "bigmodel.train",
]
PACKAGE_DIR = {"bigmodel": "bigmodel", "bigmodel.kernels": "kernels"}


def _find_nvcc():
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    for home in [cuda_home, "/usr/local/cuda"]:
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return home
    nvcc = shutil.which("nvcc")
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None


def _arch_list(spec):
    """'80;90' -> '8.0;9.0+PTX' (TORCH_CUDA_ARCH_LIST syntax; PTX for the newest so newer GPUs can JIT)."""
    archs = sorted({a.strip().replace(".", "") for a in spec.replace(",", ";").split(";") if a.strip()}, key=int)
    if not archs:
        raise SystemExit(f"BIGMODEL_CUDA_ARCHS={spec!r}: expected compute capabilities such as '80;90'")
    dotted = [f"{a[:-1]}.{a[-1]}" for a in archs]
    dotted[-1] += "+PTX"
    return ";".join(dotted)


def _cublaslt_link(lib_dirs):
    """(library_dirs, link args) for cuBLASLt (csrc/linear_act). pip's nvidia-cublas wheel ships only the versioned
    libcublasLt.so.N (no dev symlink), so that one is linked by its file name (-l:libcublasLt.so.N). Either way the
    extension records the soname libcublasLt.so.N, which torch's libtorch_cuda has already loaded at import."""
    for d in lib_dirs:  # in order: the first directory that has it wins
        if os.path.exists(os.path.join(d, "libcublasLt.so")):
            return [d], ["-lcublasLt"]
        versioned = sorted(glob.glob(os.path.join(d, "libcublasLt.so.*")), key=len)
        if versioned:
            return [d], [f"-l:{os.path.basename(versioned[0])}"]
    raise SystemExit(f"bigmodel: no libcublasLt.so* in {lib_dirs}: install the nvidia-cublas wheel (it comes with "
                     "the CUDA build of torch) or a CUDA toolkit with cuBLAS, or set BIGMODEL_SKIP_CUDA_BUILD=1")


def _cuda_extensions():
    if os.environ.get("BIGMODEL_SKIP_CUDA_BUILD", "0") == "1":
        print("bigmodel: BIGMODEL_SKIP_CUDA_BUILD=1, not building bigmodel._C", file=sys.stderr)
        return [], {}
    try:
        import torch
    except ImportError:
        warnings.warn("bigmodel: torch is not installed in the build environment; bigmodel._C is not built "
                      "(install torch first and use `pip install --no-build-isolation`)")
        return [], {}
    cuda_home = _find_nvcc()
    if torch.version.cuda is None or cuda_home is None:
        why = "torch is a CPU-only build" if torch.version.cuda is None else "nvcc was not found (set CUDA_HOME)"
        warnings.warn(f"bigmodel: {why}; bigmodel._C is not built, the Triton and torch backends still work")
        return [], {}
    os.environ["CUDA_HOME"] = cuda_home
    os.environ["TORCH_CUDA_ARCH_LIST"] = _arch_list(os.environ.get("BIGMODEL_CUDA_ARCHS", "80;90"))
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    # torch's headers include CUDA library headers that pip's nvidia-* wheels carry, not the toolkit.
    include_dirs = [os.path.join(ROOT, "csrc")]
    library_dirs = []
    for nv in glob.glob(os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia", "cu*")):
        include_dirs.append(os.path.join(nv, "include"))
        library_dirs.append(os.path.join(nv, "lib"))
    # the wheel's cuBLASLt first: it is the one torch loads
    site = os.path.dirname(os.path.dirname(torch.__file__))
    lt_dirs, lt_args = _cublaslt_link(library_dirs + [os.path.join(site, "nvidia", "cublas", "lib"),  # cu12 wheels
                                                      os.path.join(cuda_home, "lib64"), os.path.join(cuda_home, "lib")])
    sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True) + glob.glob("csrc/**/*.cu", recursive=True))
    ext = CUDAExtension(
        name="bigmodel._C",
        sources=sources,
        include_dirs=include_dirs,
        library_dirs=library_dirs + [d for d in lt_dirs if d not in library_dirs],
        extra_link_args=lt_args,
        extra_compile_args={
            "cxx": ["-O3"],
            "nvcc": ["-O3", "-lineinfo", "--expt-relaxed-constexpr", "-Xptxas=-warn-spills",
                     "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
                     "-U__CUDA_NO_BFLOAT16_CONVERSIONS__"],
        },
    )
    print(f"bigmodel: building bigmodel._C for {os.environ['TORCH_CUDA_ARCH_LIST']} with {cuda_home}/bin/nvcc",
          file=sys.stderr)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


ext_modules, cmdclass = _cuda_extensions()
setup(packages=PACKAGES, package_dir=PACKAGE_DIR, package_data={"bigmodel": ["data/*.txt", "data/README.md", "backends/autotune_seed.json"]},
      ext_modules=ext_modules, cmdclass=cmdclass)
