"""A paged KV cache for the Transformer (vLLM's PagedAttention layout, FlashAttention's flash_attn_with_kvcache
arguments): one pool of fixed-size pages per layer, shared by many sequences of different lengths.

    cache = model.new_paged_kv_cache(num_blocks=64, block_size=16, max_seqs=8)
    logits = model(prompt_a[None], kv_cache=cache.batch([0]))     # prefill sequence 0 (any length)
    logits = model(prompt_b[None], kv_cache=cache.batch([1]))     # sequence 1, another length
    logits = model(next_ids, kv_cache=cache.batch([0, 1]))        # (2, 1): one decode step for both
    cache.release(0)                                              # its pages go back to the pool

Each layer's keys / values live in pages (num_blocks, block_size, Hkv, D); sequence s owns the pages listed in row s
of the block table (B, max_blocks_per_seq) int32 and holds lengths[s] positions: position p is row p % block_size
of page block_table[s, p // block_size]. A forward over a PagedBatch takes pages from the free list for the new
positions (all or nothing: a full pool is an error before anything changes), writes every layer's new keys and
values into them, and attends with bigmodel.ops.attention_decode, which reads the pages in place (Triton) - no
sequence is ever copied into a dense buffer. A batch whose sequences are all empty (a prefill) attends over its
own new keys with the regular causal attention (bigmodel.ops.attention) instead: same result, the fast path for
long prompts. Inference only (attention_decode has no backward).
"""
import torch

from .. import ops

MIN_PAGE = 16  # bigmodel.ops.attention_decode's page granularity


class PagedKVCache:
    """Pages for n_layers layers: k / v (n_layers, num_blocks, block_size, n_kv_heads, head_dim), a block table
    (max_seqs, max_blocks_per_seq) int32 on the device, and on the host each sequence's pages and length (so
    allocation never syncs). max_blocks_per_seq (default num_blocks) caps one sequence at
    max_blocks_per_seq * block_size positions."""

    def __init__(self, n_layers, n_kv_heads, head_dim, num_blocks, block_size=16, max_seqs=1,
                 max_blocks_per_seq=None, device=None, dtype=None):
        max_blocks_per_seq = num_blocks if max_blocks_per_seq is None else max_blocks_per_seq
        for name, value in (("n_layers", n_layers), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim),
                            ("num_blocks", num_blocks), ("block_size", block_size), ("max_seqs", max_seqs),
                            ("max_blocks_per_seq", max_blocks_per_seq)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PagedKVCache: {name} must be a positive int; got {value!r}")
        if block_size % MIN_PAGE:
            raise ValueError(f"PagedKVCache: block_size must be a multiple of {MIN_PAGE} (the decode kernel's key "
                             f"tiles never span two pages); got {block_size}")
        shape = (n_layers, num_blocks, block_size, n_kv_heads, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.block_size, self.num_blocks = block_size, num_blocks
        self.block_table = torch.zeros(max_seqs, max_blocks_per_seq, dtype=torch.int32, device=self.k.device)
        self.pages = [[] for _ in range(max_seqs)]  # host copy of each sequence's block-table row
        self.lengths = [0] * max_seqs
        self._free = list(range(num_blocks - 1, -1, -1))  # pop() hands out 0, 1, 2, ... first

    @property
    def max_seqs(self) -> int:
        return len(self.lengths)

    @property
    def capacity(self) -> int:
        """The most positions one sequence can hold."""
        return self.block_table.size(1) * self.block_size

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    def batch(self, seqs=None):
        """The sequences `seqs` (default: all max_seqs) as the batch of one forward: ids (len(seqs), L)."""
        return PagedBatch(self, range(self.max_seqs) if seqs is None else seqs)

    def release(self, seq):
        """Sequence seq ends: its pages return to the pool and its length to 0."""
        self._check_seq(seq)
        self._free.extend(reversed(self.pages[seq]))
        self.pages[seq], self.lengths[seq] = [], 0

    def _check_seq(self, seq):
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < self.max_seqs:
            raise ValueError(f"PagedKVCache: sequence index must be an int in [0, {self.max_seqs}); got {seq!r}")

    def __repr__(self):
        n_layers, _, _, hkv, d = self.k.shape
        return (f"PagedKVCache(layers={n_layers}, blocks={self.num_blocks} x {self.block_size}, kv_heads={hkv}, "
                f"head_dim={d}, seqs={self.max_seqs}, free={self.free_blocks}, dtype={self.k.dtype})")


class PagedBatch:
    """Some sequences of a PagedKVCache as one forward's batch; indexable per layer like a list of KVCache
    (Transformer.forward calls begin(L), then every block's attention, then commit())."""

    def __init__(self, cache: PagedKVCache, seqs):
        self.cache, self.seqs = cache, list(seqs)
        for s in self.seqs:
            cache._check_seq(s)
        if len(set(self.seqs)) != len(self.seqs) or not self.seqs:
            raise ValueError(f"PagedKVCache.batch: sequence indices must be distinct and at least one; got {self.seqs}")
        self._step = None

    def __len__(self):
        return self.cache.k.size(0)

    def __getitem__(self, layer):
        return PagedLayer(self, layer)

    def longest(self) -> int:
        return max(self.cache.lengths[s] for s in self.seqs)

    def begin(self, L: int):
        """Reserve pages for L more positions of every sequence; returns their positions (B, L) int64."""
        c, bs = self.cache, self.cache.block_size
        lengths = [c.lengths[s] for s in self.seqs]
        wanted = [-(-(n + L) // bs) - len(c.pages[s]) for s, n in zip(self.seqs, lengths)]
        if max(n + L for n in lengths) > c.capacity:
            raise ValueError(f"PagedKVCache: {max(lengths) + L} positions exceed a sequence's capacity of "
                             f"{c.capacity} (max_blocks_per_seq {c.block_table.size(1)} x block_size {bs})")
        if sum(wanted) > c.free_blocks:
            raise RuntimeError(f"PagedKVCache: the pool is full: {L} more positions for sequences {self.seqs} need "
                               f"{sum(wanted)} new pages of {bs}, {c.free_blocks} are free (release finished "
                               "sequences, or make the pool larger)")
        rows, cols, new = [], [], []
        for s, n in zip(self.seqs, wanted):
            for _ in range(n):
                rows.append(s)
                cols.append(len(c.pages[s]))
                c.pages[s].append(c._free.pop())
                new.append(c.pages[s][-1])
        device = c.block_table.device
        if new:  # one small host-to-device write of the new table entries
            c.block_table[torch.tensor(rows, device=device), torch.tensor(cols, device=device)] = \
                torch.tensor(new, dtype=torch.int32, device=device)
        slots = [c.pages[s][p // bs] * bs + p % bs for s, n in zip(self.seqs, lengths) for p in range(n, n + L)]
        seqs = torch.tensor(self.seqs, device=device)
        self._step = dict(L=L, fresh=max(lengths) == 0, slots=torch.tensor(slots, device=device),
                          seqlens=torch.tensor([n + L for n in lengths], dtype=torch.int32, device=device),
                          table=c.block_table.index_select(0, seqs))
        return torch.tensor([list(range(n, n + L)) for n in lengths], device=device)

    def commit(self):
        """Every layer has written this step's positions: the sequences are L longer."""
        for s in self.seqs:
            self.cache.lengths[s] += self._step["L"]
        self._step = None


class PagedLayer:
    """Layer `layer` of a PagedBatch: SelfAttention's computation with the keys and values in pages."""

    def __init__(self, batch: PagedBatch, layer: int):
        self.batch, self.layer = batch, layer

    def attend(self, attn, x, attention_mask=None, rope=None):
        """attn: a bigmodel.nn.SelfAttention (its projections, heads and backend); x (B, L, C); rope (cos, sin),
        each (B, L, D): every sequence at its own positions. Returns (B, L, C)."""
        if attention_mask is not None:
            raise ValueError("PagedKVCache: no attention_mask: every sequence of a paged batch is unpadded")
        if attn.training and attn.dropout > 0:
            raise ValueError("PagedKVCache: inference only (attention_decode has no dropout or backward); call "
                             "model.eval()")
        step = self.batch._step
        B, L, C = x.shape
        H, Hkv, D = attn.n_heads, attn.n_kv_heads, attn.head_dim
        q, k, v = attn.qkv_proj(x).split([H * D, Hkv * D, Hkv * D], dim=-1)
        q, k, v = q.view(B, L, H, D), k.view(B, L, Hkv, D), v.view(B, L, Hkv, D)
        if rope is not None:  # rotated in the (B, heads, L, D) layout, before the keys are cached (as SelfAttention)
            cos, sin = (t[:, None] for t in rope)  # (B, 1, L, D)
            q, k = ops.rotary_qk(q.transpose(1, 2), k.transpose(1, 2), cos, sin, backend=attn.backend)
            q, k = q.transpose(1, 2), k.transpose(1, 2)
        pool_k, pool_v = self.batch.cache.k[self.layer], self.batch.cache.v[self.layer]
        for pool, new in ((pool_k, k), (pool_v, v)):  # the new positions into their pages' rows
            pool.view(-1, Hkv, D).index_copy_(0, step["slots"], new.reshape(B * L, Hkv, D).to(pool.dtype))
        if step["fresh"]:  # every sequence starts here: its keys are exactly this call's (a prefill)
            y = ops.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=attn.causal,
                              enable_gqa=True, backend=attn.backend).transpose(1, 2)
        else:
            y = ops.attention_decode(q.to(pool_k.dtype), pool_k, pool_v, step["seqlens"], block_table=step["table"],
                                     is_causal=attn.causal, backend=attn.backend)
        return attn.out_proj(y.reshape(B, L, C))
