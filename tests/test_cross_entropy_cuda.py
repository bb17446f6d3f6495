"""The cross-entropy kernel contract on a GPU at real sizes, for backends "cuda" (bigmodel._C, csrc/cross_entropy)
and "triton" (kernels/cross_entropy.py), called through the adapters exactly as the op calls them:
    BACKENDS[name].cross_entropy_fwd(logits, target, ignore_index, label_smoothing, softcap) -> (loss, lse)
    BACKENDS[name].cross_entropy_bwd(grad_loss, logits, target, lse, ignore_index, label_smoothing, softcap, out)
Each is checked against an fp64 PyTorch reference (log_softmax in fp64 of the same low-precision logits) under
DESIGN.md's rule: loss and lse are fp32 (relative error < 1e-5), dlogits are in the logits' dtype (fp32: 1e-4; fp16 /
bf16: at most 3x plain PyTorch's error in that precision). Ignored targets are present in every case; label smoothing
0.1 and softcap 30 have their own cases. The backward runs in place (out = the logits' own buffer) and out of place,
bitwise equal; two runs are bitwise equal. Every test here is `cuda`-marked and skips without a GPU."""
import pytest
import torch
import torch.nn.functional as F

from bigmodel.backends import BACKENDS
from numerics import assert_close_by_rule

pytestmark = pytest.mark.cuda

IGNORE = -100
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16"),
          pytest.param(torch.bfloat16, id="bf16")]
SIZES = [(8192, 32000), (8192, 128256), (1024, 262144)]
SIZE_IDS = [f"{n}x{c}" for n, c in SIZES]


@pytest.fixture
def backend(gpu_backend):
    return BACKENDS[gpu_backend]


def make_case(n, c, dtype, *, ignore_frac=0.1, seed=0, scale=2.0):
    """Logits ~ N(0, scale^2) in `dtype`, targets uniform in [0, c) with ~ignore_frac of them IGNORE, and a
    per-row upstream gradient (a "mean" reduction's 1 / count times a random factor, never 0)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = (torch.randn(n, c, device="cuda", generator=g) * scale).to(dtype)
    t = torch.randint(0, c, (n,), device="cuda", generator=g)
    t[torch.rand(n, device="cuda", generator=g) < ignore_frac] = IGNORE
    t[0] = IGNORE  # at least one ignored row
    gl = (torch.rand(n, device="cuda", generator=g) + 0.5) / max(int((t != IGNORE).sum()), 1)
    return x, t, gl


def capped(x, softcap):
    return softcap * torch.tanh(x / softcap) if softcap else x


def reference(x, t, gl, eps, softcap):
    """(loss, lse, dlogits) in fp64 from the logits as given (upcast), torch's own ops only."""
    x64 = x.double().requires_grad_()
    z = capped(x64, softcap)
    logp = torch.log_softmax(z, dim=1)
    valid = t != IGNORE
    nll = -logp.gather(1, torch.where(valid, t, 0)[:, None]).squeeze(1)
    loss = (1.0 - eps) * nll - eps * logp.mean(dim=1) if eps else nll  # eps 0: no 0 * -inf from masked logits
    loss = torch.where(valid, loss, 0.0)
    lse = torch.logsumexp(z.detach(), dim=1)
    (dx,) = torch.autograd.grad(loss, x64, gl.double())
    return loss.detach(), lse, dx


def torch_lowp(x, t, gl, eps, softcap):
    """Plain PyTorch in the logits' precision: F.cross_entropy(reduction="none") and its gradient."""
    xl = x.detach().clone().requires_grad_()
    loss = F.cross_entropy(capped(xl, softcap), t, ignore_index=IGNORE, reduction="none", label_smoothing=eps)
    (dx,) = torch.autograd.grad(loss, xl, gl.to(loss.dtype))
    return loss.detach(), dx


def run_and_check(be, x, t, gl, eps, softcap, *, determinism=True):
    loss, lse = be.cross_entropy_fwd(x, t, IGNORE, eps, softcap)
    assert loss.dtype == torch.float32 and lse.dtype == torch.float32
    assert loss.shape == (x.size(0),) and lse.shape == (x.size(0),)
    out = torch.empty_like(x)
    dx = be.cross_entropy_bwd(gl, x, t, lse, IGNORE, eps, softcap, out)
    assert dx is out or dx.data_ptr() == out.data_ptr(), "cross_entropy_bwd must return `out`"
    inplace = x.clone()
    dxi = be.cross_entropy_bwd(gl, inplace, t, lse, IGNORE, eps, softcap, inplace)
    assert dxi.data_ptr() == inplace.data_ptr()
    assert torch.equal(dxi, dx), "in-place backward differs from the out-of-place one"
    del inplace, dxi
    if determinism:
        loss2, lse2 = be.cross_entropy_fwd(x, t, IGNORE, eps, softcap)
        assert torch.equal(loss, loss2) and torch.equal(lse, lse2), "forward is not bitwise deterministic"
        assert torch.equal(be.cross_entropy_bwd(gl, x, t, lse, IGNORE, eps, softcap, torch.empty_like(x)), dx), \
            "backward is not bitwise deterministic"
    valid = t != IGNORE
    assert torch.all(loss[~valid] == 0), "ignored rows must have loss 0"
    assert torch.all(dx[~valid] == 0), "ignored rows must have gradient 0"

    ref_loss, ref_lse, ref_dx = reference(x, t, gl, eps, softcap)
    assert_close_by_rule("loss", loss, ref_loss, kind="output")
    assert_close_by_rule("lse", lse, ref_lse, kind="output")
    del ref_loss, ref_lse
    low = None if x.dtype == torch.float32 else torch_lowp(x, t, gl, eps, softcap)[1]
    assert_close_by_rule("dlogits", dx, ref_dx, low, kind="grad")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c", SIZES, ids=SIZE_IDS)
def test_cross_entropy_real_sizes(backend, dtype, n, c):
    x, t, gl = make_case(n, c, dtype)
    run_and_check(backend, x, t, gl, 0.0, 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps,softcap", [(0.1, 0.0), (0.0, 30.0), (0.1, 30.0)],
                         ids=["smoothing0.1", "softcap30", "smoothing0.1-softcap30"])
@pytest.mark.parametrize("n,c", [SIZES[0], SIZES[2]], ids=[SIZE_IDS[0], SIZE_IDS[2]])
def test_cross_entropy_smoothing_and_softcap(backend, dtype, eps, softcap, n, c):
    x, t, gl = make_case(n, c, dtype, scale=8.0 if softcap else 2.0)  # softcap: logits well into tanh's bend
    run_and_check(backend, x, t, gl, eps, softcap)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", [1, 7, 1000, 50257], ids=lambda c: f"C{c}")
def test_cross_entropy_odd_sizes_and_row_stride(backend, dtype, c):
    """Odd class counts (the unvectorized path for 50257, GPT-2's vocabulary) and a padded row stride."""
    x, t, gl = make_case(1031, c, dtype)
    padded = torch.zeros(1031, c + 5, device="cuda", dtype=dtype)[:, 2:2 + c]
    padded.copy_(x)
    run_and_check(backend, padded, t, gl, 0.1, 0.0, determinism=False)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_masked_vocabulary(backend, dtype):
    """-inf logits (a masked vocabulary) get probability 0 and no NaN; a row's -inf prefix does not poison it."""
    x, t, gl = make_case(256, 32000, dtype)
    x[:, :20000] = float("-inf")
    x[1::2, 25000:] = float("-inf")
    t = torch.where(t == IGNORE, t, 20000 + t % 5000)
    loss, lse = backend.cross_entropy_fwd(x, t, IGNORE, 0.0, 0.0)
    assert torch.isfinite(loss).all() and torch.isfinite(lse).all()
    dx = backend.cross_entropy_bwd(gl, x, t, lse, IGNORE, 0.0, 0.0, torch.empty_like(x))
    assert not torch.isnan(dx).any()
    assert torch.all(dx[:, :20000] == 0)
    ref_loss, ref_lse, ref_dx = reference(x, t, gl, 0.0, 0.0)
    assert_close_by_rule("loss", loss, ref_loss)
    assert_close_by_rule("lse", lse, ref_lse)
    low = None if dtype == torch.float32 else torch_lowp(x, t, gl, 0.0, 0.0)[1]
    assert_close_by_rule("dlogits", dx, torch.nan_to_num(ref_dx, nan=0.0), low, kind="grad")


def test_cross_entropy_beyond_int32_elements(backend):
    """N * C > 2^31: rows past the 32-bit boundary are right (int64 row offsets), in place."""
    n, c = 16448, 131072  # 2.16e9 elements of bf16 (4.3 GB)
    assert n * c > 2**31
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(n, c, device="cuda", dtype=torch.bfloat16, generator=g)
    t = torch.randint(0, c, (n,), device="cuda", generator=g)
    t[-3] = IGNORE
    gl = torch.full((n,), 1.0 / n, device="cuda")
    loss, lse = backend.cross_entropy_fwd(x, t, IGNORE, 0.0, 0.0)
    rows = torch.cat([torch.arange(64, device="cuda"), torch.arange(n - 64, n, device="cuda")])
    xs = x[rows]
    dx = backend.cross_entropy_bwd(gl, x, t, lse, IGNORE, 0.0, 0.0, x)  # in place over 4.3 GB
    ref_loss, ref_lse, ref_dx = reference(xs, t[rows], gl[rows], 0.0, 0.0)
    assert_close_by_rule("loss", loss[rows], ref_loss)
    assert_close_by_rule("lse", lse[rows], ref_lse)
    assert_close_by_rule("dlogits", dx[rows], ref_dx, torch_lowp(xs, t[rows], gl[rows], 0.0, 0.0)[1], kind="grad")


def test_cross_entropy_out_of_range_target_does_not_assert(backend):
    """The op checks targets on the host; a target that reaches the kernels anyway gives a NaN loss and gradient row
    and no device-side assert (the context stays usable)."""
    x, t, gl = make_case(64, 1000, torch.float32)
    t[5], t[6] = 1000, -7
    t[7] = 3
    loss, lse = backend.cross_entropy_fwd(x, t, IGNORE, 0.0, 0.0)
    dx = backend.cross_entropy_bwd(gl, x, t, lse, IGNORE, 0.0, 0.0, torch.empty_like(x))
    torch.cuda.synchronize()
    assert torch.isnan(loss[5]) and torch.isnan(loss[6]) and torch.isfinite(loss[7])
    assert torch.isnan(dx[5]).all() and torch.isnan(dx[6]).all() and torch.isfinite(dx[7]).all()
    assert torch.isfinite(torch.cat([loss[:5], loss[7:]])).all()


def test_cross_entropy_expanded_grad_loss():
    """bigmodel._C takes grad_loss with any stride: a "mean" reduction's gradient is one scalar expanded over the rows
    (stride 0). (The triton launcher reads grad_loss as contiguous: the op hands it a contiguous one.)"""
    backend = BACKENDS["cuda"]
    if backend.machine_reasons():
        pytest.skip("; ".join(backend.machine_reasons()))
    x, t, _ = make_case(512, 32000, torch.bfloat16)
    loss, lse = backend.cross_entropy_fwd(x, t, IGNORE, 0.0, 0.0)
    scalar = torch.tensor(1.0 / 500, device="cuda")
    a = backend.cross_entropy_bwd(scalar.expand(512), x, t, lse, IGNORE, 0.0, 0.0, torch.empty_like(x))
    b = backend.cross_entropy_bwd(scalar.expand(512).contiguous(), x, t, lse, IGNORE, 0.0, 0.0, torch.empty_like(x))
    assert torch.equal(a, b)
