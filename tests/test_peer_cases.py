"""Peer conformance, part 2: the case lists of Liger-Kernel's and FlashAttention's test suites, re-expressed as
parametrisations over bigmodel.ops and checked against fp64 torch by DESIGN.md's rule (tests/numerics.py).

Sources (the case lists only; the checks are ours):
* Liger-Kernel test/transformers/test_layer_norm.py (batch, seq, hidden incl. 1023 / 1500 and prime batch/seq),
  test_softmax.py (single rows, 3-D, 4096-wide rows), test_geglu.py (functional gelu_tanh(a) * b shapes and the
  GEGLU MLP "weird shape" 9 x 41 x 341 -> 4231, here as linear_act + gelu).
* FlashAttention tests/test_flash_attn.py: the seqlen pairs of test_flash_attn_output / _causal, the head dims (incl.
  59 and 111), causal bottom-right aligned (FlashAttention's) and top-left (SDPA's, bigmodel's is_causal), local windows
  as boolean masks, MQA / GQA, non-contiguous dout (bwd_transpose), large inputs at short lengths (bwd_overflow), and
  bitwise determinism of the backward.

bigmodel's is_causal is SDPA's (top-left); FlashAttention's bottom-right causal and its windows are passed as the
boolean masks FlashAttention's own reference builds (construct_local_mask). Rows that see no key give 0 output and
0 gradient in bigmodel (DESIGN.md): they are checked for that and left out of the comparison (SDPA gives NaN there).
The Triton kernels run under the interpreter; the largest FlashAttention lengths run on the pure-math backend only
(skipped on Triton with that reason); the GPU tests cover them on the device.
"""
import pytest
import torch
import torch.nn.functional as F

import bigmodel
from numerics import (BACKEND_DTYPES, BACKENDS_CPU, assert_close_by_rule, attention_case, check_attention_case,
                      check_layer_norm_case, layer_norm_case, requires_interpreter)

REFERENCE = "reference"  # the pure-math backend
INTERPRETER_MAX_SCORES = 40_000  # Triton under the interpreter runs one program at a time: bigger Lq x Lk: REFERENCE
TOO_SLOW = (f"Lq x Lk > {INTERPRETER_MAX_SCORES}: too slow for the Triton interpreter (runs on the pure-math backend "
            "here; the cuda-marked tests cover the kernels at real lengths)")


def _skip_slow(backend, lq, lk):
    if backend != REFERENCE and lq * lk > INTERPRETER_MAX_SCORES:
        pytest.skip(TOO_SLOW)


def _compare(ours_fn, torch_fn, inputs, dtype, seed=0):
    """ours_fn(*inputs) vs torch_fn in fp64 and in `dtype`, output and the gradient of every input."""
    runs = []
    g = None
    for fn, cast in ((ours_fn, dtype), (torch_fn, torch.float64), (torch_fn, dtype)):
        leaves = [t.detach().to(cast).requires_grad_(True) for t in inputs]
        out = fn(*leaves)
        if g is None:
            g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
        out.backward(g.to(cast))
        runs.append([out] + [t.grad for t in leaves])
    for i, (ours, ref, low) in enumerate(zip(*runs)):
        name = "out" if i == 0 else f"grad[{i - 1}]"
        assert ours.dtype == low.dtype and ours.shape == ref.shape, name
        assert_close_by_rule(name, ours, ref, low, "output" if i == 0 else "grad")


# ============================================================================================ Liger-Kernel
LIGER_LN_SHAPES = [(2, 8, 64), (4, 16, 128), (1, 1, 1023), (3, 7, 256), (1, 1, 1500),  # test_liger_layer_norm
                   (3, 512, 128)]  # test_liger_layer_norm_functional's extra shape


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("shape", LIGER_LN_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("affine", ["module", "randn"])  # Liger's module (ones / zeros) and functional (randn) params
def test_liger_layer_norm(backend, dtype, shape, affine):
    hidden = shape[-1]
    x = torch.randn(shape).to(dtype)
    if affine == "module":
        w, b = torch.ones(hidden, dtype=dtype), torch.zeros(hidden, dtype=dtype)
    else:
        w, b = torch.randn(hidden).to(dtype), torch.randn(hidden).to(dtype)
    result = layer_norm_case(lambda *a: bigmodel.ops.layer_norm(*a, backend=backend), x, hidden, w, b, eps=1e-6)
    check_layer_norm_case(result)


def test_liger_layer_norm_fp64_statistics():
    """Liger's shapes in fp64 on the pure-math backend: fp64 statistics, so fp64-accurate gradients (were fp32)."""
    for shape in LIGER_LN_SHAPES[:4] + [(1, 1, 1)]:
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        w = torch.randn(shape[-1], dtype=torch.float64, requires_grad=True)
        b = torch.randn(shape[-1], dtype=torch.float64, requires_grad=True)
        y, mean, rstd = torch.ops.bigmodel.layer_norm(x, [shape[-1]], w, b, 1e-6, REFERENCE)
        assert mean.dtype == rstd.dtype == torch.float64
        g = torch.randn(shape, dtype=torch.float64)
        ours = torch.autograd.grad(y, (x, w, b), g)
        theirs = torch.autograd.grad(F.layer_norm(x, (shape[-1],), w, b, 1e-6), (x, w, b), g)
        for name, a, t in zip(("dx", "dw", "db"), ours, theirs):
            torch.testing.assert_close(a, t, rtol=1e-10, atol=1e-12, msg=lambda m: f"{shape} {name}: {m}")


LIGER_SOFTMAX_SHAPES = [(2, 8), (4, 16), (1, 1023), (3, 7, 256), (1, 4096), (1, 2, 4096)]


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("shape", LIGER_SOFTMAX_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_liger_softmax(backend, dtype, shape):
    _compare(lambda x: bigmodel.ops.softmax(x, -1, backend=backend), lambda x: torch.softmax(x, -1),
             (torch.randn(shape),), dtype)


LIGER_GEGLU_FUNCTIONAL = [(2, 2, 8), (9, 7, 41)]  # test_geglu.py::test_correctness_functional


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("shape", LIGER_GEGLU_FUNCTIONAL, ids=lambda s: "x".join(map(str, s)))
def test_liger_geglu_functional(backend, dtype, shape):
    """Liger's geglu(a, b) = gelu_tanh(a) * b, with bigmodel's gelu."""
    _compare(lambda a, b: bigmodel.ops.gelu(a, "tanh", backend=backend) * b,
             lambda a, b: F.gelu(a, approximate="tanh") * b, (torch.randn(shape), torch.randn(shape)), dtype)


# test_geglu.py::test_correctness's (bsz, seq, hidden, intermediate): the "weird shape" on the reference, and the same
# non-power-of-two pattern scaled down for the interpreter (its 2 x 2048 x 2048 -> 4096 case is a GPU size).
LIGER_GEGLU_MLP = [pytest.param(9, 41, 341, 4231, id="9x41x341x4231-weird"),
                   pytest.param(3, 7, 41, 97, id="3x7x41x97-scaled")]


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("bsz,seq,hidden,inter", LIGER_GEGLU_MLP)
def test_liger_geglu_mlp(backend, dtype, bsz, seq, hidden, inter):
    """Gemma's MLP as Liger tests it: down(gelu_tanh(gate(x)) * up(x)), from linear_act."""
    if backend != REFERENCE and hidden * inter > 64 * 1024:
        pytest.skip(f"GEMM of {bsz * seq} x {hidden} x {inter}: too slow for the Triton interpreter (cuda-marked "
                    "tests cover linear_act at transformer sizes)")
    x = torch.randn(bsz, seq, hidden)
    wg, wu = torch.randn(inter, hidden) / hidden**0.5, torch.randn(inter, hidden) / hidden**0.5
    wd = torch.randn(hidden, inter) / inter**0.5

    def ours(x, wg, wu, wd):
        h = bigmodel.ops.linear_act(x, wg, activation="gelu_tanh", backend=backend) * \
            bigmodel.ops.linear_act(x, wu, activation=None, backend=backend)
        return bigmodel.ops.linear_act(h, wd, activation=None, backend=backend)

    def theirs(x, wg, wu, wd):
        return F.linear(F.gelu(F.linear(x, wg), approximate="tanh") * F.linear(x, wu), wd)

    _compare(ours, theirs, (x, wg, wu, wd), dtype)


# ============================================================================================ FlashAttention
# test_flash_attn_output's and test_flash_attn_causal's (seqlen_q, seqlen_k), with the swapped pairs of the latter
FA_SEQLENS = [(1, 239), (3, 799), (127, 512), (127, 513), (113, 203), (128, 217), (113, 211), (108, 256), (256, 512),
              (512, 256), (1023, 1024), (1024, 1023), (239, 1), (799, 3), (203, 113)]
FA_HEAD_DIMS = [32, 40, 59, 64, 80, 96, 111, 128, 160, 192, 224, 256]
# FlashAttention tests fp16 and bf16 only; bf16 runs on the pure-math backend here (bf16 tl.dot is broken in the
# interpreter; the cuda-marked tests run it on the kernels), fp32 is covered by test_attention.py and test_opinfo.py.
FA_BACKEND_DTYPES = [
    pytest.param(REFERENCE, torch.float16, id=f"{REFERENCE}-fp16"),
    pytest.param(REFERENCE, torch.bfloat16, id=f"{REFERENCE}-bf16"),
    pytest.param("triton", torch.float16, id="triton-fp16", marks=requires_interpreter),
]


def heads(backend, n=2):
    """FlashAttention's head counts on the pure-math backend; one head under the interpreter (it runs one program at a
    time, and heads are independent programs: more of them test nothing more)."""
    return n if backend == REFERENCE else 1


def fa_mask(lq, lk, causal=False, window=(-1, -1)):
    """FlashAttention's visibility as a bool (Lq, Lk) mask (True = attend), bottom-right aligned as in
    construct_local_mask: query i sits at key position i + Lk - Lq; window (left, right), -1 = unbounded."""
    if causal:
        window = (window[0], 0)
    row = torch.arange(lq)[:, None] + lk - lq
    col = torch.arange(lk)[None, :]
    left, right = window
    visible = torch.ones(lq, lk, dtype=torch.bool)
    if right >= 0:
        visible &= col <= row + right
    if left >= 0:
        visible &= col >= row - left
    return visible


def fa_qkv(batch, lq, lk, hq, hkv, d, dtype, scale=1.0):
    """FlashAttention's (B, L, H, D) tensors, seen in SDPA layout (B, H, L, D): non-contiguous views, as a model that
    projects then transposes hands them over."""
    q = (torch.randn(batch, lq, hq, d) * scale).to(dtype).transpose(1, 2)
    k = torch.randn(batch, lk, hkv, d).to(dtype).transpose(1, 2)
    v = torch.randn(batch, lk, hkv, d).to(dtype).transpose(1, 2)
    return q, k, v


def run_fa_case(backend, q, k, v, mask=None, is_causal=False, enable_gqa=False, do=None):
    if k.size(-2) == 1:  # one key: dq and dk are 0 in exact math, and both sides' fp16 noise is no fair bound
        return _run_single_key(backend, q, k, v, mask, is_causal, enable_gqa, do)
    fn = lambda q, k, v, m, c, s, g: bigmodel.ops.attention(q, k, v, m, 0.0, c, s, g, backend=backend)  # noqa: E731
    if mask is None:
        result = attention_case(fn, q, k, v, None, is_causal, None, enable_gqa, do=do)
        check_attention_case(result)
        return result
    rows = mask.any(-1)  # query rows with at least one visible key
    if rows.all():
        result = attention_case(fn, q, k, v, mask, False, None, enable_gqa, do=do)
        check_attention_case(result)
        return result
    # SDPA gives NaN in rows that see nothing (and NaN gradients from them): the fp64 / lowp references get -inf-free
    # masks there (the row sees everything) and those rows are left out of out / dq. dk / dv must not depend on those
    # rows, so the reference's do is zeroed there.
    safe = mask | ~rows[:, None]
    if do is None:
        do = torch.randn(*q.shape[:-1], v.size(-1)).to(q.dtype)
    do_ref = do.masked_fill(~rows[:, None], 0)
    result = attention_case(fn, q, k, v, mask, False, None, enable_gqa, do=do)
    reference = attention_case(lambda q, k, v, m, c, s, g: F.scaled_dot_product_attention(
        q, k, v, attn_mask=m, enable_gqa=g), q, k, v, safe, False, None, enable_gqa, do=do_ref)
    hidden = ~rows
    out, dq = result["out"][0], result["dq"][0]
    assert (out[..., hidden, :] == 0).all() and (dq[..., hidden, :] == 0).all(), "rows with no key must give 0"
    merged = {key: (result[key][0], reference[key][1], reference[key][2]) for key in result}
    check_attention_case(merged, rows=rows.expand(q.shape[:-1]))
    return result


def _run_single_key(backend, q, k, v, mask, is_causal, enable_gqa, do):
    """Lk = 1: every row sees its one key (or none, under a mask), out = v (or 0); dv = the column sum of do over the
    rows that see it; dq = dk = 0 up to rounding: |dq|, |dk| <= eps(dtype) * max|v| * max|do| * max|q or k| * scale."""
    fn = lambda q, k, v, m, c, s, g: bigmodel.ops.attention(q, k, v, m, 0.0, c, s, g, backend=backend)  # noqa: E731
    result = attention_case(fn, q, k, v, mask, is_causal, None, enable_gqa, do=do)
    rows = mask.any(-1).expand(q.shape[:-1]) if mask is not None else torch.ones(q.shape[:-1], dtype=torch.bool)
    # out and dv by the rule (the references never see a row with no key here: masks with one key keep it visible
    # for the rows compared, and out / dv do not cancel)
    for key in ("out", "dv"):
        ours, ref64, low = result[key]
        if key == "out":
            ours, ref64, low = ours[rows], ref64[rows], low[rows]
        assert_close_by_rule(key, ours, ref64, low, "output" if key == "out" else "grad")
    eps = torch.finfo(q.dtype).eps
    bound = 8 * eps * max(1.0, result["dv"][1].abs().max().item()) * q.size(-1) ** 0.5
    for key in ("dq", "dk"):
        assert result[key][0].abs().max().item() <= bound, f"{key} should vanish with one key"
    return result


@pytest.mark.parametrize("backend,dtype", FA_BACKEND_DTYPES)
@pytest.mark.parametrize("causal", ["none", "top-left", "bottom-right"])
@pytest.mark.parametrize("lq,lk", FA_SEQLENS, ids=lambda p: str(p))
def test_fa_seqlens(backend, dtype, lq, lk, causal):
    """The seqlen pairs with no mask, SDPA's causal (bigmodel's is_causal) and FlashAttention's causal (a mask)."""
    _skip_slow(backend, lq, lk)
    q, k, v = fa_qkv(1, lq, lk, heads(backend), heads(backend), 32, dtype)
    if causal == "bottom-right":
        run_fa_case(backend, q, k, v, mask=fa_mask(lq, lk, causal=True))
    else:
        run_fa_case(backend, q, k, v, is_causal=causal == "top-left")


@pytest.mark.parametrize("backend,dtype", FA_BACKEND_DTYPES)
@pytest.mark.parametrize("d", FA_HEAD_DIMS)
def test_fa_head_dims(backend, dtype, d):
    """Every head dim of test_flash_attn_output, at one of its non-aligned seqlen pairs (113, 203), causal."""
    q, k, v = fa_qkv(1, 113, 203, heads(backend), heads(backend), d, dtype)
    run_fa_case(backend, q, k, v, is_causal=True)


@pytest.mark.parametrize("backend,dtype", FA_BACKEND_DTYPES)
@pytest.mark.parametrize("lq,lk", [(113, 203), (128, 217), (203, 113), (1, 239), (239, 1)], ids=str)
@pytest.mark.parametrize("causal", [False, True])
def test_fa_local_window(backend, dtype, lq, lk, causal):
    """FlashAttention's local attention: window (left, right) drawn in [0, Lk) as its tests do, as a bool mask."""
    left, right = (int(x) for x in torch.randint(0, lk, (2,)))
    mask = fa_mask(lq, lk, causal=causal, window=(left, right))
    q, k, v = fa_qkv(1, lq, lk, heads(backend), heads(backend), 59, dtype)
    run_fa_case(backend, q, k, v, mask=mask)


@pytest.mark.parametrize("backend,dtype", FA_BACKEND_DTYPES)
@pytest.mark.parametrize("mha_type,hkv", [("mha", 6), ("mqa", 1), ("gqa", 2)])
@pytest.mark.parametrize("causal", [False, True])
def test_fa_mqa_gqa(backend, dtype, mha_type, hkv, causal):
    """test_flash_attn_output's nheads 6 with nheads_k 6 / 1 / 2, batch 4; batch 1 and shorter (still unaligned)
    lengths under the interpreter."""
    batch, lq, lk = (4, 113, 97) if backend == REFERENCE else (1, 57, 43)
    q, k, v = fa_qkv(batch, lq, lk, 6, hkv, 64, dtype)
    run_fa_case(backend, q, k, v, is_causal=causal, enable_gqa=hkv != 6)


@pytest.mark.parametrize("backend,dtype", FA_BACKEND_DTYPES)
@pytest.mark.parametrize("seqlen", [97, 128, 200], ids=str)
@pytest.mark.parametrize("causal", [False, True])
def test_fa_bwd_transpose(backend, dtype, seqlen, causal):
    """test_flash_attn_bwd_transpose: the output used as (L, B, H, D) and a strided dout (every other batch column)."""
    b, h = (5, 2) if backend == REFERENCE else (2, 1)
    q, k, v = fa_qkv(b, seqlen, seqlen, h, h, 64, dtype)
    do = torch.randn(seqlen, 2 * b, h, 64).to(dtype)[:, ::2].permute(1, 2, 0, 3)  # (B, H, L, D) view of (L, B, H, D)
    assert not do.is_contiguous()
    run_fa_case(backend, q, k, v, is_causal=causal, do=do)


@pytest.mark.parametrize("backend,dtype", FA_BACKEND_DTYPES)
@pytest.mark.parametrize("seqlen", [1, 2, 5, 17, 128], ids=str)
@pytest.mark.parametrize("d", [16, 32, 64])
@pytest.mark.parametrize("causal", [False, True])
def test_fa_bwd_overflow(backend, dtype, seqlen, d, causal):
    """test_flash_attn_bwd_overflow: q * 5, k / v * 3 at lengths that are not multiples of a block; no NaN anywhere."""
    b, h = (2, 5) if backend == REFERENCE else (1, 2)
    q, k, v = fa_qkv(b, seqlen, seqlen, h, h, d, dtype, scale=5.0)
    k, v = k * 3, v * 3
    result = run_fa_case(backend, q, k, v, is_causal=causal)
    for key, (ours, _ref, _low) in result.items():
        assert not torch.isnan(ours).any(), key


@pytest.mark.parametrize("backend", BACKENDS_CPU)
@pytest.mark.parametrize("lq,lk", [(113, 203), (203, 113), (1, 239)], ids=str)
@pytest.mark.parametrize("causal,local", [(False, False), (True, False), (False, True)], ids=["full", "causal", "local"])
def test_fa_deterministic(backend, lq, lk, causal, local):
    """test_flash_attn_deterministic: the backward, run again on the same inputs, is bitwise identical (fp16)."""
    b, hq = (2, 4) if backend == REFERENCE else (1, 2)
    q, k, v = (t.detach().requires_grad_(True) for t in fa_qkv(b, lq, lk, hq, hq // 2, 59, torch.float16))
    mask = fa_mask(lq, lk, causal=causal, window=(7, 11) if local else (-1, -1)) if (causal or local) else None
    g = torch.randn(b, hq, lq, 59).to(torch.float16)
    first = None
    for _ in range(3 if backend == REFERENCE else 2):
        out = bigmodel.ops.attention(q, k, v, attn_mask=mask, enable_gqa=True, backend=backend)
        grads = torch.autograd.grad(out, (q, k, v), g)
        if first is None:
            first = (out, grads)
            continue
        assert torch.equal(out, first[0])
        for name, a, b in zip(("dq", "dk", "dv"), grads, first[1]):
            assert torch.equal(a, b), f"{name} differs between runs"


@pytest.mark.parametrize("backend", BACKENDS_CPU)
@pytest.mark.parametrize("dropout_p", [0.17])
def test_fa_dropout_seeded(backend, dropout_p):
    """test_flash_attn_output's dropout_p 0.17: the same seed gives the same output and gradients; the kept fraction
    of the attention weights is ~ 1 - p (checked through v = identity rows)."""
    lq, lk, d = 113, 64, 64
    q, k, _ = (t.detach() for t in fa_qkv(1, lq, lk, 2, 2, d, torch.float32))
    v = torch.eye(lk, d).expand(1, 2, lk, d)  # out = dropped, rescaled attention weights (first 64 columns)
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        outs.append(bigmodel.ops.attention(q, k, v, dropout_p=dropout_p, backend=backend))
    assert torch.equal(outs[0], outs[1])
    kept = (outs[0] != 0).double().mean().item()
    assert abs(kept - (1 - dropout_p)) < 0.03, kept
    p = torch.softmax((q @ k.transpose(-1, -2)) / d**0.5, -1)
    scaled = outs[0][outs[0] != 0] / p[outs[0] != 0]
    torch.testing.assert_close(scaled, torch.full_like(scaled, 1 / (1 - dropout_p)), rtol=1e-4, atol=0)
