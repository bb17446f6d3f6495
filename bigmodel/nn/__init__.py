"""Drop-in modules: subclasses of the torch.nn classes they replace (same constructor, parameters and
state_dict), plus a `backend=` keyword."""
from .attention import MultiheadAttention
from .feed_forward import GELU, FeedForward, FusedGatedFeedForward, GatedFeedForward, Linear, ReLU, SiLU, Softmax
from .layer_norm import LayerNorm, OffsetRMSNorm, RMSNorm
from .loss import CrossEntropyLoss
from .linear_loss import LinearCrossEntropyLoss
from .self_attention import SelfAttention

__all__ = ["FeedForward", "FusedGatedFeedForward", "GELU", "GatedFeedForward", "LayerNorm", "Linear",
           "MultiheadAttention", "OffsetRMSNorm", "RMSNorm", "ReLU", "SelfAttention", "SiLU", "Softmax"]
__all__ += ["LinearCrossEntropyLoss"]
__all__ += ["CrossEntropyLoss"]
