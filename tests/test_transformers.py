"""Real Hugging Face models (built from configs, no hub): bigmodel.patch() leaves their outputs unchanged and says what
it replaced; attn_implementation="bigmodel" (bigmodel.integrations.transformers.register) matches "sdpa" with and
without padding, for causal LMs (GPT-2, Llama with GQA) and an encoder (BERT), including generate()."""
import logging

import pytest
import torch

import bigmodel
from numerics import assert_close_by_rule, requires_interpreter

transformers = pytest.importorskip("transformers")
from bigmodel.integrations import transformers as bm_hf  # noqa: E402

VOCAB = 101


def gpt2():
    return transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64,
                                   bos_token_id=0, eos_token_id=0)


def bert():
    return transformers.BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                                   vocab_size=VOCAB, max_position_embeddings=64)


def llama():
    return transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                    intermediate_size=128, vocab_size=VOCAB, max_position_embeddings=64,
                                    bos_token_id=0, eos_token_id=0, pad_token_id=0)


CONFIGS = {"gpt2": (gpt2, transformers.AutoModelForCausalLM), "bert": (bert, transformers.AutoModel),
           "llama": (llama, transformers.AutoModelForCausalLM)}


def build(name, attn="sdpa", dtype=torch.float32):
    make_config, auto = CONFIGS[name]
    torch.manual_seed(0)
    model = auto.from_config(make_config(), attn_implementation=attn, dtype=dtype).eval()
    with torch.no_grad():  # weights bigger than the 0.02 init, so that attention is far from uniform
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(10.0)
    return model


def main_output(out):
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def inputs(padded):
    ids = torch.randint(1, VOCAB, (3, 14))
    mask = torch.ones(3, 14, dtype=torch.long)
    if padded:
        mask[1, 9:] = 0
        mask[2, 4:] = 0
    return ids, mask


# ------------------------------------------------------------------------------------------ patch
@pytest.mark.parametrize("name,expected", [("gpt2", {"LayerNorm": 5, "NewGELUActivation": 2,
                                                    "GPT2LMHeadModel.loss": 1}),  # the fused loss
                                           ("bert", {"LayerNorm": 5, "GELUActivation": 2})])
def test_patch_leaves_outputs_unchanged_and_reports(name, expected, caplog):
    model = build(name).double()
    ids, mask = inputs(padded=True)
    with torch.no_grad():
        before = main_output(model(ids, attention_mask=mask))
    with caplog.at_level(logging.INFO, logger="bigmodel"):
        assert bigmodel.patch(model, backend="reference") is model
    assert model.bigmodel_patched == expected
    assert any("bigmodel.patch: replaced" in r.message for r in caplog.records)
    kinds = {type(m) for m in model.modules()}
    assert bigmodel.nn.LayerNorm in kinds and bigmodel.nn.GELU in kinds
    with torch.no_grad():
        after = main_output(model.float()(ids, attention_mask=mask))
    keep = mask.bool()
    assert_close_by_rule("patched output", after[keep], before[keep])


# ------------------------------------------------------------------------------------------ attention backend
@pytest.fixture(scope="module", autouse=True)
def _registered():
    assert bm_hf.register() == "bigmodel"


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=requires_interpreter)])
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("padded", [False, True], ids=["no-padding", "padding"])
def test_attn_implementation_matches_sdpa(backend, name, padded):
    ref, ours = build(name, "sdpa"), build(name, "bigmodel")
    ours.load_state_dict(ref.state_dict())
    assert ours.config._attn_implementation == "bigmodel"
    ids, mask = inputs(padded)
    with torch.no_grad():
        expected = main_output(build(name, "sdpa").double()(ids, attention_mask=mask))
        with bigmodel.use_backend(backend):
            got = main_output(ours(ids, attention_mask=mask))
    keep = mask.bool()  # padded positions are not compared (SDPA and we may differ on rows that see nothing)
    assert_close_by_rule(f"{name} output", got[keep], expected[keep])


def test_attn_implementation_is_what_runs(monkeypatch):
    calls = []
    original = bm_hf.ops.attention
    monkeypatch.setattr(bm_hf.ops, "attention", lambda *a, **k: calls.append(1) or original(*a, **k))
    with bigmodel.use_backend("reference"), torch.no_grad():
        build("llama", "bigmodel")(torch.randint(1, VOCAB, (1, 5)))
    assert len(calls) == 2  # one per layer


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_generate_matches_sdpa(name):
    ref, ours = build(name, "sdpa"), build(name, "bigmodel")
    ours.load_state_dict(ref.state_dict())
    ids, mask = inputs(padded=False)
    with bigmodel.use_backend("reference"):
        got = ours.generate(ids[:2], attention_mask=mask[:2], max_new_tokens=6, do_sample=False)
    expected = ref.generate(ids[:2], attention_mask=mask[:2], max_new_tokens=6, do_sample=False)
    assert torch.equal(got, expected)


def test_training_step_gradients_match_sdpa():
    ref, ours = build("gpt2", "sdpa"), build("gpt2", "bigmodel")
    ours.load_state_dict(ref.state_dict())
    ref64 = build("gpt2", "sdpa").double()
    ids, mask = inputs(padded=True)
    grads = []
    for model in (ours, ref64):
        model.train()
        model.config.attn_pdrop = model.config.resid_pdrop = model.config.embd_pdrop = 0.0
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        with bigmodel.use_backend("reference"):
            model(ids, attention_mask=mask, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for n, g in grads[0].items():
        assert_close_by_rule(f"d{n}", g, grads[1][n], kind="grad")
