"""The Triton attention kernels (bigmodel.kernels.attention) under the CPU interpreter, called directly: forward O
and LSE, and dQ / dK / dV, against F.scaled_dot_product_attention on fp64 inputs with autograd, by DESIGN.md's rule
(tests/numerics.py): fp32 relative error 1e-5 / 1e-4; fp16 at most 2x / 3x plain PyTorch's fp16 error (SDPA in
fp16 on CPU). bf16 is left to the cuda-marked tests (the interpreter's bf16 dot is unreliable).

Fully masked rows follow the kernels' convention (o = 0, lse = +inf, no gradient); the fp64 reference gets them by
unmasking those rows for SDPA, zeroing their dO and their output. Dropout is checked through its keep-mask,
recovered by running the forward with V = identity (Lk <= D): O = Pd I = P * keep / (1 - p)."""
import math

import pytest
import torch
import torch.nn.functional as F

from numerics import REF_FLOOR, assert_close_by_rule, requires_interpreter

pytestmark = requires_interpreter

DTYPES = [torch.float32, torch.float16]


def attention_kernels():
    from bigmodel.kernels import attention
    return attention


# --------------------------------------------------------------------------------------------- helpers
def qkv(B, Hq, Hkv, Lq, Lk, D, dtype, layout="contiguous"):
    """Random q, k, v. layout "blhd": views of (B, L, H, D) tensors (the usual projection output), transposed;
    "padded": rows of a wider last dim, so the row stride (D + 3) breaks 16-byte alignment."""
    def make(H, L):
        if layout == "blhd":
            return torch.randn(B, L, H, D).to(dtype).transpose(1, 2)
        if layout == "padded":
            return torch.randn(B, H, L, D + 3).to(dtype)[..., :D]
        return torch.randn(B, H, L, D).to(dtype)
    return make(Hq, Lq), make(Hkv, Lk), make(Hkv, Lk)


def expand_mask(mask, B, Hq, Lq, Lk):
    """What the ops layer hands the kernels: an expanded (B, Hq, Lq, Lk) view (stride 0 where broadcast)."""
    return None if mask is None else mask.expand(B, Hq, Lq, Lk)


def sdpa(q, k, v, mask, is_causal, scale, do, dead):
    """SDPA with autograd in q's dtype: (o, dq, dk, dv). `dead` (B, Hq, Lq) marks fully masked rows: SDPA sees
    them unmasked, their dO is zeroed (no gradient flows from them) and their output set to 0."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    if mask is not None and dead.any():
        mask = mask.clone()
        mask[dead] = True if mask.dtype == torch.bool else 0.0
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(q.dtype)
    o = F.scaled_dot_product_attention(*leaves, attn_mask=mask, is_causal=is_causal, scale=scale,
                                       enable_gqa=q.shape[1] != k.shape[1])
    o.backward(do.masked_fill(dead[..., None], 0.0))
    return [o.detach().masked_fill(dead[..., None], 0.0)] + [t.grad for t in leaves]


def scores(q, k, mask, is_causal, scale):
    """scale * q k^T + mask (bool False / causal -> -inf), in q's dtype, kv heads repeated for GQA."""
    group = q.shape[1] // k.shape[1]
    s = scale * (q @ k.repeat_interleave(group, dim=1).transpose(-1, -2))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.to(s.dtype)
    if is_causal:
        Lq, Lk = s.shape[-2:]
        s = s.masked_fill(torch.ones(Lq, Lk, dtype=torch.bool).triu(1), float("-inf"))
    return s


def visible_keys(B, Hq, Lq, Lk, mask, is_causal):
    """How many keys each (b, h, i) row sees."""
    visible = torch.ones(B, Hq, Lq, Lk, dtype=torch.bool)
    if mask is not None:
        visible &= mask if mask.dtype == torch.bool else mask > float("-inf")
    if is_causal:
        visible &= torch.ones(Lq, Lk, dtype=torch.bool).tril()
    return visible.sum(-1)


def check_attention(q, k, v, mask=None, is_causal=False, do=None, scale=None):
    """Run the kernels forward + backward and check o, lse, dq, dk, dv by the rule. Returns the kernels' results."""
    kernels = attention_kernels()
    B, Hq, Lq, D = q.shape
    Lk = k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    if do is None:
        do = torch.randn(B, Hq, Lq, D).to(q.dtype)
    o, lse = kernels.attention_fwd(q, k, v, mask, is_causal, scale, 0.0, 0)
    dq, dk, dv = kernels.attention_bwd(do, q, k, v, o, lse, mask, is_causal, scale, 0.0, 0)
    assert o.shape == q.shape and o.dtype == q.dtype and o.is_contiguous()
    assert lse.shape == (B, Hq, Lq) and lse.dtype == torch.float32
    for grad, like in ((dq, q), (dk, k), (dv, v)):
        assert grad.shape == like.shape and grad.dtype == like.dtype and grad.is_contiguous()

    n_visible = visible_keys(B, Hq, Lq, Lk, mask, is_causal)
    dead = n_visible == 0
    ref64 = sdpa(q.double(), k.double(), v.double(), mask, is_causal, scale, do.double(), dead)
    lowp = sdpa(q, k, v, mask, is_causal, scale, do, dead) if q.dtype != torch.float32 else [None] * 4
    for name, ours, ref, torch_lowp in zip(("o", "dq", "dk", "dv"), (o, dq, dk, dv), ref64, lowp):
        # When no row sees more than one key, P is 0 or 1 and dS = P * (dP - delta) is exactly 0, so are dQ and
        # dK: rounding leaves ~1e-7 of the O(1) terms that cancel; measure against their size, not the 1e-3 floor.
        floor = 1.0 if name in ("dq", "dk") and n_visible.max() <= 1 else REF_FLOOR
        assert_close_by_rule(name, ours, ref, torch_lowp, "output" if name == "o" else "grad", floor=floor)

    live = ~dead
    lse_ref = torch.logsumexp(scores(q.double(), k.double(), mask, is_causal, scale), -1)
    lse_lowp = torch.logsumexp(scores(q, k, mask, is_causal, scale), -1) if q.dtype != torch.float32 else None
    assert_close_by_rule("lse", lse[live], lse_ref[live], None if lse_lowp is None else lse_lowp[live].float())
    assert torch.isinf(lse[dead]).all() and (lse[dead] > 0).all(), "fully masked rows must have lse = +inf"
    assert (o[dead] == 0).all() and (dq[dead] == 0).all(), "fully masked rows must give o = 0 and dq = 0"
    return o, lse, dq, dk, dv


# --------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize("B,Hq,Hkv,Lq,Lk,D,causal", [
    (1, 1, 1, 1, 1, 16, False),        # one query, one key
    (1, 2, 1, 1, 33, 64, True),        # one query row, causal: it sees key 0 only
    (1, 2, 2, 17, 17, 40, False),      # non-pow2 head dim, partial tiles
    (1, 2, 2, 64, 64, 16, True),
    (1, 2, 1, 127, 127, 64, True),     # MQA
    (1, 2, 2, 128, 128, 80, False),    # exact multiple of every tile, D padded to 128
    (1, 1, 1, 129, 129, 128, True),    # one row past a tile
    (2, 2, 2, 17, 129, 64, False),     # Lq < Lk
    (1, 2, 2, 129, 17, 64, True),      # Lq > Lk, causal: rows past Lk see every key
    (1, 2, 2, 33, 100, 40, True),      # Lq < Lk, causal: top-left aligned
    (2, 4, 2, 65, 47, 64, False),      # GQA, 2 query heads per kv head
    (1, 4, 1, 47, 65, 80, True),       # MQA, causal, non-pow2 head dim
], ids=lambda v: str(v))
def test_attention_shapes(B, Hq, Hkv, Lq, Lk, D, causal, dtype):
    check_attention(*qkv(B, Hq, Hkv, Lq, Lk, D, dtype), is_causal=causal)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize("layout", ["blhd", "padded"])
def test_attention_strided_inputs(layout, dtype):
    """q/k/v as views of (B, L, H, D) or with padded rows (the unaligned path); dO non-contiguous too."""
    B, Hq, Hkv, Lq, Lk, D = 2, 4, 2, 37, 45, 40
    q, k, v = qkv(B, Hq, Hkv, Lq, Lk, D, dtype, layout)
    assert not q.is_contiguous()
    do = torch.randn(B, Lq, Hq, D).to(dtype).transpose(1, 2)
    check_attention(q, k, v, is_causal=True, do=do)


def test_attention_scale_is_used():
    check_attention(*qkv(1, 2, 2, 20, 24, 32, torch.float32), scale=0.37)


@pytest.mark.parametrize("scale", [-0.5, 0.0])
def test_attention_nonpositive_scale(scale):
    """softmax(scale * q k^T) for scale <= 0 too (the kernels need scale > 0; the launchers fold the sign into q).
    SDPA returns NaN for a negative scale (it scales q and k by sqrt(scale)), so the reference is the formula."""
    kernels = attention_kernels()
    q, k, v = qkv(1, 2, 1, 20, 24, 32, torch.float32)
    do = torch.randn(1, 2, 20, 32)
    o, lse = kernels.attention_fwd(q, k, v, None, True, scale, 0.0, 0)
    grads = kernels.attention_bwd(do, q, k, v, o, lse, None, True, scale, 0.0, 0)
    ref = math_reference(q, k, v, None, True, scale, do)
    for name, ours, ref64 in zip(("o", "dq", "dk", "dv"), (o, *grads), ref):
        assert_close_by_rule(name, ours, ref64, kind="output" if name == "o" else "grad")


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize("D", [96, 160, 256])
def test_attention_large_head_dims(D, dtype):
    check_attention(*qkv(1, 2, 1, 35, 29, D, dtype), is_causal=D == 160)


def test_rows_aligned():
    """The ALIGNED promise (16-byte row starts) holds for ordinary layouts and is refused for padded rows."""
    rows_aligned = attention_kernels().rows_aligned
    q, k, v = qkv(2, 4, 2, 9, 9, 40, torch.float16, "blhd")
    assert rows_aligned(q, k, v)
    assert not rows_aligned(*qkv(2, 4, 2, 9, 9, 40, torch.float16, "padded"))


def test_backward_is_deterministic():
    """dK / dV sum the query heads of a GQA group in a fixed order (no atomics): bitwise equal run to run."""
    kernels = attention_kernels()
    q, k, v = qkv(1, 4, 1, 40, 40, 32, torch.float32)
    o, lse = kernels.attention_fwd(q, k, v, None, True, 0.2, 0.0, 0)
    do = torch.randn_like(o)
    first = kernels.attention_bwd(do, q, k, v, o, lse, None, True, 0.2, 0.0, 0)
    second = kernels.attention_bwd(do, q, k, v, o, lse, None, True, 0.2, 0.0, 0)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------- masks
MASK_SHAPES = {"key_padding": lambda B, H, Lq, Lk: (B, 1, 1, Lk), "shared": lambda B, H, Lq, Lk: (1, 1, Lq, Lk),
               "full": lambda B, H, Lq, Lk: (B, H, Lq, Lk)}


def random_mask(kind, shape, dtype):
    if kind == "bool":
        mask = torch.rand(shape) > 0.3
        mask[..., 0] = True  # every row keeps a visible key (fully masked rows have their own test)
        return mask
    mask = torch.randn(shape).to(dtype)
    return mask.masked_fill(torch.rand(shape) < 0.2, float("-inf")).index_fill(-1, torch.tensor([0]), 0.5)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("shape", list(MASK_SHAPES))
def test_attention_masks(shape, kind, dtype):
    B, Hq, Hkv, Lq, Lk, D = 2, 4, 2, 40, 50, 32
    mask = random_mask(kind, MASK_SHAPES[shape](B, Hq, Lq, Lk), dtype)
    check_attention(*qkv(B, Hq, Hkv, Lq, Lk, D, dtype), mask=expand_mask(mask, B, Hq, Lq, Lk))


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_attention_fully_masked_rows(kind, dtype):
    """Rows with every key masked: o = 0, lse = +inf, no gradient from them, never NaN; other rows exact."""
    B, Hq, Hkv, Lq, Lk, D = 2, 2, 1, 33, 40, 32
    mask = random_mask(kind, (B, Hq, Lq, Lk), dtype)
    hidden = False if kind == "bool" else float("-inf")
    mask[0, 0, 3] = hidden
    mask[1, :, 20:] = hidden  # a whole query tile and beyond, in both heads of the kv group
    o, lse, dq, dk, dv = check_attention(*qkv(B, Hq, Hkv, Lq, Lk, D, dtype), mask=mask)
    for t in (o, lse, dq, dk, dv):
        assert not torch.isnan(t).any()
    assert torch.isinf(lse[1, :, 20:]).all() and (o[1, :, 20:] == 0).all()


# --------------------------------------------------------------------------------------------- dropout
def keep_mask(q, k, mask, is_causal, p, seed):
    """The kernels' keep-mask for (q, k, seed), read off a forward with V = identity (needs Lk <= D):
    O[..., :Lk] = P * keep / (1 - p), and P > 0 wherever a key is visible."""
    B, Hkv, Lk, D = k.shape
    assert Lk <= D
    identity = torch.eye(Lk, D, dtype=q.dtype).expand(B, Hkv, Lk, D)
    o, _ = attention_kernels().attention_fwd(q, k, identity, mask, is_causal, 1.0 / math.sqrt(D), p, seed)
    return o[..., :Lk] != 0


def math_reference(q, k, v, mask, is_causal, scale, do, keep=True, p=0.0):
    """O = (softmax(S) * keep / (1 - p)) V in fp64 with autograd, from the formula: (o, dq, dk, dv)."""
    leaves = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    group = q.shape[1] // k.shape[1]
    probs = torch.softmax(scores(leaves[0], leaves[1], mask, is_causal, scale), -1) * keep / (1 - p)
    o = probs @ leaves[2].repeat_interleave(group, dim=1)
    o.backward(do.double())
    return [o.detach()] + [t.grad for t in leaves]


def test_dropout_rate_and_seed():
    B, Hq, Hkv, L, D, p = 2, 2, 1, 64, 64, 0.3
    q, k, _ = qkv(B, Hq, Hkv, L, L, D, torch.float32)
    keep = keep_mask(q, k, None, False, p, seed=1234)
    n = keep.numel()
    dropped = 1.0 - keep.sum().item() / n
    assert abs(dropped - p) < 4 * math.sqrt(p * (1 - p) / n), f"drop rate {dropped:.4f}, expected {p}"
    assert not torch.equal(keep[0, 0], keep[0, 1]) and not torch.equal(keep[0, 0], keep[1, 0]), \
        "every (batch, head) needs its own mask"
    assert torch.equal(keep, keep_mask(q, k, None, False, p, seed=1234)), "same seed, different mask"
    other = keep_mask(q, k, None, False, p, seed=1235)
    assert (other != keep).float().mean() > 0.2, "a different seed must give a different mask"


@pytest.mark.parametrize("case", ["plain", "causal_gqa", "bool_mask"])
def test_dropout_backward_matches_forward(case):
    """The kernels' O and gradients for random V equal an fp64 reference applying the keep-mask read off the
    forward: the backward regenerates exactly the forward's mask."""
    B, Hq, Hkv, Lq, Lk, D, p, seed = 1, 2, 2, 40, 48, 64, 0.25, 77
    is_causal, mask = False, None
    if case == "causal_gqa":
        Hq, Hkv, is_causal = 4, 2, True
    elif case == "bool_mask":
        mask = expand_mask(random_mask("bool", (B, 1, Lq, Lk), torch.float32), B, Hq, Lq, Lk)
    q, k, v = qkv(B, Hq, Hkv, Lq, Lk, D, torch.float32)
    scale = 1.0 / math.sqrt(D)
    keep = keep_mask(q, k, mask, is_causal, p, seed)
    kernels = attention_kernels()
    do = torch.randn(B, Hq, Lq, D)
    o, lse = kernels.attention_fwd(q, k, v, mask, is_causal, scale, p, seed)
    dq, dk, dv = kernels.attention_bwd(do, q, k, v, o, lse, mask, is_causal, scale, p, seed)
    ref = math_reference(q, k, v, mask, is_causal, scale, do, keep, p)
    for name, ours, ref64 in zip(("o", "dq", "dk", "dv"), (o, dq, dk, dv), ref):
        assert_close_by_rule(name, ours, ref64, kind="output" if name == "o" else "grad")
    lse_ref = torch.logsumexp(scores(q.double(), k.double(), mask, is_causal, scale), -1)
    assert_close_by_rule("lse (of the un-dropped softmax)", lse, lse_ref)
    o_again, _ = kernels.attention_fwd(q, k, v, mask, is_causal, scale, p, seed)
    assert torch.equal(o, o_again), "same seed must give the same output"


# --------------------------------------------------------------------------------------------- launch configs
@pytest.mark.parametrize("kind", ["fwd", "dq", "dkdv"])
def test_autotune_prune_picks_fitting_configs(kind, monkeypatch):
    """The GPU autotuner's pruning, exercised on CPU with a stand-in device: every variant and head dim gets at
    least one config, all from the variant's table, none beyond the device's shared memory."""
    kernels = attention_kernels()
    tuned = {"fwd": kernels.launch._FWD_TUNED, "dq": kernels.launch._DQ_TUNED, "dkdv": kernels.launch._DKDV_TUNED}[kind]
    for arch, smem in kernels.SMEM_BYTES.items():
        monkeypatch.setattr(kernels.launch, "_device_arch_and_smem", lambda index, arch=arch, smem=smem: (arch, smem))
        for dtype in (torch.float16, torch.float32):
            for head_dim in (16, 40, 64, 80, 128, 160, 256):
                for causal, mask_kind, dropout, aligned in ((False, 0, False, True), (True, 0, False, True),
                                                            (False, 2, True, True), (True, 0, False, False)):
                    block_d = kernels.next_pow2(max(head_dim, 16))
                    args = dict(BLOCK_D=block_d, HEAD_DIM=head_dim, IS_CAUSAL=causal, MASK_KIND=mask_kind,
                                HAS_DROPOUT=dropout, ALIGNED=aligned)
                    picked = tuned.early_config_prune(tuned.configs, {"Q": torch.empty(1, dtype=dtype)}, **args)
                    variant = kernels.config_variant(dtype, causal, mask_kind != 0, dropout, aligned)
                    allowed = kernels.candidate_configs(kind, block_d, variant, dtype, arch, smem)
                    assert picked and {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)
                                       for c in picked} == set(allowed)
                    elt = torch.empty((), dtype=dtype).element_size()
                    assert all(kernels.shared_memory_estimate(kind, c, block_d, elt, variant) <= smem for c in allowed)
