"""bigmodel.patch() on Hugging Face causal LMs: with labels (training mode), the loss comes from
bigmodel.ops.linear_cross_entropy on the final hidden states and the logits are never materialised (bigmodel/patch_loss.py).

Tiny Llama, GPT-2 and Gemma 2 (final_logit_softcapping) built from configs (no hub, dropout 0). Patched vs unpatched:
the same loss and every parameter's gradient (fp32 relative error < 1e-5) on the reference and torch backends; the
output's logits are None with labels, real without labels, when asked (return_logits=True) or in eval mode;
num_items_in_batch, shift_labels and return_dict=False follow Hugging Face's ForCausalLMLoss; generate() gives the
same tokens; torch.compile(fullgraph=True) traces the fused forward; look-alikes (lm_head not a Linear, a different
loss, a MoE output with aux_loss, a forward without labels) are left alone with their reason."""
import copy
import inspect
import re

import pytest
import torch

import bigmodel

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread (conftest.py)

VOCAB = 97
LLAMA = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
             vocab_size=VOCAB, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def configs():
    t = transformers
    return {
        "llama": lambda: t.LlamaConfig(**LLAMA),
        "gpt2": lambda: t.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64, resid_pdrop=0.0,
                                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=2),
        "gemma2": lambda: t.Gemma2Config(**LLAMA, head_dim=16, sliding_window=64, final_logit_softcapping=3.0),
        "mixtral": lambda: t.MixtralConfig(**LLAMA, num_local_experts=2, num_experts_per_tok=1),
    }


CLASSES = {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel", "gemma2": "Gemma2ForCausalLM"}


def build(name):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(configs()[name](), attn_implementation="eager")
    with torch.no_grad():  # weights above the 0.02 init: logits far from uniform (and Gemma 2's softcap at work)
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    return model.train()


def count_calls(monkeypatch):
    """A list that grows by (backend, softcap) per bigmodel.ops.linear_cross_entropy_fp32 call (the fused loss)."""
    calls, real = [], bigmodel.ops.linear_cross_entropy_fp32

    def counting(*args, **kwargs):
        calls.append((kwargs.get("backend"), kwargs.get("softcap")))
        return real(*args, **kwargs)
    monkeypatch.setattr(bigmodel.ops, "linear_cross_entropy_fp32", counting)
    return calls


def batch():
    ids = torch.randint(3, VOCAB, (2, 11))
    labels = ids.clone()
    labels[0, :3] = -100  # a prompt left out of the loss
    return ids, labels


def loss_and_grads(model, **kwargs):
    model.zero_grad()
    out = model(**kwargs)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def assert_same_loss_and_grads(got, want):
    (out1, grads1), (out0, grads0) = got, want
    assert rel(out1.loss, out0.loss) < 1e-5, (out1.loss.item(), out0.loss.item())
    assert grads1.keys() == grads0.keys()
    worst = max(grads0, key=lambda n: rel(grads1[n], grads0[n]))
    assert rel(grads1[worst], grads0[worst]) < 1e-5, worst


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("name", ["llama", "gpt2", "gemma2"])
def test_patched_loss_and_gradients_equal_hugging_faces_without_logits(name, backend, monkeypatch):
    original = build(name)
    patched = bigmodel.patch(copy.deepcopy(original), backend=backend)
    assert patched.bigmodel_patched[f"{CLASSES[name]}.loss"] == 1
    assert not any(k.endswith(".loss") for k in patched.bigmodel_skipped), patched.bigmodel_skipped
    ids, labels = batch()
    calls = count_calls(monkeypatch)
    want = loss_and_grads(original, input_ids=ids, labels=labels)
    assert calls == [] and want[0].logits.shape == (2, 11, VOCAB)
    got = loss_and_grads(patched, input_ids=ids, labels=labels)
    softcap = 3.0 if name == "gemma2" else None
    assert calls == [(backend, softcap)]
    assert got[0].logits is None and type(got[0]) is type(want[0])
    assert_same_loss_and_grads(got, want)


def test_gemma2_softcap_changes_the_loss_and_is_applied():
    """With these weights Gemma 2's final_logit_softcapping (3.0) matters: without it the loss differs."""
    original = build("gemma2")
    patched = bigmodel.patch(copy.deepcopy(original), backend="reference")
    ids, labels = batch()
    with torch.no_grad():
        fused = patched(input_ids=ids, labels=labels).loss
        capped = original(input_ids=ids, labels=labels).loss
        original.config.final_logit_softcapping = None
        uncapped = original(input_ids=ids, labels=labels).loss
    assert rel(fused, capped) < 1e-5 and rel(uncapped, capped) > 1e-3


def test_logits_when_no_labels_when_asked_and_in_eval_mode(monkeypatch):
    original = build("llama")
    patched = bigmodel.patch(copy.deepcopy(original), backend="reference")
    ids, labels = batch()
    calls = count_calls(monkeypatch)
    with torch.no_grad():
        want = original(input_ids=ids, labels=labels)
        no_labels = patched(input_ids=ids)
        asked = patched(input_ids=ids, labels=labels, return_logits=True)
        patched.eval(), original.eval()
        in_eval = patched(input_ids=ids, labels=labels)
        assert calls == []  # the original forward ran each time: Hugging Face's own loss on the logits
        skipped_in_eval = patched(input_ids=ids, labels=labels, return_logits=False)
    assert calls == [("reference", None)] and skipped_in_eval.logits is None
    assert no_labels.loss is None
    for out in (no_labels, asked, in_eval):
        assert rel(out.logits, want.logits) < 1e-5
    for out in (asked, in_eval, skipped_in_eval):
        assert rel(out.loss, want.loss) < 1e-5
    assert "return_logits" in inspect.signature(patched.forward).parameters


def test_num_items_in_batch_shift_labels_and_return_dict(monkeypatch):
    original = build("gpt2")
    patched = bigmodel.patch(copy.deepcopy(original), backend="torch")
    ids, labels = batch()
    n = torch.tensor(7)  # e.g. the non-ignored labels of a whole gradient-accumulation step
    assert_same_loss_and_grads(loss_and_grads(patched, input_ids=ids, labels=labels, num_items_in_batch=n),
                               loss_and_grads(original, input_ids=ids, labels=labels, num_items_in_batch=n))
    with torch.no_grad():
        mean = patched(input_ids=ids, labels=labels).loss
        summed = patched(input_ids=ids, labels=labels, num_items_in_batch=n).loss
        assert rel(summed, mean * (labels[:, 1:] != -100).sum() / 7) < 1e-5
        shift = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:].flip(0)  # not labels' own shift
        got = patched(input_ids=ids, labels=labels, shift_labels=shift).loss
        want = original(input_ids=ids, labels=labels, shift_labels=shift).loss
        assert rel(got, want) < 1e-5 and rel(got, mean) > 1e-3
        tup = patched(input_ids=ids, labels=labels, return_dict=False)
        assert isinstance(tup, tuple) and tup[1] is None and rel(tup[0], mean) < 1e-5
        assert len(tup) == len(original(input_ids=ids, labels=labels, return_dict=False))


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_generate_is_unchanged(name, monkeypatch):
    original = build(name).eval()
    patched = bigmodel.patch(copy.deepcopy(original), backend="reference")
    calls = count_calls(monkeypatch)
    prompt = torch.randint(3, VOCAB, (1, 5))
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(patched.generate(prompt, **kwargs), original.generate(prompt, **kwargs))
    patched.train()  # no labels: still the model's own forward
    assert torch.equal(patched.generate(prompt, **kwargs), original.generate(prompt, **kwargs))
    assert calls == []


def test_compile_fullgraph_traces_the_fused_loss():
    original = build("llama")
    patched = bigmodel.patch(copy.deepcopy(original), backend="reference")
    ids, labels = batch()
    torch._dynamo.reset()
    compiled = torch.compile(patched, fullgraph=True, backend="aot_eager")
    want = loss_and_grads(original, input_ids=ids, labels=labels)
    out, _ = loss_and_grads(compiled, input_ids=ids, labels=labels)
    grads = {n: p.grad.clone() for n, p in patched.named_parameters() if p.grad is not None}
    assert out.logits is None
    assert_same_loss_and_grads((out, grads), want)
    torch._dynamo.reset()


def test_under_autocast_bf16():
    original = build("llama")
    patched = bigmodel.patch(copy.deepcopy(original), backend="torch")
    ids, labels = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss_and_grads(patched, input_ids=ids, labels=labels)
        want = loss_and_grads(original, input_ids=ids, labels=labels)
    assert got[0].logits is None and got[0].loss.dtype == torch.float32
    assert rel(got[0].loss, want[0].loss) < 2e-2


@pytest.mark.parametrize("num_items", [False, True], ids=["mean", "num_items_in_batch"])
def test_a_bf16_model_gets_hugging_faces_fp32_loss(num_items):
    """Without autocast, a bf16 model's loss is fp32 (HF upcasts its logits): the fused loss must not be rounded to
    bf16 first (that was off by up to ~0.4%)."""
    original = build("llama").to(torch.bfloat16)
    patched = bigmodel.patch(copy.deepcopy(original), backend="torch")
    ids, labels = batch()
    extra = {"num_items_in_batch": torch.tensor(7)} if num_items else {}
    with torch.no_grad():
        got = patched(input_ids=ids, labels=labels, **extra).loss
        want = original(input_ids=ids, labels=labels, **extra).loss
    assert got.dtype == want.dtype == torch.float32
    assert rel(got, want) < 1e-4, (got.item(), want.item())


def test_a_head_wrapped_after_patch_runs_its_own_forward(monkeypatch):
    """lm_head replaced after patch() (a LoRA adapter, a quantised layer): the fused loss would read its weight and
    skip its forward, so the patched model runs the original forward instead."""
    class ScaledHead(torch.nn.Linear):
        def forward(self, x):
            return 3 * super().forward(x)

    original = build("llama")
    patched = bigmodel.patch(copy.deepcopy(original), backend="reference")
    for m in (original, patched):
        head = ScaledHead(m.lm_head.in_features, m.lm_head.out_features, bias=False)
        head.weight = m.lm_head.weight
        m.lm_head = head
    calls = count_calls(monkeypatch)
    ids, labels = batch()
    got = loss_and_grads(patched, input_ids=ids, labels=labels)
    assert calls == [] and got[0].logits is not None
    assert_same_loss_and_grads(got, loss_and_grads(original, input_ids=ids, labels=labels))


def test_patching_twice_keeps_one_fused_forward():
    model = bigmodel.patch(build("llama"), backend="reference")
    forward, counts = model.forward, dict(model.bigmodel_patched)
    bigmodel.patch(model, backend="reference")
    assert model.forward == forward and model.bigmodel_patched == counts


class ScaledLinear(torch.nn.Linear):
    """An lm_head subclass (as a LoRA wrapper would be): its forward may differ from F.linear."""

    def forward(self, x):
        return super().forward(x) * 2


def test_look_alikes_are_left_alone_with_a_reason():
    subclass_head = build("llama")
    head = subclass_head.lm_head
    subclass_head.lm_head = ScaledLinear(head.in_features, head.out_features, bias=False)
    other_loss = build("llama")
    ForCausalLMLoss = transformers.loss.loss_utils.ForCausalLMLoss
    other_loss.loss_function = lambda logits, labels, vocab_size, **kw: ForCausalLMLoss(logits * 2, labels,
                                                                                        vocab_size, **kw)
    moe = build("mixtral")

    class NoLabels(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm_head = torch.nn.Linear(8, 5)

        def forward(self, x):
            return self.lm_head(x)

    cases = [(subclass_head, "LlamaForCausalLM", r"its lm_head is a ScaledLinear, not a torch.nn.Linear"),
             (other_loss, "LlamaForCausalLM", r"its loss is not cross_entropy\(lm_head\(hidden states\)\)"),
             (moe, "MixtralForCausalLM", r"its output has aux_loss, router_logits besides the loss and logits"),
             (torch.nn.Sequential(NoLabels()), "NoLabels", r"its forward takes no labels")]
    ids, labels = batch()
    for model, cls, reason in cases:
        bigmodel.patch(model, backend="reference")
        assert f"{cls}.loss" not in model.bigmodel_patched
        assert re.search(reason, model.bigmodel_skipped[f"{cls}.loss"]), model.bigmodel_skipped
        lm = model[0] if isinstance(model, torch.nn.Sequential) else model
        assert "forward" not in vars(lm)
    with torch.no_grad():
        assert other_loss(input_ids=ids, labels=labels).logits is not None  # Hugging Face's forward, as before
