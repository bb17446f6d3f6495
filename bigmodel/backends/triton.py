"""The "triton" backend: adapters over bigmodel.kernels.

Runs on CUDA tensors, or on CPU tensors when TRITON_INTERPRET=1 was set before triton was imported.
Triton launches on the *current* device and its current stream, so every adapter method runs inside
`device_guard(<its inputs' device>)`: a tensor on cuda:1 works while cuda:0 is current (device_map="auto").
"""
import contextlib
import functools
import importlib

import torch

from bigmodel.kernels.limits import NO_EXTRAS, attention_limits_reasons, varlen_limits_reasons  # plain Python

from .base import Backend, mask_grad_reasons, rotary_grad_reasons, trace_constant
from .decode_triton import TritonDecode  # attention_decode (bigmodel.ops.attention_decode)

INT32_MAX = 2**31 - 1  # CUDA's grid axis 0 limit, and the reach of a 32-bit program index
MIN_CAPABILITY = (7, 5)  # Triton 3.x compiles for sm_75 and newer
BF16_CAPABILITY = (8, 0)  # bf16 tensor-core dots need sm_80


def device_guard(device: torch.device):
    """Make `device` (and so its current stream) current for a launch; nothing to do on the CPU interpreter."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _on_inputs_device(method):
    """Run an adapter method under device_guard of its first tensor argument's device."""
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        device = next(a.device for a in args if isinstance(a, torch.Tensor))
        with device_guard(device):
            return method(self, *args, **kwargs)
    return guarded


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


@trace_constant
def _capability_of(index: int) -> tuple[int, int]:
    return tuple(_capability(index))


@trace_constant
def _interpreting_now() -> bool:
    return importlib.import_module("bigmodel.kernels._utils").INTERPRETING


@trace_constant
def _kernel_constant(op: str, name: str):
    """A limit (an int) from bigmodel.kernels.<op>, readable while torch.compile traces the backend choice."""
    return getattr(importlib.import_module(f"bigmodel.kernels.{op}"), name)


@trace_constant
def _machine_reasons() -> tuple[str, ...]:
    try:
        importlib.import_module("triton")
    except ImportError as e:
        return (f"triton is not installed ({e})",)
    if not torch.cuda.is_available() and not _interpreting_now():
        return ("no CUDA GPU is visible and Triton's CPU interpreter is off (set TRITON_INTERPRET=1 "
                "before triton is imported to run its kernels on CPU tensors)",)
    return ()


def capability_reasons(capability: tuple[int, int], dtypes) -> list[str]:
    """Why Triton cannot run these dtypes on a GPU of this compute capability (empty: it can)."""
    name = f"{capability[0]}.{capability[1]}"
    if tuple(capability) < MIN_CAPABILITY:
        return [f"compute capability {name} < {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}: Triton needs sm_75 or newer"]
    if torch.bfloat16 in dtypes and tuple(capability) < BF16_CAPABILITY:
        return [f"bfloat16 needs compute capability 8.0+ (bf16 tensor cores); this GPU is {name}"]
    return []


def _rows_reasons(op, x, looped):
    """Row kernels index rows in int64 but columns in int32; the looped path (rows longer than the kernel keeps in
    registers) runs one program per row, so grid axis 0 caps the rows there."""
    reasons = []
    if x.size(1) > INT32_MAX:
        reasons.append(f"{op}: rows of at most {INT32_MAX} elements (32-bit column index); got {x.size(1)}")
    if looped and x.size(0) > INT32_MAX:
        reasons.append(f"{op}: {x.size(0)} rows of {x.size(1)} columns need one program each, more than CUDA's "
                       f"grid limit {INT32_MAX}")
    return reasons


class TritonBackend(TritonDecode, Backend):
    name = "triton"

    def machine_reasons(self):
        return list(_machine_reasons())

    @staticmethod
    def _interpreting() -> bool:
        return _interpreting_now()

    def device_reasons(self, device):
        if device.type == "cpu" and self._interpreting():
            return []
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            return capability_reasons(_capability_of(index), ())
        return [f"inputs are on {device}; triton needs CUDA tensors (or TRITON_INTERPRET=1, set before "
                "triton is imported, to run its kernels on the CPU)"]

    def not_supported_reasons(self, op, **inputs):
        reasons = super().not_supported_reasons(op, **inputs)
        cuda = [t for t in inputs.values() if isinstance(t, torch.Tensor) and t.device.type == "cuda"]
        if cuda and not reasons:
            index = cuda[0].device.index if cuda[0].device.index is not None else torch.cuda.current_device()
            reasons += capability_reasons(_capability_of(index), {t.dtype for t in cuda})
        return reasons

    @staticmethod
    def _kernels(op):
        return importlib.import_module(f"bigmodel.kernels.{op}")

    @_on_inputs_device
    def layer_norm_fwd(self, x, weight, bias, eps):
        return self._kernels("layer_norm").layer_norm_fwd(x, weight, bias, eps)

    @_on_inputs_device
    def layer_norm_bwd(self, dy, x, weight, bias, mean, rstd):
        return self._kernels("layer_norm").layer_norm_bwd(dy, x, weight, bias, mean, rstd)

    def layer_norm_reasons(self, input, **_):
        return _rows_reasons("layer_norm", input, input.size(-1) > _kernel_constant("layer_norm", "MAX_FUSED_N"))

    # rms_norm / add_rms_norm: the LayerNorm kernels with RMS (and the residual) set, kernels/layer_norm.py
    @_on_inputs_device
    def rms_norm_fwd(self, x, weight, eps):
        y, _h, rstd = self._kernels("layer_norm").rms_norm_fwd(x, weight, eps)
        return y, rstd

    @_on_inputs_device
    def rms_norm_bwd(self, dy, x, weight, rstd):
        return self._kernels("layer_norm").rms_norm_bwd(dy, x, weight, rstd)

    @_on_inputs_device
    def add_rms_norm_fwd(self, x, residual, weight, eps):
        return self._kernels("layer_norm").rms_norm_fwd(x, weight, eps, residual)

    @_on_inputs_device
    def add_rms_norm_bwd(self, dy, dh, h, weight, rstd):
        return self._kernels("layer_norm").rms_norm_bwd(dy, h, weight, rstd, dh)

    def rms_norm_reasons(self, input, **_):
        return _rows_reasons("rms_norm", input, input.size(-1) > _kernel_constant("layer_norm", "MAX_FUSED_N"))

    def add_rms_norm_reasons(self, input, **_):
        return _rows_reasons("add_rms_norm", input, input.size(-1) > _kernel_constant("layer_norm", "MAX_FUSED_N"))

    def softmax_reasons(self, input, **_):
        return _rows_reasons("softmax", input, input.size(-1) > _kernel_constant("softmax", "MAX_FUSED_N"))

    def linear_act_reasons(self, input, weight, **_):
        if max(input.size(0), input.size(1), weight.size(0)) > INT32_MAX:
            return [f"linear_act: M, N and K must each be at most {INT32_MAX} (32-bit tile indices); got input "
                    f"{tuple(input.shape)}, weight {tuple(weight.shape)}"]
        return []

    def gated_activation_reasons(self, input, weight=None, **_):
        if weight is not None:  # gated_linear's GEMM
            return self.linear_act_reasons(input, weight)
        return []

    MAX_HEAD_DIM = 256  # head dims are padded to a power of two inside the kernels

    def attention_reasons(self, q, k, v, attn_mask=None, extras=NO_EXTRAS, **_):
        reasons = []
        if q.size(-1) > self.MAX_HEAD_DIM:
            reasons.append(f"head dim {q.size(-1)} > {self.MAX_HEAD_DIM}")
        if v.size(-1) != q.size(-1):
            reasons.append(f"v's head dim {v.size(-1)} differs from q's {q.size(-1)}")
        if extras.varlen:
            reasons += varlen_limits_reasons(extras.cu_seqlens_q.size(0) - 1, q.size(1))
        return reasons + attention_limits_reasons(q, k) + mask_grad_reasons(attn_mask)

    @_on_inputs_device
    def attention_fwd(self, q, k, v, mask, is_causal, scale, dropout_p, seed, extras=NO_EXTRAS):
        return self._kernels("attention").attention_fwd(q, k, v, mask, is_causal, scale, dropout_p, seed, extras)

    @_on_inputs_device
    def attention_bwd(self, do, q, k, v, o, lse, mask, is_causal, scale, dropout_p, seed, extras=NO_EXTRAS):
        return self._kernels("attention").attention_bwd(do, q, k, v, o, lse, mask, is_causal, scale, dropout_p,
                                                        seed, extras)

    @_on_inputs_device
    def linear_act_fwd(self, x, weight, bias, activation):
        return self._kernels("linear_act").linear_act_fwd(x, weight, bias, activation)

    @_on_inputs_device
    def linear_act_bwd(self, dy, x, weight, saved, y, activation, has_bias):
        return self._kernels("linear_act").linear_act_bwd(dy, x, weight, saved, y, activation, has_bias)

    @_on_inputs_device
    def activation_fwd(self, x, activation):
        return self._kernels("activation").act_fwd(x, activation)

    @_on_inputs_device
    def activation_bwd(self, dy, x, activation):
        return self._kernels("activation").act_bwd(dy, x, activation)

    @_on_inputs_device
    def rotary_fwd(self, x, cos, sin, interleaved):
        return self._kernels("rotary").rotary_fwd(x, cos, sin, interleaved)

    @_on_inputs_device
    def rotary_bwd(self, dy, cos, sin, interleaved):
        return self._kernels("rotary").rotary_bwd(dy, cos, sin, interleaved)

    @_on_inputs_device
    def rotary_qk_fwd(self, q, k, cq, sq, ck, sk, interleaved):
        return self._kernels("rotary").rotary_qk_fwd(q, k, cq, sq, ck, sk, interleaved)

    @_on_inputs_device
    def rotary_qk_bwd(self, dq, dk, cq, sq, ck, sk, interleaved):
        return self._kernels("rotary").rotary_qk_bwd(dq, dk, cq, sq, ck, sk, interleaved)

    def rotary_reasons(self, input, cos=None, sin=None, key=None, **_):
        reasons = rotary_grad_reasons(cos, sin)
        for t in (input, key):
            if t is not None and t.numel() // max(t.size(-1), 1) > INT32_MAX:
                reasons.append(f"rotary: at most {INT32_MAX} rows (batch x heads x length) in the Triton kernel; "
                               f"got {tuple(t.shape)}")
        return reasons

    @_on_inputs_device
    def gated_activation_fwd(self, gate, up, activation):
        return self._kernels("activation").gated_fwd(gate, up, activation)

    @_on_inputs_device
    def gated_activation_bwd(self, dy, gate, up, activation):
        return self._kernels("activation").gated_bwd(dy, gate, up, activation)

    # gated_linear: one GEMM kernel for gate and up, act(g) * u in its epilogue (kernels/gated_linear.py)
    @_on_inputs_device
    def gated_linear_fwd(self, x, w_gate, w_up, activation, save):
        return self._kernels("gated_linear").gated_linear_fwd(x, w_gate, w_up, activation, save)

    @_on_inputs_device
    def gated_linear_bwd(self, dh, x, w_gate, w_up, g, u, activation):
        return self._kernels("gated_linear").gated_linear_bwd(dh, x, w_gate, w_up, g, u, activation)

    @_on_inputs_device
    def softmax_fwd(self, x):
        return self._kernels("softmax").softmax_fwd(x)

    @_on_inputs_device
    def softmax_bwd(self, dy, y):
        return self._kernels("softmax").softmax_bwd(dy, y)

    # cross_entropy: one program per row, the row walked in chunks (kernels/cross_entropy.py)
    @_on_inputs_device
    def cross_entropy_fwd(self, logits, target, ignore_index, label_smoothing, softcap):
        return self._kernels("cross_entropy").cross_entropy_fwd(logits, target, ignore_index, label_smoothing,
                                                                softcap)

    @_on_inputs_device
    def cross_entropy_bwd(self, grad_loss, logits, target, lse, ignore_index, label_smoothing, softcap, out):
        return self._kernels("cross_entropy").cross_entropy_bwd(grad_loss, logits, target, lse, ignore_index,
                                                                label_smoothing, softcap, out)

    def cross_entropy_reasons(self, input, **_):
        return _rows_reasons("cross_entropy", input, looped=True)
