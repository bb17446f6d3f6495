"""Public functional API, shaped like torch.nn.functional. Every op takes a keyword `backend=`
("triton", "cuda", "torch", "reference" or "auto"); see bigmodel.backends for how one is chosen."""
from .activation import geglu, gelu, relu, silu, softmax, swiglu
from .attention import attention
from .attention_decode import attention_decode
from .attention_varlen import attention_varlen
from .cross_entropy import cross_entropy
from .feed_forward import feed_forward, gated_feed_forward, linear_act
from .layer_norm import layer_norm
from .linear_cross_entropy import linear_cross_entropy, linear_cross_entropy_fp32
from .rms_norm import add_rms_norm, rms_norm
from .rotary import rotary, rotary_qk

__all__ = ["add_rms_norm", "attention", "attention_varlen", "feed_forward", "gated_feed_forward", "geglu", "gelu", "layer_norm",
           "linear_act", "relu", "rms_norm", "rotary", "rotary_qk", "silu", "softmax", "swiglu"]
__all__ += ["linear_cross_entropy", "linear_cross_entropy_fp32"]
__all__ += ["cross_entropy"]
__all__ += ["attention_decode"]
