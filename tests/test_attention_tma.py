"""The forward's tensor-descriptor (TMA) path (kernels/tma.py, _attn_fwd_kernel with TMA=True) under the Triton
interpreter, which implements descriptor loads and stores: o and every gradient against fp64 SDPA on fresh random
inputs, through layouts that change the descriptor's strides (contiguous, (B, L, H, D) storage, size-1 dims, GQA),
tails that the copy engine must zero-fill (Lq, Lk not multiples of the tiles), causal, masks and dropout; and when
the launcher may not use it (expanded K / V, unaligned rows, fp32, other head dims)."""
import pytest
import torch

import bigmodel
from numerics import attention_case, check_attention_case, requires_interpreter

pytestmark = requires_interpreter


@pytest.fixture
def tma(monkeypatch):
    """kernels.tma with the interpreter allowed to take descriptors; records each descriptor made."""
    from bigmodel.kernels import tma
    monkeypatch.setattr(tma, "TMA_MODE", "1")
    made = []
    original = tma.descriptor
    monkeypatch.setattr(tma, "descriptor", lambda t, rows: made.append(tuple(t.shape)) or original(t, rows))
    tma.made = made
    return tma


def ours(q, k, v, mask, is_causal, scale, gqa):
    return bigmodel.ops.attention(q, k, v, mask, is_causal=is_causal, scale=scale, enable_gqa=gqa,
                                  backend="triton")


def blhd(B, H, L, D):
    """(B, H, L, D) view of (B, L, H, D) storage (Hugging Face's layout before the transpose)."""
    return torch.randn(B, L, H, D).half().transpose(1, 2)


@pytest.mark.parametrize("B,Hq,Hkv,Lq,Lk,D,causal,layout", [
    (2, 2, 2, 70, 45, 64, False, "contiguous"),  # tails on both sides (tiles 32 x 16)
    (1, 4, 2, 33, 77, 128, True, "contiguous"),  # GQA 2:1, causal with Lq < Lk, D = 128
    (2, 2, 1, 40, 40, 64, True, "blhd"),         # MQA, (B, L, H, D) storage: head stride D, row stride H * D
    (1, 1, 1, 1, 30, 64, False, "contiguous"),   # every leading dim of size 1
], ids=str)
def test_tma_forward_and_gradients_match_fp64(tma, B, Hq, Hkv, Lq, Lk, D, causal, layout):
    make = blhd if layout == "blhd" else (lambda b, h, n, d: torch.randn(b, h, n, d).half())
    q, k, v = make(B, Hq, Lq, D), make(B, Hkv, Lk, D), make(B, Hkv, Lk, D)
    check_attention_case(attention_case(ours, q, k, v, is_causal=causal, enable_gqa=Hq != Hkv))
    assert (B, Hq, Lq, D) in tma.made and (B, Hkv, Lk, D) in tma.made, "the forward did not take descriptors"


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_tma_forward_with_a_mask(tma, kind):
    q, k, v = (torch.randn(1, 2, n, 64).half() for n in (37, 50, 50))
    if kind == "bool":
        mask = torch.rand(1, 2, 37, 50) > 0.3
        mask[..., 0] = True
    else:
        mask = torch.randn(1, 1, 37, 50).half().expand(1, 2, 37, 50)  # a broadcast float mask
    check_attention_case(attention_case(ours, q, k, v, attn_mask=mask))
    assert tma.made


def test_tma_forward_with_dropout_equals_the_pointer_path(tma, monkeypatch):
    """Dropout's keep mask depends on (seed, b, h, i, j) only, so both load paths give the same o."""
    from bigmodel.kernels import attention
    q, k, v = (torch.randn(2, 2, n, 64).half() for n in (40, 33, 33))
    o_tma, lse_tma = attention.attention_fwd(q, k, v, None, False, 0.125, 0.3, 1234)
    assert tma.made
    monkeypatch.setattr(tma, "TMA_MODE", "0")
    tma.made.clear()
    o_ptr, lse_ptr = attention.attention_fwd(q, k, v, None, False, 0.125, 0.3, 1234)
    assert not tma.made
    torch.testing.assert_close(o_tma, o_ptr, rtol=0, atol=0)
    torch.testing.assert_close(lse_tma, lse_ptr, rtol=0, atol=0)


def test_when_the_launcher_may_not_use_descriptors(tma):
    q = torch.randn(2, 4, 16, 64).half()
    assert tma.usable(0, q)  # the interpreter with TMA_MODE "1"
    assert not tma.usable(0, q.float())  # fp32
    assert not tma.usable(0, torch.randn(2, 4, 16, 80).half())  # head dim 80: padded columns
    assert not tma.usable(0, torch.randn(1, 4, 16, 64).half().expand(2, 4, 16, 64))  # zero batch stride
    assert not tma.usable(0, torch.randn(2, 4, 16, 68).half()[..., :64])  # row stride 136 B: not a 16-B multiple
    assert not tma.usable(0, torch.randn(2 * 4 * 16 * 64 + 1).half()[1:].view(2, 4, 16, 64))  # base off by 2 B
    from bigmodel.kernels._utils import INTERPRETING
    assert INTERPRETING
    tma.TMA_MODE = "auto"
    assert not tma.usable(90, q)  # under the interpreter only when asked for


def test_descriptor_replaces_strides_of_size_one_dims(tma):
    t = torch.randn(1, 3, 5, 64).half()[:, :, :1]  # (1, 3, 1, 64), strides (960, 320, 64, 1)
    t = t.as_strided(t.shape, (7, 320, 3, 1))  # size-1 dims may carry any stride; these are not 16-B multiples
    d = tma.descriptor(t, 32)
    assert d.block_shape == [1, 1, 32, 64] and list(d.shape) == [1, 3, 1, 64]
    assert d.strides == [960, 320, 64, 1]  # replaced by the span of the next dim; the real head stride kept
