"""Triton kernels, installed as `bigmodel.kernels`.

One file per op: `@triton.jit` kernels plus plain launchers (`<op>_fwd`, `<op>_bwd`) that take tensors and
return tensors. Each file also lists `compile_specs()`: the kernel/config pairs its launchers use, which
the static GPU-compile test builds for sm_80 and sm_90. Depends on torch + triton only.
"""
