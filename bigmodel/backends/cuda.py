"""The "cuda" backend: adapters over the compiled extension bigmodel._C."""
import functools
import importlib

import torch

from .base import Backend


@functools.cache
def load_extension():
    """(module, None) if bigmodel._C imports, else (None, why not)."""
    try:
        return importlib.import_module("bigmodel._C"), None
    except ImportError as e:
        return None, (f"the CUDA extension bigmodel._C is not built ({e}); reinstall with nvcc present "
                      "and without BIGMODEL_SKIP_CUDA_BUILD")


class CudaBackend(Backend):
    name = "cuda"

    def machine_reasons(self):
        ext, why = load_extension()
        if ext is None:
            return [why]
        if not torch.cuda.is_available():
            return ["no CUDA GPU is visible (torch.cuda.is_available() is False)"]
        return []

    def device_reasons(self, device):
        return [] if device.type == "cuda" else [f"inputs are on {device}; the cuda backend needs CUDA tensors"]

    @property
    def _C(self):
        return load_extension()[0]

    def layer_norm_fwd(self, x, weight, bias, eps):
        y, mean, rstd = self._C.layer_norm_fwd(x, weight, bias, eps)
        return y, mean, rstd

    def layer_norm_bwd(self, dy, x, weight, bias, mean, rstd):
        dx, dw, db = self._C.layer_norm_bwd(dy, x, weight, bias, mean, rstd)
        return dx, dw, db
