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

    ATTENTION_HEAD_DIMS = (64, 128)
    ATTENTION_DTYPES = (torch.float16, torch.bfloat16)

    def attention_reasons(self, q, k, v, attn_mask=None, dropout_p=0.0, **_):
        reasons = []
        if q.dtype not in self.ATTENTION_DTYPES:
            reasons.append(f"attention kernels take float16 / bfloat16; q is {str(q.dtype).replace('torch.', '')}")
        if q.size(-1) not in self.ATTENTION_HEAD_DIMS or v.size(-1) != q.size(-1):
            reasons.append(f"head dims {self.ATTENTION_HEAD_DIMS} only (q, k, v all the same); got q {q.size(-1)}, "
                           f"v {v.size(-1)} (the triton backend takes any head dim up to 256)")
        if dropout_p > 0:
            reasons.append("no dropout in the CUDA attention kernels (dropout_p > 0: use triton)")
        if attn_mask is not None and key_padding(attn_mask) is None:
            reasons.append("attn_mask must be a boolean key-padding mask, i.e. vary only along batch and key "
                           "(shape (B, 1, 1, Lk)); float masks and per-query masks need triton")
        return reasons

    def attention_fwd(self, q, k, v, mask, is_causal, scale, dropout_p, seed):
        o, lse = self._C.attention_fwd(q, k, v, key_padding(mask), is_causal, scale)
        return o, lse

    def attention_bwd(self, do, q, k, v, o, lse, mask, is_causal, scale, dropout_p, seed):
        dq, dk, dv = self._C.attention_bwd(do, q, k, v, o, lse, key_padding(mask), is_causal, scale)
        return dq, dk, dv

    # linear_act: one cuBLASLt GEMM with the bias / ReLU / GELU-aux epilogue (csrc/linear_act); the backward is the
    # fused dz + deterministic dbias kernel (none: dbias of dy only, no dz copy) and two cuBLAS GEMMs.
    def linear_act_fwd(self, x, weight, bias, activation):
        y, pre = self._C.linear_act_fwd(x, weight, bias, activation)
        return y, pre if activation in ("gelu", "gelu_tanh") else None

    def linear_act_bwd(self, dy, x, weight, saved, y, activation, has_bias):
        dx, dw, db = self._C.linear_act_bwd(dy, x, weight, y if activation == "relu" else saved, activation, has_bias)
        return dx, dw, db if has_bias else None

    def activation_fwd(self, x, activation):
        return self._C.act_fwd(x, activation)

    def activation_bwd(self, dy, x, activation):
        return self._C.act_bwd(dy, x, activation)

    def softmax_fwd(self, x):
        return self._C.softmax_fwd(x)

    def softmax_bwd(self, dy, y):
        return self._C.softmax_bwd(dy, y)


def key_padding(mask):
    """A (B, Hq, Lq, Lk) mask as the (B, Lk) bool key-padding mask it is, or None if it is not one."""
    if mask is None or mask.dtype != torch.bool:
        return None
    if any(mask.size(d) > 1 and mask.stride(d) != 0 for d in (1, 2)):
        return None
    return mask[:, 0, 0, :].contiguous()
