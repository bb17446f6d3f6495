"""Split-KV decode forward (kernels/attention/decode.py) under the Triton interpreter: the kernels against an fp64
softmax on fresh random inputs (o and lse, several splits, GQA, a key tail, a padded head dim), when the regular
forward hands over to it, and the whole op through it (out and every gradient, by FlashAttention's rule: the
backward runs the regular kernels on the split forward's o and lse)."""
import math

import pytest
import torch

import bigmodel
from numerics import assert_close_by_rule, attention_case, check_attention_case, requires_interpreter

pytestmark = requires_interpreter


def decode_kernels():
    from bigmodel.kernels.attention import decode as attention_decode
    return attention_decode


def reference(q, k, v, scale):
    group = q.shape[1] // k.shape[1]
    k64, v64 = (t.double().repeat_interleave(group, 1) for t in (k, v))
    s = q.double() @ k64.transpose(-1, -2) * scale
    return torch.softmax(s, -1) @ v64, torch.logsumexp(s, -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("B,Hq,Hkv,Lq,Lk,D,splits", [
    (1, 4, 1, 1, 300, 64, 3),     # MQA, a key tail (300 = 9 x 32 + 12), three splits
    (2, 2, 2, 3, 257, 80, None),  # MHA, three query rows, padded head dim, the default split count
    (1, 8, 2, 2, 70, 32, 1),      # GQA 4:1, one split: the combine kernel with nothing to merge
    (1, 2, 1, 16, 64, 64, 64),    # more splits asked for than key blocks: one block each
], ids=str)
def test_decode_matches_fp64(B, Hq, Hkv, Lq, Lk, D, splits, dtype):
    ad = decode_kernels()
    q, k, v = (torch.randn(B, h, n, D).to(dtype) for h, n in ((Hq, Lq), (Hkv, Lk), (Hkv, Lk)))
    scale = 1 / math.sqrt(D)
    o = torch.empty(B, Hq, Lq, D, dtype=dtype)
    lse = torch.empty(B, Hq, Lq)
    ad.decode_fwd(q, k, v, scale, o, lse, splits)
    ref_o, ref_lse = reference(q, k, v, scale)
    lowp = torch.softmax((q @ k.repeat_interleave(Hq // Hkv, 1).transpose(-1, -2)).float() * scale, -1).to(dtype) \
        @ v.repeat_interleave(Hq // Hkv, 1)
    assert_close_by_rule("out", o, ref_o, lowp if dtype != torch.float32 else None)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=0, atol=1e-5)


def test_split_count_fills_the_device_but_not_past_the_key_blocks():
    ad = decode_kernels()
    n, chunk = ad.splits_for(1, 1, 10 * ad.BLOCK_N + 1, torch.device("cpu"))
    assert n * chunk >= 10 * ad.BLOCK_N + 1 and chunk % ad.BLOCK_N == 0 and (n - 1) * chunk < 10 * ad.BLOCK_N + 1
    assert ad.splits_for(4, 8, 100 * ad.BLOCK_N, torch.device("cpu"))[0] == 1  # 32 programs already: no split


def test_regular_forward_hands_short_queries_over(monkeypatch):
    ad = decode_kernels()
    calls = []
    original = ad.decode_fwd
    monkeypatch.setattr(ad, "decode_fwd", lambda *a, **kw: calls.append(a[0].shape) or original(*a, **kw))
    q = torch.randn(1, 2, 1, 64, dtype=torch.float16)
    k, v = (torch.randn(1, 1, 300, 64, dtype=torch.float16) for _ in range(2))
    with torch.no_grad():
        bigmodel.ops.attention(q, k, v, enable_gqa=True, backend="triton")
        bigmodel.ops.attention(q, k, v, enable_gqa=True, is_causal=True, backend="triton")  # causal: regular
        bigmodel.ops.attention(q, k[:, :, :100], v[:, :, :100], enable_gqa=True, backend="triton")  # short keys
        bigmodel.ops.attention(q.float(), k.float(), v.float(), enable_gqa=True, backend="triton")  # fp32
    assert calls == [q.shape]


@pytest.mark.parametrize("Hq,Hkv,Lq", [(2, 1, 1), (2, 2, 4)])
def test_op_through_the_split_path_with_gradients(Hq, Hkv, Lq, monkeypatch):
    ad = decode_kernels()
    used = []
    original = ad.decode_fwd
    monkeypatch.setattr(ad, "decode_fwd", lambda *a, **kw: used.append(1) or original(*a, **kw))
    q = torch.randn(1, Hq, Lq, 64).half()
    k, v = (torch.randn(1, Hkv, 290, 64).half() for _ in range(2))

    def ours(q, k, v, mask, is_causal, scale, gqa):
        return bigmodel.ops.attention(q, k, v, mask, is_causal=is_causal, scale=scale, enable_gqa=gqa,
                                      backend="triton")

    check_attention_case(attention_case(ours, q, k, v, enable_gqa=Hq != Hkv))
    assert used, "the split-KV forward did not run"
