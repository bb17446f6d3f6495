"""bigmodel.ops.rotary on CPU: the reference and torch backends and the Triton kernel under the interpreter, output
and gradient against Hugging Face's composition (x * cos + rotate_half(x) * sin, GPT-J's pairs when interleaved,
partial rotary) in fp64, by DESIGN.md's rule, on fresh random angles; broadcast shapes, layouts, bad input."""
import pytest
import torch

import bigmodel
from numerics import (OP_BACKEND_DTYPES, assert_close_by_rule, count_launches, hf_rotary, requires_interpreter,
                      rotary_tables)

BACKEND_DTYPES = OP_BACKEND_DTYPES






def check(backend, x, cos, sin, interleaved=False):
    dy = torch.randn(x.shape).to(x.dtype)
    runs = {}
    for which, fn, cast in (("ours", lambda *a: bigmodel.ops.rotary(*a, interleaved=interleaved, backend=backend),
                             lambda t: t),
                            ("ref64", lambda *a: hf_rotary(*a, interleaved), lambda t: t.double()),
                            ("lowp", lambda *a: hf_rotary(*a, interleaved), lambda t: t)):
        leaf = cast(x.detach()).clone().requires_grad_(True)
        xin = leaf if x.is_contiguous() else leaf.transpose(1, 2).contiguous().transpose(1, 2)
        y = fn(xin, cast(cos), cast(sin))
        y.backward(cast(dy))
        runs[which] = (y.detach(), leaf.grad)
    for i, name in enumerate(("y", "dx")):
        ours, ref, lowp = (runs[w][i] for w in ("ours", "ref64", "lowp"))
        assert ours.dtype == x.dtype and ours.shape == x.shape
        assert_close_by_rule(name, ours, ref, lowp, "output" if name == "y" else "grad")


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("interleaved", [False, True], ids=["rotate_half", "interleaved"])
@pytest.mark.parametrize("d,r", [(64, 64), (80, 80), (80, 32)], ids=["d64", "d80", "d80-partial32"])
def test_rotary_matches_hugging_face(backend, dtype, interleaved, d, r):
    B, H, L = 2, 3, 7
    x = torch.randn(B, H, L, d).to(dtype)
    cos, sin = rotary_tables((B, 1, L), r, interleaved, dtype)  # Hugging Face's (B, L, R) unsqueezed at the head dim
    check(backend, x, cos, sin, interleaved)


@pytest.mark.parametrize("backend", ["reference", "torch", pytest.param("triton", marks=requires_interpreter)])
@pytest.mark.parametrize("table_shape", [(9,), (1, 1, 9), (2, 3, 9)], ids=["(L,R)", "(1,1,L,R)", "(B,H,L,R)"])
def test_rotary_broadcasts_cos_sin(backend, table_shape):
    x = torch.randn(2, 3, 9, 32)
    cos, sin = rotary_tables(table_shape, 32, False, torch.float32)
    check(backend, x, cos, sin)


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=requires_interpreter)])
def test_rotary_non_contiguous_and_other_ranks(backend):
    x = torch.randn(2, 6, 4, 64).transpose(1, 2)  # (B, H, L, D) view of (B, L, H, D) storage
    cos, sin = rotary_tables((2, 1, 6), 64, False, torch.float32)
    check(backend, x, cos, sin)
    x3 = torch.randn(4, 6, 64)  # (H, L, D)
    c3, s3 = rotary_tables((6,), 64, True, torch.float32)
    torch.testing.assert_close(bigmodel.ops.rotary(x3, c3, s3, interleaved=True, backend=backend),
                               hf_rotary(x3, c3, s3, True))


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=requires_interpreter)])
def test_rotary_tables_with_any_strides(backend):
    x = torch.randn(2, 3, 5, 16)
    cos, sin = rotary_tables((5,), 16, False, torch.float32)
    cos_t, sin_t = cos.t().contiguous().t(), sin.t().contiguous().t()  # the same values with strides (1, 5)
    assert cos_t.stride(-1) != 1
    torch.testing.assert_close(bigmodel.ops.rotary(x, cos_t, sin_t, backend=backend), hf_rotary(x, cos, sin))


def test_rotary_gives_cos_sin_a_gradient_on_torch_only():
    x = torch.randn(1, 2, 5, 16)
    cos, sin = (t.requires_grad_() for t in rotary_tables((5,), 16, False, torch.float32))
    y = bigmodel.ops.rotary(x, cos, sin)  # auto: the kernels cannot, torch can
    y.sum().backward()
    assert cos.grad is not None and sin.grad is not None
    with pytest.raises(bigmodel.backends.BackendUnavailable, match="cos / sin require grad"):
        bigmodel.ops.rotary(x, cos, sin, backend="reference")


def test_custom_op_passes_opcheck_and_compiles():
    x = torch.randn(2, 3, 5, 16, requires_grad=True)
    cos, sin = rotary_tables((2, 1, 5), 16, False, torch.float32)
    c4, s4 = cos.expand(2, 3, 5, 16), sin.expand(2, 3, 5, 16)
    torch.library.opcheck(torch.ops.bigmodel.rotary.default, (x, c4, s4, False, "reference"))
    fn = torch.compile(lambda x, c, s: bigmodel.ops.rotary(x, c, s, backend="reference"), fullgraph=True,
                       backend="aot_eager")
    torch.testing.assert_close(fn(x, cos, sin), hf_rotary(x, cos, sin))


def test_bad_input():
    x = torch.randn(2, 3, 5, 16)
    cos, sin = rotary_tables((2, 1, 5), 16, False, torch.float32)
    with pytest.raises(ValueError, match=r"do not broadcast to x's \(\.\.\., L, R\)"):
        bigmodel.ops.rotary(x, cos[:, :, :4], sin[:, :, :4])
    with pytest.raises(ValueError, match="cos and sin must have one shape"):
        bigmodel.ops.rotary(x, cos, sin[..., :8])
    with pytest.raises(ValueError, match="must be even.*interleaved pairs need an even dim"):
        bigmodel.ops.rotary(torch.randn(2, 3, 5, 15), cos[..., :15], sin[..., :15], interleaved=True)
    with pytest.raises(ValueError, match=r"in \[2, x.size\(-1\) = 8\]"):
        bigmodel.ops.rotary(x[..., :8], cos, sin)
    with pytest.raises(TypeError, match="cos must have dtype"):
        bigmodel.ops.rotary(x, cos.double(), sin.double())


# ------------------------------------------------------------------------------------------ rotary_qk
def check_qk(backend, q, k, cos, sin, interleaved=False):
    """ops.rotary_qk vs the composition on q and k, in fp64 and in the low precision, outputs and both gradients."""
    dq, dk = torch.randn(q.shape).to(q.dtype), torch.randn(k.shape).to(k.dtype)
    runs = {}
    def theirs(q, k, c, s):
        return hf_rotary(q, c, s, interleaved), hf_rotary(k, c, s, interleaved)

    for which, fn, cast in (("ours", lambda *a: bigmodel.ops.rotary_qk(*a, interleaved=interleaved, backend=backend),
                             lambda t: t), ("ref64", theirs, lambda t: t.double()), ("lowp", theirs, lambda t: t)):
        lq, lk = (cast(t.detach()).clone().requires_grad_(True) for t in (q, k))
        yq, yk = fn(lq, lk, cast(cos), cast(sin))
        torch.autograd.backward((yq, yk), (cast(dq), cast(dk)))
        runs[which] = (yq.detach(), yk.detach(), lq.grad, lk.grad)
    for i, name in enumerate(("yq", "yk", "dq", "dk")):
        ours, ref, lowp = (runs[w][i] for w in ("ours", "ref64", "lowp"))
        assert ours.dtype == q.dtype and ours.shape == ref.shape, name
        assert_close_by_rule(name, ours, ref, lowp, "output" if name[0] == "y" else "grad")


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("interleaved", [False, True], ids=["rotate_half", "interleaved"])
@pytest.mark.parametrize("d,r", [(64, 64), (80, 32)], ids=["d64", "d80-partial32"])
def test_rotary_qk_matches_hugging_face_with_gqa(backend, dtype, interleaved, d, r):
    B, Hq, Hk, L = 2, 4, 2, 7
    q, k = torch.randn(B, Hq, L, d).to(dtype), torch.randn(B, Hk, L, d).to(dtype)
    cos, sin = rotary_tables((B, 1, L), r, interleaved, dtype)
    check_qk(backend, q, k, cos, sin, interleaved)


@pytest.mark.parametrize("backend", ["reference", "torch", pytest.param("triton", marks=requires_interpreter)])
def test_rotary_qk_non_contiguous_and_tables_of_length_l(backend):
    q = torch.randn(2, 6, 4, 32).transpose(1, 2)  # (B, H, L, D) views of (B, L, H, D) projections
    k = torch.randn(2, 6, 1, 32).transpose(1, 2)
    cos, sin = rotary_tables((6,), 32, False, torch.float32)
    check_qk(backend, q, k, cos, sin)


@requires_interpreter
def test_rotary_qk_is_one_launch_on_triton(monkeypatch):
    import bigmodel.kernels.rotary as kr
    launches = count_launches(monkeypatch, kr, ("_rotary_kernel", "_rotary_qk_kernel"))
    q, k = torch.randn(1, 4, 5, 16), torch.randn(1, 2, 5, 16)
    cos, sin = rotary_tables((5,), 16, False, torch.float32)
    bigmodel.ops.rotary_qk(q.requires_grad_(), k.requires_grad_(), cos, sin, backend="triton")[0].sum().backward()
    assert launches == ["_rotary_qk_kernel", "_rotary_qk_kernel"], launches  # forward, backward



def test_rotary_qk_custom_op_passes_opcheck():
    q, k = torch.randn(2, 4, 5, 16, requires_grad=True), torch.randn(2, 2, 5, 16, requires_grad=True)
    cos, sin = rotary_tables((2, 1, 5), 16, False, torch.float32)
    cq, sq, ck, sk = cos.expand(2, 4, 5, 16), sin.expand(2, 4, 5, 16), cos.expand(2, 2, 5, 16), sin.expand(2, 2, 5, 16)
    torch.library.opcheck(torch.ops.bigmodel.rotary_qk.default, (q, k, cq, sq, ck, sk, False, "reference"))
    fn = torch.compile(lambda q, k, c, s: bigmodel.ops.rotary_qk(q, k, c, s, backend="reference"), fullgraph=True,
                       backend="aot_eager")
    yq, yk = fn(q, k, cos, sin)
    torch.testing.assert_close(yq, hf_rotary(q, cos, sin))
    torch.testing.assert_close(yk, hf_rotary(k, cos, sin))


def test_rotary_qk_bad_input():
    q, k = torch.randn(2, 4, 5, 16), torch.randn(2, 2, 5, 16)
    cos, sin = rotary_tables((2, 1, 5), 16, False, torch.float32)
    with pytest.raises(ValueError, match=r"do not broadcast to k's"):
        bigmodel.ops.rotary_qk(q, torch.randn(2, 2, 6, 16), cos, sin)
    with pytest.raises(ValueError, match=r"k must have q's dtype and head dim"):
        bigmodel.ops.rotary_qk(q, torch.randn(2, 2, 5, 32), cos, sin)
    with pytest.raises(TypeError, match=r"k must have dtype"):
        bigmodel.ops.rotary_qk(q, k.int(), cos, sin)
