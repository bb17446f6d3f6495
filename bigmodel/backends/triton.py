"""The "triton" backend: adapters over bigmodel.kernels.

Runs on CUDA tensors, or on CPU tensors when TRITON_INTERPRET=1 was set before triton was imported.
"""
import importlib
import os

import torch

from .base import Backend


class TritonBackend(Backend):
    name = "triton"

    def machine_reasons(self):
        try:
            importlib.import_module("triton")
        except ImportError as e:
            return [f"triton is not installed ({e})"]
        return []

    def device_reasons(self, device):
        if device.type == "cuda":
            return []
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
            return []
        return [f"inputs are on {device}; triton needs CUDA tensors (or TRITON_INTERPRET=1, set before "
                "triton is imported, to run its kernels on the CPU)"]

    @staticmethod
    def _kernels(op):
        return importlib.import_module(f"bigmodel.kernels.{op}")

    def layer_norm_fwd(self, x, weight, bias, eps):
        return self._kernels("layer_norm").layer_norm_fwd(x, weight, bias, eps)

    def layer_norm_bwd(self, dy, x, weight, bias, mean, rstd):
        return self._kernels("layer_norm").layer_norm_bwd(dy, x, weight, bias, mean, rstd)
