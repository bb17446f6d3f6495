"""bigmodel: fused Transformer kernels (Triton and CUDA C++) behind a PyTorch-shaped API.

    import bigmodel
    y = bigmodel.ops.layer_norm(x, (d,), w, b)             # = F.layer_norm
    ln = bigmodel.nn.LayerNorm(d)                            # = torch.nn.LayerNorm, fused
    model = bigmodel.patch(model)                            # swap torch.nn modules in place
    with bigmodel.use_backend("triton"): ...                 # pin a backend
"""
from . import library  # noqa: F401  (registers the torch.ops.bigmodel custom ops)
from . import nn, ops
from .backends import available_backends, set_backend, use_backend
from .patch import patch

__version__ = "0.1.0"
__all__ = ["ops", "nn", "patch", "use_backend", "set_backend", "available_backends", "models", "integrations",
           "__version__"]

# Imported on first use (`bigmodel.models.Transformer` after a plain `import bigmodel`), so that importing
# bigmodel stays as cheap as the ops: the trainer and the Hugging Face integration pull in much more.
_LAZY_SUBMODULES = ("models", "integrations", "train")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
