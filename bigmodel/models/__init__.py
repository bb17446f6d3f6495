"""bigmodel.models: a GPT / BERT / Llama-style Transformer built only from bigmodel.nn modules.

    from bigmodel.models import Transformer, TransformerConfig
    model = Transformer(TransformerConfig.from_preset("tiny"))
"""
from .config import PRESETS, TransformerConfig
from .paged import PagedBatch, PagedKVCache
from .transformer import Block, KVCache, RotaryEmbedding, SinusoidalEmbedding, Transformer

__all__ = ["Block", "KVCache", "PRESETS", "PagedBatch", "PagedKVCache", "RotaryEmbedding", "SinusoidalEmbedding",
           "Transformer", "TransformerConfig"]
