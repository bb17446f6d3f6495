import torch
import torch.nn.functional as F

from .. import ops
from .feed_forward import Linear


class SelfAttention(torch.nn.Module):
    """Multi-head self-attention for Transformer blocks: one fused qkv projection, grouped-query attention on
    bigmodel.ops.attention (K/V are never repeated), an output projection.

    n_kv_heads: key/value heads (default n_heads; must divide n_heads; 1 = multi-query attention).
    causal: query i sees keys j <= i (GPT); False: every key (BERT).
    dropout: on the attention probabilities and on the output, in training only (as GPT-2 / nanoGPT).

    forward(x (B, L, C), attention_mask=None, kv_cache=None) -> (B, L, C)
      attention_mask: (B, S) bool or 0/1 ints, True / 1 = a real token that may be attended to (Hugging Face's
        meaning; torch.nn.MultiheadAttention's key_padding_mask is the opposite). S = L, or with a cache the cached
        length + L (it covers every key the queries see).
      kv_cache: for decoding: an object with `update(k, v) -> (k_all, v_all)` that appends this call's keys and
        values (B, Hkv, L, D) and returns all of them (B, Hkv, S, D), e.g. bigmodel.models.KVCache. The L queries
        are then the last L positions of S: query i sits at absolute position S - L + i and (causal) sees keys
        j <= S - L + i (bottom-right alignment, unlike SDPA's top-left is_causal when L != S).
    """

    def __init__(self, d_model, n_heads, n_kv_heads=None, causal=True, dropout=0.0, bias=True, device=None,
                 dtype=None, *, backend=None):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if d_model % n_heads:
            raise ValueError(f"SelfAttention: d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        if n_heads % n_kv_heads:
            raise ValueError(f"SelfAttention: n_heads ({n_heads}) must be divisible by n_kv_heads ({n_kv_heads})")
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.causal, self.dropout, self.backend = causal, dropout, backend
        kv_dim = n_kv_heads * self.head_dim
        self.qkv_proj = Linear(d_model, d_model + 2 * kv_dim, bias, device, dtype, backend=backend)
        self.out_proj = Linear(d_model, d_model, bias, device, dtype, backend=backend)

    def forward(self, x, attention_mask=None, kv_cache=None, rope=None):
        """rope=(cos, sin), each (L, D): rotary angles of the L new positions; q and k are rotated (one fused
        launch, bigmodel.ops.rotary_qk) before the KV cache, so cached keys are stored rotated, as Llama's."""
        B, L, C = x.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        q, k, v = self.qkv_proj(x).split([H * D, Hkv * D, Hkv * D], dim=-1)
        q = q.view(B, L, H, D).transpose(1, 2)  # (B, H, L, D)
        k = k.view(B, L, Hkv, D).transpose(1, 2)  # (B, Hkv, L, D)
        v = v.view(B, L, Hkv, D).transpose(1, 2)  # (B, Hkv, L, D)
        if rope is not None:
            q, k = ops.rotary_qk(q, k, *rope, backend=self.backend)
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)  # (B, Hkv, S, D): the cached keys, then this call's
        mask, is_causal = self._mask(attention_mask, B, L, k.size(2), x.device)
        dropout = self.dropout if self.training else 0.0
        y = ops.attention(q, k, v, mask, dropout, is_causal, enable_gqa=True, backend=self.backend)  # (B, H, L, D)
        y = self.out_proj(y.transpose(1, 2).reshape(B, L, C))  # (B, L, C)
        return F.dropout(y, dropout) if dropout > 0 else y  # residual dropout (GPT-2's resid_pdrop)

    def _mask(self, attention_mask, B, L, S, device):
        """(attn_mask, is_causal) for ops.attention; the queries are the last L of S positions."""
        offset = S - L
        causal = self.causal and L > 1  # a lone newest query may see every key: no mask at all
        if attention_mask is None and (not causal or offset == 0):
            return None, causal  # no mask, or plain square causal: the kernels skip masked blocks
        visible = None
        if causal:  # bottom-right aligned: query i (position offset + i) sees keys j <= offset + i
            visible = torch.ones(L, S, dtype=torch.bool, device=device).tril(offset)  # (L, S)
        if attention_mask is not None:
            if tuple(attention_mask.shape) != (B, S):
                raise ValueError(f"SelfAttention: attention_mask must have shape (batch, keys) = {(B, S)}; got "
                                 f"{tuple(attention_mask.shape)}")
            real = attention_mask.to(device=device, dtype=torch.bool)[:, None, None, :]  # (B, 1, 1, S)
            visible = real if visible is None else real & visible  # (B, 1, L, S)
        return visible, False  # SDPA takes is_causal or a mask, never both

    def extra_repr(self):
        extra = f", backend={self.backend!r}" if self.backend else ""
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
                f"causal={self.causal}, dropout={self.dropout}{extra}")
