"""TransformerConfig: every size and switch of bigmodel.models.Transformer, checked when it is built."""
import dataclasses
from dataclasses import dataclass
from typing import Optional

from ..backends import NAMES as BACKEND_NAMES

ACTIVATIONS = ("gelu", "gelu_tanh", "relu")
NORMS = ("pre", "post")
POSITIONALS = ("learned", "sinusoidal")


@dataclass
class TransformerConfig:
    """Defaults are GPT-2 small (vocab padded to 50304, a multiple of 64, as nanoGPT).

    n_kv_heads: key/value heads for grouped-query attention; None = n_heads (plain multi-head attention).
    d_ff: the MLP's hidden size; None = 4 * d_model.
    causal: True = decoder / GPT (each token sees the past), False = encoder / BERT (sees every token).
    norm: "pre" (GPT-2: LayerNorm before each sublayer, one more at the end) or "post" (BERT: after each residual
        sum, one on the embeddings).
    positional: "learned" position embeddings (GPT-2, BERT) or fixed "sinusoidal" ones (Vaswani et al.).
    dropout: on the embeddings, the attention probabilities, the attention output and the MLP's hidden layer.
    tied_embeddings: the LM head reuses the token embedding matrix.
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
        _check_choice("backend", self.backend, (*BACKEND_NAMES, None))
        if self.positional == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"TransformerConfig: positional='sinusoidal' needs an even d_model (sin/cos pairs); "
                             f"got {self.d_model}")
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
}


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"TransformerConfig: {name} must be a positive int; got {value!r}")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"TransformerConfig: {name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
