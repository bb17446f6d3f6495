"""bigmodel.ops.silu, swiglu and geglu on CPU: the reference and torch backends and the Triton kernels under the
interpreter, forward and both gradients against the PyTorch composition (F.silu(gate) * up, F.gelu(gate) * up) in
fp64, by DESIGN.md's rule; fresh random inputs; bad input; custom-op checks."""
import pytest
import torch
import torch.nn.functional as F

import bigmodel
from numerics import OP_BACKEND_DTYPES, assert_close_by_rule, count_launches, randn_input, requires_interpreter

BACKEND_DTYPES = OP_BACKEND_DTYPES
GATED = {
    "swiglu": (lambda g, u, b: bigmodel.ops.swiglu(g, u, backend=b), lambda g, u: F.silu(g) * u),
    "geglu": (lambda g, u, b: bigmodel.ops.geglu(g, u, backend=b), lambda g, u: F.gelu(g) * u),
    "geglu_tanh": (lambda g, u, b: bigmodel.ops.geglu(g, u, "tanh", backend=b),
                   lambda g, u: F.gelu(g, approximate="tanh") * u),
}


def run(ours, theirs, inputs, dy):
    outs = {}
    for which, fn, cast in (("ours", ours, lambda t: t), ("ref64", theirs, lambda t: t.double()),
                            ("lowp", theirs, lambda t: t)):
        leaves = [cast(t.detach()).clone().requires_grad_(True) for t in inputs]
        y = fn(*leaves)
        y.backward(cast(dy))
        outs[which] = [y.detach()] + [t.grad for t in leaves]
    for i, name in enumerate(["y"] + [f"d{j}" for j in range(len(inputs))]):
        ours_i, ref, lowp = (outs[w][i] for w in ("ours", "ref64", "lowp"))
        assert ours_i.dtype == lowp.dtype and ours_i.shape == lowp.shape
        assert_close_by_rule(name, ours_i, ref, lowp, "output" if name == "y" else "grad")


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("kind", list(GATED))
@pytest.mark.parametrize("shape", [(1,), (3, 7, 33), (4, 4100)], ids=str)  # a tail past one 2048-element block
def test_gated_matches_the_composition(backend, dtype, kind, shape):
    ours, theirs = GATED[kind]
    gate, up = randn_input(*shape, dtype=dtype, scale=2.0, shift=0.0), randn_input(*shape, dtype=dtype)
    run(lambda g, u: ours(g, u, backend), theirs, (gate, up), torch.randn(shape).to(dtype))


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_silu(backend, dtype):
    x = randn_input(5, 300, dtype=dtype, scale=4.0, shift=0.0)
    run(lambda x: bigmodel.ops.silu(x, backend=backend), F.silu, (x,), torch.randn(5, 300).to(dtype))
    assert isinstance(bigmodel.nn.SiLU(), torch.nn.SiLU)


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=requires_interpreter)])
def test_gated_non_contiguous_inputs(backend):
    both = randn_input(6, 2 * 40)
    gate, up = both[:, :40], both[:, 40:]  # the halves of a fused [gate | up] projection
    run(lambda g, u: bigmodel.ops.swiglu(g, u, backend=backend), lambda g, u: F.silu(g) * u, (gate, up),
        torch.randn(6, 40))


def test_silu_extremes_are_finite():
    x = torch.tensor([-1e4, -100.0, -20.0, 0.0, 20.0, 100.0, 1e4])
    torch.testing.assert_close(bigmodel.ops.silu(x, backend="reference"), F.silu(x))


def test_custom_op_passes_opcheck_and_compiles():
    gate, up = randn_input(4, 24).requires_grad_(), randn_input(4, 24).requires_grad_()
    torch.library.opcheck(torch.ops.bigmodel.gated_activation.default, (gate, up, "silu", "reference"))
    fn = torch.compile(lambda g, u: bigmodel.ops.swiglu(g, u, backend="reference"), fullgraph=True,
                       backend="aot_eager")
    torch.testing.assert_close(fn(gate, up), F.silu(gate) * up)


def test_cuda_backend_states_why_it_cannot():
    with pytest.raises(bigmodel.backends.BackendUnavailable, match="cuda: "):
        bigmodel.ops.swiglu(torch.randn(3), torch.randn(3), backend="cuda")


def test_bad_input():
    with pytest.raises(ValueError, match=r"gate and up must have one shape; got gate \(2, 3\) and up \(2, 4\)"):
        bigmodel.ops.swiglu(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(TypeError, match="gate and up must have one dtype"):
        bigmodel.ops.geglu(torch.randn(3), torch.randn(3).half())
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh'"):
        bigmodel.ops.geglu(torch.randn(3), torch.randn(3), "erf")
    with pytest.raises(TypeError, match="up must be a torch.Tensor"):
        bigmodel.ops.swiglu(torch.randn(3), [1.0, 2.0, 3.0])


GATED_ACTS = {"silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh")}


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("activation", list(GATED_ACTS))
@pytest.mark.parametrize("lead,d_model,d_ff", [((2, 5), 32, 48), ((37,), 40, 72), ((1,), 16, 16)],
                         ids=["2x5x32x48", "37x40x72", "1x16x16"])  # tails past the interpreter's 32-wide tiles
def test_gated_feed_forward_matches_the_llama_mlp(backend, dtype, activation, lead, d_model, d_ff):
    act = GATED_ACTS[activation]
    x = randn_input(*lead, d_model, scale=1.0, shift=0.0).to(dtype)
    w_gate, w_up = ((torch.randn(d_ff, d_model) / d_model ** 0.5).to(dtype) for _ in range(2))
    w_down = (torch.randn(d_model, d_ff) / d_ff ** 0.5).to(dtype)

    def ours(x, wg, wu, wd):
        return bigmodel.ops.gated_feed_forward(x, wg, wu, wd, activation, backend=backend)

    def theirs(x, wg, wu, wd):
        return F.linear(act(F.linear(x, wg)) * F.linear(x, wu), wd)

    run(ours, theirs, (x, w_gate, w_up, w_down), torch.randn(*lead, d_model).to(dtype))


@requires_interpreter
def test_gated_feed_forward_runs_the_fused_gemm_on_triton(monkeypatch):
    """On triton, gate and up come from the one fused GEMM kernel (not two GEMMs + the elementwise pass), with g and
    u saved only when a gradient is needed; the backward's dX is one two-pair kernel launch."""
    import bigmodel.kernels.gated_linear as gl
    launches = count_launches(monkeypatch, gl, ("_gated_fwd_kernel", "_bwd_dx2_kernel"))
    x, wg, wu, wd = torch.randn(9, 32), torch.randn(40, 32), torch.randn(40, 32), torch.randn(32, 40)
    with torch.no_grad():
        h, g, u = gl.gated_linear_fwd(x, wg, wu, "silu", save=False)
    assert g is None and u is None
    torch.testing.assert_close(h, F.silu(x @ wg.t()) * (x @ wu.t()), rtol=1e-5, atol=1e-5)
    x.requires_grad_()
    bigmodel.ops.gated_feed_forward(x, wg, wu, wd, backend="triton").sum().backward()
    assert launches == ["_gated_fwd_kernel", "_gated_fwd_kernel", "_bwd_dx2_kernel"], launches



def test_gated_linear_custom_op_passes_opcheck():
    x = randn_input(5, 16).requires_grad_()
    wg, wu = torch.randn(24, 16, requires_grad=True), torch.randn(24, 16, requires_grad=True)
    torch.library.opcheck(torch.ops.bigmodel.gated_linear.default, (x, wg, wu, "silu", True, "reference"))
    fn = torch.compile(lambda x, a, b, c: bigmodel.ops.gated_feed_forward(x, a, b, c, backend="reference"),
                       fullgraph=True, backend="aot_eager")
    wd = torch.randn(16, 24)
    torch.testing.assert_close(fn(x, wg, wu, wd), F.linear(F.silu(x @ wg.t()) * (x @ wu.t()), wd))


def test_gated_feed_forward_module_loads_a_hugging_face_mlp_state_dict():
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaMLP
    hf = LlamaMLP(transformers.LlamaConfig(hidden_size=32, intermediate_size=48))
    ours = bigmodel.nn.GatedFeedForward(32, 48, "silu", backend="reference")
    ours.load_state_dict(hf.state_dict())
    x = randn_input(4, 32, scale=1.0, shift=0.0)
    torch.testing.assert_close(ours(x), hf(x), rtol=1e-5, atol=1e-6)


class LoraLinear(torch.nn.Linear):  # shaped like PEFT's adapters: weight is the base layer's, forward adds a delta
    def forward(self, x):
        return super().forward(x) + 0.5 * x.sum(-1, keepdim=True)


@pytest.mark.parametrize("fused", [False, True], ids=["gate_up_down", "gate_up_proj"])
def test_gated_modules_call_wrapped_linears_as_modules(fused):
    """A Linear subclass (a LoRA adapter) must be called: the fused op would read its weight and drop the delta."""
    cls = bigmodel.nn.FusedGatedFeedForward if fused else bigmodel.nn.GatedFeedForward
    m = cls(16, 24, backend="reference")
    name = "gate_up_proj" if fused else "up_proj"
    plain = getattr(m, name)
    wrapped = LoraLinear(plain.in_features, plain.out_features, bias=False)
    wrapped.weight = plain.weight
    x = randn_input(3, 16, scale=1.0, shift=0.0)
    before = m(x)
    setattr(m, name, wrapped)
    after = m(x)
    if fused:
        g, u = wrapped(x).chunk(2, -1)
    else:
        g, u = m.gate_proj(x), wrapped(x)
    torch.testing.assert_close(after, m.down_proj(F.silu(g) * u))
    assert not torch.allclose(after, before)


def test_gated_feed_forward_bad_shapes():
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match=r"w_up must have w_gate's shape \(12, 8\)"):
        bigmodel.ops.gated_feed_forward(x, torch.randn(12, 8), torch.randn(10, 8), torch.randn(8, 12))
    with pytest.raises(ValueError, match=r"w_down must have shape \(out_features, 12\)"):
        bigmodel.ops.gated_feed_forward(x, torch.randn(12, 8), torch.randn(12, 8), torch.randn(8, 10))
    with pytest.raises(ValueError, match="activation must be one of"):
        bigmodel.ops.gated_feed_forward(x, torch.randn(12, 8), torch.randn(12, 8), torch.randn(8, 12), "relu")
