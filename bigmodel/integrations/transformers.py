"""Hugging Face transformers integration: `attn_implementation="bigmodel"`.

    import bigmodel.integrations.transformers as bm_hf
    bm_hf.register()
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="bigmodel")

register() adds bigmodel's fused attention to transformers' AttentionInterface, and `mask` (below) to
AttentionMaskInterface under the same name. Padding and other masks arrive as SDPA's boolean masks (True = attend);
a causal mask without padding arrives as None (`is_causal`).

What the attention function passes on to bigmodel.ops: Gemma 2's `softcap`, the `sliding_window` of Mistral / Qwen2 /
Gemma 2 / gpt-oss layers (transformers' masks keep key j for query i iff i - sliding_window < j <= i, i.e.
window=(sliding_window - 1, 0) with causal; FlashAttention's window_size in transformers is the same), gpt-oss's
sinks (`s_aux`). Padding-free packed batches (DataCollatorWithFlattening) run ops.attention_varlen: see
`packing` and `mask`.
"""
import weakref

import torch

from .. import ops

NAME = "bigmodel"


# ------------------------------------------------------------------------------------------ attention function
def attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                      position_bias=None, **kwargs):
    """transformers' attention-function contract: query (B, H, Lq, D), key / value (B, Hkv, Lk, D) ->
    (attn_output (B, Lq, H, D), None). Mirrors transformers' SDPA path, on bigmodel.ops.attention, and its
    FlashAttention path for packed sequences (ops.attention_varlen)."""
    q_len, kv_len = query.size(2), key.size(2)
    module_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    softcap, sinks = kwargs.get("softcap"), kwargs.get("s_aux")
    sliding = sliding_window(module, kwargs) if module_causal else None  # bidirectional windows: mask only
    if attention_mask is None and position_bias is None:
        packed = packing(query, key, kwargs, causal=bool(module_causal))
        if packed is not None:
            return _varlen(query, key, value, packed, dropout, bool(module_causal), scaling, sliding, softcap,
                           sinks), None
    causal = bool(q_len > 1 and attention_mask is None and module_causal)
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
    # The window in ops.attention is aligned top-left (query i at key i). transformers' masks put query i at key i
    # exactly when Lq == Lk (the same assumption its SDPA path makes for is_causal); otherwise (decode, a cache)
    # the mask alone carries the window. With a mask, the window changes nothing but lets kernels skip tiles.
    window = (sliding - 1, 0) if sliding is not None and q_len > 1 and key.size(2) == q_len else None
    out = ops.attention(query, key, value, attention_mask, dropout, causal, scaling,
                        enable_gqa=query.size(1) != key.size(1), window=window, softcap=softcap, sinks=sinks)
    return out.transpose(1, 2).contiguous(), None


def _varlen(query, key, value, packed, dropout, causal, scaling, sliding, softcap, sinks):
    """(B, H, L, D) views of transformers' (B, L, H, D) projections -> FlashAttention's (B*L, H, D) packed layout
    (a view whenever the projections are contiguous, as they are after q/k/v_proj and rotary), ops.attention_varlen,
    and its (B*L, H, Dv) output viewed as the (B, L, H, Dv) attn_output transformers expects."""
    cu_q, cu_k, max_q, max_k = packed
    b, lq = query.size(0), query.size(2)
    q, k, v = (t.transpose(1, 2).reshape(-1, t.size(1), t.size(3)) for t in (query, key, value))
    # per sequence Lq == Lk here (training / prefill), so FlashAttention's bottom-right alignment is HF's causal mask
    window = (sliding - 1, 0) if sliding is not None else None
    out = ops.attention_varlen(q, k, v, cu_q, cu_k, max_q, max_k, dropout, causal, scaling, window=window,
                               softcap=softcap, sinks=sinks)
    return out.view(b, lq, out.size(1), out.size(2))


def sliding_window(module, kwargs):
    """The layer's sliding window (an int, keys i - sliding_window < j <= i) or None: the `sliding_window` argument
    when the model passes one (Mistral, Qwen2, Gemma 2, gpt-oss; None there means a full-attention layer), else the
    module's .sliding_window (Qwen2-MoE), else config.layer_types. 0 means none (Qwen2-MoE's disabled window)."""
    if "sliding_window" in kwargs:
        window = kwargs["sliding_window"]
    elif hasattr(module, "sliding_window"):
        window = module.sliding_window
    else:
        config, idx = getattr(module, "config", None), getattr(module, "layer_idx", None)
        types = getattr(config, "layer_types", None)
        if not isinstance(types, (list, tuple)) or not isinstance(idx, int) or not 0 <= idx < len(types):
            return None
        window = getattr(config, "sliding_window", None) if types[idx] == "sliding_attention" else None
    if window is None or window == 0:
        return None
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ValueError(f"bigmodel attention: sliding_window must be a positive int or None; got {window!r}")
    return window


# ------------------------------------------------------------------------------------------ packed sequences
def packing(query, key, kwargs, causal=True):
    """(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k) when the call holds packed sequences, else None.
    From FlashAttention's kwargs (cu_seq_lens_q / _k, max_length_q / _k: DataCollatorWithFlattening(
    return_flash_attn_kwargs=True)), or, for causal layers with Lq == Lk, from `position_ids` that restart inside a
    row (a new sequence wherever position_ids[t] != position_ids[t-1] + 1, and at every row start: the rule of
    transformers' packed-sequence masks). Reading position_ids costs one device sync per forward (transformers'
    FlashAttention path: one per layer)."""
    b, lq, lk = query.size(0), query.size(2), key.size(2)
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is not None or cu_k is not None:
        if cu_q is None or cu_k is None:
            raise ValueError("bigmodel attention: cu_seq_lens_q and cu_seq_lens_k come together; got only "
                             f"{'cu_seq_lens_q' if cu_q is not None else 'cu_seq_lens_k'}")
        cu_q, cu_k = (_int32(t, query.device) for t in (cu_q, cu_k))
        max_q, max_k = kwargs.get("max_length_q"), kwargs.get("max_length_k")
        max_q = int(max_q) if max_q is not None else int(cu_q.diff().max())
        max_k = int(max_k) if max_k is not None else int(cu_k.diff().max())
        return cu_q, cu_k, max_q, max_k
    position_ids = kwargs.get("position_ids")
    if not causal or position_ids is None or lq != lk or lq < 2 or not isinstance(position_ids, torch.Tensor):
        return None
    if position_ids.dim() != 2 or position_ids.size(-1) != lq or position_ids.size(0) not in (1, b):
        return None  # not per-token positions of this call (e.g. 3D mrope ids): leave them to the model
    # Every layer of one forward gets the same position_ids tensor: read it once (a weak reference, so that a
    # new tensor never passes for the old one; _version catches in-place writes).
    if torch.compiler.is_compiling():
        return _packing_from_positions(position_ids, b, lq, query.device)
    key = (position_ids._version, b, query.device)
    cached = _PACKING_CACHE[0]
    if cached is not None and cached[0]() is position_ids and cached[1] == key:
        return cached[2]
    result = _packing_from_positions(position_ids, b, lq, query.device)
    _PACKING_CACHE[0] = (weakref.ref(position_ids), key, result)
    return result


_PACKING_CACHE = [None]  # (weakref to position_ids, (version, batch, device), packing or None)


def _packing_from_positions(position_ids, b, lq, device):
    starts = position_ids.diff(dim=-1) != 1
    if not bool(starts.any()):
        return None
    if position_ids.size(0) != b:  # one row of ids shared by the batch
        starts = starts.expand(b, -1)
    starts = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=starts.device), starts], dim=1).reshape(-1)
    total = b * lq
    cu = torch.cat([starts.nonzero().view(-1), torch.tensor([total], device=starts.device)]).to(torch.int32)
    cu = cu.to(device)
    max_len = int(cu.diff().max())
    return cu, cu, max_len, max_len


def _int32(t, device):
    t = torch.as_tensor(t, device=device)
    return t if t.dtype == torch.int32 else t.to(torch.int32)


# ------------------------------------------------------------------------------------------ mask builder
def mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None, attention_mask=None,
         local_size=None, allow_is_causal_skip=True, config=None, **kwargs):
    """transformers' mask-interface contract; SDPA's boolean masks (sdpa_mask) except where the attention function
    needs none, so that no (Lq, Lk) mask is built:
    - packed sequences (transformers found position_ids restarting, no padding mask and no cache): None; the
      attention function reads the packing from position_ids / cu_seq_lens (what transformers' FlashAttention path
      relies on) and runs ops.attention_varlen;
    - a sliding-window causal layer without padding, queries at keys 0..L-1 (training, a first prefill): None; the
      attention function applies the window (and any packing; with a cache transformers' own masks do not see the
      packing, FlashAttention's path and ours do).
    Only for masks made of nothing but transformers' causal / sliding-window / packed-sequence pieces, and for a
    window only where the model tells its attention function the window (config.layer_types, or a family known to
    pass `sliding_window`): anything else gets sdpa_mask's mask."""
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    mask_function = causal_mask_function if mask_function is None else mask_function
    parts = _mask_parts(mask_function)
    if parts is not None and (local_size is None or _window_reaches_attention(config)):
        packed = "packed" in parts and attention_mask is None
        plain_sliding = "sliding" in parts and "packed" not in parts and allow_is_causal_skip and \
            _prefill_without_padding(attention_mask, q_length, kv_length, q_offset, kv_offset)
        if packed or plain_sliding:
            return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, mask_function=mask_function, attention_mask=attention_mask,
                     local_size=local_size, allow_is_causal_skip=allow_is_causal_skip, **kwargs)


# transformers' own pieces of causal masks, by qualified name (masking_utils 5.x): combinators and leaves
_COMBINATORS = {"and_masks.<locals>.and_mask": None,
                "remap_positions_for_packed_sequence.<locals>.inner_mask": "packed"}
_LEAVES = {"causal_mask_function": "causal", "sliding_window_overlay.<locals>.inner_mask": "sliding",
           "packed_sequence_mask_function.<locals>.inner_mask": "packed"}
# families whose attention gets `sliding_window=config.sliding_window` and that have no config.layer_types
_WINDOW_KWARG_FAMILIES = {"mistral", "mixtral", "starcoder2"}


def _mask_parts(fn, depth=0):
    """The set of transformers' pieces a mask function is made of ({"causal", "sliding", "packed"} subsets), or None
    when it holds anything else (padding, or-masks, blocks, chunks, a user's function) or is not recognised."""
    name = getattr(fn, "__qualname__", None)
    module = getattr(fn, "__module__", "")
    if depth > 8 or not isinstance(name, str) or not module.startswith("transformers."):
        return None
    if name in _LEAVES:
        return {_LEAVES[name]}
    if name not in _COMBINATORS:
        return None
    parts = set() if _COMBINATORS[name] is None else {_COMBINATORS[name]}
    for cell in fn.__closure__ or ():
        inner = cell.cell_contents
        for f in inner if isinstance(inner, tuple) else (inner,):
            if callable(f):
                sub = _mask_parts(f, depth + 1)
                if sub is None:
                    return None
                parts |= sub
    return parts if "causal" in parts else None


def _window_reaches_attention(config):
    return isinstance(getattr(config, "layer_types", None), (list, tuple)) or \
        getattr(config, "model_type", None) in _WINDOW_KWARG_FAMILIES


def _prefill_without_padding(attention_mask, q_length, kv_length, q_offset, kv_offset):
    if not (isinstance(q_offset, int) and isinstance(kv_offset, int) and q_offset == 0 and kv_offset == 0):
        return False
    if q_length != kv_length:
        return False
    if attention_mask is None:
        return True
    if attention_mask.shape[-1] != kv_length or torch.compiler.is_compiling():
        return False
    return bool(attention_mask.all())


def register(name: str = NAME) -> str:
    """Register bigmodel's attention (and its mask builder `mask`) with transformers under `name`; returns the
    name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, mask)
    return name
