"""Hugging Face transformers integration: `attn_implementation="bigmodel"`.

    import bigmodel.integrations.transformers as bm_hf
    bm_hf.register()
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="bigmodel")

register() adds bigmodel's fused attention to transformers' AttentionInterface, and the boolean SDPA-style mask
builder under the same name to AttentionMaskInterface, so padding and causal masks arrive as SDPA's boolean masks
(True = attend) or as `is_causal` when there is no padding.
"""
import torch

from .. import ops

NAME = "bigmodel"


def attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                      position_bias=None, **kwargs):
    """transformers' attention-function contract: query (B, H, Lq, D), key / value (B, Hkv, Lk, D) ->
    (attn_output (B, Lq, H, D), None). Mirrors transformers' own SDPA path, on bigmodel.ops.attention."""
    unsupported = [k for k in ("softcap", "s_aux") if kwargs.get(k) is not None]
    if unsupported:
        raise NotImplementedError(f"bigmodel attention: {', '.join(unsupported)} is not supported; use "
                                  "attn_implementation='eager' for this model")
    q_len, kv_len = query.size(2), key.size(2)
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    causal = bool(q_len > 1 and attention_mask is None and causal)
    if causal and kv_len > q_len:  # prefill into an empty static cache: the tail keys are all in the future
        key, value = key[:, :, :q_len], value[:, :, :q_len]
    if attention_mask is not None and attention_mask.dtype != torch.bool:
        attention_mask = attention_mask.to(query.dtype)
    if position_bias is not None:  # additive bias (e.g. T5): fold it and any mask into one float mask
        bias = position_bias.to(query.dtype)[..., : key.size(2)]
        if attention_mask is not None:
            bias = bias.masked_fill(~attention_mask, float("-inf")) if attention_mask.dtype == torch.bool \
                else bias + attention_mask
        elif causal:
            bias = bias.masked_fill(torch.ones(q_len, key.size(2), dtype=torch.bool, device=bias.device).triu(1),
                                    float("-inf"))
        attention_mask, causal = bias, False
    out = ops.attention(query, key, value, attention_mask, dropout, causal, scaling,
                        enable_gqa=query.size(1) != key.size(1))
    return out.transpose(1, 2).contiguous(), None


def register(name: str = NAME) -> str:
    """Register bigmodel's attention (and its mask format) with transformers under `name`; returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, sdpa_mask)
    return name
