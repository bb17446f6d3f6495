"""bigmodel.ops.attention_decode (issue 15 item 3): a few new queries against a dense or paged KV cache, on the
reference and on the Triton split-KV kernel (interpreter), fp32 and fp16, against an fp64 oracle on fresh random
inputs: the cache is read back key by key in explicit loops (page block_table[b, j // block_size], row
j % block_size) and tests/attention_naive.py's packed attention runs on it, bottom-right aligned per sequence.
Cache slots past each sequence's length and pages nobody owns hold NaN, and block-table entries past a sequence's
pages hold -1: reading any of them would show. Plus auto / named-backend dispatch, torch.compile, and bad input."""
import math

import pytest
import torch

import bigmodel
from attention_naive import naive_attention_varlen, plain_attention_varlen
from numerics import assert_close_by_rule, requires_interpreter

BACKENDS = ["reference", pytest.param("triton", marks=requires_interpreter)]
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")]


def make_case(B, Lq, Hq, Hkv, D, seqlens, block_size, dtype, spare_blocks=2):
    """q (B, Lq, Hq, D), the caches, cache_seqlens and block_table (None: dense). Physical pages are handed out in a
    random order (the table is out of order); slots past a length and unowned pages are NaN."""
    seqlens = torch.tensor(seqlens, dtype=torch.int32)
    q = torch.randn(B, Lq, Hq, D).to(dtype)
    if block_size is None:
        shape = (B, int(seqlens.max()) + 5, Hkv, D)
        k, v = torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)
        for b in range(B):
            k[b, int(seqlens[b]):] = math.nan
            v[b, int(seqlens[b]):] = math.nan
        return q, k, v, seqlens, None
    blocks = [-(-int(n) // block_size) for n in seqlens]
    num_blocks = sum(blocks) + spare_blocks
    k, v = (torch.randn(num_blocks, block_size, Hkv, D).to(dtype) for _ in range(2))
    table = torch.full((B, max(blocks) + 1), -1, dtype=torch.int32)  # a spare column: never read
    physical = torch.randperm(num_blocks).tolist()
    stored = torch.zeros(num_blocks, block_size, dtype=torch.bool)  # the slots holding some sequence's key
    for b in range(B):
        for j in range(blocks[b]):
            table[b, j] = physical.pop()
            stored[int(table[b, j]), :int(seqlens[b]) - j * block_size] = True
    k[~stored], v[~stored] = math.nan, math.nan
    return q, k, v, seqlens, table


def cache_rows(cache, table, b, n):
    """Sequence b's first n keys, (n, Hkv, D): position p from page table[b, p // block_size], row
    p % block_size (per position, not per block as the backends read them)."""
    pos = torch.arange(n, device=cache.device)
    if table is None:
        return cache[b, pos]
    bs = cache.size(1)
    return cache[table[b].long()[pos // bs], pos % bs]


def packed(q, k, v, seqlens, table):
    """The case in the varlen layout: (total_q, Hq, D), (total_k, Hkv, D) x 2, cu_seqlens_q, cu_seqlens_k."""
    B, Lq = q.shape[:2]
    ks = [cache_rows(k, table, b, int(seqlens[b])) for b in range(B)]
    vs = [cache_rows(v, table, b, int(seqlens[b])) for b in range(B)]
    cu_q = torch.arange(B + 1, dtype=torch.int32) * Lq
    cu_k = torch.zeros(B + 1, dtype=torch.int32)
    cu_k[1:] = torch.cumsum(seqlens, 0)
    return q.reshape(B * Lq, *q.shape[2:]), torch.cat(ks), torch.cat(vs), cu_q, cu_k


def oracle(q, k, v, seqlens, table, **extras):
    """(o (B, Lq, Hq, D) fp64, lse (B, Hq, Lq) fp64, plain PyTorch's o in q's dtype)."""
    B, Lq, Hq, D = q.shape
    qp, kp, vp, cu_q, cu_k = packed(q, k, v, seqlens, table)
    o64, lse64 = naive_attention_varlen(qp, kp, vp, cu_q, cu_k, **extras)
    lowp = plain_attention_varlen(qp, kp, vp, cu_q, cu_k, **extras)
    return o64.view(B, Lq, Hq, D), lse64.view(Hq, B, Lq).transpose(0, 1), lowp.view(B, Lq, Hq, D)


def check(out, q, k, v, seqlens, table, **extras):
    o64, _, lowp = oracle(q, k, v, seqlens, table, **extras)
    assert_close_by_rule("out", out, o64, lowp if out.dtype != torch.float32 else None)


EXTRAS = {
    "plain": dict(),
    "causal": dict(is_causal=True),
    "window-causal": dict(is_causal=True, window=(9, None)),
    "window-both-sides": dict(window=(12, 2)),
    "softcap": dict(softcap=1.5),
    "sinks": dict(sinks="random"),
    "all": dict(is_causal=True, window=(20, 0), softcap=2.0, sinks="random"),
}


def _extras(name, Hq):
    kw = dict(EXTRAS[name])
    if kw.get("sinks") == "random":
        kw["sinks"] = torch.randn(Hq) * 2
    return kw


# (B, Lq, Hq, Hkv, D, seqlens, block_size)
SHAPES = {
    "dense-1q": (2, 1, 4, 4, 32, [5, 77], None),
    "paged16-1q-mqa": (3, 1, 4, 1, 32, [16, 40, 97], 16),
    "paged64-4q-gqa": (2, 4, 8, 2, 64, [70, 130], 64),
    "paged16-4q-short": (2, 4, 4, 2, 40, [4, 50], 16),
    "dense-4q-gqa": (2, 4, 4, 2, 16, [33, 64], None),
    "paged48-2q": (1, 2, 2, 1, 32, [100], 48),
    "paged16-rowblocks": (1, 5, 16, 1, 16, [45], 16),  # 16 heads x 5 rows = 80 > 64: two row blocks
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_decode_matches_fp64(shape, backend, dtype):
    B, Lq, Hq, Hkv, D, seqlens, bs = SHAPES[shape]
    q, k, v, sl, table = make_case(B, Lq, Hq, Hkv, D, seqlens, bs, dtype)
    with torch.no_grad():
        out = bigmodel.ops.attention_decode(q, k, v, sl, block_table=table, backend=backend)
    assert out.shape == (B, Lq, Hq, D) and out.dtype == dtype and out.is_contiguous()
    check(out, q, k, v, sl, table)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("extras", list(EXTRAS))
@pytest.mark.parametrize("shape", ["paged16-1q-mqa", "paged64-4q-gqa", "dense-4q-gqa"])
def test_decode_extras_match_fp64(shape, extras, backend, dtype):
    B, Lq, Hq, Hkv, D, seqlens, bs = SHAPES[shape]
    q, k, v, sl, table = make_case(B, Lq, Hq, Hkv, D, seqlens, bs, dtype)
    kw = _extras(extras, Hq)
    with torch.no_grad():
        out = bigmodel.ops.attention_decode(q, k, v, sl, block_table=table, backend=backend, **kw)
    check(out, q, k, v, sl, table, **kw)


@requires_interpreter
@pytest.mark.parametrize("n_splits", [2, 3, 7])
@pytest.mark.parametrize("extras", ["plain", "window-both-sides", "all"])
def test_kernel_splits_and_lse(extras, n_splits):
    """The kernel with several splits per sequence (the combine merging them, sinks included) and its lse."""
    from bigmodel.kernels.attention import decode
    B, Lq, Hq, Hkv, D, seqlens, bs = 3, 2, 4, 2, 32, [20, 150, 64], 16
    q, k, v, sl, table = make_case(B, Lq, Hq, Hkv, D, seqlens, bs, torch.float32)
    kw = _extras(extras, Hq)
    sinks = kw.pop("sinks", None)
    scale = 0.3
    o, lse = decode.kvcache_fwd(q, k, v, sl, scale, block_table=table, sinks=sinks, n_splits=n_splits, **kw)
    o64, lse64, _ = oracle(q, k, v, sl, table, scale=scale, sinks=sinks, **kw)
    assert_close_by_rule("out", o, o64)
    finite = torch.isfinite(lse64)
    assert torch.equal(torch.isfinite(lse), finite)
    torch.testing.assert_close(lse.double()[finite], lse64[finite], rtol=0, atol=1e-5)


@requires_interpreter
@pytest.mark.parametrize("sinks", [False, True])
def test_combine_merges_more_splits_than_one_step(sinks):
    """96 splits: the combine kernel merges them COMBINE_SPLITS (64) at a time."""
    from bigmodel.kernels.attention import decode
    q, k, v, sl, table = make_case(1, 1, 2, 1, 16, [1500], 16, torch.float32)
    sink = torch.randn(2) if sinks else None
    o, lse = decode.kvcache_fwd(q, k, v, sl, 0.25, block_table=table, sinks=sink, n_splits=96)
    assert decode.COMBINE_SPLITS < 94  # splits that see keys
    o64, lse64, _ = oracle(q, k, v, sl, table, scale=0.25, sinks=sink)
    assert_close_by_rule("out", o, o64)
    torch.testing.assert_close(lse.double(), lse64, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sequences_without_keys(backend):
    """A sequence with no keys (the op refuses cache_seqlens < Lq; the backends define it): output 0, lse +inf;
    with sinks, output 0 and lse = the sink."""
    q, k, v, _, table = make_case(1, 2, 2, 1, 16, [40], 16, torch.float32)
    impl = bigmodel.backends.BACKENDS[backend]
    none = torch.zeros(1, dtype=torch.int32)
    sinks = torch.randn(2)
    o, lse = impl.attention_decode_fwd(q, k, v, none, table, 0.25, True, None, None, None)
    assert torch.equal(o, torch.zeros_like(o)) and torch.isinf(lse).all() and (lse > 0).all()
    o, lse = impl.attention_decode_fwd(q, k, v, none, table, 0.25, True, None, None, sinks)
    assert torch.equal(o, torch.zeros_like(o))
    torch.testing.assert_close(lse, sinks[None, :, None].expand(1, 2, 2), rtol=0, atol=1e-6)


def test_auto_runs_the_reference_on_cpu_and_torch_declines():
    q, k, v, sl, table = make_case(1, 1, 2, 1, 16, [20], 16, torch.float32)
    with torch.no_grad():
        out = bigmodel.ops.attention_decode(q, k, v, sl, block_table=table)
    assert bigmodel.backends.autotune.LAST["attention_decode"][1] == "reference"
    check(out, q, k, v, sl, table)
    for name, why in (("torch", "torch has no attention_decode"), ("cuda", "backend .cuda. cannot run")):
        with pytest.raises(bigmodel.backends.BackendUnavailable, match=why):
            with torch.no_grad():
                bigmodel.ops.attention_decode(q, k, v, sl, block_table=table, backend=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_custom_op_opcheck(backend):
    """bigmodel::attention_decode's schema, fake implementation and dispatch (torch.library.opcheck)."""
    q, k, v, sl, table = make_case(2, 2, 4, 2, 16, [20, 33], 16, torch.float32)
    for block_table, kc, vc in ((table, k, v), (None, *(torch.randn(2, 40, 2, 16) for _ in range(2)))):
        args = (q, kc, vc, sl, block_table, 0.25, True, 8, None, 2.0, torch.randn(4), backend)
        torch.library.opcheck(torch.ops.bigmodel.attention_decode.default, args)


def test_compiles_fullgraph():
    q, k, v, sl, table = make_case(2, 1, 2, 1, 16, [20, 33], 16, torch.float32)

    def step(q, k, v, sl, table):
        return bigmodel.ops.attention_decode(q, k, v, sl, block_table=table, is_causal=True, backend="reference")

    with torch.no_grad():
        eager = step(q, k, v, sl, table)
        compiled = torch.compile(step, fullgraph=True, backend="eager")(q, k, v, sl, table)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    check(eager, q, k, v, sl, table, is_causal=True)


@pytest.mark.cuda
@pytest.mark.parametrize("lq,extras,block_size,dtype", [
    (1, "plain", 16, torch.bfloat16), (4, "all", 64, torch.bfloat16), (1, "all", None, torch.float16),
    (4, "window-both-sides", 16, torch.float16)], ids=str)
def test_gpu_decode_matches_fp64(lq, extras, block_size, dtype):
    """Llama-3 8B heads (32:8, D 128), four sequences up to 4k keys, the kernel's own split count (hundreds of
    programs: the combine merges many splits); fp64 oracle on the GPU."""
    B, Hq, Hkv, D, seqlens = 4, 32, 8, 128, [1000, 4096, 17, 2500]
    q, k, v, sl, table = (t if t is None else t.cuda()
                          for t in make_case(B, lq, Hq, Hkv, D, seqlens, block_size, dtype))
    kw = _extras(extras, Hq)
    if "sinks" in kw:
        kw["sinks"] = kw["sinks"].cuda()
    with torch.no_grad():
        out = bigmodel.ops.attention_decode(q, k, v, sl, block_table=table, backend="triton", **kw)
        auto = bigmodel.ops.attention_decode(q, k, v, sl, block_table=table, **kw)
    assert bigmodel.backends.autotune.LAST["attention_decode"][1] == "triton"
    torch.testing.assert_close(auto, out, rtol=0, atol=0)
    check(out, q, k, v, sl, table, **kw)


# --------------------------------------------------------------------------------------------- bad input
def _bad_cases():
    def case(**change):
        return change
    return {
        "block_table int64": (case(block_table=lambda t: t.long()), TypeError, "block_table must have dtype int32"),
        "block_table 1-D": (case(block_table=lambda t: t[0]), ValueError, r"block_table must have shape \(B, "),
        "block_table batch": (case(block_table=lambda t: t[:1]), ValueError, r"block_table must have shape"),
        "block_table entry >= num_blocks": (case(block_table=lambda t: _set(t, 1, 0, 99)), ValueError,
                                            r"block_table\[1, 0\] = 99 is out of range \[0, num_blocks = "),
        "block_table entry < 0": (case(block_table=lambda t: _set(t, 0, 1, -1)), ValueError,
                                  r"block_table\[0, 1\] = -1 is out of range"),
        "cache_seqlens int64": (case(cache_seqlens=lambda s: s.long()), TypeError,
                                "cache_seqlens must have dtype int32"),
        "cache_seqlens shape": (case(cache_seqlens=lambda s: s[:1]), ValueError,
                                r"cache_seqlens must have shape \(B,\)"),
        "cache_seqlens > capacity": (case(cache_seqlens=lambda s: _set(s, 1, None, 10_000)), ValueError,
                                     r"cache_seqlens\[1\] = 10000 is outside \[Lq, capacity\]"),
        "cache_seqlens < Lq": (case(cache_seqlens=lambda s: _set(s, 0, None, 0)), ValueError,
                               r"cache_seqlens\[0\] = 0 is outside \[Lq, capacity\]"),
        "block_size 8": (case(k_cache=lambda t: t[:, :8], v_cache=lambda t: t[:, :8]), ValueError,
                         "block_size .* must be a positive multiple of 16; got 8"),
        "q 3-D": (case(q=lambda t: t[:, 0]), ValueError, r"q must be 4-D \(B, Lq, Hq, D\)"),
        "head dims": (case(q=lambda t: t[..., :8]), ValueError, "same head dim"),
        "kv heads": (case(q=lambda t: t[:, :, :3]), ValueError, "must divide q's heads"),
        "dtype": (case(q=lambda t: t.half()), TypeError, "must share one dtype"),
        "window negative": (case(window=(-1, 0)), ValueError, "window's left size must be >= 0"),
        "softcap 0": (case(softcap=0.0), ValueError, "softcap must be a positive finite float"),
        "sinks length": (case(sinks=torch.zeros(3)), ValueError, r"sinks must have shape \(4,\)"),
        "sinks dtype": (case(sinks=torch.zeros(4, dtype=torch.int64)), TypeError, "sinks must have dtype"),
        "dense batch": (case(block_table=None), ValueError, "a dense k_cache .* must hold one row per sequence"),
    }


def _set(t, i, j, value):
    t = t.clone()
    if j is None:
        t[i] = value
    else:
        t[i, j] = value
    return t


@pytest.mark.parametrize("name", list(_bad_cases()))
def test_bad_input(name):
    change, exc, match = _bad_cases()[name]
    q, k, v, sl, table = make_case(2, 1, 4, 2, 16, [20, 40], 16, torch.float32, spare_blocks=3)
    args = dict(q=q, k_cache=k, v_cache=v, cache_seqlens=sl, block_table=table)
    kwargs = {}
    for key, fn in change.items():
        if key in args:
            args[key] = fn(args[key]) if callable(fn) else fn
        else:
            kwargs[key] = fn
    with pytest.raises(exc, match=match), torch.no_grad():
        bigmodel.ops.attention_decode(args["q"], args["k_cache"], args["v_cache"], args["cache_seqlens"],
                                      block_table=args["block_table"], backend="reference", **kwargs)


def test_refuses_inputs_that_require_grad():
    q, k, v, sl, table = make_case(1, 1, 2, 1, 16, [20], 16, torch.float32)
    with pytest.raises(ValueError, match="inference only .* q requires grad"):
        bigmodel.ops.attention_decode(q.requires_grad_(), k, v, sl, block_table=table, backend="reference")
