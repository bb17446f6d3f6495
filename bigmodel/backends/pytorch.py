"""The "torch" backend: PyTorch's own implementation of every op, with PyTorch's autograd.

F.scaled_dot_product_attention (PyTorch picks its flash / cuDNN / efficient / math kernel), F.layer_norm,
torch.softmax, F.gelu / F.relu, F.linear followed by the activation. Where PyTorch has no fused op, it is the plain
composition of PyTorch ops a user would write. It runs on every device and dtype PyTorch runs the op on (CPU and
fp64 included), it is the baseline every kernel must beat, and auto's fallback wherever no kernel can run.

Unlike the other backends it is not called through a `torch.ops.bigmodel.*` custom op: bigmodel.ops calls these
methods directly (after its own validation), so autograd, autocast and torch.compile see PyTorch's own ops. The
methods take the public ops' arguments after validation, not the kernels' flattened (rows, cols) form.

Where PyTorch's op differs from bigmodel's semantics:
- attention dropout: SDPA draws its own mask from PyTorch's generator of the inputs' device; the distribution is
  the same (keep with probability 1 - p, scaled by 1 / (1 - p)), the mask is not the kernels' mask for a seed.
- fully masked attention rows (no visible key): bigmodel's kernels give output 0 and gradient 0. SDPA's CPU and
  math paths do too (PyTorch >= 2.5 uses a "safe" softmax there); its fused CUDA kernels can give NaN for such rows
  on some versions. Ask for backend="triton" (or "cuda") where rows may be fully masked on a GPU. With no keys at
  all (Lk = 0) this backend returns 0, as the kernels do.
- an attn_mask that requires grad gets its gradient here (SDPA differentiates it); the kernels give none, so
  their adapters refuse such a mask and auto takes this backend.
- attention extras: a window becomes a boolean mask and ALiBi an additive float bias (in q's dtype) given to SDPA;
  softcap has no SDPA equivalent, so it runs as the eager composition (matmul, tanh, bias / mask, fp32 softmax,
  matmul; Gemma 2's eager attention, with the softmax's fully masked rows set to 0). Sinks and varlen are declined.
"""
import torch
import torch.nn.functional as F

from bigmodel.kernels.limits import NO_EXTRAS  # plain Python, as backends/triton.py imports it

from .base import Backend

ALL_FLOAT = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def activate(z, activation):
    """act(z) for the kernels' activation names: "gelu" (erf), "gelu_tanh", "relu", "silu", "none"."""
    if activation == "gelu":
        return F.gelu(z)
    if activation == "gelu_tanh":
        return F.gelu(z, approximate="tanh")
    if activation == "relu":
        return F.relu(z)
    if activation == "silu":
        return F.silu(z)
    return z


class PyTorchBackend(Backend):
    name = "torch"
    dtypes = ALL_FLOAT
    OPS = ("attention", "layer_norm", "rms_norm", "add_rms_norm", "softmax", "activation", "gated_activation",
           "linear_act", "rotary", "cross_entropy")

    def not_supported_reasons(self, op, **inputs):
        if op not in self.OPS:
            return [f"torch has no {op} implementation in bigmodel"]
        reasons = []
        for k, t in inputs.items():
            if isinstance(t, torch.Tensor) and t.dtype != torch.bool and t.dtype not in self.dtypes:
                reasons.append(f"{k} has dtype {str(t.dtype).replace('torch.', '')}; PyTorch's op takes floating "
                               "point inputs here")
        if op == "attention":
            reasons += self.attention_reasons(**inputs)
        return reasons

    def attention_reasons(self, extras=NO_EXTRAS, **_):
        reasons = []
        if extras.sinks is not None:
            reasons.append("sinks: SDPA has no attention sinks (a softmax logit without a value); use triton or "
                           "reference")
        if extras.varlen:
            reasons.append("varlen: SDPA has no packed variable-length layout (cu_seqlens); use triton or reference")
        return reasons

    # ---- attention: q (..., Hq, Lq, D), k / v (..., Hkv, Lk, D|Dv), broadcast to one batch shape by bigmodel.ops;
    # Hkv divides Hq (gqa: Hkv != Hq); attn_mask broadcastable to (..., Hq, Lq, Lk), bool or additive, or None.
    def attention(self, q, k, v, attn_mask, dropout_p, is_causal, scale, gqa, extras=NO_EXTRAS):
        if k.size(-2) == 0:  # no keys: every row is fully masked, output 0 (SDPA would give NaN / garbage rows)
            zero = (q.sum() + k.sum() + v.sum()) * 0  # keeps the graph: gradients are zeros, not None
            return zero + q.new_zeros(*q.shape[:-1], v.size(-1))
        if extras is NO_EXTRAS:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                                  is_causal=is_causal, scale=scale, enable_gqa=gqa)
        lq, lk = q.size(-2), k.size(-2)
        mask = _extras_mask(q, lq, lk, attn_mask, is_causal, extras)
        if extras.softcap is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale,
                                                  enable_gqa=gqa)
        return _eager_softcap(q, k, v, mask, dropout_p, scale, extras.softcap)

    def layer_norm(self, x, normalized_shape, weight, bias, eps):
        if x.dtype == torch.float64:  # fp32 parameters with an fp64 input: PyTorch's CPU kernel wants one dtype
            weight = weight.to(x.dtype) if weight is not None else None
            bias = bias.to(x.dtype) if bias is not None else None
        return F.layer_norm(x, normalized_shape, weight, bias, eps)

    def rms_norm(self, x, normalized_shape, weight, eps):
        if weight is not None and weight.dtype != x.dtype:  # fp32 weight, 16-bit input: compute as the kernels do
            return F.rms_norm(x.float(), normalized_shape, weight.float(), eps).to(x.dtype)
        return F.rms_norm(x, normalized_shape, weight, eps)

    def add_rms_norm(self, x, residual, normalized_shape, weight, eps):
        h = x + residual
        return self.rms_norm(h, normalized_shape, weight, eps), h

    def softmax(self, x, dim):
        return torch.softmax(x, dim)

    def activation(self, x, activation):
        return activate(x, activation)

    def gated_activation(self, gate, up, activation):  # no fused PyTorch op: the composition a user writes
        return activate(gate, activation) * up

    def rotary(self, x, cos, sin, interleaved):  # the composition Hugging Face writes, partial rotary included
        r = cos.size(-1)
        x_rot, x_pass = x[..., :r], x[..., r:]
        if interleaved:
            rotated = torch.stack((-x_rot[..., 1::2], x_rot[..., 0::2]), dim=-1).flatten(-2)
        else:
            x1, x2 = x_rot.chunk(2, dim=-1)
            rotated = torch.cat((-x2, x1), dim=-1)
        return torch.cat((x_rot * cos + rotated * sin, x_pass), dim=-1)

    def linear_act(self, x, weight, bias, activation):
        return activate(F.linear(x, weight, bias), activation)

    def cross_entropy(self, x, target, ignore_index, reduction, label_smoothing):
        """F.cross_entropy itself (its own autograd and autocast policy: fp32 under autocast). bigmodel.ops has
        checked the shapes, dtypes and target range; only the logits go to not_supported_reasons."""
        return F.cross_entropy(x, target, ignore_index=ignore_index, reduction=reduction,
                               label_smoothing=label_smoothing)


def _extras_mask(q, lq, lk, attn_mask, is_causal, extras):
    """attn_mask, is_causal, the window and ALiBi as one SDPA mask: bool (True = attend) without ALiBi, else an
    additive bias in q's dtype (-inf where not visible). Positions are top-left aligned (i - j), as is_causal."""
    rel = torch.arange(lq, device=q.device)[:, None] - torch.arange(lk, device=q.device)  # i - j
    visible = None
    if is_causal:
        visible = rel >= 0
    if extras.window_left is not None:
        visible = (rel <= extras.window_left) if visible is None else visible & (rel <= extras.window_left)
    if extras.window_right is not None:
        visible = (rel >= -extras.window_right) if visible is None else visible & (rel >= -extras.window_right)
    mask = attn_mask
    if extras.alibi_slopes is not None:  # (Hq, Lq, Lk): -slope[h] * |i - j|
        bias = (-extras.alibi_slopes[:, None, None] * rel.abs()).to(q.dtype)
        bias = bias[0] if q.dim() == 2 else bias  # unbatched, headless q (L, E): one head
        if mask is not None:
            mask = bias.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else bias + mask
        else:
            mask = bias
    if visible is not None:
        if mask is None:
            mask = visible
        elif mask.dtype == torch.bool:
            mask = mask & visible
        else:
            mask = mask.masked_fill(~visible, float("-inf"))
    return mask


def _eager_softcap(q, k, v, mask, dropout_p, scale, softcap):
    """softmax(c tanh(scale q k^T / c) + mask) v from PyTorch ops; GQA repeats K / V over each group."""
    if q.dim() > 2 and k.size(-3) not in (1, q.size(-3)):
        k, v = (t.repeat_interleave(q.size(-3) // t.size(-3), dim=-3) for t in (k, v))
    s = (q @ k.transpose(-1, -2)).float() * scale
    s = softcap * torch.tanh(s / softcap)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.float()
    dead = (s.detach().amax(dim=-1, keepdim=True) == float("-inf"))  # rows with nothing visible: output 0
    p = torch.softmax(s.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0).to(q.dtype)
    if dropout_p > 0:
        p = F.dropout(p, dropout_p)
    return p @ v
