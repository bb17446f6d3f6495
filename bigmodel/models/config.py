"""TransformerConfig: every size and switch of bigmodel.models.Transformer, checked when it is built."""
import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from ..backends import NAMES as BACKEND_NAMES

ACTIVATIONS = ("gelu", "gelu_tanh", "relu")
NORMS = ("pre", "post", "rms")
POSITIONALS = ("learned", "sinusoidal", "rotary")
MLPS = ("dense", "swiglu", "geglu")


@dataclass
class TransformerConfig:
    """Defaults are GPT-2 small (vocab padded to 50304, a multiple of 64, as nanoGPT); the "llama" preset is Llama.

    n_kv_heads: key/value heads for grouped-query attention; None = n_heads (plain multi-head attention).
    d_ff: the MLP's hidden size; None = 4 * d_model.
    causal: True = decoder / GPT (each token sees the past), False = encoder / BERT (sees every token).
    activation: the dense MLP's ("gelu", "gelu_tanh", "relu"); with mlp="geglu", which GELU gates ("gelu" or
        "gelu_tanh", Gemma's); unused by mlp="swiglu" (always SiLU).
    norm: "pre" (GPT-2: LayerNorm before each sublayer, one more at the end), "post" (BERT: LayerNorm after each
        residual sum, one on the embeddings) or "rms" (Llama: pre-norm placement with RMSNorm, no bias; the attention
        residual's add is fused into the second norm, bigmodel.ops.add_rms_norm).
    positional: "learned" position embeddings (GPT-2, BERT), fixed "sinusoidal" ones (Vaswani et al.) or "rotary"
        (RoPE, Llama: q and k rotated inside attention, Hugging Face's rotate_half convention; needs an even head_dim).
    rope_theta: the rotary base: pair i of a head turns by position * rope_theta^(-2i / head_dim) (Llama 2: 10000,
        Llama 3: 500000; Llama 3's long-context rope_scaling is not implemented).
    mlp: "dense" (Linear - activation - Linear, GPT-2 / BERT), "swiglu" (Llama's gated MLP: down(silu(gate(x)) *
        up(x)), bigmodel.nn.GatedFeedForward) or "geglu" (the same with GELU, see activation).
    dropout: on the embeddings, the attention probabilities, the attention output and the MLP's hidden layer
        (gated MLPs: on their output).
    tied_embeddings: the LM head reuses the token embedding matrix.
    bias: biases in every Linear (and LayerNorm); RMSNorm has none.
    layer_norm_eps: the eps of every norm, LayerNorm or RMSNorm (Llama's rms_norm_eps).
    backend: for every bigmodel module of the model: "triton", "cuda", "torch", "reference", "auto" or None (the process-wide
        choice; see bigmodel.backends).
    """

    vocab_size: int = 50304
    d_model: int = 768
    n_heads: int = 12
    n_layers: int = 12
    n_kv_heads: Optional[int] = None
    d_ff: Optional[int] = None
    max_seq_len: int = 1024
    causal: bool = True
    activation: str = "gelu"
    dropout: float = 0.0
    norm: str = "pre"
    positional: str = "learned"
    rope_theta: float = 10000.0
    mlp: str = "dense"
    tied_embeddings: bool = True
    bias: bool = True
    layer_norm_eps: float = 1e-5
    backend: Optional[str] = None

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "max_seq_len"):
            _check_positive_int(name, getattr(self, name))
        for name in ("n_kv_heads", "d_ff"):
            if getattr(self, name) is not None:
                _check_positive_int(name, getattr(self, name))
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if self.d_model % self.n_heads:
            raise ValueError(f"TransformerConfig: d_model ({self.d_model}) must be divisible by n_heads "
                             f"({self.n_heads}); each head gets d_model // n_heads dims")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"TransformerConfig: n_heads ({self.n_heads}) must be divisible by n_kv_heads "
                             f"({self.n_kv_heads}); each key/value head serves a whole group of query heads")
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("norm", self.norm, NORMS)
        _check_choice("positional", self.positional, POSITIONALS)
        _check_choice("mlp", self.mlp, MLPS)
        _check_choice("backend", self.backend, (*BACKEND_NAMES, None))
        if self.positional == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"TransformerConfig: positional='sinusoidal' needs an even d_model (sin/cos pairs); "
                             f"got {self.d_model}")
        if self.positional == "rotary" and self.head_dim % 2:
            raise ValueError(f"TransformerConfig: positional='rotary' needs an even head dim (d_model // n_heads, "
                             f"rotated in pairs); got {self.d_model} // {self.n_heads} = {self.head_dim}")
        if isinstance(self.rope_theta, bool) or not isinstance(self.rope_theta, (int, float)) \
                or not math.isfinite(self.rope_theta) or self.rope_theta <= 0:
            raise ValueError(f"TransformerConfig: rope_theta must be a finite number > 0; got {self.rope_theta!r}")
        if self.mlp == "geglu" and self.activation not in ("gelu", "gelu_tanh"):
            raise ValueError(f"TransformerConfig: mlp='geglu' gates with activation 'gelu' or 'gelu_tanh'; got "
                             f"activation={self.activation!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TransformerConfig: dropout must be a float in [0, 1); got {self.dropout!r}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"TransformerConfig: layer_norm_eps must be > 0; got {self.layer_norm_eps!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "TransformerConfig":
        """A named configuration (see PRESETS), with any field overridden: from_preset("tiny", n_layers=2)."""
        if name not in PRESETS:
            raise ValueError(f"TransformerConfig: unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"TransformerConfig: unknown field(s) {', '.join(sorted(unknown))}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS = {
    # Byte-level and small enough to train on a CPU in minutes.
    "tiny": dict(vocab_size=256, d_model=128, n_heads=4, n_layers=4, d_ff=512, max_seq_len=128),
    "gpt2-small": dict(vocab_size=50304, d_model=768, n_heads=12, n_layers=12, d_ff=3072, max_seq_len=1024,
                       activation="gelu_tanh"),
    "bert-base": dict(vocab_size=30522, d_model=768, n_heads=12, n_layers=12, d_ff=3072, max_seq_len=512,
                      causal=False, norm="post", activation="gelu", layer_norm_eps=1e-12),
    # Llama 3.2 1B's shape (1.24B parameters, tied): grouped-query attention (32 query heads of 64, 8 key/value
    # heads), rotary positions, RMSNorm, SwiGLU, no biases. max_seq_len is Llama 3's 8192 (3.2 reaches 128k by
    # rope_scaling, which this model does not implement).
    "llama": dict(vocab_size=128256, d_model=2048, n_heads=32, n_kv_heads=8, n_layers=16, d_ff=8192,
                  max_seq_len=8192, norm="rms", positional="rotary", rope_theta=500000.0, mlp="swiglu", bias=False,
                  tied_embeddings=True, layer_norm_eps=1e-5),
    # The same structure, byte-level and small enough for CPU tests and `bigmodel train` on a CPU in seconds.
    "llama-tiny": dict(vocab_size=256, d_model=64, n_heads=4, n_kv_heads=2, n_layers=2, d_ff=256, max_seq_len=256,
                       norm="rms", positional="rotary", rope_theta=500000.0, mlp="swiglu", bias=False,
                       tied_embeddings=True, layer_norm_eps=1e-5),
}


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"TransformerConfig: {name} must be a positive int; got {value!r}")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"TransformerConfig: {name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
