"""The Transformer with a paged KV cache (bigmodel/models/paged.py, issue 15 item 3): generate(cache="paged") gives
the greedy tokens of the dense cache and of recomputing without a cache, for every model variant; prompts of
different lengths from one pool; a continuation chunk (Lq > 1 against cached pages) equals the full forward's
logits; pages are recycled across sequences (bigmodel.models.batched_generation's continuous batching); errors."""
import pytest
import torch

import bigmodel
from bigmodel.models import PagedKVCache, Transformer
from bigmodel.models.batched_generation import serve
from numerics import requires_interpreter
from test_model import VARIANTS, greedy_without_cache, scramble, small_config, tokens

pytestmark = pytest.mark.usefixtures("one_thread")


def model_for(variant, backend="reference", **overrides):
    return scramble(Transformer(small_config(backend=backend, **{**VARIANTS[variant], **overrides}))).eval()


@pytest.mark.parametrize("variant", ["gpt", "gqa", "mqa-untied", "sinusoidal", "post-norm", "llama"])
def test_paged_generate_equals_dense_and_no_cache(variant):
    model = model_for(variant)
    prompt = tokens(model.config, 3, 13)  # 13 + 6 positions: pages of 16 are crossed
    expected = greedy_without_cache(model, prompt, 6)
    assert torch.equal(model.generate(prompt, 6, temperature=0.0), expected)
    assert torch.equal(model.generate(prompt, 6, temperature=0.0, cache="paged"), expected)
    assert len(set(expected[:, 13:].flatten().tolist())) > 1  # not a degenerate constant continuation


@requires_interpreter
def test_paged_generate_on_triton():
    model = model_for("llama", backend="triton")
    prompts = [tokens(model.config, 1, n)[0] for n in (3, 18)]
    outs = model.generate(prompts, 3, temperature=0.0, cache="paged")
    for prompt, out in zip(prompts, outs):
        assert torch.equal(out, greedy_without_cache(model, prompt[None], 3)[0])


@pytest.mark.parametrize("block_size", [16, 32])
def test_prompts_of_different_lengths_share_one_pool(block_size):
    model = model_for("gqa")
    prompts = [tokens(model.config, 1, n)[0] for n in (1, 7, 17, 3)]
    pool = model.new_paged_kv_cache(num_blocks=12, block_size=block_size, max_seqs=4)
    outs = model.generate(prompts, 5, temperature=0.0, cache=pool)
    for prompt, out in zip(prompts, outs):
        assert torch.equal(out, greedy_without_cache(model, prompt[None], 5)[0])
    assert pool.lengths == [5, 11, 21, 7]  # the sequences stay in a caller's pool: prompt + 4 (the last token
    # generated is never fed back)
    used = sum(-(-n // block_size) for n in pool.lengths)
    assert pool.free_blocks == 12 - used and sorted(p for s in pool.pages for p in s) == sorted(
        set(p for s in pool.pages for p in s))  # each page has one owner


def test_sampled_paged_generate():
    model = model_for("llama")
    outs = model.generate([tokens(model.config, 1, 4)[0], tokens(model.config, 1, 9)[0]], 5, temperature=0.8,
                          top_k=3, cache="paged")
    assert [o.numel() for o in outs] == [9, 14]
    assert all(0 <= int(o.min()) and int(o.max()) < model.config.vocab_size for o in outs)


@pytest.mark.parametrize("variant", ["gqa", "llama"])
def test_continuation_chunks_equal_the_full_forward(variant):
    """Sequences at different lengths take chunks of several tokens (attention_decode with Lq = 4, causal, against
    their pages): the logits equal one full forward over each whole sequence."""
    model = model_for(variant)
    ids = tokens(model.config, 2, 15)
    pool = model.new_paged_kv_cache(num_blocks=6, block_size=16, max_seqs=2)
    with torch.no_grad():
        full = model(ids)
        a = model(ids[:1, :7], kv_cache=pool.batch([0]))  # sequence 0: 7 positions
        b = model(ids[1:, :3], kv_cache=pool.batch([1]))  # sequence 1: 3
        chunk = model(torch.stack([ids[0, 7:11], ids[1, 3:7]]), kv_cache=pool.batch([0, 1]))  # 4 more each
    torch.testing.assert_close(a[0], full[0, :7], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b[0], full[1, :3], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunk[0], full[0, 7:11], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunk[1], full[1, 3:7], rtol=1e-5, atol=1e-5)
    assert pool.lengths == [11, 7]


def test_continuous_batching_recycles_pages():
    """bigmodel.models.batched_generation.serve: more requests than the pool holds at once; each equals greedy
    generate() with the dense cache, and pages freed by finished requests serve later ones."""
    model = model_for("llama")
    prompts = [tokens(model.config, 1, n)[0] for n in (5, 20, 2, 11, 9)]
    new = [6, 3, 8, 4, 5]
    outputs, stats = serve(model, prompts, new, num_blocks=3, block_size=16, max_seqs=2)
    for prompt, n, out in zip(prompts, new, outputs):
        assert torch.equal(out, model.generate(prompt[None], n, temperature=0.0)[0])
    assert stats["peak_pages"] <= 3 and stats["steps"] > max(new)  # requests had to wait for pages


def test_pool_full_changes_nothing():
    model = model_for("gpt")
    pool = model.new_paged_kv_cache(num_blocks=2, block_size=16, max_seqs=2)
    with torch.no_grad():
        model(tokens(model.config, 1, 20), kv_cache=pool.batch([0]))  # two pages
        with pytest.raises(RuntimeError, match=r"the pool is full: 3 more positions for sequences \[1\] need 1 new "
                                               r"pages of 16, 0 are free"):
            model(tokens(model.config, 1, 3), kv_cache=pool.batch([1]))
    assert pool.lengths == [20, 0] and pool.pages[1] == [] and pool.free_blocks == 0
    pool.release(0)
    assert pool.free_blocks == 2 and pool.lengths == [0, 0]
    with torch.no_grad():
        out = model(tokens(model.config, 1, 3), kv_cache=pool.batch([1]))
    assert out.shape == (1, 3, 16) and pool.lengths == [0, 3]


def test_errors():
    model = model_for("gpt")
    pool = model.new_paged_kv_cache(num_blocks=4, block_size=16, max_seqs=2)
    ids = tokens(model.config, 2, 3)
    with torch.no_grad():
        with pytest.raises(ValueError, match="no attention_mask"):
            model(ids, attention_mask=torch.ones(2, 3), kv_cache=pool)
        with pytest.raises(ValueError, match="ids has 2 rows but the paged batch has 1 sequences"):
            model(ids, kv_cache=pool.batch([0]))
        with pytest.raises(ValueError, match="exceed max_seq_len = 32"):
            model(tokens(model.config, 1, 33), kv_cache=pool.batch([0]))
        small = model.new_paged_kv_cache(num_blocks=4, block_size=16, max_seqs=1, max_len=16)
        with pytest.raises(ValueError, match="17 positions exceed a sequence's capacity of 16"):
            model(tokens(model.config, 1, 17), kv_cache=small)
    with pytest.raises(ValueError, match="must be distinct"):
        pool.batch([1, 1])
    with pytest.raises(ValueError, match=r"sequence index must be an int in \[0, 2\)"):
        pool.batch([2])
    with pytest.raises(ValueError, match="block_size must be a multiple of 16"):
        PagedKVCache(1, 1, 8, 4, block_size=8)
    with pytest.raises(ValueError, match="cache must be 'dense', 'paged' or a PagedKVCache"):
        model.generate(ids, 2, cache="ring")
    with pytest.raises(ValueError, match="list of non-empty 1-D prompts"):
        model.generate([ids[0], ids[1]], 2)  # a list needs a paged cache
    with pytest.raises(ValueError, match="list of non-empty 1-D prompts"):
        model.generate([ids[0], ids[1, :0]], 2, cache="paged")
    with torch.no_grad():
        model(ids[:1], kv_cache=pool.batch([0]))
    with pytest.raises(ValueError, match=r"needs 2 empty sequences \(0..1\); it has 2, of lengths \[3, 0\]"):
        model.generate(ids, 2, cache=pool)
    with pytest.raises(ValueError, match="inference only"), torch.no_grad():
        model_for("gpt", dropout=0.1).train()(ids, kv_cache=model.new_paged_kv_cache(4, max_seqs=2))
    torch_model = model_for("gpt", backend="torch")
    with pytest.raises(bigmodel.backends.BackendUnavailable, match="torch has no attention_decode"):
        torch_model.generate(ids, 3, cache="paged")
