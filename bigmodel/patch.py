"""bigmodel.patch(model): swap torch.nn (and Hugging Face activation) modules for their bigmodel drop-ins, in place."""
import logging
import sys

import torch

from . import nn as bnn

log = logging.getLogger("bigmodel")


def _layer_norm(m: torch.nn.LayerNorm, backend):
    new = bnn.LayerNorm(m.normalized_shape, m.eps, m.elementwise_affine, m.bias is not None, backend=backend)
    # Share the parameters themselves: optimizers and tied references keep working.
    new.weight, new.bias = m.weight, m.bias
    return new


def _multihead_attention(m: torch.nn.MultiheadAttention, backend):
    new = bnn.MultiheadAttention(m.embed_dim, m.num_heads, m.dropout, m.in_proj_bias is not None,
                                 m.bias_k is not None, m.add_zero_attn, m.kdim, m.vdim, m.batch_first,
                                 device="meta", backend=backend)
    new.load_state_dict(m.state_dict(keep_vars=True), assign=True)  # the same Parameter objects
    return new


# torch.nn class -> builder of its drop-in. Exact classes only: a subclass may change forward().
REPLACEMENTS = {
    torch.nn.LayerNorm: _layer_norm,
    torch.nn.MultiheadAttention: _multihead_attention,
    torch.nn.GELU: lambda m, backend: bnn.GELU(m.approximate, backend=backend),
    torch.nn.ReLU: lambda m, backend: bnn.ReLU(m.inplace, backend=backend),
    torch.nn.Softmax: lambda m, backend: bnn.Softmax(m.dim, backend=backend),
}


# Hugging Face activation classes (transformers.activations) by name -> GELU's `approximate`. Looked up only when
# transformers is already imported: a model holding these modules has imported it.
HF_GELUS = {"GELUActivation": "none", "NewGELUActivation": "tanh", "GELUTanh": "tanh", "PytorchGELUTanh": "tanh",
            "FastGELUActivation": "tanh", "AccurateGELUActivation": "tanh"}


def _replacements() -> dict:
    table = dict(REPLACEMENTS)
    hf = sys.modules.get("transformers.activations")
    for name, approximate in HF_GELUS.items():
        cls = getattr(hf, name, None)
        if cls is not None:
            table.setdefault(cls, lambda m, backend, a=approximate: bnn.GELU(a, backend=backend))
    return table


def patch(model: torch.nn.Module, *, backend=None) -> torch.nn.Module:
    """Replace every module whose class is in REPLACEMENTS with the bigmodel equivalent, keeping weights,
    device, dtype and train/eval state. Returns the same `model` object (patched in place)."""
    from .backends import check_name

    if backend is not None:
        check_name(backend)
    counts = {}
    table = _replacements()
    targets = [(name, m) for name, m in model.named_modules() if type(m) in table]
    for name, m in targets:
        new = table[type(m)](m, backend)
        new.train(m.training)
        if not name:  # the model itself is a replaceable module: patch cannot swap the root object
            raise TypeError(f"bigmodel.patch: model is itself a {type(m).__name__}; wrap it in a container or use "
                            f"bigmodel.nn.{type(new).__name__} directly")
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, new)
        counts[type(m).__name__] = counts.get(type(m).__name__, 0) + 1
    summary = ", ".join(f"{n} x{c}" for n, c in counts.items()) or "nothing"
    log.info("bigmodel.patch: replaced %s", summary)
    model.bigmodel_patched = counts
    return model
