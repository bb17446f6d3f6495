import torch
import torch.nn.functional as F

from .. import ops


class MultiheadAttention(torch.nn.MultiheadAttention):
    """`torch.nn.MultiheadAttention` on bigmodel's fused attention. Same constructor, parameters, state_dict and
    forward contract; `backend` pins one backend for this module.

    With `need_weights=False` the attention runs in the fused kernel (O(L) memory) and the weights are None.
    With `need_weights=True` (torch's default) the per-head weights must be materialised, so the call goes
    through torch's own implementation (the reference path) and returns them exactly as torch does.
    Masks follow torch's MultiheadAttention convention: in boolean `attn_mask` / `key_padding_mask`, True means
    "do not attend"; float masks are added to the scores. A query that may attend to no key at all gets a zero
    output here (torch gives NaN).
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False, add_zero_attn=False,
                 kdim=None, vdim=None, batch_first=False, device=None, dtype=None, *, backend=None):
        super().__init__(embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim, vdim, batch_first,
                         device=device, dtype=dtype)
        self.backend = backend

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if need_weights:
            return super().forward(query, key, value, key_padding_mask, True, attn_mask, average_attn_weights,
                                   is_causal)
        if is_causal and attn_mask is None:
            raise RuntimeError("bigmodel.nn.MultiheadAttention: is_causal=True needs attn_mask (the causal mask), "
                               "as in torch.nn.MultiheadAttention")
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        out = self._attend(query, key, value, key_padding_mask, attn_mask, is_causal)  # (L, N, E)
        if unbatched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, None

    def _project(self, query, key, value):
        """The input projections: (L, N, E) -> q, k, v (L|S, N, E)."""
        e = self.embed_dim
        if not self._qkv_same_embed_dim:
            b = self.in_proj_bias
            bq, bk, bv = (None, None, None) if b is None else b.split(e)
            return (F.linear(query, self.q_proj_weight, bq), F.linear(key, self.k_proj_weight, bk),
                    F.linear(value, self.v_proj_weight, bv))
        if query is key and key is value:  # self-attention: one GEMM for all three
            return F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        w = self.in_proj_weight.split(e)
        b = (None, None, None) if self.in_proj_bias is None else self.in_proj_bias.split(e)
        return F.linear(query, w[0], b[0]), F.linear(key, w[1], b[1]), F.linear(value, w[2], b[2])

    def _attend(self, query, key, value, key_padding_mask, attn_mask, is_causal):
        tgt_len, bsz, e = query.shape
        h, d = self.num_heads, self.head_dim
        q, k, v = self._project(query, key, value)
        if self.bias_k is not None:  # one learned key / value appended to every sequence
            k = torch.cat([k, self.bias_k.expand(1, bsz, e)])
            v = torch.cat([v, self.bias_v.expand(1, bsz, e)])
            attn_mask, key_padding_mask = _pad_key(attn_mask), _pad_key(key_padding_mask)
        q, k, v = (t.reshape(t.size(0), bsz, h, d).permute(1, 2, 0, 3) for t in (q, k, v))  # (N, H, L, D)
        if self.add_zero_attn:  # one all-zero key / value appended
            k = torch.cat([k, k.new_zeros(bsz, h, 1, d)], dim=2)
            v = torch.cat([v, v.new_zeros(bsz, h, 1, d)], dim=2)
            attn_mask, key_padding_mask = _pad_key(attn_mask), _pad_key(key_padding_mask)
        causal = is_causal and key_padding_mask is None  # torch's hint: attn_mask is the causal mask
        mask = None if causal else _merge_masks(attn_mask, key_padding_mask, bsz, h, query.dtype)
        dropout = self.dropout if self.training else 0.0
        out = ops.attention(q, k, v, mask, dropout, causal, backend=self.backend)  # (N, H, L, D)
        out = out.permute(2, 0, 1, 3).reshape(tgt_len, bsz, e)
        return self.out_proj(out)

    def extra_repr(self):
        return f"backend={self.backend!r}" if self.backend else ""


def _pad_key(mask):
    """Extend a mask by one always-visible key column (for the appended bias_k or zero key)."""
    return None if mask is None else F.pad(mask, (0, 1))


def _merge_masks(attn_mask, key_padding_mask, bsz, heads, dtype):
    """torch.nn.MultiheadAttention's masks -> one mask for bigmodel.ops.attention, broadcastable to (N, H, L, S).
    Boolean stays boolean (flipped: True = attend); if either mask is float, both become additive floats."""
    masks = []
    if attn_mask is not None:
        masks.append(attn_mask if attn_mask.dim() == 2 else attn_mask.view(bsz, heads, *attn_mask.shape[-2:]))
    if key_padding_mask is not None:
        masks.append(key_padding_mask.view(bsz, 1, 1, -1))
    if not masks:
        return None
    if all(m.dtype == torch.bool for m in masks):
        blocked = masks[0] if len(masks) == 1 else masks[0] | masks[1]
        return ~blocked
    floats = [torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
              if m.dtype == torch.bool else m.to(dtype) for m in masks]
    return floats[0] if len(floats) == 1 else floats[0] + floats[1]
