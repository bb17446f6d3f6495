"""A GPT / BERT / Llama-style Transformer built from bigmodel.nn modules, in the spirit of nanoGPT's model.py.

    config = TransformerConfig.from_preset("tiny")        # or "llama-tiny": RMSNorm, rotary, SwiGLU, GQA
    model = Transformer(config)
    logits = model(ids)                                   # (B, L, vocab)
    _, loss = model(ids, targets=targets)                 # training: fused linear_cross_entropy, no logits
    loss = model.loss(ids, targets, fused=False)          # the same loss through the (B, L, vocab) logits
    out = model.generate(ids, max_new_tokens=32, top_k=50)
    outs = model.generate([prompt_a, prompt_b], 32, cache="paged")   # prompts of different lengths, one page pool
    model.set_backend("triton")                           # every fused op of the model
"""
import math

import torch
import torch.nn.functional as F

from .. import backends, ops
from ..nn import FeedForward, GatedFeedForward, LayerNorm, Linear, RMSNorm, SelfAttention
from .config import TransformerConfig
from .paged import PagedBatch, PagedKVCache, PagedLayer


class SinusoidalEmbedding(torch.nn.Module):
    """Fixed position embeddings (Vaswani et al.): sin on even dims, cos on odd, wavelengths 2pi .. 10000 * 2pi.
    Called like torch.nn.Embedding: positions (...) -> (..., dim)."""

    def __init__(self, max_len, dim):
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float32)[:, None]  # (max_len, 1)
        frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
        table = torch.zeros(max_len, dim)
        table[:, 0::2] = torch.sin(position * frequency)
        table[:, 1::2] = torch.cos(position * frequency)
        self.register_buffer("table", table, persistent=False)  # not learned: kept out of the state_dict

    def forward(self, positions):
        return self.table[positions]


class RotaryEmbedding(torch.nn.Module):
    """Rotary positions (RoPE: Su et al.; Llama): position p turns the feature pair (i, i + D/2) of every query and
    key head by the angle p * theta^(-2i / D). Called with positions (L,) -> cos, sin (L, D), each half repeated
    (Hugging Face's rotate_half convention, bigmodel.ops.rotary's default); positions (B, L) -> (B, L, D) each (a
    paged batch: every sequence at its own positions). Holds nothing (so model.to(dtype) cannot round the
    frequencies): the angles are computed per forward in fp32 (fp64 for an fp64 model), as Hugging Face's Llama."""

    def __init__(self, head_dim, theta=10000.0):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta

    def forward(self, positions, dtype=torch.float32):
        exponent = torch.arange(0, self.head_dim, 2, device=positions.device, dtype=dtype) / self.head_dim
        frequency = 1.0 / (self.theta ** exponent)  # (D/2,)
        angles = positions.to(dtype)[..., None] * frequency  # (..., L, D/2)
        angles = torch.cat([angles, angles], dim=-1)  # (..., L, D)
        return angles.cos(), angles.sin()

    def extra_repr(self):
        return f"head_dim={self.head_dim}, theta={self.theta}"


class KVCache:
    """One layer's keys and values so far, for decoding: preallocated (B, Hkv, max_len, D) buffers (so every step
    writes in place instead of re-concatenating) and how many positions are filled."""

    def __init__(self, batch_size, n_kv_heads, max_len, head_dim, device=None, dtype=None):
        self.k = torch.zeros(batch_size, n_kv_heads, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    def update(self, k, v):
        """Append k, v (B, Hkv, L, D); return every cached key and value (B, Hkv, length, D) (views)."""
        start, end = self.length, self.length + k.size(2)
        if end > self.k.size(2):
            raise ValueError(f"KVCache: {end} positions do not fit in a cache of {self.k.size(2)}")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


def norm(config):
    """The block's normalisation: LayerNorm ("pre", "post") or RMSNorm ("rms")."""
    if config.norm == "rms":
        return RMSNorm(config.d_model, config.layer_norm_eps, backend=config.backend)
    return LayerNorm(config.d_model, config.layer_norm_eps, bias=config.bias, backend=config.backend)


class Block(torch.nn.Module):
    """Self-attention then MLP, each with a residual connection; a norm before (pre, rms) or after (post) each."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        c = config
        self.placement = c.norm
        self.ln_1 = norm(c)
        self.attn = SelfAttention(c.d_model, c.n_heads, c.n_kv_heads, c.causal, c.dropout, c.bias, backend=c.backend)
        self.ln_2 = norm(c)
        if c.mlp == "dense":
            self.mlp = FeedForward(c.d_model, c.d_ff, c.activation, c.bias, c.dropout, backend=c.backend)
        else:  # gated: dropout (if any) on its output, as on the attention's
            gate = "silu" if c.mlp == "swiglu" else c.activation
            self.mlp = GatedFeedForward(c.d_model, c.d_ff, gate, c.bias, backend=c.backend)
        self.mlp_dropout = torch.nn.Dropout(c.dropout) if c.mlp != "dense" and c.dropout > 0 else None

    def forward(self, x, attention_mask=None, kv_cache=None, rope=None):  # x: (B, L, C)
        if self.placement == "pre":  # GPT-2
            x = x + self._attention(self.ln_1(x), attention_mask, kv_cache, rope)
            x = x + self.feed_forward(self.ln_2(x))
        elif self.placement == "rms":  # Llama: pre-norm; h = ln_2(x + attn) and the new stream x in one fused pass
            a = self._attention(self.ln_1(x), attention_mask, kv_cache, rope)
            h, x = ops.add_rms_norm(a.to(x.dtype), x, self.ln_2.normalized_shape, self.ln_2.weight, self.ln_2.eps,
                                    backend=self.ln_2.backend)  # a.to: autocast's bf16 output joins the fp32 stream
            x = x + self.feed_forward(h)
        else:  # post-norm, as BERT
            x = self.ln_1(x + self._attention(x, attention_mask, kv_cache, rope))
            x = self.ln_2(x + self.feed_forward(x))
        return x

    def _attention(self, h, attention_mask, kv_cache, rope):
        if isinstance(kv_cache, PagedLayer):  # a paged cache: SelfAttention's projections, the keys in pages
            return kv_cache.attend(self.attn, h, attention_mask, rope)
        return self.attn(h, attention_mask, kv_cache, rope)

    def feed_forward(self, h):
        return self.mlp(h) if self.mlp_dropout is None else self.mlp_dropout(self.mlp(h))


class Transformer(torch.nn.Module):
    """Token + position embeddings (or rotary positions inside attention), n_layers Blocks, a final norm (pre-norm,
    rms) and the LM head."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        c = self.config = config
        self.tok_emb = torch.nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = self.rotary = None
        if c.positional == "learned":
            self.pos_emb = torch.nn.Embedding(c.max_seq_len, c.d_model)
        elif c.positional == "sinusoidal":
            self.pos_emb = SinusoidalEmbedding(c.max_seq_len, c.d_model)
        else:  # rotary: nothing added to the embeddings; q and k are rotated in every block
            self.rotary = RotaryEmbedding(c.head_dim, c.rope_theta)
        # Vaswani et al. scale token embeddings by sqrt(d_model) next to the fixed unit-amplitude sinusoids, which
        # would otherwise drown the small (std 0.02) token embeddings; learned positions start as small as tokens.
        self.emb_scale = math.sqrt(c.d_model) if c.positional == "sinusoidal" else 1.0
        self.drop = torch.nn.Dropout(c.dropout)
        # Post-norm blocks end in a LayerNorm, so the stream is normalised once at the start (BERT's embedding
        # LayerNorm); pre-norm blocks leave it un-normalised, so once at the end (GPT-2's ln_f).
        self.ln_emb = norm(c) if c.norm == "post" else None
        self.blocks = torch.nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.ln_f = norm(c) if c.norm != "post" else None
        self.lm_head = Linear(c.d_model, c.vocab_size, bias=False, backend=c.backend)
        if c.tied_embeddings:
            self.lm_head.weight = self.tok_emb.weight  # one (vocab, C) matrix, read both ways
        self._init_weights()

    def _init_weights(self):
        """GPT-2: N(0, 0.02) weights, zero biases, and the projections that write into the residual stream scaled
        by 1/sqrt(2 n_layers), so the stream's variance does not grow with depth (2 writes per block)."""
        for module in self.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for block in self.blocks:
            torch.nn.init.normal_(block.attn.out_proj.weight, mean=0.0, std=residual_std)
            mlp_out = block.mlp.fc2 if self.config.mlp == "dense" else block.mlp.down_proj
            torch.nn.init.normal_(mlp_out.weight, mean=0.0, std=residual_std)

    def forward(self, ids, attention_mask=None, kv_cache=None, targets=None, *, fused_loss=True,
                ignore_index=-100):
        """ids (B, L) long -> logits (B, L, vocab); with targets (B, L) long -> (logits or None, loss).

        attention_mask: (B, L) bool or 0/1 ints, 1 = real token, 0 = padding (no token attends to padding).
        kv_cache: a list of KVCache, one per block (see new_kv_cache): ids then continue the cached sequence at
            position kv_cache[0].length, and attention_mask (if any) covers the cached tokens too (B, length + L).
            Or a PagedKVCache / PagedKVCache.batch(seqs) (see new_paged_kv_cache, models/paged.py): row b of ids
            continues sequence seqs[b] at its own length (no attention_mask; inference only).
        targets: the token each position should predict (already shifted: targets[:, t] follows ids[:, t]); the
            loss is their mean cross-entropy, positions whose target is ignore_index left out (as F.cross_entropy).
            fused_loss=True (the default) computes it with bigmodel.ops.linear_cross_entropy straight from the
            final hidden states and the LM head's weight (the tied embedding), chunk by chunk, so the (B, L, vocab)
            logits never exist: the first element returned is then None. fused_loss=False runs the LM head and
            F.cross_entropy on the fp32 logits, and returns those logits too. Either way under autocast as well.
        """
        B, L = ids.shape
        if isinstance(kv_cache, PagedKVCache):
            kv_cache = kv_cache.batch()
        paged = isinstance(kv_cache, PagedBatch)
        if paged and len(kv_cache.seqs) != B:
            raise ValueError(f"Transformer: ids has {B} rows but the paged batch has {len(kv_cache.seqs)} sequences")
        start = kv_cache.longest() if paged else kv_cache[0].length if kv_cache is not None else 0
        if start + L > self.config.max_seq_len:
            raise ValueError(f"Transformer: {start + L} positions exceed max_seq_len = {self.config.max_seq_len}")
        if paged:  # (B, L): each sequence continues at its own length; its pages are reserved here
            positions = kv_cache.begin(L)
        else:
            positions = torch.arange(start, start + L, device=ids.device)  # (L,)
        x = self.tok_emb(ids) * self.emb_scale  # (B, L, C)
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        else:  # the (L, head_dim) cos / sin of these positions, for every block
            rope = self.rotary(positions, torch.promote_types(self.tok_emb.weight.dtype, torch.float32))
        x = self.drop(x)
        if self.ln_emb is not None:
            x = self.ln_emb(x)
        for i, block in enumerate(self.blocks):
            x = block(x, attention_mask, kv_cache[i] if kv_cache is not None else None, rope)  # (B, L, C)
        if paged:
            kv_cache.commit()
        if self.ln_f is not None:
            x = self.ln_f(x)
        if targets is None:
            return self.lm_head(x)  # (B, L, vocab)
        if targets.shape != ids.shape:
            raise ValueError(f"Transformer: targets must have the shape of ids {tuple(ids.shape)}; got "
                             f"{tuple(targets.shape)}")
        if fused_loss:  # (B, L, C) hidden states and (vocab, C) weight -> the mean loss; no logits
            loss = ops.linear_cross_entropy_fp32(x, self.lm_head.weight, targets, self.lm_head.bias,
                                                 ignore_index=ignore_index, backend=self.lm_head.backend)
            return None, loss  # fp32, as the logits path's F.cross_entropy(logits.float())
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=ignore_index)
        return logits, loss

    def loss(self, ids, targets, attention_mask=None, *, fused=True, ignore_index=-100):
        """The mean next-token loss of ids (B, L) against targets (B, L): forward(ids, targets=...)'s loss alone
        (fused=True: bigmodel.ops.linear_cross_entropy, without logits; fused=False: through the logits). A
        wrapper (DDP, FSDP) sees only forward: call model(ids, targets=targets) on a wrapped model instead."""
        return self(ids, attention_mask, targets=targets, fused_loss=fused, ignore_index=ignore_index)[1]

    def new_kv_cache(self, batch_size, max_len=None):
        """Empty per-block KV caches for up to max_len (default max_seq_len) positions, on the model's device."""
        c, weight = self.config, self.tok_emb.weight
        max_len = c.max_seq_len if max_len is None else max_len
        return [KVCache(batch_size, c.n_kv_heads, max_len, c.head_dim, weight.device, weight.dtype)
                for _ in self.blocks]

    def new_paged_kv_cache(self, num_blocks, block_size=16, max_seqs=1, max_len=None):
        """An empty PagedKVCache (models/paged.py) of num_blocks pages of block_size positions per layer, shared
        by up to max_seqs sequences of up to max_len (default max_seq_len) positions each, on the model's device
        and in its dtype."""
        c, weight = self.config, self.tok_emb.weight
        max_len = c.max_seq_len if max_len is None else max_len
        return PagedKVCache(c.n_layers, c.n_kv_heads, c.head_dim, num_blocks, block_size, max_seqs,
                            -(-max_len // block_size), weight.device, weight.dtype)

    @torch.no_grad()
    def generate(self, ids, max_new_tokens, temperature=1.0, top_k=None, *, cache="dense", block_size=16):
        """Continue every row of ids (B, L) by max_new_tokens tokens -> (B, L + max_new_tokens).

        The prompt runs once through the model, filling a KV cache, then each new token alone (prefill, then
        decode). temperature 0 (or top_k=1) is greedy; otherwise sample from softmax(logits / temperature),
        restricted to the top_k most likely tokens if given. Rows must be unpadded. Dropout is applied if the
        model is in training mode: call model.eval() first.

        cache: "dense" (a preallocated (B, Hkv, L + max_new_tokens, D) buffer per layer), "paged" (a pool of
        pages of block_size positions, just enough for the request: models/paged.py), or a PagedKVCache to serve
        from (its first B sequences, which must be empty; they stay in it afterwards: release() them). With a
        paged cache ids may also be a list of 1-D prompts of different lengths: each is prefilled on its own, then
        all decode together, one token per step, and a list of 1-D outputs (prompt + max_new_tokens) comes back.
        The paged decode runs bigmodel.ops.attention_decode (backends "triton" and "reference"; "torch" has none).
        """
        c = self.config
        if not c.causal:
            raise ValueError("Transformer.generate: needs a causal (decoder) model; this one has causal=False")
        if temperature < 0:
            raise ValueError(f"Transformer.generate: temperature must be >= 0; got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"Transformer.generate: top_k must be a positive int or None; got {top_k}")
        paged = not (isinstance(cache, str) and cache == "dense")
        if paged and not isinstance(cache, PagedKVCache) and cache != "paged":
            raise ValueError(f"Transformer.generate: cache must be 'dense', 'paged' or a PagedKVCache; got {cache!r}")
        prompts = [ids] if isinstance(ids, torch.Tensor) else list(ids)
        if not isinstance(ids, torch.Tensor) and (not paged or not prompts or any(
                not isinstance(p, torch.Tensor) or p.dim() != 1 or p.numel() == 0 for p in prompts)):
            raise ValueError("Transformer.generate: ids must be a (B, L) tensor, or with cache='paged' a non-empty "
                             "list of non-empty 1-D prompts")
        longest = max(p.size(-1) for p in prompts)
        if longest + max_new_tokens > c.max_seq_len:
            raise ValueError(f"Transformer.generate: the prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) "
                             f"= {longest + max_new_tokens} exceeds max_seq_len = {c.max_seq_len}")
        if max_new_tokens <= 0:
            return ids
        if not paged:
            dense = self.new_kv_cache(ids.size(0), ids.size(1) + max_new_tokens)
            return self._decode(ids, max_new_tokens, temperature, top_k, dense)
        B = ids.size(0) if isinstance(ids, torch.Tensor) else len(prompts)
        if cache == "paged":
            lengths = [ids.size(1)] * B if isinstance(ids, torch.Tensor) else [p.numel() for p in prompts]
            cache = self.new_paged_kv_cache(sum(-(-(n + max_new_tokens) // block_size) for n in lengths), block_size,
                                            B, longest + max_new_tokens)
        if cache.max_seqs < B or any(cache.lengths[s] for s in range(B)):
            raise ValueError(f"Transformer.generate: the PagedKVCache needs {B} empty sequences (0..{B - 1}); it has "
                             f"{cache.max_seqs}, of lengths {cache.lengths[:B]}")
        if isinstance(ids, torch.Tensor):  # equal lengths: one batched prefill
            return self._decode(ids, max_new_tokens, temperature, top_k, cache.batch(range(B)))
        logits = torch.cat([self(p[None], kv_cache=cache.batch([b]))[:, -1, :] for b, p in enumerate(prompts)])
        new = self._decode(None, max_new_tokens, temperature, top_k, cache.batch(range(B)), logits)
        return [torch.cat([p, row]) for p, row in zip(prompts, new)]

    def _decode(self, ids, max_new_tokens, temperature, top_k, cache, logits=None):
        """Prefill ids (unless logits for the next position are given), then max_new_tokens steps of one token.
        Returns ids + the new tokens (ids None: the new tokens alone)."""
        if logits is None:
            logits = self(ids, kv_cache=cache)[:, -1, :]  # prefill: (B, vocab) for the next position
        new = []
        for step in range(max_new_tokens):
            next_id = _sample(logits, temperature, top_k)  # (B, 1)
            new.append(next_id)
            if step + 1 < max_new_tokens:
                logits = self(next_id, kv_cache=cache)[:, -1, :]  # decode: one token sees the whole cache
        new = torch.cat(new, dim=1)
        return new if ids is None else torch.cat([ids, new], dim=1)

    def set_backend(self, name):
        """Run every bigmodel module of the model on backend `name` ("triton", "cuda", "torch", "reference", "auto" or None)."""
        if name is not None:
            backends.check_name(name)
        self.config.backend = name
        for module in self.modules():
            if hasattr(module, "backend"):  # the bigmodel.nn modules
                module.backend = name
        return self

    def num_parameters(self) -> int:
        """Number of parameters (tied embeddings counted once)."""
        return sum(p.numel() for p in self.parameters())


def _sample(logits, temperature, top_k):
    """logits (B, vocab) -> next token ids (B, 1)."""
    if temperature == 0 or top_k == 1:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits.float(), dim=-1), num_samples=1)
