"""Drop-in modules: subclasses of the torch.nn classes they replace (same constructor, parameters and
state_dict), plus a `backend=` keyword."""
from .attention import MultiheadAttention
from .layer_norm import LayerNorm

__all__ = ["LayerNorm", "MultiheadAttention"]
