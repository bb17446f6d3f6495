"""The project's correctness rule (DESIGN.md, "Numerics"), implemented once for every test.

    from numerics import assert_close_by_rule, layer_norm_case

fp32 (and fp64) results: relative error against an fp64 reference,
    max|out - ref| / max(max|ref|, floor)  <  1e-5 for outputs, 1e-4 for gradients.
`floor` (REF_FLOOR = 1e-3 by default) only matters where the exact answer is (near) zero everywhere, e.g.
dweight at hidden size 1, which is exactly 0 in exact math and ~1e-16 noise in fp64: dividing by that noise
would turn a perfect answer into a huge "relative" error. The test inputs are O(1) (randn * 3 + 1), so every
non-degenerate quantity in the suite is far above 1e-3 and the floor never loosens a real comparison.

fp16 / bf16 results (FlashAttention's rule): with err(t) = max|t - ref64|,
    err(ours) <= 2 * err(plain PyTorch in the same low precision)   for outputs,
    err(ours) <= 3 * err(plain PyTorch in the same low precision)   for gradients.
Only where PyTorch's own error is exactly 0 (the fp64 answer is representable and PyTorch hit it) is an
absolute allowance added: one unit in the last place of the low-precision dtype at the reference's scale,
    finfo(dtype).eps * max(max|ref|, floor),
since a kernel that accumulates in a different order may legitimately round to the neighbouring value.

This module must not import triton or bigmodel (conftest imports it before TRITON_INTERPRET is settled).
"""
import os

import pytest
import torch
import torch.nn.functional as F

LOW_PRECISION = (torch.float16, torch.bfloat16)
FP32_RTOL = {"output": 1e-5, "grad": 1e-4}
LOWP_FACTOR = {"output": 2.0, "grad": 3.0}
REF_FLOOR = 1e-3


def triton_interpreting() -> bool:
    """True when Triton kernels run on CPU tensors (TRITON_INTERPRET=1, set before triton is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


INTERPRETER_SKIP_REASON = ("needs the Triton CPU interpreter (TRITON_INTERPRET=1); it is off (conftest turns it on "
                           "only without a GPU) - the cuda-marked tests cover the kernels on a GPU")
# Mark for tests that run Triton kernels on CPU tensors.
requires_interpreter = pytest.mark.skipif(not triton_interpreting(), reason=INTERPRETER_SKIP_REASON)


# The CPU backends of every op test: the reference, and Triton under the interpreter (fp32 / fp16; bf16 tl.dot does
# not work in the interpreter, so bf16 runs on the reference here and on both kernel backends in the GPU tests).
BACKENDS_CPU = ["reference", pytest.param("triton", marks=requires_interpreter)]
BACKEND_DTYPES = [
    pytest.param("reference", torch.float32, id="reference-fp32"),
    pytest.param("reference", torch.float16, id="reference-fp16"),
    pytest.param("reference", torch.bfloat16, id="reference-bf16"),
    pytest.param("triton", torch.float32, id="triton-fp32", marks=requires_interpreter),
    pytest.param("triton", torch.float16, id="triton-fp16", marks=requires_interpreter),
]
# The newer ops (rms_norm, rotary, gated activations): the reference and torch backends at fp32 / fp64 / bf16, the
# Triton kernels under the interpreter at fp32 / fp16 (bf16 dots do not run there).
OP_BACKEND_DTYPES = [
    pytest.param("reference", torch.float32, id="reference-fp32"),
    pytest.param("reference", torch.float64, id="reference-fp64"),
    pytest.param("reference", torch.bfloat16, id="reference-bf16"),
    pytest.param("torch", torch.float32, id="torch-fp32"),
    pytest.param("torch", torch.float64, id="torch-fp64"),
    pytest.param("torch", torch.bfloat16, id="torch-bf16"),
    pytest.param("triton", torch.float32, id="triton-fp32", marks=requires_interpreter),
    pytest.param("triton", torch.float16, id="triton-fp16", marks=requires_interpreter),
]


def _max_abs(t: torch.Tensor) -> float:
    return t.detach().double().abs().max().item() if t.numel() else 0.0


def _max_err(out: torch.Tensor, ref64: torch.Tensor) -> float:
    if out.numel() == 0:
        return 0.0
    return (out.detach().double() - ref64.detach().double()).abs().max().item()


def assert_close_by_rule(name, out, ref64, torch_lowp=None, kind="output", *, floor=REF_FLOOR):
    """Assert `out` meets DESIGN.md's rule against the fp64 reference `ref64`.

    name: what is compared, for the message ("y", "dweight", ...).
    out: the result under test; its dtype picks the rule (fp32/fp64: relative error; fp16/bf16: vs PyTorch).
    ref64: the same quantity computed in fp64 (any dtype is upcast to fp64).
    torch_lowp: the same quantity from plain PyTorch in out's low precision; required for fp16/bf16.
    kind: "output" or "grad".
    floor: smallest denominator for the fp32 relative error, and the scale of the ulp allowance (see module doc).
    """
    if kind not in FP32_RTOL:
        raise ValueError(f"kind must be 'output' or 'grad', got {kind!r}")
    assert isinstance(out, torch.Tensor), f"{name}: expected a tensor, got {type(out).__name__}"
    assert tuple(out.shape) == tuple(ref64.shape), (
        f"{name}: shape {tuple(out.shape)} != reference shape {tuple(ref64.shape)}")
    assert not torch.isnan(out).any() or torch.isnan(ref64).any(), f"{name}: NaN where the reference has none"
    ref64 = ref64.detach().double()
    scale = max(_max_abs(ref64), floor)
    err = _max_err(out, ref64.to(out.device))

    if out.dtype in LOW_PRECISION:
        if torch_lowp is None:
            raise ValueError(f"{name}: {out.dtype} results need torch_lowp (plain PyTorch in {out.dtype})")
        assert tuple(torch_lowp.shape) == tuple(out.shape), (
            f"{name}: torch_lowp shape {tuple(torch_lowp.shape)} != {tuple(out.shape)}")
        torch_err = _max_err(torch_lowp, ref64.to(torch_lowp.device))
        factor = LOWP_FACTOR[kind]
        allowance = torch.finfo(out.dtype).eps * scale if torch_err == 0.0 else 0.0
        bound = factor * torch_err + allowance
        ratio = err / torch_err if torch_err > 0 else (0.0 if err == 0 else float("inf"))
        assert err <= bound, (
            f"{name} ({kind}, {str(out.dtype).replace('torch.', '')}): max abs error vs fp64 = {err:.3e}, "
            f"plain PyTorch's = {torch_err:.3e}, ratio {ratio:.2f} > allowed {factor:g}x"
            + (f" (+ 1-ulp allowance {allowance:.3e} since PyTorch's error is 0)" if allowance else "")
            + f"; max|ref| = {_max_abs(ref64):.3e}")
    else:
        rtol = FP32_RTOL[kind]
        rel = err / scale
        torch_note = ""
        if torch_lowp is not None:
            torch_note = f"; plain PyTorch's relative error = {_max_err(torch_lowp, ref64.to(torch_lowp.device)) / scale:.3e}"
        assert rel < rtol, (
            f"{name} ({kind}, {str(out.dtype).replace('torch.', '')}): relative error vs fp64 = {rel:.3e} "
            f">= {rtol:g} (max abs error {err:.3e} / max(max|ref| = {_max_abs(ref64):.3e}, floor {floor:g}))"
            + torch_note)


# ----------------------------------------------------------------------------------------------- layer_norm
def randn_input(*shape, dtype=torch.float32, device="cpu", scale=3.0, shift=1.0):
    """Random input with non-zero mean and non-unit scale (never zeros)."""
    return (torch.randn(*shape, device=device, dtype=torch.float32) * scale + shift).to(dtype)


def layer_norm_case(fn, x, normalized_shape, weight=None, bias=None, eps=1e-5, dy=None):
    """Run `fn(x, normalized_shape, weight, bias, eps)` (the implementation under test), plain PyTorch
    (F.layer_norm) in the inputs' own precision and an fp64 F.layer_norm reference, forward + backward(dy).

    Returns {"y"|"dx"|"dweight"|"dbias": (ours, ref64, torch_lowp)} (absent where the parameter is None).
    `x` and `dy` may be non-contiguous: the implementation under test receives them with the same strides.
    """
    if dy is None:
        dy = torch.randn(x.shape, dtype=torch.float32, device=x.device).to(x.dtype)
    runs = {}
    for which in ("ours", "ref64", "lowp"):
        cast = (lambda t: t.double()) if which == "ref64" else (lambda t: t)
        leaves = [None if t is None else cast(t.detach()).contiguous().clone().requires_grad_(True)
                  for t in (x, weight, bias)]
        xin = with_layout(leaves[0], x)
        g = with_layout(dy.detach().double(), dy) if which == "ref64" else dy
        if which == "ours":
            y = fn(xin, normalized_shape, leaves[1], leaves[2], eps)
        else:
            shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
            y = F.layer_norm(xin, shape, leaves[1], leaves[2], eps)
        y.backward(g)
        runs[which] = [y.detach()] + [None if t is None else t.grad for t in leaves]
    result = {}
    for i, key in enumerate(("y", "dx", "dweight", "dbias")):
        if runs["ref64"][i] is None:
            assert runs["ours"][i] is None, f"{key}: a gradient for a parameter that was None"
            continue
        result[key] = (runs["ours"][i], runs["ref64"][i], runs["lowp"][i])
    return result


def with_layout(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`t`'s values (differentiably) in a tensor with `like`'s strides, e.g. transposed or row-padded."""
    if like.is_contiguous():
        return t
    out = torch.empty_strided(like.shape, like.stride(), dtype=t.dtype, device=t.device)
    out = out.copy_(t)
    assert out.stride() == like.stride()
    return out


def check_layer_norm_case(result, *, floor=REF_FLOOR):
    """Apply the rule to every entry of layer_norm_case's result."""
    for key, (ours, ref64, lowp) in result.items():
        assert ours is not None, f"{key}: missing from the implementation under test"
        assert ours.dtype == lowp.dtype, f"{key}: dtype {ours.dtype}, plain PyTorch gives {lowp.dtype}"
        kind = "output" if key == "y" else "grad"
        assert_close_by_rule(key, ours, ref64, lowp, kind, floor=floor)


# ----------------------------------------------------------------------------------------------- attention
def attention_case(fn, q, k, v, attn_mask=None, is_causal=False, scale=None, enable_gqa=False, do=None):
    """Run `fn(q, k, v, attn_mask, is_causal, scale, enable_gqa)` (the implementation under test), plain PyTorch
    SDPA in the inputs' own precision, and an fp64 SDPA reference, forward + backward(do).

    Returns {"out"|"dq"|"dk"|"dv": (ours, ref64, torch_lowp)}. q, k, v and do keep their strides for the
    implementation under test. A float mask is upcast for the fp64 reference.
    """
    if do is None:
        shape = (*q.shape[:-1], v.size(-1))
        do = torch.randn(shape, dtype=torch.float32, device=q.device).to(q.dtype)
    runs = {}
    for which in ("ours", "ref64", "lowp"):
        cast = (lambda t: t.double()) if which == "ref64" else (lambda t: t)
        leaves = [cast(t.detach()).contiguous().clone().requires_grad_(True) for t in (q, k, v)]
        ins = [with_layout(leaf, like) for leaf, like in zip(leaves, (q, k, v))]
        mask = attn_mask
        if which == "ref64" and mask is not None and mask.is_floating_point():
            mask = mask.double()
        g = with_layout(do.detach().double(), do) if which == "ref64" else do
        if which == "ours":
            out = fn(*ins, mask, is_causal, scale, enable_gqa)
        else:
            out = F.scaled_dot_product_attention(*ins, attn_mask=mask, is_causal=is_causal, scale=scale,
                                                 enable_gqa=enable_gqa)
        out.backward(g)
        runs[which] = [out.detach()] + [leaf.grad for leaf in leaves]
    return {key: tuple(runs[w][i] for w in ("ours", "ref64", "lowp"))
            for i, key in enumerate(("out", "dq", "dk", "dv"))}


def check_attention_case(result, rows=None):
    """Apply the rule to every entry of attention_case's result. `rows`: optional bool (..., Lq) selecting the
    query rows to compare in out / dq (e.g. those with at least one visible key)."""
    dv_scale = _max_abs(result["dv"][1])
    for key, (ours, ref64, lowp) in result.items():
        assert ours.dtype == lowp.dtype, f"{key}: dtype {ours.dtype}, plain PyTorch gives {lowp.dtype}"
        if rows is not None and key in ("out", "dq"):
            ours, ref64, lowp = (t[rows] for t in (ours, ref64, lowp))
        # dq and dk vanish exactly when a row sees one key (dS = P (dP - rowsum(P dP)) = 0): an fp64 "reference" of
        # 1e-16 noise. Only then, measure their error on the scale of dv, the same products without the cancellation.
        floor = dv_scale if key in ("dq", "dk") and _max_abs(ref64) < 1e-10 * dv_scale else REF_FLOOR
        assert_close_by_rule(key, ours, ref64, lowp, "output" if key == "out" else "grad", floor=floor)


def count_launches(monkeypatch, module, names) -> list:
    """Wrap the kernels `names` of a kernel module so each `kernel[grid](...)` launch appends its name to the list
    returned (the launch itself still runs)."""
    launches = []

    class Counting:
        def __init__(self, kernel, name):
            self.kernel, self.name = kernel, name

        def __getitem__(self, grid):
            launches.append(self.name)
            return self.kernel[grid]

    for name in names:
        monkeypatch.setattr(module, name, Counting(getattr(module, name), name))
    return launches


# ------------------------------------------------------------------------------------------ op cases
def op_case(ours, theirs, inputs, grads):
    """ours(*inputs) vs theirs(*inputs) in fp64 (reference) and in the inputs' precision (plain PyTorch), both
    returning a tuple of outputs, backward with `grads`. Inputs keep their strides for ours. Returns
    {name: (ours, ref64, lowp)} for each output ("out0", ...) and each input's gradient ("d0", ...)."""
    runs = {}
    for which, fn in (("ours", ours), ("ref64", theirs), ("lowp", theirs)):
        cast = (lambda t: t.double()) if which == "ref64" else (lambda t: t)
        leaves = [None if t is None else cast(t.detach()).contiguous().clone().requires_grad_(True) for t in inputs]
        ins = [None if t is None else with_layout(leaf, t) for leaf, t in zip(leaves, inputs)]
        outs = fn(*ins)
        torch.autograd.backward(outs, [with_layout(cast(g), g) for g in grads])
        runs[which] = [o.detach() for o in outs] + [None if t is None else t.grad for t in leaves]
    names = [f"out{i}" for i in range(len(grads))] + [f"d{i}" for i in range(len(inputs))]
    return {name: tuple(runs[w][i] for w in ("ours", "ref64", "lowp"))
            for i, name in enumerate(names) if runs["ref64"][i] is not None}


def check_op_case(result):
    for name, (ours, ref64, lowp) in result.items():
        assert ours is not None, f"{name}: missing"
        assert ours.dtype == lowp.dtype, f"{name}: dtype {ours.dtype}, PyTorch gives {lowp.dtype}"
        assert_close_by_rule(name, ours, ref64, lowp, "output" if name.startswith("out") else "grad")


def hf_rotary(x, cos, sin, interleaved=False):
    """Hugging Face's rotate_half / GPT-J's rotate_every_two, partial rotary as Phi-3."""
    r = cos.size(-1)
    x_rot, x_pass = x[..., :r], x[..., r:]
    if interleaved:
        rotated = torch.stack((-x_rot[..., 1::2], x_rot[..., 0::2]), dim=-1).flatten(-2)
    else:
        rotated = torch.cat((-x_rot[..., r // 2:], x_rot[..., :r // 2]), dim=-1)
    return torch.cat((x_rot * cos + rotated * sin, x_pass), dim=-1)


def rotary_tables(shape, r, interleaved, dtype, device="cpu"):
    """cos / sin of fresh random angles, duplicated over the pairs as the embeddings build them."""
    theta = torch.randn(*shape, r // 2, device=device) * 3
    emb = theta.repeat_interleave(2, -1) if interleaved else torch.cat((theta, theta), -1)
    return emb.cos().to(dtype), emb.sin().to(dtype)
