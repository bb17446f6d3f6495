"""bigmodel.ops.attention on CPU: SDPA's semantics, on the reference backend ("reference") and the Triton kernels under
the interpreter ("triton" on CPU tensors), forward and all three gradients against fp64 SDPA by DESIGN.md's rule.
The kernel-level shape sweep is in test_attention_kernels.py; this file covers what the op promises: input ranks,
masks of every kind and broadcast, causal alignment, GQA, scale, fully masked rows, strides and dropout."""
import math

import pytest
import torch
import torch.nn.functional as F

import bigmodel
from numerics import BACKEND_DTYPES, BACKENDS_CPU, assert_close_by_rule, attention_case, check_attention_case, requires_interpreter



def op(backend, dropout_p=0.0):
    def fn(q, k, v, attn_mask, is_causal, scale, enable_gqa):
        return bigmodel.ops.attention(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa, backend=backend)
    return fn


def qkv(b_shape, hq, hkv, lq, lk, d, dtype, dv=None):
    q = torch.randn(*b_shape, hq, lq, d).to(dtype)
    k = torch.randn(*b_shape, hkv, lk, d).to(dtype)
    v = torch.randn(*b_shape, hkv, lk, dv or d).to(dtype)
    return q, k, v


def run(backend, q, k, v, rows=None, **kw):
    res = attention_case(op(backend), q, k, v, **kw)
    check_attention_case(res, rows)
    return res


# ------------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("lq,lk,d", [(1, 1, 16), (17, 17, 64), (33, 20, 40), (20, 45, 80)], ids=str)
def test_lengths_and_head_dims(backend, dtype, lq, lk, d):
    run(backend, *qkv((2,), 3, 3, lq, lk, d, dtype))


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("b_shape", [(), (2, 3)], ids=["3d-(H,L,D)", "5d-(A,B,H,L,D)"])
def test_input_ranks(backend, dtype, b_shape):
    res = run(backend, *qkv(b_shape, 2, 2, 9, 12, 16, dtype))
    assert res["out"][0].shape == (*b_shape, 2, 9, 16)


@pytest.mark.parametrize("backend", BACKENDS_CPU)
def test_2d_input(backend):
    q, k, v = (torch.randn(n, 16) for n in (7, 11, 11))
    run(backend, q, k, v)


def test_reference_takes_a_different_value_head_dim():
    run("reference", *qkv((2,), 2, 2, 9, 12, 16, torch.float32, dv=24))


# ------------------------------------------------------------------------------------------ causal, scale, GQA
@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("lq,lk", [(24, 24), (10, 30), (30, 10)], ids=str)
def test_causal_top_left(backend, dtype, lq, lk):
    run(backend, *qkv((2,), 2, 2, lq, lk, 32, dtype), is_causal=True)


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_custom_scale(backend, dtype):
    run(backend, *qkv((2,), 2, 2, 13, 19, 32, dtype), scale=0.37)


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("hq,hkv,causal", [(4, 2, False), (4, 1, True), (6, 3, True)], ids=str)
def test_gqa(backend, dtype, hq, hkv, causal):
    res = run(backend, *qkv((2,), hq, hkv, 14, 14, 32, dtype), is_causal=causal, enable_gqa=True)
    assert res["dk"][0].shape == (2, hkv, 14, 32)


# ------------------------------------------------------------------------------------------ masks
def bool_mask(shape, p_attend=0.7):
    m = torch.rand(shape) < p_attend
    m[..., 0] = True  # every query row sees at least one key
    return m


def float_mask(shape, dtype):
    m = torch.randn(shape) * 2
    m[torch.rand(shape) < 0.2] = float("-inf")
    m[..., 0] = 0.5  # every row has a finite score
    return m.to(dtype)


MASK_SHAPES = [(2, 3, 15, 22), (2, 1, 1, 22), (1, 1, 15, 22), (15, 22), (3, 1, 22)]


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("shape", MASK_SHAPES, ids=str)
def test_bool_mask(backend, dtype, shape):
    run(backend, *qkv((2,), 3, 3, 15, 22, 32, dtype), attn_mask=bool_mask(shape))


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("shape", MASK_SHAPES, ids=str)
def test_float_mask(backend, dtype, shape):
    run(backend, *qkv((2,), 3, 3, 15, 22, 32, dtype), attn_mask=float_mask(shape, dtype))


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_mask_with_gqa(backend, dtype):
    run(backend, *qkv((2,), 4, 2, 15, 22, 32, dtype), attn_mask=bool_mask((2, 4, 15, 22)), enable_gqa=True)


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_fully_masked_rows_give_zero(backend, dtype, kind):
    """Rows that may attend to nothing: output 0 and no gradient through them; every other row as SDPA."""
    q, k, v = qkv((2,), 2, 2, 12, 18, 32, dtype)
    blocked = torch.zeros(2, 2, 12, dtype=torch.bool)
    blocked[0, 1, 3] = blocked[1, 0, 0] = blocked[1, 1, 11] = True
    mask = bool_mask((2, 2, 12, 18)) & ~blocked[..., None]
    if kind == "float":
        mask = torch.zeros(mask.shape).masked_fill(~mask, float("-inf")).to(dtype)
    res = run(backend, q, k, v, rows=~blocked, attn_mask=mask)
    out, dq = res["out"][0], res["dq"][0]
    assert torch.isfinite(out).all() and all(torch.isfinite(res[g][0]).all() for g in ("dq", "dk", "dv"))
    assert (out[blocked] == 0).all() and (dq[blocked] == 0).all()


# ------------------------------------------------------------------------------------------ strides
@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_non_contiguous_inputs_and_grad(backend, dtype):
    """q, k, v as (B, L, H, D) transposed to (B, H, L, D), as a model's projection produces them; dO transposed."""
    q, k, v = (torch.randn(2, n, 3, 32).to(dtype).transpose(1, 2) for n in (13, 21, 21))
    do = torch.randn(2, 13, 3, 32).to(dtype).transpose(1, 2)
    assert not q.is_contiguous() and not do.is_contiguous()
    run(backend, q, k, v, do=do, is_causal=True)


@pytest.mark.parametrize("backend", BACKENDS_CPU)
def test_expanded_mask_is_not_copied_to_full_size(backend):
    """A (B, 1, 1, Lk) mask reaches the kernels as a stride-0 view of (B, H, Lq, Lk)."""
    seen = {}
    impl = bigmodel.backends.BACKENDS[backend]
    original = impl.attention_fwd

    def spy(q, k, v, mask, *args):
        seen["stride"] = mask.stride()
        return original(q, k, v, mask, *args)

    impl.attention_fwd = spy
    try:
        q, k, v = qkv((2,), 3, 3, 5, 8, 16, torch.float32)
        bigmodel.ops.attention(q, k, v, bool_mask((2, 1, 1, 8)), backend=backend)
    finally:
        del impl.attention_fwd
    assert seen["stride"][1] == 0 and seen["stride"][2] == 0


# ------------------------------------------------------------------------------------------ dropout
def keep_mask(backend, q, k, p, seed):
    """The kernel's dropout keep-mask for these q, k and seed, read off the output with V = I (O = dropped P)."""
    lk = k.size(-2)
    v = torch.eye(lk, q.size(-1)).expand(*k.shape[:-1], q.size(-1)).to(q.dtype)
    torch.manual_seed(seed)
    out = bigmodel.ops.attention(q, k, v, dropout_p=p, backend=backend)[..., :lk]
    return out != 0, out


@pytest.mark.parametrize("backend,dtype", [pytest.param("reference", torch.float32, id="reference-fp32"),
                                           pytest.param("triton", torch.float32, id="triton-fp32",
                                                        marks=requires_interpreter),
                                           pytest.param("triton", torch.float16, id="triton-fp16",
                                                        marks=requires_interpreter)])
def test_dropout_rate_scaling_and_backward_consistency(backend, dtype):
    p, seed = 0.3, 1234
    q, k, _ = qkv((2,), 2, 2, 48, 48, 64, dtype)
    keep, dropped = keep_mask(backend, q, k, p, seed)
    rate = 1 - keep.double().mean().item()
    sigma = math.sqrt(p * (1 - p) / keep.numel())
    assert abs(rate - p) < 5 * sigma, f"drop rate {rate:.4f}, expected {p} +- {5 * sigma:.4f}"
    if dtype == torch.float32:  # kept probabilities are scaled by 1 / (1 - p)
        probs = torch.softmax(q.double() @ k.double().transpose(-1, -2) / 8.0, dim=-1)
        assert_close_by_rule("kept P / (1 - p)", dropped[keep], (probs / (1 - p))[keep])
    # Same seed again: the same mask; another seed: another mask.
    assert torch.equal(keep_mask(backend, q, k, p, seed)[0], keep)
    assert not torch.equal(keep_mask(backend, q, k, p, seed + 1)[0], keep)

    # Random V, same seed: output and gradients equal fp64 attention with that very keep-mask.
    v = torch.randn(2, 2, 48, 64).to(dtype)
    do = torch.randn(2, 2, 48, 64).to(dtype)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    torch.manual_seed(seed)
    out = bigmodel.ops.attention(*leaves, dropout_p=p, backend=backend)
    out.backward(do)
    ref_leaves = [t.double().requires_grad_(True) for t in (q, k, v)]
    qd, kd, vd = ref_leaves
    ref = (torch.softmax(qd @ kd.transpose(-1, -2) / 8.0, dim=-1) * keep / (1 - p)) @ vd
    ref.backward(do.double())
    if dtype == torch.float32:
        for name, ours, r in zip(("out", "dq", "dk", "dv"), [out] + [t.grad for t in leaves],
                                 [ref] + [t.grad for t in ref_leaves]):
            assert_close_by_rule(name, ours, r, kind="output" if name == "out" else "grad")
    else:  # fp16: against the same computation in plain fp16 PyTorch
        lp_leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        ql, kl, vl = lp_leaves
        lp = (torch.softmax((ql @ kl.transpose(-1, -2)).float() / 8.0, -1).to(dtype) * keep / (1 - p)) @ vl
        lp.backward(do)
        for name, ours, r, low in zip(("out", "dq", "dk", "dv"), [out] + [t.grad for t in leaves],
                                      [ref] + [t.grad for t in ref_leaves], [lp] + [t.grad for t in lp_leaves]):
            assert_close_by_rule(name, ours, r, low, kind="output" if name == "out" else "grad")


@pytest.mark.parametrize("backend", BACKENDS_CPU)
def test_dropout_follows_torch_manual_seed(backend):
    q, k, v = qkv((1,), 2, 2, 16, 16, 16, torch.float32)
    torch.manual_seed(7)
    a = bigmodel.ops.attention(q, k, v, dropout_p=0.5, backend=backend)
    torch.manual_seed(7)
    b = bigmodel.ops.attention(q, k, v, dropout_p=0.5, backend=backend)
    assert torch.equal(a, b)
    assert not torch.equal(a, F.scaled_dot_product_attention(q, k, v))
