"""bigmodel.models as Llama (norm="rms", positional="rotary", mlp="swiglu", GQA): the "llama" preset's shape (Llama
3.2 1B on meta), and the "llama-tiny" preset against an independent implementation, Hugging Face's
transformers.LlamaForCausalLM with the same weights: logits and every loss gradient in fp32 (relative error
||bigmodel - hf|| / ||hf|| < 1e-5 per tensor) on the reference and torch backends, and on Triton under the
interpreter; rotary positions after a KV-cache offset (chunked prefill, generate() with its cache = greedy decoding
recomputed without one = Hugging Face's greedy generate); and the train_step benchmark's plain-PyTorch Llama twin.

Weights are scrambled to O(1) (GPT-2's 0.02 init makes attention near-uniform and RMSNorm gains exactly 1, hiding
layout bugs), and rope_theta is 10000 in the model comparisons (Llama 3's 500000 in the angle test): with 500000 the
low-frequency pairs of a 16-dim head barely turn over a few dozen positions, so half the rotation would go untested.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from bigmodel.models import RotaryEmbedding, Transformer, TransformerConfig
from numerics import requires_interpreter

transformers = pytest.importorskip("transformers")

REL_TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread (conftest.py)


def tiny(**overrides):
    return TransformerConfig.from_preset("llama-tiny", **{"rope_theta": 10000.0, **overrides})


def hf_config(c: TransformerConfig):
    return transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.d_ff, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, hidden_act="silu",
        max_position_embeddings=c.max_seq_len, rms_norm_eps=c.layer_norm_eps, tie_word_embeddings=c.tied_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta}, attention_bias=c.bias,
        mlp_bias=c.bias, attention_dropout=0.0, pad_token_id=None, bos_token_id=None, eos_token_id=None)


def as_hf(c: TransformerConfig, sd: dict) -> dict:
    """bigmodel's tensors by name (a state_dict, or gradients) under Hugging Face Llama's names (the fused qkv_proj
    split into q / k / v)."""
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    out = {"model.embed_tokens.weight": sd["tok_emb.weight"], "model.norm.weight": sd["ln_f.weight"]}
    if not c.tied_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    for i in range(c.n_layers):
        b, h = f"blocks.{i}.", f"model.layers.{i}."
        wq, wk, wv = sd[b + "attn.qkv_proj.weight"].split([q, kv, kv])
        out.update({h + "self_attn.q_proj.weight": wq, h + "self_attn.k_proj.weight": wk,
                    h + "self_attn.v_proj.weight": wv, h + "self_attn.o_proj.weight": sd[b + "attn.out_proj.weight"],
                    h + "input_layernorm.weight": sd[b + "ln_1.weight"],
                    h + "post_attention_layernorm.weight": sd[b + "ln_2.weight"]})
        for name in ("gate_proj", "up_proj", "down_proj"):
            out[h + f"mlp.{name}.weight"] = sd[b + f"mlp.{name}.weight"]
    return out


def hf_twin(model: Transformer):
    """A Hugging Face LlamaForCausalLM (eager attention, fp32) holding model's weights."""
    hf = transformers.LlamaForCausalLM._from_config(hf_config(model.config), attn_implementation="eager",
                                                     dtype=torch.float32)
    missing, unexpected = hf.load_state_dict(as_hf(model.config, model.state_dict()), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)  # tied: lm_head is embed
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    return hf.eval()


def scramble(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 1.5 / math.sqrt(p.size(1)))
            else:  # RMSNorm gains
                p.normal_(1.0, 0.2)
    return model


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def logits_and_grads(logits_fn, params: dict, ids, targets):
    """Logits, and the gradient of the mean next-token cross entropy for each named parameter."""
    logits = logits_fn(ids)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    grads = torch.autograd.grad(loss, list(params.values()))
    return logits.detach(), dict(zip(params, grads))


# ------------------------------------------------------------------------------------------ presets
def test_llama_preset_is_llama_3_2_1b_on_meta():
    c = TransformerConfig.from_preset("llama")
    assert (c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.d_ff, c.head_dim) == \
        (128256, 2048, 16, 32, 8, 8192, 64)
    assert (c.norm, c.positional, c.mlp, c.rope_theta, c.layer_norm_eps, c.bias, c.tied_embeddings) == \
        ("rms", "rotary", "swiglu", 500000.0, 1e-5, False, True)
    assert c.max_seq_len >= 2048
    with torch.device("meta"):
        model = Transformer(c)
    assert model.lm_head.weight is model.tok_emb.weight and model.pos_emb is None
    d, kv, f = 2048, 512, 8192
    per_block = d * (d + 2 * kv) + d * d + 3 * d * f + 2 * d
    assert model.num_parameters() == 128256 * d + 16 * per_block + d == 1_235_814_400  # Llama 3.2 1B: 1.24B
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(hf_config(c))
    assert sum(p.numel() for p in hf.parameters()) == model.num_parameters()


def test_rotary_angles_match_hugging_face():
    c = tiny(rope_theta=500000.0)
    hf = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(hf_config(c))
    positions = torch.arange(3, 40)
    hf_cos, hf_sin = hf(torch.zeros(1, dtype=torch.float32), positions[None])
    cos, sin = RotaryEmbedding(c.head_dim, c.rope_theta)(positions)
    assert cos.shape == (37, c.head_dim) and cos.dtype == torch.float32
    torch.testing.assert_close(cos, hf_cos[0], rtol=0, atol=0)
    torch.testing.assert_close(sin, hf_sin[0], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ vs Hugging Face
@pytest.mark.parametrize("backend", ["reference", "torch", pytest.param("triton", marks=requires_interpreter)])
def test_logits_and_gradients_match_hugging_face_llama(backend):
    model = scramble(Transformer(tiny(backend=backend)))
    hf = hf_twin(model)
    batch, length = (2, 24) if backend != "triton" else (1, 16)  # the interpreter is slow
    ids = torch.randint(0, 256, (batch, length))
    targets = torch.randint(0, 256, (batch, length))
    logits, grads = logits_and_grads(model, dict(model.named_parameters()), ids, targets)
    hf_logits, hf_grads = logits_and_grads(lambda x: hf(input_ids=x).logits, dict(hf.named_parameters()), ids,
                                           targets)
    assert logits.shape == hf_logits.shape == (batch, length, 256)
    errors = {"logits": rel_err(logits, hf_logits)}
    ours = as_hf(model.config, grads)  # the tied embedding's gradient: one tensor (both uses), on both sides
    assert set(ours) == set(hf_grads)
    errors.update({f"d {name}": rel_err(ours[name], hf_grads[name]) for name in hf_grads})
    worst = max(errors, key=errors.get)
    assert errors[worst] < REL_TOL, f"{backend}: worst {worst} rel err {errors[worst]:.2e}"


def test_untied_geglu_gemma_style_block_matches_hugging_face_mlp():
    """mlp="geglu" (activation gelu_tanh) = Hugging Face's gated MLP with hidden_act "gelu_pytorch_tanh"."""
    model = scramble(Transformer(tiny(mlp="geglu", activation="gelu_tanh", tied_embeddings=False,
                                      backend="reference")))
    mlp = transformers.models.llama.modeling_llama.LlamaMLP(
        transformers.LlamaConfig(hidden_size=64, intermediate_size=256, hidden_act="gelu_pytorch_tanh"))
    mlp.load_state_dict(model.blocks[0].mlp.state_dict())
    x = torch.randn(2, 5, 64)
    assert rel_err(model.blocks[0].mlp(x), mlp(x)) < REL_TOL
    assert model.lm_head.weight is not model.tok_emb.weight


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_bf16_autocast_step(backend):
    """`bigmodel train`'s GPU precision on CPU: under bf16 autocast the attention output (bf16) joins the fp32 stream
    in add_rms_norm, rotary takes bf16 q / k with fp32 angles; logits come out bf16, every gradient is finite."""
    model = Transformer(tiny(backend=backend))
    ids = torch.randint(0, 256, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids)
    assert logits.dtype == torch.bfloat16
    F.cross_entropy(logits.float().flatten(0, 1), ids.flatten()).backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())


# ------------------------------------------------------------------------------------------ KV cache offsets
def test_chunked_prefill_with_cache_matches_hugging_face():
    """Rotary angles continue at the cache's length: chunks through the cache = one full Hugging Face forward."""
    model = scramble(Transformer(tiny(backend="reference"))).eval()
    hf = hf_twin(model)
    ids = torch.randint(0, 256, (2, 17))
    with torch.no_grad():
        full = hf(input_ids=ids).logits
        cache, chunks, start = model.new_kv_cache(2), [], 0
        for size in (6, 1, 4, 6):
            chunks.append(model(ids[:, start:start + size], kv_cache=cache))
            start += size
    assert rel_err(torch.cat(chunks, dim=1), full) < REL_TOL


def greedy_without_cache(model, ids, new_tokens):
    for _ in range(new_tokens):
        next_id = model(ids)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
    return ids


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_generate_with_cache_equals_recompute_and_hugging_face(backend):
    model = scramble(Transformer(tiny(backend=backend))).eval()
    prompt = torch.randint(0, 256, (2, 5))
    with torch.no_grad():
        expected = greedy_without_cache(model, prompt, 8)
    got = model.generate(prompt, 8, temperature=0.0)
    assert torch.equal(got, expected)
    assert len(set(expected[:, 5:].flatten().tolist())) > 1  # not a degenerate constant continuation
    hf = hf_twin(model)
    hf_out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, min_new_tokens=8,
                         do_sample=False, num_beams=1)
    assert torch.equal(hf_out, got)


@requires_interpreter
def test_generate_with_cache_on_triton():
    model = scramble(Transformer(tiny(backend="triton", n_layers=1))).eval()
    prompt = torch.randint(0, 256, (1, 4))
    with torch.no_grad():
        expected = greedy_without_cache(model, prompt, 3)
    assert torch.equal(model.generate(prompt, 3, temperature=0.0), expected)


# ------------------------------------------------------------------------------------------ the benchmark's baseline
def test_train_step_benchmark_plain_llama_twin_is_llama():
    """benchmarks/model_cases.py's "torch" provider for the Llama case (plain PyTorch, bigmodel's parameter names)
    computes Hugging Face's Llama with the same weights, and its CPU / GPU cases are the Llama shapes."""
    from benchmarks import model_cases

    model = scramble(Transformer(tiny(backend="reference")))
    twin = model_cases.twin_of(model, model.config)
    assert isinstance(twin, model_cases.PlainLlama)
    ids = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        assert rel_err(twin(ids), hf_twin(model)(input_ids=ids).logits) < REL_TOL
    bench = model_cases.TrainStepBench()
    cpu = [c for c in bench.cases("cpu", ("fp32",), ("fwd+bwd",)) if c.params["model"] == "llama-micro"]
    assert cpu and cpu[0].params["seqlen"] == 32 and bench.config(cpu[0]).mlp == "swiglu"
    gpu = [c for c in bench.cases("cuda", ("bf16",), ("fwd+bwd",)) if c.params["model"] == "llama1b-4layers"]
    c = bench.config(gpu[0])
    assert gpu[0].params["seqlen"] == 2048 and (c.d_model, c.n_kv_heads, c.n_layers, c.positional) == \
        (2048, 8, 4, "rotary")
    assert {x.provider for x in gpu if bench.tier(x) == 0} == {"torch", "bigmodel"}  # the headline pair, tier 0
