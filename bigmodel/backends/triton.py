"""The "triton" backend: adapters over bigmodel.kernels.

Runs on CUDA tensors, or on CPU tensors when TRITON_INTERPRET=1 was set before triton was imported.
"""
import importlib

import torch

from .base import Backend


class TritonBackend(Backend):
    name = "triton"

    def machine_reasons(self):
        try:
            importlib.import_module("triton")
        except ImportError as e:
            return [f"triton is not installed ({e})"]
        if not torch.cuda.is_available() and not self._interpreting():
            return ["no CUDA GPU is visible and Triton's CPU interpreter is off (set TRITON_INTERPRET=1 "
                    "before triton is imported to run its kernels on CPU tensors)"]
        return []

    @staticmethod
    def _interpreting() -> bool:
        return importlib.import_module("bigmodel.kernels._utils").INTERPRETING

    def device_reasons(self, device):
        if device.type == "cuda" or (device.type == "cpu" and self._interpreting()):
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

    MAX_HEAD_DIM = 256  # head dims are padded to a power of two inside the kernels

    def attention_reasons(self, q, k, v, attn_mask=None, **_):
        reasons = []
        if q.size(-1) > self.MAX_HEAD_DIM:
            reasons.append(f"head dim {q.size(-1)} > {self.MAX_HEAD_DIM}")
        if v.size(-1) != q.size(-1):
            reasons.append(f"v's head dim {v.size(-1)} differs from q's {q.size(-1)}")
        return reasons

    def attention_fwd(self, q, k, v, mask, is_causal, scale, dropout_p, seed):
        return self._kernels("attention").attention_fwd(q, k, v, mask, is_causal, scale, dropout_p, seed)

    def attention_bwd(self, do, q, k, v, o, lse, mask, is_causal, scale, dropout_p, seed):
        return self._kernels("attention").attention_bwd(do, q, k, v, o, lse, mask, is_causal, scale, dropout_p,
                                                        seed)

    def linear_act_fwd(self, x, weight, bias, activation):
        return self._kernels("linear_act").linear_act_fwd(x, weight, bias, activation)

    def linear_act_bwd(self, dy, x, weight, saved, y, activation, has_bias):
        return self._kernels("linear_act").linear_act_bwd(dy, x, weight, saved, y, activation, has_bias)

    def activation_fwd(self, x, activation):
        return self._kernels("activation").act_fwd(x, activation)

    def activation_bwd(self, dy, x, activation):
        return self._kernels("activation").act_bwd(dy, x, activation)

    def softmax_fwd(self, x):
        return self._kernels("softmax").softmax_fwd(x)

    def softmax_bwd(self, dy, y):
        return self._kernels("softmax").softmax_bwd(dy, y)
