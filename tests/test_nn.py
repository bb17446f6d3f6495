"""bigmodel.nn.LayerNorm as a drop-in for torch.nn.LayerNorm, and bigmodel.patch(model)."""
import copy

import pytest
import torch

import bigmodel
from numerics import BACKENDS_CPU, assert_close_by_rule, randn_input, requires_interpreter



def _randomize(m: torch.nn.Module):
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + (1.0 if p.dim() and p is getattr(m, "weight", None) else 0.0))
    return m


# ------------------------------------------------------------------------------------------ constructor
def test_is_a_torch_layer_norm():
    assert issubclass(bigmodel.nn.LayerNorm, torch.nn.LayerNorm)
    assert isinstance(bigmodel.nn.LayerNorm(8), torch.nn.LayerNorm)


@pytest.mark.parametrize("kwargs", [
    dict(normalized_shape=16),
    dict(normalized_shape=(4, 8)),
    dict(normalized_shape=[4, 8], eps=1e-3),
    dict(normalized_shape=16, elementwise_affine=False),
    dict(normalized_shape=16, bias=False),
    dict(normalized_shape=16, dtype=torch.float16),
    dict(normalized_shape=16, device="meta"),
    dict(normalized_shape=16, device="cpu", dtype=torch.float64),
], ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_same_constructor_as_torch(kwargs):
    ours, theirs = bigmodel.nn.LayerNorm(**kwargs), torch.nn.LayerNorm(**kwargs)
    assert ours.normalized_shape == theirs.normalized_shape
    assert ours.eps == theirs.eps and ours.elementwise_affine == theirs.elementwise_affine
    assert [(n, p.shape, p.dtype, p.device) for n, p in ours.named_parameters()] == \
           [(n, p.shape, p.dtype, p.device) for n, p in theirs.named_parameters()]
    assert (ours.bias is None) == (theirs.bias is None) and (ours.weight is None) == (theirs.weight is None)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    assert ours.backend is None


def test_positional_constructor_and_backend_kw():
    m = bigmodel.nn.LayerNorm(16, 1e-3, True, False, None, torch.float32, backend="reference")
    assert m.eps == 1e-3 and m.bias is None and m.backend == "reference"
    assert "backend='reference'" in repr(m)
    assert "backend" not in repr(bigmodel.nn.LayerNorm(16))


@pytest.mark.parametrize("backend", BACKENDS_CPU)
@pytest.mark.parametrize("kwargs", [dict(), dict(bias=False), dict(elementwise_affine=False), dict(eps=1e-2)],
                         ids=["affine", "no-bias", "no-affine", "eps"])
def test_loads_torch_state_dict_and_matches(backend, kwargs):
    shape = (48,)
    theirs = _randomize(torch.nn.LayerNorm(shape, **kwargs))
    ours = bigmodel.nn.LayerNorm(shape, backend=backend, **kwargs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    ref64 = copy.deepcopy(theirs).double()

    x = randn_input(3, 5, 48)
    dy = torch.randn(3, 5, 48)
    outs = {}
    for name, m in (("ours", ours), ("torch", theirs), ("ref", ref64)):
        xi = (x.double() if name == "ref" else x.clone()).requires_grad_(True)
        y = m(xi)
        y.backward(dy.double() if name == "ref" else dy)
        outs[name] = [y.detach(), xi.grad] + [p.grad for p in m.parameters()]
    assert len(outs["ours"]) == len(outs["ref"])
    names = ["y", "dx"] + [n for n, _ in ours.named_parameters()]
    for i, n in enumerate(names):
        assert_close_by_rule(n, outs["ours"][i], outs["ref"][i], outs["torch"][i], "output" if i == 0 else "grad")


def test_state_dict_loads_into_torch_layer_norm():
    ours = _randomize(bigmodel.nn.LayerNorm((4, 8), backend="reference"))
    theirs = torch.nn.LayerNorm((4, 8))
    theirs.load_state_dict(ours.state_dict(), strict=True)
    for k, v in ours.state_dict().items():
        assert torch.equal(theirs.state_dict()[k], v)
    x = randn_input(2, 4, 8)
    assert_close_by_rule("y", ours(x).detach(), copy.deepcopy(theirs).double()(x.double()).detach())


def test_fp16_module_matches_torch_rule():
    theirs = _randomize(torch.nn.LayerNorm(64)).half()
    ours = bigmodel.nn.LayerNorm(64, dtype=torch.float16, backend="reference")
    ours.load_state_dict(theirs.state_dict())
    x = randn_input(4, 64, dtype=torch.float16)
    ref = copy.deepcopy(theirs).double()(x.double())
    assert_close_by_rule("y", ours(x).detach(), ref.detach(), theirs(x).detach())


# ------------------------------------------------------------------------------------------ patch
class Block(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln_1 = torch.nn.LayerNorm(d)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(d, 2 * d), torch.nn.GELU(), torch.nn.Linear(2 * d, d))
        self.ln_2 = torch.nn.LayerNorm(d, bias=False)

    def forward(self, x):
        return x + self.ln_2(self.mlp(self.ln_1(x)))


class MyLayerNorm(torch.nn.LayerNorm):
    """A user subclass: it may change forward(), so patch must leave it alone."""

    def forward(self, x):
        return super().forward(x) * 2


class Model(torch.nn.Module):
    def __init__(self, d=32):
        super().__init__()
        self.blocks = torch.nn.ModuleList([Block(d) for _ in range(2)])
        self.head = torch.nn.Sequential(torch.nn.LayerNorm(d, elementwise_affine=False), MyLayerNorm(d))
        self.ln_f = torch.nn.LayerNorm(d, eps=1e-3)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.ln_f(self.head(x))


def _layer_norm_names(model, cls):
    return [n for n, m in model.named_modules() if type(m) is cls]


@pytest.mark.parametrize("backend", [None, "reference", pytest.param("triton", marks=requires_interpreter)])
def test_patch_replaces_nested_layer_norms(backend, monkeypatch):
    monkeypatch.delenv("BIGMODEL_BACKEND", raising=False)
    model = _randomize_all(Model())
    model.blocks[1].ln_1.eval()  # one submodule in eval mode while the model trains
    before_names = _layer_norm_names(model, torch.nn.LayerNorm)
    assert len(before_names) == 6
    params_before = dict(model.named_parameters())
    ref64 = copy.deepcopy(model).double()
    training = {n: m.training for n, m in model.named_modules()}

    out = bigmodel.patch(model, backend=backend)

    assert out is model
    assert _layer_norm_names(model, torch.nn.LayerNorm) == []
    assert _layer_norm_names(model, bigmodel.nn.LayerNorm) == before_names
    assert type(model.head[1]) is MyLayerNorm  # subclasses are not swapped
    for name in before_names:
        m = model.get_submodule(name)
        assert m.backend == backend
    params_after = dict(model.named_parameters())
    assert params_after.keys() == params_before.keys()
    for k, p in params_before.items():
        assert params_after[k] is p, f"{k} is a new Parameter object"
    assert {n: m.training for n, m in model.named_modules()} == training
    assert model.blocks[0].ln_2.bias is None and model.head[0].weight is None
    assert model.ln_f.eps == 1e-3 and model.head[0].elementwise_affine is False

    x = randn_input(2, 3, 32)
    y = model(x)
    assert_close_by_rule("patched model output", y.detach(), ref64(x.double()).detach())
    y.sum().backward()
    assert model.blocks[0].ln_1.weight.grad is not None


def _randomize_all(model):
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm) and m.weight is not None:
            with torch.no_grad():
                m.weight.copy_(torch.randn_like(m.weight) * 0.5 + 1)
                if m.bias is not None:
                    m.bias.copy_(torch.randn_like(m.bias) * 0.5)
    return model


def test_patch_eval_model_stays_eval():
    model = Model().eval()
    bigmodel.patch(model)
    assert not model.training and all(not m.training for m in model.modules())


def test_patch_sequential_and_optimizer_still_works():
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bigmodel.patch(model, backend="reference")
    assert type(model[1]) is bigmodel.nn.LayerNorm
    w_before = model[1].weight.detach().clone()
    model(randn_input(8, 16)).pow(2).sum().backward()
    opt.step()
    assert not torch.equal(model[1].weight.detach(), w_before), "the optimizer no longer updates the LayerNorm"


def test_patch_state_dict_unchanged():
    model = _randomize_all(Model())
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    bigmodel.patch(model)
    after = model.state_dict()
    assert after.keys() == sd.keys()
    for k in sd:
        assert torch.equal(after[k], sd[k])
    fresh = Model()
    fresh.load_state_dict(after, strict=True)  # loads back into the unpatched torch model


def test_patch_twice_is_a_no_op():
    model = Model()
    bigmodel.patch(model)
    first = {n: m for n, m in model.named_modules()}
    bigmodel.patch(model)
    assert {n: m for n, m in model.named_modules()} == first


def test_patch_root_layer_norm_raises():
    with pytest.raises(TypeError, match="bigmodel.patch: model is itself a LayerNorm"):
        bigmodel.patch(torch.nn.LayerNorm(8))
