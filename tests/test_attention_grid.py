"""Grid limits of the Triton attention kernels (bigmodel.kernels.attention).

With more than 65535 heads or batch entries the launchers fold batch x heads x blocks into grid axis 0 (limit
2^31 - 1), since CUDA's axes 1 and 2 stop at 65535: a q of shape (70000, 1, 16, 64) (windowed / temporal attention
over batch x patches) must launch; smaller shapes keep the (blocks, heads, batch) grid. Checked on
the grids the launchers compute, for every config the autotuner or the interpreter can pick, with the kernel launch
replaced by a recorder and stride-0 expanded inputs (no memory, no 70000 interpreted programs). What still cannot
run is named by attention_limits_reasons. The kernels' decoding of the 1-D grid is checked under the interpreter
against fp64 SDPA with B * H > 1 and several query / key blocks."""
import pytest
import torch
import triton

from numerics import requires_interpreter

GRID_AXIS_LIMITS = (2**31 - 1, 65535, 65535)


def attention_kernels():
    from bigmodel.kernels import attention
    return attention


def expanded(*shape, dtype=torch.float16):
    """A (B, H, L, D) tensor of the given shape over one row of memory (all strides but the last 0)."""
    return torch.zeros(shape[-1], dtype=dtype).expand(*shape)


def block_sizes(kernels, kind):
    """Every row-block size the launcher may use for `kind`: the interpreter's config and each table entry."""
    if kind == "delta":
        return {kernels.delta_config(d)["BLOCK_M"] for d in (16, 32, 64, 128, 256)}
    index = 1 if kind == "dkdv" else 0  # dK/dV blocks the keys (BLOCK_N), the others the queries (BLOCK_M)
    sizes = {cfg[index] for table in (*kernels.CONFIGS.values(), *kernels.SM90_EXTRA.values())
             for cfgs in table.get(kind, {}).values() for cfg in cfgs}
    interp = kernels.INTERPRETER_CONFIGS[kind]
    return sizes | {interp["BLOCK_N" if kind == "dkdv" else "BLOCK_M"]}


@pytest.fixture
def launches(monkeypatch):
    """Replace the kernel launch by a recorder of (kind, grid function, consts)."""
    kernels = attention_kernels()
    calls = []
    monkeypatch.setattr(kernels.launch, "_launch", lambda kernel, tuned, kind, grid, args, consts:
                        calls.append((kind, grid, consts)))
    return calls


@pytest.mark.parametrize("B,Hq,Hkv,L,D", [
    (70000, 1, 1, 16, 64),    # the shape: batch past 65535
    (2, 70000, 70000, 16, 64),  # heads past 65535
    (3, 80000, 20000, 40, 32),  # GQA, several blocks per head
], ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_grids_fold_batch_and_heads_into_axis0(launches, B, Hq, Hkv, L, D, causal):
    kernels = attention_kernels()
    q, k, v = expanded(B, Hq, L, D), expanded(B, Hkv, L, D), expanded(B, Hkv, L, D)
    assert kernels.attention_limits_reasons(q, k) == []
    o, lse = kernels.attention_fwd(q, k, v, None, causal, 0.125, 0.0, 0)
    kernels.attention_bwd(expanded(B, Hq, L, D), q, k, v, o, lse, None, causal, 0.125, 0.0, 0)
    assert [kind for kind, _, _ in launches] == ["fwd", "delta", "dkdv", "dq"]
    for kind, grid, consts in launches:
        assert consts["FOLDED"], kind
        heads = Hkv if kind == "dkdv" else Hq
        key = "BLOCK_N" if kind == "dkdv" else "BLOCK_M"
        for block in block_sizes(kernels, kind):
            dims = grid({**consts, key: block})
            assert all(n <= limit for n, limit in zip(dims, GRID_AXIS_LIMITS)), f"{kind} BLOCK={block}: grid {dims}"
            assert dims[0] * (dims[1] if len(dims) > 1 else 1) * (dims[2] if len(dims) > 2 else 1) == \
                triton.cdiv(L, block) * heads * B, f"{kind} BLOCK={block}: grid {dims} misses programs"


def test_common_shapes_keep_the_3d_grid(launches):
    """Up to 65535 heads and batch: (blocks, heads, batch), the kernels' cheaper unfolded variant."""
    kernels = attention_kernels()
    q, k = expanded(65535, 8, 33, 16), expanded(65535, 2, 33, 16)
    o, lse = kernels.attention_fwd(q, k, k, None, True, 0.125, 0.0, 0)
    kernels.attention_bwd(q, q, k, k, o, lse, None, True, 0.125, 0.0, 0)
    for kind, grid, consts in launches:
        key = "BLOCK_N" if kind == "dkdv" else "BLOCK_M"
        assert not consts["FOLDED"] and grid({**consts, key: 16}) == (3, 2 if kind == "dkdv" else 8, 65535), kind


def test_limits_reasons_name_what_cannot_run():
    kernels = attention_kernels()
    small = expanded(2, 4, 33, 64)
    assert kernels.attention_limits_reasons(small, small) == []
    # 2^20 batch x 2^10 heads x 2^10 rows / 16 per block = 2^36 programs > 2^31 - 1
    q = expanded(2**20, 2**10, 2**10, 64)
    reasons = kernels.attention_limits_reasons(q, expanded(2**20, 1, 16, 64))
    assert len(reasons) == 1 and "query" in reasons[0] and "grid limit" in reasons[0], reasons
    long_k = expanded(1, 1, 2**31, 16)
    reasons = kernels.attention_limits_reasons(expanded(1, 1, 16, 16), long_k)
    assert len(reasons) == 1 and "Lk = 2147483648" in reasons[0], reasons


# --------------------------------------------------------------------------------------------- interpreter
@requires_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("folded", [False, True], ids=["3d", "folded"])
def test_grid_decodes_every_block_head_and_batch(folded, causal, dtype, monkeypatch):
    """B * Hq = 12 with GQA, 3 query blocks and 2 key blocks at the interpreter's tiles (32 / 16 and 16 / 32), so a
    decoding that swaps heads, batches or blocks (or the causal longest-first order) shows against fp64. The
    folded grid is forced by lowering MAX_GRID_YZ below the head count."""
    from test_attention_kernels import check_attention, qkv

    kernels = attention_kernels()
    if folded:
        monkeypatch.setattr(kernels.launch, "MAX_GRID_YZ", 3)
    seen = []
    real_launch = kernels.launch._launch
    monkeypatch.setattr(kernels.launch, "_launch", lambda kernel, tuned, kind, grid, args, consts:
                        (seen.append(consts["FOLDED"]), real_launch(kernel, tuned, kind, grid, args, consts)))
    check_attention(*qkv(3, 4, 2, 70, 50, 16, dtype), is_causal=causal)
    assert seen == [folded] * 4


@requires_interpreter
def test_rows_with_a_huge_stride_are_copied(monkeypatch):
    """In-tile offsets are int32: inputs whose row stride exceeds MAX_ROW_STRIDE go to the kernels as contiguous
    copies (MAX_ROW_STRIDE lowered so a small padded-row layout triggers it); results still match fp64."""
    from test_attention_kernels import check_attention, qkv

    kernels = attention_kernels()
    monkeypatch.setattr(kernels.launch, "MAX_ROW_STRIDE", 32)
    seen = []
    real_launch = kernels.launch._launch

    def spy(kernel, tuned, kind, grid, args, consts):
        seen.append((kind, [a.stride(2) for a in args[:4] if isinstance(a, torch.Tensor) and a.dim() == 4]))
        return real_launch(kernel, tuned, kind, grid, args, consts)

    monkeypatch.setattr(kernels.launch, "_launch", spy)
    q, k, v = qkv(1, 2, 1, 20, 24, 40, torch.float32, layout="padded")  # row stride 43 > 32
    check_attention(q, k, v, do=torch.randn(1, 2, 20, 43)[..., :40], is_causal=True)
    for kind, row_strides in seen:
        assert row_strides and all(s == 40 for s in row_strides), (kind, row_strides)
