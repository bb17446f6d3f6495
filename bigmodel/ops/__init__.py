"""Public functional API, shaped like torch.nn.functional. Every op takes a keyword `backend=`
("triton", "cuda", "torch" or "auto"); see bigmodel.backends for how one is chosen."""
from .attention import attention
from .layer_norm import layer_norm

__all__ = ["attention", "layer_norm"]
