"""Batched generation from one paged KV-cache pool: requests of different lengths join and leave a running batch
(continuous batching, as serving engines do), their keys and values in pages of a shared pool.

    python -m bigmodel.models.batched_generation [--backend reference|triton|auto] [--block-size 16]

Runs on the CPU in seconds (a tiny Llama-style model with random weights: the tokens mean nothing, the mechanics
are the point) and checks every request's tokens against plain greedy generate() with the dense cache.
Each step: admit waiting requests while a sequence slot and enough free pages exist (each prefilled alone at its
own length), then one decode step for every running sequence together (bigmodel.ops.attention_decode over the
pages, each sequence at its own length), then release the finished ones' pages to the pool.
"""
import argparse
import time

import torch

from .config import TransformerConfig
from .transformer import Transformer


@torch.no_grad()
def serve(model, prompts, max_new_tokens, *, num_blocks, block_size=16, max_seqs=4, log=None):
    """Greedy continuations of every prompt (1-D LongTensors) by max_new_tokens tokens (an int, or one per
    prompt), at most max_seqs at a time from a pool of num_blocks pages. Returns (outputs in request order, stats)."""
    new_tokens = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    cache = model.new_paged_kv_cache(num_blocks, block_size, max_seqs,
                                     max(p.numel() + n for p, n in zip(prompts, new_tokens)))
    pages_for = [-(-(p.numel() + n) // block_size) for p, n in zip(prompts, new_tokens)]
    if max(pages_for) > num_blocks:
        raise ValueError(f"serve: a request needs {max(pages_for)} pages; the pool has {num_blocks}")
    waiting = list(range(len(prompts)))
    running = {}  # sequence slot -> [request, its new tokens, logits of its next position]
    outputs, steps, peak = [None] * len(prompts), 0, 0
    reserved = 0  # pages promised to running requests (admission keeps every one of them able to finish)
    while waiting or running:
        free_slots = [s for s in range(max_seqs) if s not in running]
        while waiting and free_slots and reserved + pages_for[waiting[0]] <= num_blocks:
            request, slot = waiting.pop(0), free_slots.pop(0)
            logits = model(prompts[request][None], kv_cache=cache.batch([slot]))[:, -1]  # prefill
            running[slot] = [request, [], logits]
            reserved += pages_for[request]
            if log:
                log(f"step {steps:3d}: request {request} ({prompts[request].numel()} tokens) -> sequence {slot}")
        slots = sorted(running)
        next_ids = torch.cat([running[s][2] for s in slots]).argmax(-1, keepdim=True)  # (B, 1) greedy
        for s, token in zip(slots, next_ids[:, 0].tolist()):
            running[s][1].append(token)
        peak = max(peak, num_blocks - cache.free_blocks)
        unfinished = [s for s in slots if len(running[s][1]) < new_tokens[running[s][0]]]
        if unfinished:  # one decode step for every running sequence at once, each at its own length
            rows = [slots.index(s) for s in unfinished]
            logits = model(next_ids[rows], kv_cache=cache.batch(unfinished))[:, -1]
            for s, row in zip(unfinished, logits.split(1)):
                running[s][2] = row
        for s in [s for s in slots if s not in unfinished]:
            request, tokens, _ = running.pop(s)
            outputs[request] = torch.cat([prompts[request], torch.tensor(tokens, dtype=prompts[request].dtype)])
            reserved -= pages_for[request]
            cache.release(s)
            if log:
                log(f"step {steps:3d}: request {request} done, sequence {s} released "
                    f"({cache.free_blocks}/{num_blocks} pages free)")
        steps += 1
    return outputs, dict(steps=steps, peak_pages=peak, num_blocks=num_blocks)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="auto", help="bigmodel backend for the model (default auto)")
    parser.add_argument("--block-size", type=int, default=16)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    config = TransformerConfig.from_preset("llama-tiny", backend=args.backend)
    model = Transformer(config).eval()
    with torch.no_grad():  # O(1) random weights: varied continuations (GPT-2's small init repeats one token)
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 1.5 / p.size(1) ** 0.5)
    lengths, new_tokens = (5, 37, 12, 70, 3, 21), (12, 4, 20, 8, 16, 6)
    prompts = [torch.randint(0, config.vocab_size, (n,)) for n in lengths]
    # a pool for about two of the longest requests at once: the later ones wait until earlier ones free pages
    num_blocks = 2 * -(-max(n + m for n, m in zip(lengths, new_tokens)) // args.block_size)
    start = time.perf_counter()
    outputs, stats = serve(model, prompts, new_tokens, num_blocks=num_blocks, block_size=args.block_size,
                           max_seqs=3, log=print)
    seconds = time.perf_counter() - start
    for request, (prompt, out) in enumerate(zip(prompts, outputs)):
        expected = model.generate(prompt[None], new_tokens[request], temperature=0.0)[0]  # dense cache, alone
        same = torch.equal(out, expected)
        print(f"request {request}: prompt {prompt.numel():3d} tokens -> {out[prompt.numel():].tolist()} "
              f"{'(= dense generate)' if same else '(DIFFERS from dense generate)'}")
        if not same:
            raise SystemExit(f"request {request}: paged serving and dense generate() disagree")
    print(f"{len(prompts)} requests in {stats['steps']} steps, {seconds:.2f} s; peak {stats['peak_pages']} of "
          f"{num_blocks} pages of {args.block_size} positions")


if __name__ == "__main__":
    main()
