"""attn_implementation="bigmodel" on Hugging Face families with attention extras (issue 15 item 4), real models built
from tiny configs: Gemma 2 (logit softcap + sliding window), Mistral (sliding window), Qwen2 (sliding and full layers),
gpt-oss (sinks + sliding window). Each matches transformers' own eager attention run in fp64 (an independent
reference: repeat_kv, matmul, tanh, the boolean masks of masking_utils, softmax) in logits and in the gradient of
every parameter, by DESIGN's fp32 rule (relative error < 1e-5 outputs, < 1e-4 gradients). Padding-free packed batches
(DataCollatorWithFlattening) give each sequence's own logits and the same loss gradients; what arrives in the
attention function per mask registration is asserted case by case."""
import pytest
import torch
import torch.nn.functional as F

import bigmodel
from numerics import assert_close_by_rule, requires_interpreter

transformers = pytest.importorskip("transformers")
from transformers import AttentionInterface, DataCollatorWithFlattening  # noqa: E402
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask  # noqa: E402

from bigmodel.integrations import transformers as bm_hf  # noqa: E402

VOCAB, WINDOW, LENGTH = 128, 4, 14  # the window is far shorter than the sequences
COMMON = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
              vocab_size=VOCAB, max_position_embeddings=64, bos_token_id=0, eos_token_id=0, pad_token_id=0)


def gemma2():  # layer 0 sliding, layer 1 full; scores capped at 5 (they reach ~30 with the x10 weights below)
    return transformers.Gemma2Config(**COMMON, head_dim=16, query_pre_attn_scalar=16, sliding_window=WINDOW,
                                      attn_logit_softcapping=5.0)


def mistral():  # every layer sliding, the window passed as config.sliding_window
    return transformers.MistralConfig(**COMMON, sliding_window=WINDOW)


def qwen2():  # layer 0 full, layer 1 sliding (max_window_layers = 1)
    return transformers.Qwen2Config(**COMMON, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)


def gpt_oss():  # sinks on every layer, layer 0 sliding; 4 experts, 2 per token
    return transformers.GptOssConfig(**COMMON, head_dim=16, sliding_window=WINDOW, num_local_experts=4,
                                     num_experts_per_tok=2, rope_parameters={"rope_type": "default",
                                                                             "rope_theta": 10000.0})


FAMILIES = {"gemma2": gemma2, "mistral": mistral, "qwen2": qwen2}
if hasattr(transformers, "GptOssConfig"):
    FAMILIES["gpt_oss"] = gpt_oss
NEEDS_KERNEL = {"gpt_oss"}  # sinks: backend "torch" declines them


@pytest.fixture(scope="module", autouse=True)
def _registered():
    assert bm_hf.register() == "bigmodel"


def build(name, attn, **changes):
    config = FAMILIES[name]()
    for key, value in changes.items():
        setattr(config, key, value)
    extra = {"experts_implementation": "eager"} if name == "gpt_oss" else {}  # grouped_mm has no fp64
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32,
                                                          **extra)
    with torch.no_grad():  # weights bigger than the 0.02 init, so that attention is far from uniform
        for pname, p in model.named_parameters():
            if p.dim() >= 2:
                p.mul_(10.0)
            if pname.endswith("sinks"):  # of the order of the largest scores, so that they matter
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 3.0 + 10.0)
    return model.eval()


def pair(name, **changes):
    """(ours: fp32 on "bigmodel", reference: the same weights, eager attention in fp64)."""
    return build(name, "bigmodel", **changes), build(name, "eager", **changes).double()


def inputs(padded):
    ids = torch.randint(1, VOCAB, (3, LENGTH), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(3, LENGTH, dtype=torch.long)
    if padded:  # holes (keys real tokens would see) and right padding, each shorter than the window, so that every
        # query row sees a key: the fp64 eager reference takes its softmax in fp32, where a row of finfo(fp64).min
        # becomes -inf and NaN (left padding would do that)
        mask[1, 2:4] = mask[1, LENGTH - 3:] = 0
        mask[2, 6:9] = mask[2, LENGTH - 2:] = 0
    return ids, mask


def train_step(model, backend, **batch):
    model.train()
    model.zero_grad()
    with bigmodel.use_backend(backend):
        out = model(**batch, use_cache=False)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    model.eval()
    return out.logits, grads


def assert_grads(grads, ref_grads):
    assert grads.keys() == ref_grads.keys()
    compared = 0
    for n, g in grads.items():
        if ref_grads[n] is None:  # an expert no token was routed to, in both
            assert g is None or not g.any(), f"d{n}: nonzero where the reference has no gradient"
            continue
        assert_close_by_rule(f"d{n}", g, ref_grads[n], kind="grad")
        compared += 1
    assert compared >= 10


# ------------------------------------------------------------------------------------------ dense / padded
TRITON = pytest.param("triton", marks=requires_interpreter)  # the kernels, under the interpreter (a few s each)


@pytest.mark.parametrize("backend", ["reference", "torch", TRITON])
@pytest.mark.parametrize("padded", [False, True], ids=["no-padding", "padding"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_matches_eager_in_logits_and_every_gradient(name, padded, backend):
    if backend == "torch" and name in NEEDS_KERNEL:
        pytest.skip("backend torch declines sinks (SDPA has none); covered on reference")
    ours, ref = pair(name)
    ids, mask = inputs(padded)
    labels = ids.masked_fill(mask == 0, -100)
    logits, grads = train_step(ours, backend, input_ids=ids, attention_mask=mask, labels=labels)
    ref_logits, ref_grads = train_step(ref, "reference", input_ids=ids, attention_mask=mask, labels=labels)
    keep = mask.bool()  # padded rows are not compared (eager averages their masked keys, we give 0)
    assert_close_by_rule(f"{name} logits", logits[keep], ref_logits[keep])
    assert_grads(grads, ref_grads)
    if name == "gpt_oss":
        assert all(ours.model.layers[i].self_attn.sinks.grad.abs().max() > 0 for i in range(2))


OFF = {  # the same model with one extra switched off, per family: each must change the reference's logits
    "gemma2": [{"attn_logit_softcapping": None}, {"sliding_window": 64}],
    "mistral": [{"sliding_window": None}],
    "qwen2": [{"sliding_window": 64}],
    "gpt_oss": [{"sliding_window": 64}, "sinks"],
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_extra_changes_the_reference(name):
    """The comparisons above could not pass with an extra dropped: each one moves eager's logits by far more than
    the 1e-5 tolerance."""
    ids, _ = inputs(False)
    with torch.no_grad():
        base = build(name, "eager").double()(ids).logits
        for change in OFF[name]:
            if change == "sinks":
                model = build(name, "eager").double()
                for layer in model.model.layers:
                    layer.self_attn.sinks.data.fill_(-1e4)  # exp(-1e4) = 0: no sink
            else:
                model = build(name, "eager", **change).double()
            rel = (model(ids).logits - base).abs().max() / base.abs().max()
            assert rel > 1e-2, f"{name}: switching off {change} moves the logits by only {rel:.1e}"


# ------------------------------------------------------------------------------------------ packed
SEQ_LENS = (5, 9, 3)


def packed_batch(flash_kwargs):
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(1, VOCAB, (n,), generator=g) for n in SEQ_LENS]
    collate = DataCollatorWithFlattening(return_flash_attn_kwargs=flash_kwargs)
    return seqs, collate([{"input_ids": s.tolist()} for s in seqs])


def separate_reference(ref, seqs):
    """Each sequence alone through the fp64 eager model: its logits, and the packed batch's loss (the mean over
    every next-token prediction inside a sequence) with its gradients."""
    ref.zero_grad()
    ref.train()
    logits = [ref(s[None], use_cache=False).logits[0] for s in seqs]
    loss = sum(F.cross_entropy(lg[:-1], s[1:], reduction="sum") for lg, s in zip(logits, seqs))
    (loss / sum(len(s) - 1 for s in seqs)).backward()
    ref.eval()
    return [lg.detach() for lg in logits], {n: p.grad for n, p in ref.named_parameters()}


@pytest.mark.parametrize("backend,flash_kwargs", [
    pytest.param("reference", False, id="reference-position_ids"),
    pytest.param("reference", True, id="reference-cu_seq_lens"),
    pytest.param("triton", False, marks=requires_interpreter, id="triton-position_ids")])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_packed_batch_matches_each_sequence_alone(name, backend, flash_kwargs, monkeypatch):
    seqs, batch = packed_batch(flash_kwargs)
    assert batch["input_ids"].shape == (1, sum(SEQ_LENS)) and "attention_mask" not in batch
    assert ("cu_seq_lens_q" in batch) == flash_kwargs
    ours, ref = pair(name)
    calls = []
    original = bm_hf.ops.attention_varlen
    monkeypatch.setattr(bm_hf.ops, "attention_varlen", lambda *a, **k: calls.append(a[3].tolist()) or
                        original(*a, **k))
    logits, grads = train_step(ours, backend, **batch)
    assert calls == [[0, 5, 14, 17]] * 2  # every layer, sliding or full, ran packed
    ref_logits, ref_grads = separate_reference(ref, seqs)
    starts = [0, 5, 14]
    for i, (start, n) in enumerate(zip(starts, SEQ_LENS)):
        assert_close_by_rule(f"{name} sequence {i} logits", logits[0, start:start + n], ref_logits[i])
    assert_grads(grads, ref_grads)


@pytest.mark.parametrize("name", ["gemma2", "mistral"])
def test_packed_with_a_cache_is_still_packed(name):
    """Default use_cache=True gives transformers' masks a cache, and then they do not look for packing (sdpa / eager
    let the sequences see each other). FlashAttention's path reads position_ids anyway, and so do we, on sliding and
    full layers alike."""
    seqs, batch = packed_batch(False)
    ours, ref = pair(name)
    with torch.no_grad(), bigmodel.use_backend("reference"):
        logits = ours(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=True).logits[0]
    ref_logits, _ = separate_reference(ref, seqs)
    for i, (start, n) in enumerate(zip([0, 5, 14], SEQ_LENS)):
        assert_close_by_rule(f"{name} sequence {i} logits", logits[start:start + n], ref_logits[i])


# ------------------------------------------------------------------------------------------ mask registrations
def _probe(seen, registration):
    """A recording attention function under a new name, with the mask builder `registration` (or none)."""
    name = "bigmodel_probe_" + {"bigmodel": "a", "sdpa": "b", "none": "c"}[registration]  # "sdpa" in a name
    # would make transformers check SDPA support

    def forward(module, query, key, value, attention_mask, **kwargs):
        pos = kwargs.get("position_ids")
        seen.append({"layer": module.layer_idx, "sliding": kwargs.get("sliding_window") is not None,
                     "mask": None if attention_mask is None else tuple(attention_mask.shape),
                     "cu_seq_lens": kwargs.get("cu_seq_lens_q") is not None,
                     "restart": pos is not None and bool((pos.diff(dim=-1) != 1).any())})
        return bm_hf.attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(name, forward)
    if registration != "none":
        AttentionMaskInterface.register(name, {"bigmodel": bm_hf.mask, "sdpa": sdpa_mask}[registration])
    return name


CASES = ["no-padding", "padding", "packed", "packed+cache", "packed+cu_seq_lens"]
B, L, T = 3, LENGTH, sum(SEQ_LENS)
# per registration and case: the mask that arrives at (sliding layer 0, full layer 1) of Gemma 2
ARRIVALS = {
    "bigmodel": {"no-padding": (None, None), "padding": ((B, 1, L, L),) * 2, "packed": (None, None),
                 "packed+cache": (None, None), "packed+cu_seq_lens": (None, None)},
    # transformers' SDPA builder: an O(L^2) mask for every sliding layer and for packing; with a cache it does not
    # see the packing (the sliding layer's mask lets sequences see each other, the full layer gets None)
    "sdpa": {"no-padding": ((B, 1, L, L), None), "padding": ((B, 1, L, L),) * 2, "packed": ((1, 1, T, T),) * 2,
             "packed+cache": ((1, 1, T, T), None), "packed+cu_seq_lens": ((1, 1, T, T),) * 2},
    # no mask registration: transformers builds no mask at all, even for padding (wrong results): register() both
    "none": {case: (None, None) for case in CASES},
}


@pytest.mark.parametrize("registration", list(ARRIVALS))
def test_what_arrives_in_the_attention_function(registration):
    seen = []
    model = build("gemma2", _probe(seen, registration))
    ids, mask = inputs(True)
    _, packed = packed_batch(False)
    _, flash = packed_batch(True)
    runs = {"no-padding": dict(input_ids=ids, use_cache=False),
            "padding": dict(input_ids=ids, attention_mask=mask, use_cache=False),
            "packed": dict(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False),
            "packed+cache": dict(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=True),
            "packed+cu_seq_lens": {**{k: v for k, v in flash.items() if k != "labels"}, "use_cache": False}}
    for case in CASES:
        seen.clear()
        with torch.no_grad(), bigmodel.use_backend("reference"):
            model(**runs[case])
        assert [s["layer"] for s in seen] == [0, 1] and [s["sliding"] for s in seen] == [True, False]
        assert tuple(s["mask"] for s in seen) == ARRIVALS[registration][case], (registration, case)
        assert all(s["restart"] == case.startswith("packed") for s in seen)
        assert all(s["cu_seq_lens"] == (case == "packed+cu_seq_lens") for s in seen)


def test_sdpa_mask_registration_is_correct_but_quadratic():
    """With transformers' sdpa_mask instead of ours, a packed batch (no cache) arrives as (1, 1, T, T) masks that
    hold the packing: the dense path with the window is correct too."""
    seqs, batch = packed_batch(False)
    name = _probe([], "sdpa")
    ours, ref = build("gemma2", name), build("gemma2", "eager").double()
    with torch.no_grad(), bigmodel.use_backend("reference"):
        logits = ours(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits[0]
    ref_logits, _ = separate_reference(ref, seqs)
    for i, (start, n) in enumerate(zip([0, 5, 14], SEQ_LENS)):
        assert_close_by_rule(f"sequence {i} logits", logits[start:start + n], ref_logits[i])


def test_mask_builder_falls_back_to_sdpa_for_anything_else():
    from transformers import masking_utils as mu
    causal, sliding = mu.causal_mask_function, mu.sliding_window_causal_mask_function(WINDOW)
    pos = torch.tensor([[0, 1, 2, 0, 1, 0]])
    packed = mu.and_masks(mu.remap_positions_for_packed_sequence(causal, pos),
                          mu.packed_sequence_mask_function(mu.find_packed_sequence_indices(pos)))
    gemma = transformers.Gemma2Config(**COMMON, sliding_window=WINDOW)
    args = dict(batch_size=1, q_length=6, kv_length=6, config=gemma)
    assert bm_hf.mask(mask_function=packed, **args) is None
    assert bm_hf.mask(mask_function=sliding, local_size=WINDOW, **args) is None
    image = mu.or_masks(causal, lambda b, h, q, kv: kv == 0)  # an overlay we do not know: the full mask
    assert bm_hf.mask(mask_function=mu.and_masks(packed, image), allow_is_causal_skip=False, **args).shape == \
        (1, 1, 6, 6)
    padding = torch.tensor([[0, 1, 1, 1, 1, 1]], dtype=torch.bool)  # padding: the full mask
    assert bm_hf.mask(mask_function=sliding, local_size=WINDOW, attention_mask=padding, **args).shape == (1, 1, 6, 6)
    decode = dict(args, q_length=1, q_offset=5)  # queries not at keys 0..L-1: the window needs the mask
    assert bm_hf.mask(mask_function=sliding, local_size=WINDOW, **decode).shape == (1, 1, 1, 6)
    phimoe_like = transformers.LlamaConfig(**COMMON)  # no layer_types, a family not known to pass its window
    phimoe_like.sliding_window = WINDOW
    assert bm_hf.mask(mask_function=sliding, local_size=WINDOW, **dict(args, config=phimoe_like)).shape == \
        (1, 1, 6, 6)


# ------------------------------------------------------------------------------------------ generation, errors
@pytest.mark.parametrize("name", ["gemma2", "mistral"])
def test_generate_past_the_window_matches_eager(name):
    ours, ref = build(name, "bigmodel"), build(name, "eager")
    ids, mask = inputs(False)
    mask = mask[:2].clone()
    mask[1, :3] = 0  # left padding, as generate() wants for a batch
    with bigmodel.use_backend("reference"):
        got = ours.generate(ids[:2], attention_mask=mask, max_new_tokens=8, do_sample=False)
    expected = ref.generate(ids[:2], attention_mask=mask, max_new_tokens=8, do_sample=False)
    assert torch.equal(got, expected)


def test_bad_packing_arguments_are_clear_errors():
    model = build("mistral", "bigmodel")
    _, batch = packed_batch(True)
    del batch["cu_seq_lens_k"], batch["labels"]
    with pytest.raises(ValueError, match="cu_seq_lens_q and cu_seq_lens_k"), torch.no_grad():
        model(**batch, use_cache=False)
    with pytest.raises(ValueError, match="sliding_window must be a positive int"):
        bm_hf.sliding_window(model.model.layers[0].self_attn, {"sliding_window": -3})


def test_readme_padding_free_example_runs(monkeypatch):
    """The README's "Padding-free training with Hugging Face" block, as written: one packed training step whose
    every layer runs attention_varlen over the collator's three sequences."""
    import pathlib
    import re
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Padding-free training with Hugging Face", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    calls = []
    original = bm_hf.ops.attention_varlen
    monkeypatch.setattr(bm_hf.ops, "attention_varlen", lambda *a, **k: calls.append(a[3].tolist()) or
                        original(*a, **k))
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)  # auto: the reference on CPU (torch declines varlen)
    assert calls == [[0, 5, 8, 17]] * 2
    assert torch.isfinite(scope["loss"]) and scope["loss"].item() > 0
    assert all(p.grad is not None for p in scope["model"].parameters())


def test_position_ids_are_read_once_per_forward(monkeypatch):
    """The packing of one forward's position_ids is found once and reused by every layer; new ids are read anew."""
    reads = []
    original = bm_hf._packing_from_positions
    monkeypatch.setattr(bm_hf, "_packing_from_positions", lambda *a: reads.append(1) or original(*a))
    model = build("gemma2", "bigmodel")
    _, batch = packed_batch(False)
    with torch.no_grad(), bigmodel.use_backend("reference"):
        model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
        assert len(reads) == 1
        model(input_ids=batch["input_ids"], position_ids=batch["position_ids"].clone(), use_cache=False)
        assert len(reads) == 2
        pos = batch["position_ids"].clone()
        first = model(input_ids=batch["input_ids"], position_ids=pos, use_cache=False).logits
        pos.copy_(torch.arange(pos.size(1)))  # written in place: one sequence now, read again
        whole = model(input_ids=batch["input_ids"], position_ids=pos, use_cache=False).logits
    assert len(reads) == 4
    assert not torch.allclose(first[0, 5:], whole[0, 5:])
