"""The attention entry points of the CUDA extension bigmodel._C (attention_fwd / attention_bwd, csrc/attention;
contract in notes/attention_contract.md).

* CPU-runnable: both entry points reject bad input (CPU tensors, wrong dtype, wrong head dim, mismatched heads
  or shapes, bad key padding mask, lse / do / o of the wrong kind, non-unit last stride) with a message naming
  the argument, what was expected and what arrived. Shapes and dtypes are checked before devices, so these run
  with CPU tensors.
* `cuda`-marked: o, lse, dq, dk, dv against an fp64 reference (F.scaled_dot_product_attention on .double() with
  autograd) by DESIGN.md's rule (numerics.assert_close_by_rule, plain PyTorch SDPA in the same low precision as
  torch_lowp): fp16 / bf16, head dim 64 / 128, causal (top-left) and not, Lq != Lk, lengths that are not
  multiples of the 64-row tiles (1, 77, 300, 1000), GQA / MQA (Hq = 8, Hkv = 2 and 1), key padding with fully
  padded batch rows and (causal) fully masked leading rows (o = 0, lse = +inf, zero gradients), non-contiguous
  q / k / v / do (from (B, L, H, D) transposed), misaligned rows (element-wise load path), L = 4096, and bitwise
  determinism of forward and backward.
* Issue 15's extras (`cuda`-marked, same rule): sliding windows (left, right; one side unbounded; (0, 0); with causal,
  with key padding, with rows that see no key), softcap (alone, with causal, with window + causal, against an eager
  fp64 composition: matmul, c * tanh(s / c), mask, softmax, matmul), and an unbounded window giving the dense
  kernels' results bit for bit. CPU-runnable: bad window / softcap arguments, and the cuda backend's reasons for the
  extras it declines (alibi_slopes, sinks, varlen).

Skips when bigmodel._C is not built; under CI with nvcc (or BIGMODEL_REQUIRE_CUDA_EXT=1) that is a failure.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import extension_or_skip
from numerics import assert_close_by_rule


@pytest.fixture(scope="module")
def ext():
    return extension_or_skip("attention_fwd", "attention_bwd")


FWD = r"bigmodel\._C\.attention_fwd: "
BWD = r"bigmodel\._C\.attention_bwd: "


def _qkv(B=2, Hq=4, Hkv=2, Lq=8, Lk=8, D=64, dtype=torch.float16, device="cpu"):
    q = torch.randn(B, Hq, Lq, D, device=device).to(dtype)
    k = torch.randn(B, Hkv, Lk, D, device=device).to(dtype)
    v = torch.randn(B, Hkv, Lk, D, device=device).to(dtype)
    return q, k, v


def _bwd_args(q, k, v):
    B, Hq, Lq, _ = q.shape
    return {"do": torch.randn_like(q), "q": q, "k": k, "v": v, "o": torch.randn_like(q),
            "lse": torch.zeros(B, Hq, Lq, dtype=torch.float32, device=q.device)}


# ================================================================================ input checks (CPU-runnable)
class TestForwardChecks:
    def test_cpu_tensors(self, ext):
        q, k, v = _qkv()
        with pytest.raises(RuntimeError, match=FWD + r"q must be a CUDA tensor; got a tensor on cpu"):
            ext.attention_fwd(q, k, v, None, False, 0.125)

    def test_keyword_names(self, ext):
        q, k, v = _qkv()
        with pytest.raises(RuntimeError, match=FWD + r"q must be a CUDA tensor"):
            ext.attention_fwd(q=q, k=k, v=v, key_padding_mask=None, is_causal=True, scale=0.125)

    @pytest.mark.parametrize("dtype,shown", [(torch.float32, "Float"), (torch.float64, "Double"),
                                             (torch.int32, "Int")])
    def test_dtype(self, ext, dtype, shown):
        q, k, v = _qkv(dtype=dtype)
        with pytest.raises(RuntimeError, match=FWD + r"q must be float16 or bfloat16; got " + shown):
            ext.attention_fwd(q, k, v, None, False, 0.125)

    def test_mixed_dtypes(self, ext):
        q, k, v = _qkv()
        with pytest.raises(RuntimeError, match=FWD + r"k must have q's dtype \(Half\); got BFloat16"):
            ext.attention_fwd(q, k.bfloat16(), v, None, False, 0.125)
        with pytest.raises(RuntimeError, match=FWD + r"v must have q's dtype \(Half\); got Float"):
            ext.attention_fwd(q, k, v.float(), None, False, 0.125)

    @pytest.mark.parametrize("D", [32, 96, 256])
    def test_head_dim(self, ext, D):
        q, k, v = _qkv(D=D)
        with pytest.raises(RuntimeError, match=FWD + rf"head_dim \(q.size\(-1\)\) must be 64 or 128; got {D}"):
            ext.attention_fwd(q, k, v, None, False, 0.125)

    def test_head_dims_differ(self, ext):
        q, _, _ = _qkv(D=64)
        _, k, v = _qkv(D=128)
        with pytest.raises(RuntimeError, match=FWD + r"k must have shape \(2, kv_heads, kv_len, 64\) to match q "
                           r"\[2, 4, 8, 64\]; got \[2, 2, 8, 128\]"):
            ext.attention_fwd(q, k, v, None, False, 0.125)

    def test_heads_not_a_multiple(self, ext):
        q, k, v = _qkv(Hq=6, Hkv=4)
        with pytest.raises(RuntimeError, match=FWD + r"q's heads \(6\) must be a multiple of k's and v's heads \(4\)"):
            ext.attention_fwd(q, k, v, None, False, 0.125)

    def test_batch_mismatch(self, ext):
        q, _, _ = _qkv(B=2)
        _, k, v = _qkv(B=3)
        with pytest.raises(RuntimeError, match=FWD + r"k must have shape \(2, kv_heads, kv_len, 64\)"):
            ext.attention_fwd(q, k, v, None, False, 0.125)

    def test_k_v_shapes_differ(self, ext):
        q, k, v = _qkv()
        with pytest.raises(RuntimeError, match=FWD + r"v must have k's shape \[2, 2, 8, 64\]; got \[2, 2, 9, 64\]"):
            ext.attention_fwd(q, k, torch.randn(2, 2, 9, 64).half(), None, False, 0.125)

    def test_not_4d(self, ext):
        q, k, v = _qkv()
        with pytest.raises(RuntimeError, match=FWD + r"q must be 4-D \(batch, heads, seq_len, head_dim\); "
                           r"got shape \[4, 8, 64\]"):
            ext.attention_fwd(q[0], k, v, None, False, 0.125)
        with pytest.raises(RuntimeError, match=FWD + r"k must be 4-D"):
            ext.attention_fwd(q, k[0], v, None, False, 0.125)

    def test_last_stride(self, ext):
        q, k, v = _qkv()
        qt = torch.randn(2, 4, 64, 8).half().transpose(-1, -2)  # (2, 4, 8, 64) with last stride 8
        with pytest.raises(RuntimeError, match=FWD + r"q must have unit stride in its last dim; got strides "
                           r"\[2048, 512, 1, 8\]"):
            ext.attention_fwd(qt, k, v, None, False, 0.125)

    def test_key_padding_mask(self, ext):
        q, k, v = _qkv(Lk=10)
        with pytest.raises(RuntimeError, match=FWD + r"key_padding_mask must be a bool tensor \(True = attend\); "
                           r"got Float"):
            ext.attention_fwd(q, k, v, torch.ones(2, 10), False, 0.125)
        with pytest.raises(RuntimeError, match=FWD + r"key_padding_mask must have shape \(batch, kv_len\) = "
                           r"\(2, 10\); got \[2, 1, 1, 10\]"):
            ext.attention_fwd(q, k, v, torch.ones(2, 1, 1, 10, dtype=torch.bool), False, 0.125)
        with pytest.raises(RuntimeError, match=FWD + r"key_padding_mask must have shape .*got \[2, 8\]"):
            ext.attention_fwd(q, k, v, torch.ones(2, 8, dtype=torch.bool), False, 0.125)
        # a valid mask on the CPU reaches the device check
        with pytest.raises(RuntimeError, match=FWD + r"q must be a CUDA tensor"):
            ext.attention_fwd(q, k, v, torch.ones(2, 10, dtype=torch.bool), False, 0.125)

    def test_scale_not_finite(self, ext):
        q, k, v = _qkv()
        with pytest.raises(RuntimeError, match=FWD + r"scale must be finite; got nan"):
            ext.attention_fwd(q, k, v, None, False, float("nan"))

    def test_window_and_softcap(self, ext):
        q, k, v = _qkv()
        for name in ("window_left", "window_right"):
            with pytest.raises(RuntimeError, match=FWD + name + r" must be >= 0 \(None = unbounded\); got -1"):
                ext.attention_fwd(q, k, v, None, False, 0.125, **{name: -1})
        for bad, shown in ((-1.0, "-1"), (float("nan"), "nan"), (float("inf"), "inf"), (1e300, r"1e\+300")):
            with pytest.raises(RuntimeError, match=FWD + r"softcap must be 0 \(none\) or a positive finite float32 "
                               r"value; got " + shown):
                ext.attention_fwd(q, k, v, None, False, 0.125, softcap=bad)
        with pytest.raises(RuntimeError, match=FWD + r"scale / softcap must be finite in float32"):
            ext.attention_fwd(q, k, v, None, False, 0.125, softcap=1e-44)
        # valid extras on the CPU reach the device check
        with pytest.raises(RuntimeError, match=FWD + r"q must be a CUDA tensor"):
            ext.attention_fwd(q, k, v, None, True, 0.125, window_left=3, window_right=None, softcap=30.0)


class TestBackwardChecks:
    def test_cpu_tensors(self, ext):
        args = _bwd_args(*_qkv())
        with pytest.raises(RuntimeError, match=BWD + r"q must be a CUDA tensor; got a tensor on cpu"):
            ext.attention_bwd(**args, key_padding_mask=None, is_causal=False, scale=0.125)

    def test_positional(self, ext):
        a = _bwd_args(*_qkv())
        with pytest.raises(RuntimeError, match=BWD + r"q must be a CUDA tensor"):
            ext.attention_bwd(a["do"], a["q"], a["k"], a["v"], a["o"], a["lse"], None, True, 0.125)

    def test_dtype(self, ext):
        args = _bwd_args(*_qkv(dtype=torch.float32))
        with pytest.raises(RuntimeError, match=BWD + r"(do|q) must (have q's dtype|be float16 or bfloat16)"):
            ext.attention_bwd(**args, key_padding_mask=None, is_causal=False, scale=0.125)
        args = _bwd_args(*_qkv())
        args["do"] = args["do"].bfloat16()
        with pytest.raises(RuntimeError, match=BWD + r"do must have q's dtype \(Half\); got BFloat16"):
            ext.attention_bwd(**args, key_padding_mask=None, is_causal=False, scale=0.125)
        args = _bwd_args(*_qkv())
        args["o"] = args["o"].float()
        with pytest.raises(RuntimeError, match=BWD + r"o must have q's dtype \(Half\); got Float"):
            ext.attention_bwd(**args, key_padding_mask=None, is_causal=False, scale=0.125)

    def test_do_o_shapes(self, ext):
        args = _bwd_args(*_qkv())
        args["do"] = args["do"][:, :, :5]
        with pytest.raises(RuntimeError, match=BWD + r"do must have shape \[2, 4, 8, 64\]; got \[2, 4, 5, 64\]"):
            ext.attention_bwd(**args, key_padding_mask=None, is_causal=False, scale=0.125)
        args = _bwd_args(*_qkv())
        args["o"] = args["o"][0]
        with pytest.raises(RuntimeError, match=BWD + r"o must be 4-D"):
            ext.attention_bwd(**args, key_padding_mask=None, is_causal=False, scale=0.125)

    def test_lse(self, ext):
        args = _bwd_args(*_qkv())
        args["lse"] = args["lse"].half()
        with pytest.raises(RuntimeError, match=BWD + r"lse must be float32; got Half"):
            ext.attention_bwd(**args, key_padding_mask=None, is_causal=False, scale=0.125)
        args["lse"] = torch.zeros(2, 4, 9)
        with pytest.raises(RuntimeError, match=BWD + r"lse must have shape \[2, 4, 8\]; got \[2, 4, 9\]"):
            ext.attention_bwd(**args, key_padding_mask=None, is_causal=False, scale=0.125)
        args["lse"] = torch.zeros(2, 8, 4).transpose(1, 2)
        with pytest.raises(RuntimeError, match=BWD + r"lse must be contiguous"):
            ext.attention_bwd(**args, key_padding_mask=None, is_causal=False, scale=0.125)

    def test_head_dim_and_heads(self, ext):
        args = _bwd_args(*_qkv(D=96))
        with pytest.raises(RuntimeError, match=BWD + r"head_dim \(q.size\(-1\)\) must be 64 or 128; got 96"):
            ext.attention_bwd(**args, key_padding_mask=None, is_causal=False, scale=0.125)
        args = _bwd_args(*_qkv(Hq=3, Hkv=2))
        with pytest.raises(RuntimeError, match=BWD + r"q's heads \(3\) must be a multiple of k's and v's heads \(2\)"):
            ext.attention_bwd(**args, key_padding_mask=None, is_causal=False, scale=0.125)

    def test_key_padding_mask(self, ext):
        args = _bwd_args(*_qkv())
        with pytest.raises(RuntimeError, match=BWD + r"key_padding_mask must be a bool tensor"):
            ext.attention_bwd(**args, key_padding_mask=torch.ones(2, 8, dtype=torch.int64), is_causal=False,
                              scale=0.125)

    def test_window_and_softcap(self, ext):
        args = _bwd_args(*_qkv())
        with pytest.raises(RuntimeError, match=BWD + r"window_right must be >= 0 \(None = unbounded\); got -5"):
            ext.attention_bwd(**args, key_padding_mask=None, is_causal=False, scale=0.125, window_right=-5)
        with pytest.raises(RuntimeError, match=BWD + r"softcap must be 0 \(none\) or a positive finite"):
            ext.attention_bwd(**args, key_padding_mask=None, is_causal=False, scale=0.125, softcap=-2.0)
        with pytest.raises(RuntimeError, match=BWD + r"q must be a CUDA tensor"):
            ext.attention_bwd(**args, key_padding_mask=None, is_causal=False, scale=0.125, window_left=0,
                              window_right=0, softcap=1.0)


def test_cuda_backend_declines_the_extras_it_lacks():
    """window and softcap are the CUDA kernels' own; alibi_slopes, sinks and varlen each get a reason."""
    from bigmodel.backends.cuda import CudaBackend
    from bigmodel.kernels.limits import AttentionExtras
    q = torch.zeros(1, 2, 8, 64, dtype=torch.float16)
    backend = CudaBackend()
    assert backend.attention_reasons(q, q, q, extras=AttentionExtras(window_left=3, window_right=None,
                                                                     softcap=2.0)) == []
    slopes = torch.ones(2)
    cu = torch.tensor([0, 8], dtype=torch.int32)
    reasons = backend.attention_reasons(q, q, q, is_causal=True, extras=AttentionExtras(
        window_left=3, alibi_slopes=slopes, sinks=slopes, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=8,
        max_seqlen_k=8))
    assert reasons == [f"{name}: not in the CUDA attention kernels; use triton"
                       for name in ("alibi_slopes", "sinks", "varlen")]


# ================================================================================ GPU numerics
def _mask(B, Lq, Lk, kpm, causal, device, window=None):
    """The (B, 1, Lq, Lk) bool mask (True = attend) the kernel implements; window (left, right), None = unbounded
    side: query i sees key j only if i - left <= j <= i + right (top-left aligned, as causal)."""
    m = torch.ones(B, 1, Lq, Lk, dtype=torch.bool, device=device)
    if kpm is not None:
        m = m & kpm[:, None, None, :]
    if causal:
        m = m & torch.ones(Lq, Lk, dtype=torch.bool, device=device).tril()
    if window is not None:
        rel = torch.arange(Lk, device=device)[None, :] - torch.arange(Lq, device=device)[:, None]  # j - i
        left, right = window
        if left is not None:
            m = m & (rel >= -left)
        if right is not None:
            m = m & (rel <= right)
    return m


def _scores(q, k, scale, softcap):
    """scale * q k^T, then softcap c: c * tanh(s / c), in q's dtype (k already repeated over the GQA group)."""
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    return s if softcap is None else softcap * torch.tanh(s / softcap)


def _sdpa(q, k, v, kpm, causal, scale, window=None, softcap=None):
    """F.scaled_dot_product_attention with GQA by repeat_interleave (softcap: the eager composition matmul, tanh,
    mask, softmax, matmul); rows with no visible key give 0 (and get zero gradients), as the contract says (SDPA
    itself would give NaN there)."""
    group = q.size(1) // k.size(1)
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    if kpm is None and window is None and softcap is None:  # no fully masked rows: SDPA's fastest kernel
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    mask = _mask(q.size(0), q.size(2), k.size(2), kpm, causal, q.device, window)
    valid = mask.any(-1, keepdim=True)
    if softcap is None:
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | ~valid, scale=scale)
    else:
        s = _scores(q, k, scale, softcap).masked_fill(~(mask | ~valid), float("-inf"))
        o = torch.matmul(torch.softmax(s, dim=-1), v)
    return o * valid.to(o.dtype)


def _lse64(q, k, kpm, causal, scale, window=None, softcap=None):
    """Natural-log LSE in fp64, +inf for rows with no visible key."""
    group = q.size(1) // k.size(1)
    k = k.double().repeat_interleave(group, dim=1)
    s = _scores(q.double(), k, scale, softcap)
    s = s.masked_fill(~_mask(q.size(0), q.size(2), k.size(2), kpm, causal, q.device, window), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    return torch.where(torch.isneginf(lse), torch.full_like(lse, float("inf")), lse)


def _reference(q, k, v, do, kpm, causal, scale, window=None, softcap=None):
    """{name: (ref64, torch_lowp)} for o, dq, dk, dv, plus "lse": ref64."""
    out = {}
    for which in ("ref64", "lowp"):
        cast = (lambda t: t.detach().double()) if which == "ref64" else (lambda t: t.detach().clone())
        leaves = [cast(t).requires_grad_(True) for t in (q, k, v)]
        o = _sdpa(*leaves, kpm, causal, scale, window, softcap)
        o.backward(cast(do))
        out[which] = [o.detach()] + [t.grad for t in leaves]
    res = {name: (r, lp) for name, r, lp in zip(("o", "dq", "dk", "dv"), out["ref64"], out["lowp"])}
    res["lse"] = _lse64(q, k, kpm, causal, scale, window, softcap)
    return res


def _run(ext, q, k, v, do, kpm, causal, scale, window=None, softcap=None):
    if window is None and softcap is None:  # the dense call, without the extras' arguments
        extras = ()
    else:
        extras = (*(window if window is not None else (None, None)), softcap or 0.0)
    o, lse = ext.attention_fwd(q, k, v, kpm, causal, scale, *extras)
    dq, dk, dv = ext.attention_bwd(do, q, k, v, o, lse, kpm, causal, scale, *extras)
    return {"o": o, "lse": lse, "dq": dq, "dk": dk, "dv": dv}


def _inputs(B, Hq, Hkv, Lq, Lk, D, dtype, layout="contiguous"):
    """q, k, v, do on the GPU. layout: "contiguous"; "blhd" = (B, L, H, D) storage viewed as (B, H, L, D);
    "misaligned" = rows of D + 1 elements starting one element in (no 16-byte vector loads possible)."""
    def make(H, L):
        if layout == "contiguous":
            return torch.randn(B, H, L, D, device="cuda").to(dtype)
        if layout == "blhd":
            return torch.randn(B, L, H, D, device="cuda").to(dtype).transpose(1, 2)
        return torch.randn(B, H, L, D + 1, device="cuda").to(dtype)[..., 1:]
    q, k, v, do = make(Hq, Lq), make(Hkv, Lk), make(Hkv, Lk), make(Hq, Lq)
    if layout != "contiguous":
        assert not q.is_contiguous() and q.stride(-1) == 1
    return q, k, v, do


def _check(ext, q, k, v, do, kpm, causal, scale=None, window=None, softcap=None):
    D = q.size(-1)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    got = _run(ext, q, k, v, do, kpm, causal, scale, window, softcap)
    ref = _reference(q, k, v, do, kpm, causal, scale, window, softcap)
    B, Hq, Lq, _ = q.shape
    Hkv, Lk = k.size(1), k.size(2)
    assert got["o"].shape == (B, Hq, Lq, D) and got["o"].dtype == q.dtype and got["o"].is_contiguous()
    assert got["lse"].shape == (B, Hq, Lq) and got["lse"].dtype == torch.float32 and got["lse"].is_contiguous()
    for name, shape in (("dq", (B, Hq, Lq, D)), ("dk", (B, Hkv, Lk, D)), ("dv", (B, Hkv, Lk, D))):
        assert got[name].shape == shape and got[name].dtype == q.dtype and got[name].is_contiguous(), name
    for name in ("o", "dq", "dk", "dv"):
        assert not torch.isnan(got[name]).any(), f"{name} has NaN"
        ref64, lowp = ref[name]
        if name != "o" and not ref64.any():
            # Exactly zero in exact arithmetic, e.g. dq and dk when every row sees a single key (P = 1, so
            # dS = P (dP - delta) = 0): PyTorch and the kernel both return fp32 rounding noise of dP - delta
            # there, and comparing noise with noise is meaningless. Bound the noise instead.
            err = got[name].double().abs().max().item() if got[name].numel() else 0.0
            assert err <= 1e-4, f"{name}: exact answer is 0, kernel gives up to {err:.3e}"
            continue
        assert_close_by_rule(name, got[name], ref64, lowp, "output" if name == "o" else "grad")
    lse, lse64 = got["lse"], ref["lse"]
    inf = torch.isinf(lse64)
    assert torch.equal(torch.isposinf(lse), inf), "lse must be +inf exactly on the rows with no visible key"
    if (~inf).any():
        assert_close_by_rule("lse", lse[~inf], lse64[~inf], kind="output")
    return got, ref


DTYPES = [pytest.param(torch.float16, id="fp16"), pytest.param(torch.bfloat16, id="bf16")]
HEAD_DIMS = [pytest.param(64, id="d64"), pytest.param(128, id="d128")]
CAUSAL = [pytest.param(False, id="full"), pytest.param(True, id="causal")]
# (B, Hq, Hkv, Lq, Lk)
SHAPES = [
    (2, 4, 4, 128, 128),
    (1, 8, 2, 77, 77),      # GQA, tails
    (2, 8, 1, 1, 1),        # MQA, one token
    (1, 4, 2, 1000, 1000),  # tails at 1000
    (1, 8, 2, 77, 300),     # Lq < Lk
    (1, 4, 1, 300, 77),     # Lq > Lk (causal: rows past Lk see every key)
    (1, 2, 1, 4096, 4096),
]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", HEAD_DIMS)
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_attention_vs_fp64(ext, shape, causal, D, dtype):
    B, Hq, Hkv, Lq, Lk = shape
    _check(ext, *_inputs(B, Hq, Hkv, Lq, Lk, D, dtype), None, causal)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", HEAD_DIMS)
@pytest.mark.parametrize("causal", CAUSAL)
def test_attention_key_padding(ext, causal, D, dtype):
    """Batch 1 fully padded (o = 0, lse = +inf, zero gradients for its q, k, v); batch 2 pads its first 10 keys
    (causal: its first 10 rows see no key at all) and some later ones; batch 0 pads a random third."""
    B, Hq, Hkv, Lq, Lk = 3, 8, 2, 77, 150
    q, k, v, do = _inputs(B, Hq, Hkv, Lq, Lk, D, dtype)
    kpm = torch.rand(B, Lk, device="cuda") > 0.33
    kpm[1] = False
    kpm[2] = True
    kpm[2, :10] = False
    kpm[2, 100:120] = False
    got, _ = _check(ext, q, k, v, do, kpm, causal)
    assert torch.all(got["o"][1] == 0) and torch.all(torch.isposinf(got["lse"][1]))
    assert torch.all(got["dq"][1] == 0) and torch.all(got["dk"][1] == 0) and torch.all(got["dv"][1] == 0)
    for b in range(B):  # padded keys get no gradient
        assert torch.all(got["dk"][b][:, ~kpm[b]] == 0) and torch.all(got["dv"][b][:, ~kpm[b]] == 0)
    if causal:
        assert torch.all(got["o"][2, :, :10] == 0) and torch.all(torch.isposinf(got["lse"][2, :, :10]))
        assert torch.all(got["dq"][2, :, :10] == 0)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", HEAD_DIMS)
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("layout", ["blhd", "misaligned"])
def test_attention_strided_inputs(ext, layout, causal, D, dtype):
    q, k, v, do = _inputs(2, 8, 2, 200, 130, D, dtype, layout)
    kpm = torch.rand(2, 130, device="cuda") > 0.2
    kpm = torch.stack([kpm, kpm], -1)[..., 0]  # a (2, 130) view with strides (260, 2)
    assert kpm.stride() == (260, 2)
    _check(ext, q, k, v, do, kpm, causal)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_scale(ext, dtype):
    """A non-default softmax scale (large: peaky softmax) and a negative one."""
    for scale in (0.5, -0.1):
        _check(ext, *_inputs(1, 4, 2, 130, 190, 64, dtype), None, False, scale=scale)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", HEAD_DIMS)
@pytest.mark.parametrize("causal", CAUSAL)
def test_attention_bitwise_deterministic(ext, causal, D, dtype):
    q, k, v, do = _inputs(2, 8, 2, 1000, 1000, D, dtype)
    kpm = torch.rand(2, 1000, device="cuda") > 0.1
    runs = []
    for _ in range(2):
        runs.append(_run(ext, q, k, v, do, kpm, causal, 1.0 / math.sqrt(D)))
        torch.cuda.synchronize()
    for name in runs[0]:
        assert torch.equal(runs[0][name], runs[1][name]), f"{name} differs between two identical runs"


@pytest.mark.cuda
def test_attention_empty_and_no_keys(ext):
    q, k, v, do = _inputs(2, 4, 2, 0, 5, 64, torch.float16)
    o, lse = ext.attention_fwd(q, k, v, None, False, 0.125)
    assert o.shape == (2, 4, 0, 64) and lse.shape == (2, 4, 0)
    dq, dk, dv = ext.attention_bwd(do, q, k, v, o, lse, None, False, 0.125)
    assert dq.shape == (2, 4, 0, 64) and torch.all(dk == 0) and torch.all(dv == 0)
    q, k, v, do = _inputs(2, 4, 2, 7, 0, 64, torch.bfloat16)  # no keys at all: every row fully masked
    o, lse = ext.attention_fwd(q, k, v, None, True, 0.125)
    assert torch.all(o == 0) and torch.all(torch.isposinf(lse))
    dq, dk, dv = ext.attention_bwd(do, q, k, v, o, lse, None, True, 0.125)
    assert torch.all(dq == 0) and dk.shape == (2, 2, 0, 64) and dv.shape == (2, 2, 0, 64)


# ================================================================================ issue 15: window, softcap (GPU)
# (shape (B, Hq, Hkv, Lq, Lk), window (left, right)); None = unbounded side. Windows narrower and wider than the
# tiles (64 / 128 rows, 32 / 64 keys), so that whole key tiles are skipped by the forward and both backward loops
# and edge tiles are masked; Lq > Lk with a left bound: the last rows see no key (o = 0, lse = +inf, zero dq).
WINDOW_CASES = [((1, 8, 2, 1000, 1000), (37, 90)), ((1, 8, 2, 1000, 1000), (256, 256)),
                ((1, 4, 1, 300, 777), (None, 20)), ((1, 4, 1, 300, 777), (0, 0)),
                ((2, 4, 4, 777, 300), (300, None)), ((2, 4, 4, 777, 300), (64, 3))]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", HEAD_DIMS)
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("shape,window", WINDOW_CASES,
                         ids=["x".join(map(str, sh)) + f"-w{w[0]}-{w[1]}" for sh, w in WINDOW_CASES])
def test_attention_window_vs_fp64(ext, shape, window, causal, D, dtype):
    B, Hq, Hkv, Lq, Lk = shape
    _check(ext, *_inputs(B, Hq, Hkv, Lq, Lk, D, dtype), None, causal, window=window)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", HEAD_DIMS)
@pytest.mark.parametrize("causal", CAUSAL)
def test_attention_window_with_key_padding(ext, causal, D, dtype):
    """Batch 1 fully padded; batch 2 pads the keys 40..99, so that its rows ~ 60..80 see nothing in a (20, 20)
    window; strided (B, L, H, D) inputs."""
    B, Lq, Lk = 3, 200, 150
    q, k, v, do = _inputs(B, 8, 2, Lq, Lk, D, dtype, "blhd")
    kpm = torch.rand(B, Lk, device="cuda") > 0.3
    kpm[1] = False
    kpm[2] = True
    kpm[2, 40:100] = False
    got, ref = _check(ext, q, k, v, do, kpm, causal, window=(20, 20))
    assert torch.all(got["o"][1] == 0) and torch.all(got["dk"][1] == 0) and torch.all(got["dv"][1] == 0)
    dead = torch.isinf(ref["lse"])
    assert dead[2, :, 70].all(), "the test's window should leave row 70 of batch 2 without keys"
    assert torch.all(got["o"][dead] == 0) and torch.all(got["dq"][dead] == 0)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", HEAD_DIMS)
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("softcap,scale_mul,window", [(50.0, 1.0, None), (5.0, 4.0, None), (1.0, 2.0, None),
                                                      (50.0, 1.0, (255, 0))], ids=["c50", "c5-x4", "c1-x2", "c50-w"])
def test_attention_softcap_vs_fp64(ext, window, softcap, scale_mul, causal, D, dtype):
    """scale_mul > 1 gives scores large enough for the cap to bite (tanh saturates); c50-w: Gemma 2's local
    layers (causal: a sliding window of 256, window=(255, 0)) with key padding."""
    q, k, v, do = _inputs(2, 8, 2, 500, 700, D, dtype)
    kpm = None if window is None else torch.rand(2, 700, device="cuda") > 0.1
    _check(ext, q, k, v, do, kpm, causal, scale=scale_mul / math.sqrt(D), window=window, softcap=softcap)


@pytest.mark.cuda
@pytest.mark.parametrize("D", HEAD_DIMS)
@pytest.mark.parametrize("causal", CAUSAL)
def test_attention_unbounded_window_is_the_dense_kernel(ext, causal, D):
    """A window no row reaches past (None sides, huge or just covering the sequence) and softcap 0 give the
    dense kernels' results bit for bit: same tiles, same order, no mask change on any row."""
    q, k, v, do = _inputs(2, 8, 2, 333, 555, D, torch.bfloat16)
    kpm = torch.rand(2, 555, device="cuda") > 0.2
    dense = _run(ext, q, k, v, do, kpm, causal, 0.1)
    for window in ((None, None), (2**40, 2**40), (333, 555)):
        got = _run(ext, q, k, v, do, kpm, causal, 0.1, window=window, softcap=0.0)
        for name in dense:
            assert torch.equal(got[name], dense[name]), f"{name} differs with window {window}"
