"""The feed-forward Triton kernels (linear_act, softmax, activation) called directly, on CPU tensors under the
Triton interpreter, against fp64 PyTorch with autograd, by the project's rule (numerics.assert_close_by_rule):
fp32 relative error, fp16 against plain PyTorch's own fp16 error."""
import pytest
import torch
import torch.nn.functional as F
import triton

from numerics import assert_close_by_rule, randn_input, requires_interpreter

pytestmark = requires_interpreter

DTYPES = [torch.float32, torch.float16]
TORCH_ACT = {
    "gelu": F.gelu,
    "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "none": lambda t: t,
}


def _torch_runs(fn, inputs, grad_out):
    """fn(*inputs) and the inputs' gradients for grad_out, in fp64 and in the inputs' own precision."""
    runs = {}
    for which, cast in (("ref64", lambda t: t.double()), ("lowp", lambda t: t)):
        leaves = [None if t is None else cast(t.detach()).requires_grad_(True) for t in inputs]
        out = fn(*leaves)
        out.backward(cast(grad_out))
        runs[which] = [out.detach()] + [None if t is None else t.grad for t in leaves]
    return runs


def _check(names, ours, runs):
    for i, name in enumerate(names):
        if runs["ref64"][i] is None:
            assert ours[i] is None, f"{name}: returned for an input that was None"
            continue
        assert ours[i].dtype == runs["lowp"][i].dtype, f"{name}: dtype {ours[i].dtype}"
        assert_close_by_rule(name, ours[i], runs["ref64"][i], runs["lowp"][i], "output" if i == 0 else "grad")


# ----------------------------------------------------------------------------------------------- linear_act
LINEAR_SHAPES = [(1, 16, 16), (37, 48, 96), (130, 64, 200)]  # (M, K, N): one row, tails, several tile groups


def _linear_act_case(x, weight, bias, activation):
    from bigmodel.kernels.linear_act import linear_act_bwd, linear_act_fwd

    dy = torch.randn(x.shape[0], weight.shape[0]).to(x.dtype)
    y, saved = linear_act_fwd(x, weight, bias, activation)
    if activation in ("relu", "none"):
        assert saved is None, f"{activation}: nothing to save, got {type(saved).__name__}"
    else:
        assert saved.shape == y.shape and saved.dtype == x.dtype
    dx, dw, db = linear_act_bwd(dy, x, weight, saved, y, activation, bias is not None)
    runs = _torch_runs(lambda a, w, b: TORCH_ACT[activation](F.linear(a, w, b)), (x, weight, bias), dy)
    _check(("y", "dx", "dweight", "dbias"), (y, dx, dw, db), runs)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", list(TORCH_ACT))
@pytest.mark.parametrize("shape", LINEAR_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_linear_act(shape, activation, dtype):
    M, K, N = shape
    x = randn_input(M, K, dtype=dtype, scale=1.0, shift=0.0)
    weight = (torch.randn(N, K) / K ** 0.5).to(dtype)  # keeps z O(1), where the activations bend
    bias = torch.randn(N).to(dtype)
    _linear_act_case(x, weight, bias, activation)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ["gelu", "relu", "none"])
def test_linear_act_forward_with_the_halved_epilogue(activation, dtype):
    """Tiles 256 columns wide (sm_90's 128x256) run the bias + activation epilogue on two column halves in turn:
    that path at a 32x256 tile, N = 300 (the second column block's upper half entirely past N), z and y."""
    from bigmodel.kernels import linear_act as la
    from bigmodel.kernels.activation import activation_id

    M, K, N = 40, 48, 300
    x = randn_input(M, K, dtype=dtype, scale=1.0, shift=0.0)
    weight = (torch.randn(N, K) / K ** 0.5).to(dtype)
    bias = torch.randn(N).to(dtype)
    y, z = torch.full((M, N), float("nan"), dtype=dtype), torch.full((M, N), float("nan"), dtype=dtype)
    act = activation_id(activation)
    grid = (triton.cdiv(M, 32) * triton.cdiv(N, 256),)
    la._fwd_kernel.fn[grid](x, weight, bias, y, z, M, N, K, x.stride(0), 64, HAS_BIAS=True, ACTIVATION=act,
                            SAVE_Z=True, BLOCK_M=32, BLOCK_N=256, BLOCK_K=32, GROUP=2)
    z64 = F.linear(x.double(), weight.double(), bias.double())
    lowp = F.linear(x, weight, bias)
    assert_close_by_rule("z", z, z64, lowp)
    assert_close_by_rule("y", y, TORCH_ACT[activation](z64), TORCH_ACT[activation](lowp))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_linear_act_strided_rows_no_bias(activation, dtype):
    M, K, N = 37, 40, 72
    x = randn_input(M, K + 24, dtype=dtype, scale=1.0, shift=0.0)[:, 8:8 + K]  # row stride K + 24
    assert not x.is_contiguous() and x.stride(1) == 1
    weight = (torch.randn(N, K) / K ** 0.5).to(dtype)
    _linear_act_case(x, weight, None, activation)


# ----------------------------------------------------------------------------------------------- softmax
def _softmax_case(x):
    from bigmodel.kernels.softmax import softmax_bwd, softmax_fwd

    dy = torch.randn(x.shape).to(x.dtype)
    y = softmax_fwd(x)
    dx = softmax_bwd(dy, y)
    runs = _torch_runs(lambda t: torch.softmax(t, dim=-1), (x,), dy)
    # NaN exactly where torch has NaN (rows of only -inf); the rule on the rest.
    for name, ours, ref in (("y", y, runs["ref64"][0]), ("dx", dx, runs["ref64"][1])):
        assert torch.equal(ours.isnan(), ref.isnan()), f"{name}: NaN pattern differs from torch.softmax"
    finite = ~runs["ref64"][0].isnan().any(dim=1)
    _check(("y", "dx"), (y[finite], dx[finite]), {k: [t[finite] for t in v] for k, v in runs.items()})


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [1, 7, 128, 1025])
def test_softmax(n, dtype):
    _softmax_case(randn_input(19, n, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_softmax_strided_rows_with_inf(dtype):
    x = randn_input(9, 300, dtype=dtype)[:, 17:217]  # row stride 300
    x[1, :50] = float("-inf")
    x[3, ::3] = float("-inf")
    x[4] = float("-inf")  # fully -inf: NaN like torch
    x[6, 1:] = float("-inf")  # one finite entry: probability exactly 1
    _softmax_case(x)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_softmax_looped_path(dtype):
    from bigmodel.kernels.softmax import LOOP_BLOCK_N, MAX_FUSED_N

    n = MAX_FUSED_N + 1
    x = randn_input(3, n, dtype=dtype)
    x[0, : LOOP_BLOCK_N + 5] = float("-inf")  # the first chunk all -inf: lanes that only saw -inf
    x[1] = float("-inf")
    x[2, ::5] = float("-inf")
    _softmax_case(x)


# ----------------------------------------------------------------------------------------------- activation
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu"])
@pytest.mark.parametrize("numel", [1, 1000, 4097])
def test_activation(numel, activation, dtype):
    from bigmodel.kernels.activation import act_bwd, act_fwd

    x = randn_input(numel, dtype=dtype, scale=3.0, shift=0.0)
    if numel > 2:
        x[:2] = torch.tensor([-30.0, 30.0])  # saturated tails: no inf / NaN
    dy = torch.randn(numel).to(dtype)
    y = act_fwd(x, activation)
    dx = act_bwd(dy, x, activation)
    runs = _torch_runs(TORCH_ACT[activation], (x,), dy)
    _check(("y", "dx"), (y, dx), runs)


def test_activation_keeps_shape():
    from bigmodel.kernels.activation import act_bwd, act_fwd

    x = torch.randn(3, 5, 7)
    assert act_fwd(x, "gelu").shape == x.shape and act_bwd(torch.randn(3, 5, 7), x, "relu").shape == x.shape
    with pytest.raises(ValueError, match="activation"):
        act_fwd(x, "swish")
