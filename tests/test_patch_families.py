"""bigmodel.patch() on today's Hugging Face families, each built from a tiny config (no hub): Llama, Mistral, Qwen2,
Qwen3, Gemma, Gemma 2 and Phi-3. Every RMSNorm and every gated MLP (gate / up / down, or Phi-3's gate_up) is
recognised by structure (not by model) and replaced, sharing its weights; logits and every parameter's loss
gradient are unchanged (fp32 relative error < 1e-5) on the reference and
torch backends and on triton under the interpreter; generate() gives the same tokens; look-alike classes are left
alone with their reason."""
import copy

import pytest
import torch

import bigmodel
from numerics import requires_interpreter

transformers = pytest.importorskip("transformers")

VOCAB = 97
COMMON = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=96, vocab_size=VOCAB, max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
              pad_token_id=0)


def families():
    t = transformers
    return {
        "llama": (t.LlamaConfig, {}, "LlamaRMSNorm"),
        "mistral": (t.MistralConfig, dict(sliding_window=64), "MistralRMSNorm"),
        "qwen2": (t.Qwen2Config, {}, "Qwen2RMSNorm"),
        "qwen3": (t.Qwen3Config, dict(head_dim=16), "Qwen3RMSNorm"),  # + q_norm / k_norm per layer
        "gemma": (t.GemmaConfig, dict(head_dim=16), "GemmaRMSNorm"),  # (1 + w)
        "gemma2": (t.Gemma2Config, dict(head_dim=16, sliding_window=64), "Gemma2RMSNorm"),  # (1 + w), 4 per layer
        "phi3": (t.Phi3Config, dict(partial_rotary_factor=0.5), "Phi3RMSNorm"),  # rotates 8 of 16 head dims
    }


FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3"]


def build(name):
    config_cls, extra, _ = families()[name]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config_cls(**COMMON, **extra), attn_implementation="eager")
    with torch.no_grad():  # norm weights away from their 1 / 0 init, so that w and (1 + w) differ visibly
        for n, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.3)
    return model


def count_rotary_calls(monkeypatch):
    """A list that grows by one per bigmodel.ops.rotary_qk call (which patched attention modules make)."""
    calls, real = [], bigmodel.ops.rotary_qk

    def counting(*args, **kwargs):
        calls.append(kwargs.get("backend"))
        return real(*args, **kwargs)
    monkeypatch.setattr(bigmodel.ops, "rotary_qk", counting)
    return calls


def rms_norm_count(model, cls_name):
    return sum(type(m).__name__ == cls_name for m in model.modules())


def loss_and_grads(model, ids):
    model.zero_grad()
    # A patched model's fused loss (bigmodel/patch_loss.py, tests/test_patch_loss.py) returns no logits in training
    # mode: ask for them, so Hugging Face's own loss runs through the patched modules and the logits are compared.
    out = model(ids, labels=ids, **({"return_logits": True} if hasattr(model, "bigmodel_patched") else {}))
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("backend", ["reference", "torch", pytest.param("triton", marks=requires_interpreter)])
@pytest.mark.parametrize("name", FAMILIES)
def test_patch_replaces_every_rms_norm_and_keeps_logits_and_gradients(name, backend, monkeypatch):
    original = build(name)
    norm_cls = families()[name][2]
    expected = rms_norm_count(original, norm_cls)
    assert expected >= 5
    mlp_cls = norm_cls.replace("RMSNorm", "MLP")
    mlps = rms_norm_count(original, mlp_cls)
    patched = bigmodel.patch(copy.deepcopy(original), backend=backend)
    rotary = norm_cls.replace("RMSNorm", "Attention.apply_rotary_pos_emb")
    loss = norm_cls.replace("RMSNorm", "ForCausalLM.loss")  # the fused linear_cross_entropy loss
    assert patched.bigmodel_patched == {norm_cls: expected, mlp_cls: COMMON["num_hidden_layers"],
                                        rotary: COMMON["num_hidden_layers"], loss: 1}, patched.bigmodel_patched
    assert mlps == COMMON["num_hidden_layers"] and rms_norm_count(patched, norm_cls) == rms_norm_count(patched, mlp_cls) == 0
    assert not patched.bigmodel_skipped
    kinds = {type(m) for m in patched.modules()}
    offset = name.startswith("gemma")
    assert (bigmodel.nn.OffsetRMSNorm if offset else bigmodel.nn.RMSNorm) in kinds
    assert (bigmodel.nn.FusedGatedFeedForward if name == "phi3" else bigmodel.nn.GatedFeedForward) in kinds
    mlp = next(m for m in patched.modules() if isinstance(m, (bigmodel.nn.GatedFeedForward,
                                                                  bigmodel.nn.FusedGatedFeedForward)))
    assert mlp.activation == ("gelu_tanh" if offset else "silu")
    ids = torch.randint(3, VOCAB, (2, 11))
    calls = count_rotary_calls(monkeypatch)
    logits0, grads0 = loss_and_grads(original, ids)
    assert calls == [], "the unpatched model must keep Hugging Face's apply_rotary_pos_emb"
    logits1, grads1 = loss_and_grads(patched, ids)
    assert calls == [backend] * COMMON["num_hidden_layers"], calls
    assert rel(logits1, logits0) < 1e-5
    assert grads1.keys() == grads0.keys()
    worst = max(grads0, key=lambda n: rel(grads1[n], grads0[n]))
    assert rel(grads1[worst], grads0[worst]) < 1e-5, worst


@pytest.mark.parametrize("name", ["llama", "gemma"])
def test_patch_shares_the_weights(name):
    model = build(name)
    before = {n: p for n, p in model.named_parameters()}
    bigmodel.patch(model, backend="reference")
    after = {n: p for n, p in model.named_parameters()}
    assert before.keys() == after.keys() and all(before[n] is after[n] for n in before)
    assert model.state_dict().keys() == build(name).state_dict().keys()


@pytest.mark.parametrize("name", ["qwen3", "gemma2"])
def test_patched_generate_gives_the_same_tokens(name):
    model = build(name).eval()
    ids = torch.randint(3, VOCAB, (1, 6))
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    expected = model.generate(ids, **kwargs)
    bigmodel.patch(model, backend="reference")
    assert torch.equal(model.generate(ids, **kwargs), expected)


def test_look_alike_rms_norms_are_left_alone_with_a_reason():
    class BiasRMSNorm(torch.nn.Module):  # extra behaviour: a bias
        def __init__(self, n):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(n))
            self.variance_epsilon = 1e-6

        def forward(self, x):
            return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon) + 0.5

    class EpsilonRMSNorm(torch.nn.Module):  # another eps name
        def __init__(self, n):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(n))
            self.epsilon = 1e-6

        def forward(self, x):
            return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.epsilon)

    class PlainRMSNorm(EpsilonRMSNorm):  # a match: the same math with `eps`
        def __init__(self, n):
            super().__init__(n)
            self.eps = self.epsilon

    class ResidualRMSNorm(PlainRMSNorm):  # an extra (optional) argument the replacement would drop
        def forward(self, x, residual=None):
            return super().forward(x if residual is None else x + residual)

    class FussyRMSNorm(PlainRMSNorm):  # a forward that fails on a 2-D probe input
        def forward(self, x):
            if x.dim() != 3:
                raise ValueError("expects (B, L, D)")
            return super().forward(x)

    model = torch.nn.Sequential(BiasRMSNorm(8), EpsilonRMSNorm(8), PlainRMSNorm(8), ResidualRMSNorm(8),
                                FussyRMSNorm(8))
    bigmodel.patch(model, backend="reference")
    assert type(model[0]) is BiasRMSNorm and type(model[1]) is EpsilonRMSNorm
    assert type(model[2]) is bigmodel.nn.RMSNorm
    assert type(model[3]) is ResidualRMSNorm and type(model[4]) is FussyRMSNorm
    assert model.bigmodel_patched == {"PlainRMSNorm": 1}
    assert "extra behaviour" in model.bigmodel_skipped["BiasRMSNorm"]
    assert "eps attribute" in model.bigmodel_skipped["EpsilonRMSNorm"]
    assert "other arguments" in model.bigmodel_skipped["ResidualRMSNorm"]
    assert "failed on a probe input (ValueError: expects (B, L, D))" in model.bigmodel_skipped["FussyRMSNorm"]


def test_torch_rms_norm_is_replaced_too():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.RMSNorm(8, eps=1e-5))
    x = torch.randn(3, 8)
    before = model(x)
    bigmodel.patch(model, backend="reference")
    assert type(model[1]) is bigmodel.nn.RMSNorm and model.bigmodel_patched == {"RMSNorm": 1}
    torch.testing.assert_close(model(x), before)


def test_look_alike_mlps_are_left_alone_with_a_reason():
    class ScaledMLP(torch.nn.Module):  # extra behaviour: a scale on the output
        def __init__(self, d, f):
            super().__init__()
            self.gate_proj, self.up_proj = torch.nn.Linear(d, f, bias=False), torch.nn.Linear(d, f, bias=False)
            self.down_proj = torch.nn.Linear(f, d, bias=False)
            self.act_fn = torch.nn.SiLU()

        def forward(self, x):
            return 2.0 * self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))

    class TanhMLP(ScaledMLP):  # an activation bigmodel does not gate
        def __init__(self, d, f):
            super().__init__(d, f)
            self.act_fn = torch.nn.Tanh()

    class PlainMLP(ScaledMLP):
        def forward(self, x):
            return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))

    model = torch.nn.Sequential(ScaledMLP(8, 12), TanhMLP(8, 12), PlainMLP(8, 12))
    x = torch.randn(3, 8)
    before = model(x)
    bigmodel.patch(model, backend="reference")
    assert type(model[0]) is ScaledMLP and type(model[1]) is TanhMLP and type(model[2]) is bigmodel.nn.GatedFeedForward
    assert model.bigmodel_patched == {"PlainMLP": 1}
    assert "extra behaviour" in model.bigmodel_skipped["ScaledMLP"]
    assert "not SiLU or GELU" in model.bigmodel_skipped["TanhMLP"]
    torch.testing.assert_close(model(x), before)


def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):  # GPT-J's pairs: not Hugging Face's rotate_half
    def pairs(x):
        return torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return q * cos + pairs(q) * sin, k * cos + pairs(k) * sin


class PairsAttention(torch.nn.Module):  # calls this file's apply_rotary_pos_emb, a look-alike
    def forward(self, q, k, cos, sin):
        return apply_rotary_pos_emb(q, k, cos, sin)


def test_look_alike_rotary_functions_are_left_alone_with_a_reason():
    model = torch.nn.Sequential(PairsAttention())
    bigmodel.patch(model, backend="reference")
    assert model.bigmodel_patched == {}
    assert "does not compute Hugging Face's rotate_half" in model.bigmodel_skipped["PairsAttention.apply_rotary_pos_emb"]
    assert "forward" not in vars(model[0])


def test_patching_twice_rebinds_the_rotary_function_once(monkeypatch):
    model = bigmodel.patch(build("llama"), backend="reference")
    counts = dict(model.bigmodel_patched)
    forwards = [m.forward for m in model.modules() if "forward" in vars(m)]
    bigmodel.patch(model, backend="reference")
    assert [m.forward for m in model.modules() if "forward" in vars(m)] == forwards
    assert len(forwards) == COMMON["num_hidden_layers"] + 1  # + LlamaForCausalLM's fused-loss forward
    assert model.bigmodel_patched == counts  # the second call found nothing new and keeps the first's report


def test_patched_rotary_keeps_hugging_faces_type_promotion_for_mixed_dtypes():
    from transformers.models.llama import modeling_llama
    model = bigmodel.patch(build("llama"), backend="reference")
    attn = model.model.layers[0].self_attn
    patched_fn = attn.forward.__func__.__wrapped__.__globals__[modeling_llama.apply_rotary_pos_emb.__name__]
    q, k = torch.randn(1, 4, 5, 16), torch.randn(1, 2, 5, 16).bfloat16()
    theta = torch.randn(1, 5, 8)
    cos, sin = torch.cat((theta, theta), -1).cos(), torch.cat((theta, theta), -1).sin()
    for args in ((q, k, cos, sin), (q.bfloat16(), k, cos.half(), sin.half())):
        want = modeling_llama.apply_rotary_pos_emb(*args)
        got = patched_fn(*args)
        assert [t.dtype for t in got] == [t.dtype for t in want]
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=requires_interpreter)])
def test_patched_llama_compiles_with_fullgraph(backend, monkeypatch):
    """torch.compile(fullgraph=True) of a patched Llama: no graph break around bigmodel's custom ops (RMSNorm,
    gated MLP, q + k rotary), and the compiled logits and gradients equal the unpatched model's."""
    original = build("llama")
    patched = bigmodel.patch(copy.deepcopy(original), backend=backend)
    ids = torch.randint(3, VOCAB, (2, 9))
    logits0, grads0 = loss_and_grads(original, ids)
    torch._dynamo.reset()
    compiled = torch.compile(patched, fullgraph=True, backend="aot_eager")
    calls = count_rotary_calls(monkeypatch)
    logits1, _ = loss_and_grads(compiled, ids)
    grads1 = {n: p.grad for n, p in patched.named_parameters() if p.grad is not None}  # compiled's are prefixed
    assert calls, "the compiled model did not trace bigmodel's rotary"
    assert rel(logits1, logits0) < 1e-5
    assert grads1.keys() == grads0.keys()
    worst = max(grads0, key=lambda n: rel(grads1[n], grads0[n]))
    assert rel(grads1[worst], grads0[worst]) < 1e-5, worst
