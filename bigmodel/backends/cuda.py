"""The "cuda" backend: adapters over the compiled extension bigmodel._C."""
import functools
import importlib

import torch

from bigmodel.kernels.limits import NO_EXTRAS  # plain Python, as backends/triton.py imports it (no triton import)

from .base import Backend, mask_grad_reasons, rotary_grad_reasons, trace_constant


@functools.cache
def load_extension():
    """(module, None) if bigmodel._C imports, else (None, why not)."""
    try:
        return importlib.import_module("bigmodel._C"), None
    except ImportError as e:
        return None, (f"the CUDA extension bigmodel._C is not built ({e}); reinstall with nvcc present "
                      "and without BIGMODEL_SKIP_CUDA_BUILD")


MIN_CAPABILITY = 80  # cp.async, bf16 mma.sync: every kernel in bigmodel._C needs sm_80+
INT32_MAX = 2**31 - 1
MAX_COLS = 2**30  # the LayerNorm / RMSNorm / softmax column loops use 32-bit indices (csrc/*/_api.cpp)
MAX_GRID_YZ = 65535  # CUDA grid axes y / z: the attention kernels put heads on y and batch on z
MAX_ATTENTION_LEN = 2**30


def arch_reasons(capability: tuple[int, int], built: tuple[int, ...]) -> list[str]:
    """Why bigmodel._C, compiled for `built` (e.g. (80, 90); setup.py adds PTX for the newest), has no code for a
    GPU of this compute capability. SASS for sm_XY runs on X.Y and newer minors of the same major; PTX is JIT-
    compiled on any newer GPU."""
    cc = 10 * capability[0] + capability[1]
    name = f"{capability[0]}.{capability[1]}"
    if cc < MIN_CAPABILITY:
        return [f"compute capability {name} < 8.0: bigmodel._C's kernels need sm_80+ (cp.async, bf16 mma)"]
    if not built or any(a // 10 == cc // 10 and a <= cc for a in built) or cc >= max(built):
        return []
    archs = ", ".join(f"sm_{a}" for a in built)
    return [f"bigmodel._C holds code for {archs} (+PTX for sm_{max(built)}), none of which runs on compute "
            f"capability {name}; rebuild with BIGMODEL_CUDA_ARCHS={cc}"]


@functools.cache
def _device_arch_reasons(index: int) -> tuple[str, ...]:
    ext = load_extension()[0]
    built = tuple(a // 10 for a in ext.cuda_archs()) if hasattr(ext, "cuda_archs") else ()
    return tuple(arch_reasons(torch.cuda.get_device_capability(index), built))


@trace_constant
def _arch_reasons_of(index: int) -> tuple[str, ...]:
    return tuple(_device_arch_reasons(index))


@trace_constant
def _machine_reasons() -> tuple[str, ...]:
    ext, why = load_extension()
    if ext is None:
        return (why,)
    if not torch.cuda.is_available():
        return ("no CUDA GPU is visible (torch.cuda.is_available() is False)",)
    return ()


def _rows_cols_reasons(op, x, max_cols=None):
    reasons = []
    if x.size(0) > INT32_MAX:
        reasons.append(f"{op}: at most {INT32_MAX} rows in the CUDA kernels; got {x.size(0)}")
    if max_cols is not None and x.size(-1) > max_cols:
        reasons.append(f"{op}: at most {max_cols} columns in the CUDA kernels; got {x.size(-1)}")
    return reasons


def _rms_reasons(op, x):
    reasons = _rows_cols_reasons(op, x, MAX_COLS)
    if x.size(-1) == 0:
        reasons.append(f"{op}: the CUDA kernels need at least 1 column; got 0")
    return reasons


class CudaBackend(Backend):
    name = "cuda"

    def machine_reasons(self):
        return list(_machine_reasons())

    def device_reasons(self, device):
        if device.type != "cuda":
            return [f"inputs are on {device}; the cuda backend needs CUDA tensors"]
        return list(_arch_reasons_of(device.index if device.index is not None else torch.cuda.current_device()))

    def layer_norm_reasons(self, input, **_):
        return _rows_cols_reasons("layer_norm", input, MAX_COLS)

    def rms_norm_reasons(self, input, **_):
        return _rms_reasons("rms_norm", input)

    def add_rms_norm_reasons(self, input, **_):
        return _rms_reasons("add_rms_norm", input)

    def rotary_reasons(self, input, cos=None, sin=None, key=None, **_):
        reasons = rotary_grad_reasons(cos, sin)
        for t in (input, key):  # key: rotary_qk's k
            if t is not None and t.numel() // max(t.size(-1), 1) > INT32_MAX:
                reasons.append(f"rotary: at most {INT32_MAX} rows (batch x heads x length) in the CUDA kernel; got "
                               f"{tuple(t.shape)}")
        if input.size(-1) > INT32_MAX:
            reasons.append(f"rotary: head dims of at most {INT32_MAX} in the CUDA kernel; got {input.size(-1)}")
        return reasons

    def softmax_reasons(self, input, **_):
        return _rows_cols_reasons("softmax", input, MAX_COLS)

    def linear_act_reasons(self, input, **_):
        return _rows_cols_reasons("linear_act", input)

    def cross_entropy_reasons(self, input, **_):
        """input: the (N, C) logits (or a stand-in of one chunk's shape). One block per row on grid x, 32-bit
        column loops (csrc/cross_entropy/cross_entropy_api.cpp)."""
        rows = input.numel() // max(input.size(-1), 1) if input.dim() else 1
        reasons = []
        if rows > INT32_MAX:
            reasons.append(f"cross_entropy: at most {INT32_MAX} rows in the CUDA kernels; got {rows}")
        cols = input.size(-1) if input.dim() else 1
        if cols > MAX_COLS:
            reasons.append(f"cross_entropy: at most {MAX_COLS} classes (columns) in the CUDA kernels; got {cols}")
        if cols == 0:
            reasons.append("cross_entropy: the CUDA kernels need at least 1 class (column); got 0")
        return reasons

    @property
    def _C(self):
        return load_extension()[0]

    def layer_norm_fwd(self, x, weight, bias, eps):
        y, mean, rstd = self._C.layer_norm_fwd(x, weight, bias, eps)
        return y, mean, rstd

    def layer_norm_bwd(self, dy, x, weight, bias, mean, rstd):
        dx, dw, db = self._C.layer_norm_bwd(dy, x, weight, bias, mean, rstd)
        return dx, dw, db

    # rms_norm / add_rms_norm: the LayerNorm kernels with kRms (and the residual / dh pointers), csrc/layer_norm
    def rms_norm_fwd(self, x, weight, eps):
        y, rstd = self._C.rms_norm_fwd(x, weight, eps)
        return y, rstd

    def rms_norm_bwd(self, dy, x, weight, rstd):
        dx, dw = self._C.rms_norm_bwd(dy, x, weight, rstd)
        return dx, dw

    def add_rms_norm_fwd(self, x, residual, weight, eps):
        y, h, rstd = self._C.add_rms_norm_fwd(x, residual, weight, eps)
        return y, h, rstd

    def add_rms_norm_bwd(self, dy, dh, h, weight, rstd):
        dx, dw = self._C.add_rms_norm_bwd(dy, dh, h, weight, rstd)
        return dx, dw

    # rotary: csrc/rotary; cos / sin are read through their (stride-0) broadcast strides
    def rotary_fwd(self, x, cos, sin, interleaved):
        return self._C.rotary_fwd(x, cos, sin, interleaved)

    def rotary_bwd(self, dy, cos, sin, interleaved):
        return self._C.rotary_bwd(dy, cos, sin, interleaved)

    ATTENTION_HEAD_DIMS = (64, 128)
    ATTENTION_DTYPES = (torch.float16, torch.bfloat16)

    # The extras the CUDA kernels take: window (runtime bounds; whole key tiles outside it are skipped) and softcap
    # (kSoftcap instances). The rest are declined with a reason each.
    ATTENTION_EXTRAS_DECLINED = ("alibi_slopes", "sinks", "varlen")

    def attention_reasons(self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, extras=NO_EXTRAS, **_):
        reasons = [f"{name}: not in the CUDA attention kernels; use triton" for name in extras.names
                   if name in self.ATTENTION_EXTRAS_DECLINED]
        if q.dtype not in self.ATTENTION_DTYPES:
            reasons.append(f"attention kernels take float16 / bfloat16; q is {str(q.dtype).replace('torch.', '')}")
        if q.size(-1) not in self.ATTENTION_HEAD_DIMS or v.size(-1) != q.size(-1):
            reasons.append(f"head dims {self.ATTENTION_HEAD_DIMS} only (q, k, v all the same); got q {q.size(-1)}, "
                           f"v {v.size(-1)} (the triton backend takes any head dim up to 256)")
        if dropout_p > 0:
            reasons.append("no dropout in the CUDA attention kernels (dropout_p > 0: use triton)")
        if q.size(0) > MAX_GRID_YZ or q.size(1) > MAX_GRID_YZ:
            reasons.append(f"batch and heads must each be at most {MAX_GRID_YZ} (CUDA grid axes y, z); got batch "
                           f"{q.size(0)}, heads {q.size(1)}")
        if max(q.size(2), k.size(2)) > MAX_ATTENTION_LEN:
            reasons.append(f"sequence lengths must be at most {MAX_ATTENTION_LEN}; got q {q.size(2)}, k {k.size(2)}")
        if attn_mask is not None and key_padding(attn_mask) is None:
            reasons.append("attn_mask must be a boolean key-padding mask, i.e. vary only along batch and key "
                           "(shape (B, 1, 1, Lk)); float masks and per-query masks need triton")
        return reasons + mask_grad_reasons(attn_mask)

    def attention_fwd(self, q, k, v, mask, is_causal, scale, dropout_p, seed, extras=NO_EXTRAS):
        if extras is NO_EXTRAS:  # the dense call, exactly as before the extras existed
            o, lse = self._C.attention_fwd(q, k, v, key_padding(mask), is_causal, scale)
        else:
            o, lse = self._C.attention_fwd(q, k, v, key_padding(mask), is_causal, scale, *_window_softcap(extras))
        return o, lse

    def attention_bwd(self, do, q, k, v, o, lse, mask, is_causal, scale, dropout_p, seed, extras=NO_EXTRAS):
        if extras is NO_EXTRAS:
            dq, dk, dv = self._C.attention_bwd(do, q, k, v, o, lse, key_padding(mask), is_causal, scale)
        else:
            dq, dk, dv = self._C.attention_bwd(do, q, k, v, o, lse, key_padding(mask), is_causal, scale,
                                               *_window_softcap(extras))
        return dq, dk, dv

    # linear_act: one cuBLASLt GEMM with the bias / ReLU / GELU-aux epilogue (csrc/linear_act; exact GELU and SiLU:
    # GEMM + bias, then the elementwise kernel); the backward is the fused dz + deterministic dbias kernel (none: dbias
    # of dy only, no dz copy) and two cuBLAS GEMMs.
    SAVES_PRE_ACTIVATION = ("gelu", "gelu_tanh", "silu")

    def linear_act_fwd(self, x, weight, bias, activation):
        y, pre = self._C.linear_act_fwd(x, weight, bias, activation)
        return y, pre if activation in self.SAVES_PRE_ACTIVATION else None

    def linear_act_bwd(self, dy, x, weight, saved, y, activation, has_bias):
        dx, dw, db = self._C.linear_act_bwd(dy, x, weight, y if activation == "relu" else saved, activation, has_bias)
        return dx, dw, db if has_bias else None

    CUDA_ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")
    CUDA_GATED_ACTIVATIONS = ("silu", "gelu", "gelu_tanh")  # SwiGLU, GeGLU (erf / tanh)

    def activation_reasons(self, activation=None, **_):
        if activation is not None and activation not in self.CUDA_ACTIVATIONS:
            return [f"the CUDA activation kernels have {', '.join(self.CUDA_ACTIVATIONS)}; not {activation!r} "
                    "(triton, torch and reference have it)"]
        return []

    def activation_fwd(self, x, activation):
        return self._C.act_fwd(x, activation)

    def activation_bwd(self, dy, x, activation):
        return self._C.act_bwd(dy, x, activation)

    def gated_activation_reasons(self, activation=None, **_):
        if activation not in self.CUDA_GATED_ACTIVATIONS:
            return [f"the CUDA gated activation kernels have {', '.join(self.CUDA_GATED_ACTIVATIONS)}; not "
                    f"{activation!r}"]
        return []

    def gated_activation_fwd(self, gate, up, activation):
        return self._C.gated_activation_fwd(gate, up, activation)

    def gated_activation_bwd(self, dy, gate, up, activation):
        dgate, dup = self._C.gated_activation_bwd(dy, gate, up, activation)
        return dgate, dup

    def softmax_fwd(self, x):
        return self._C.softmax_fwd(x)

    def softmax_bwd(self, dy, y):
        return self._C.softmax_bwd(dy, y)

    # cross_entropy: csrc/cross_entropy, a block per row, one pass with an online log-sum-exp (fp32); the backward
    # writes dlogits into `out`, which may be `logits` itself (in place). Targets are range-checked by the op.
    def cross_entropy_fwd(self, logits, target, ignore_index, label_smoothing, softcap):
        loss, lse = self._C.cross_entropy_fwd(logits, target, int(ignore_index), float(label_smoothing),
                                              float(softcap or 0.0))
        return loss, lse

    def cross_entropy_bwd(self, grad_loss, logits, target, lse, ignore_index, label_smoothing, softcap, out):
        return self._C.cross_entropy_bwd(grad_loss, logits, target, lse, int(ignore_index), float(label_smoothing),
                                         float(softcap or 0.0), out)


def _window_softcap(extras):
    """bigmodel._C.attention_fwd / _bwd's (window_left, window_right, softcap): None = unbounded side, 0.0 = no
    softcap."""
    softcap = float(extras.softcap) if extras.softcap is not None else 0.0
    return extras.window_left, extras.window_right, softcap


def key_padding(mask):
    """A (B, Hq, Lq, Lk) mask as the (B, Lk) bool key-padding mask it is, or None if it is not one."""
    if mask is None or mask.dtype != torch.bool:
        return None
    if any(mask.size(d) > 1 and mask.stride(d) != 0 for d in (1, 2)):
        return None
    return mask[:, 0, 0, :].contiguous()
