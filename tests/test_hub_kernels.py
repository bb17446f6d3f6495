"""bigmodel.integrations.hub_kernels: a tiny LlamaForCausalLM (from a config, no hub) kernelized with the `kernels`
package and bigmodel's local "torch-universal" repository runs bigmodel.ops.rms_norm / rotary_qk /
gated_feed_forward in its RMSNorm, attention and MLP forwards, with unchanged logits and loss gradients (fp32).

transformers 5.24 activates its kernel decorators only with kernels 0.18.2 <= version < 0.19; with another version
(0.17.2 is the newest on the registry here) they are no-ops, so this test then does what the decorators would
have done (the RMSNorm hub name, the rotary function as a kernels Func in each attention's _kernel_funcs), undone
afterwards."""
import pytest
import torch

kernels = pytest.importorskip("kernels")
if not hasattr(kernels, "kernelize"):  # the repository's own kernels/ (bigmodel.kernels) shadows it from the root
    pytest.skip("`import kernels` is bigmodel's source kernels/ dir, not Hugging Face's package (run with python -P)",
                allow_module_level=True)
transformers = pytest.importorskip("transformers")

import bigmodel  # noqa: E402
from bigmodel.integrations import hub_kernels  # noqa: E402
from transformers.models.llama import modeling_llama  # noqa: E402

COUNTED = ("rms_norm", "rotary_qk", "gated_feed_forward")


def tiny_llama():
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=96, vocab_size=97, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.fixture
def hub_names(monkeypatch):
    """transformers' decorators, emulated where they are inactive; the kernelized rotary Func is reset after."""
    rotary = modeling_llama.apply_rotary_pos_emb
    if not hasattr(modeling_llama.LlamaRMSNorm, "kernel_layer_name"):
        monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "kernel_layer_name", "RMSNorm", raising=False)
        rotary = kernels.use_kernel_forward_from_hub("rotary_pos_emb")(rotary)
        monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", rotary)
    monkeypatch.setattr(modeling_llama.LlamaMLP, "kernel_layer_name", None, raising=False)
    monkeypatch.setattr(modeling_llama.LlamaMLP, "kernel_condition", None, raising=False)
    yield lambda model: [m.__dict__.setdefault("_kernel_funcs", {}).setdefault("rotary_pos_emb", rotary)
                         for m in model.modules() if isinstance(m, modeling_llama.LlamaAttention)]
    rotary.__dict__.pop("forward", None)  # kernelize set an instance forward on the shared function module


def loss_and_grads(model, ids):
    model.zero_grad()
    out = model(ids, labels=ids)
    out.loss.backward()
    return out.logits.detach().clone(), {n: p.grad.clone() for n, p in model.named_parameters()}


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def test_repository_layout(tmp_path):
    root = hub_kernels.repository(tmp_path)
    variant = root / "build" / "torch-universal"
    assert (variant / "metadata.json").is_file() and (variant / "bigmodel_hf" / "__init__.py").is_file()
    kernel = kernels.get_local_kernel(root)  # offline: a local path, no Hub
    assert kernel.layers.RMSNorm is hub_kernels.RMSNorm and kernel.layers.GatedMLP is hub_kernels.GatedMLP


def test_kernelized_llama_runs_bigmodel_ops(hub_names, monkeypatch, tmp_path):
    model = tiny_llama().train()
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(1))
    want_logits, want_grads = loss_and_grads(model, ids)

    calls = []
    for name in COUNTED:
        real = getattr(bigmodel.ops, name)
        monkeypatch.setattr(bigmodel.ops, name, lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k))
    hub_names(model)
    hub_kernels.kernelize(model, path=tmp_path, device="cpu")
    assert model.model.norm.forward.__func__ is hub_kernels.RMSNorm.forward
    assert model.model.layers[0].mlp.forward.__func__ is hub_kernels.GatedMLP.forward

    got_logits, got_grads = loss_and_grads(model, ids)
    # per layer: 2 RMSNorms, 1 rotary (q and k), 1 MLP; plus the final norm
    assert {n: calls.count(n) for n in COUNTED} == {"rms_norm": 5, "rotary_qk": 2, "gated_feed_forward": 2}
    assert rel(got_logits, want_logits) < 1e-5
    for n, g in want_grads.items():
        assert rel(got_grads[n], g) < 1e-5, n


def test_inactive_decorators_are_reported(monkeypatch):
    if hasattr(modeling_llama.LlamaRMSNorm, "kernel_layer_name"):
        pytest.skip("transformers' kernel decorators are active with this kernels version")
    monkeypatch.setattr(modeling_llama.LlamaMLP, "kernel_layer_name", None, raising=False)
    monkeypatch.setattr(modeling_llama.LlamaMLP, "kernel_condition", None, raising=False)
    with pytest.raises(RuntimeError, match="decorators are inactive"):
        hub_kernels.kernelize(tiny_llama(), device="cpu")
