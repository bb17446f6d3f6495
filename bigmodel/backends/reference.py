"""The "reference" backend: pure-math implementations in fp32 (fp64 for fp64 inputs).

It is the test oracle, never the fast path: auto never picks it on a GPU, and on other devices only where
PyTorch's own op (the "torch" backend) cannot run the inputs. It writes out each backward formula instead of
calling autograd, so the tests check the math against torch's own autograd in fp64.
"""
import torch

from bigmodel.kernels.limits import NO_EXTRAS  # plain Python, as backends/triton.py imports it

from .base import Backend, mask_grad_reasons, rotary_grad_reasons
from .decode_reference import ReferenceDecode  # attention_decode (bigmodel.ops.attention_decode)
from .pytorch import activate as _act  # act(z) by name; the derivatives below are written out


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


class ReferenceBackend(ReferenceDecode, Backend):
    name = "reference"
    dtypes = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

    # ---- layer_norm: x is (M, N); see kernels/layer_norm.py for the math
    def layer_norm_fwd(self, x, weight, bias, eps):
        xf = x.to(_acc_dtype(x))
        var, mean = torch.var_mean(xf, dim=1, correction=0)
        rstd = torch.rsqrt(var + eps)
        y = (xf - mean[:, None]) * rstd[:, None]
        if weight is not None:
            y = y * weight.to(xf.dtype)
        if bias is not None:
            y = y + bias.to(xf.dtype)
        return y.to(x.dtype), mean, rstd  # in the accumulation dtype: fp32, or fp64 for fp64 input

    def layer_norm_bwd(self, dy, x, weight, bias, mean, rstd):
        acc = _acc_dtype(x)
        xhat = (x.to(acc) - mean.to(acc)[:, None]) * rstd.to(acc)[:, None]
        dyf = dy.to(acc)
        g = dyf * weight.to(acc) if weight is not None else dyf
        c1 = (g * xhat).mean(dim=1, keepdim=True)
        c2 = g.mean(dim=1, keepdim=True)
        dx = ((g - c2 - xhat * c1) * rstd.to(acc)[:, None]).to(x.dtype)
        dw = (dyf * xhat).sum(0).to(weight.dtype) if weight is not None else None
        db = dyf.sum(0).to(bias.dtype) if bias is not None else None
        return dx, dw, db

    # ---- rms_norm / add_rms_norm: x (M, N); see kernels/layer_norm.py for the math
    def rms_norm_fwd(self, x, weight, eps):
        xf = x.to(_acc_dtype(x))
        rstd = torch.rsqrt(xf.square().mean(dim=1) + eps)
        y = xf * rstd[:, None]
        if weight is not None:
            y = y * weight.to(xf.dtype)
        return y.to(x.dtype), rstd

    def rms_norm_bwd(self, dy, x, weight, rstd):
        acc = _acc_dtype(x)
        r = rstd.to(acc)[:, None]
        xhat = x.to(acc) * r
        dyf = dy.to(acc)
        g = dyf * weight.to(acc) if weight is not None else dyf
        dx = ((g - xhat * (g * xhat).mean(dim=1, keepdim=True)) * r).to(x.dtype)
        dw = (dyf * xhat).sum(0).to(weight.dtype) if weight is not None else None
        return dx, dw

    def add_rms_norm_fwd(self, x, residual, weight, eps):
        h = (x.to(_acc_dtype(x)) + residual.to(_acc_dtype(x))).to(x.dtype)  # rounded as the unfused add
        y, rstd = self.rms_norm_fwd(h, weight, eps)
        return y, h, rstd

    def add_rms_norm_bwd(self, dy, dh, h, weight, rstd):
        dx, dw = self.rms_norm_bwd(dy, h, weight, rstd)
        return (dx.to(_acc_dtype(h)) + dh.to(_acc_dtype(h))).to(h.dtype), dw

    # ---- rotary: x (B, H, L, D), cos / sin broadcast to (B, H, L, R); see kernels/rotary.py for the math
    def rotary_fwd(self, x, cos, sin, interleaved):
        return _rotate(x, cos, sin, interleaved, sign=1.0)

    def rotary_bwd(self, dy, cos, sin, interleaved):
        return _rotate(dy, cos, sin, interleaved, sign=-1.0)

    def rotary_reasons(self, cos=None, sin=None, **_):
        return rotary_grad_reasons(cos, sin)

    # ---- attention: q (B, Hq, Lq, D), k / v (B, Hkv, Lk, D|Dv), mask None or (B, Hq, Lq, Lk); see
    # kernels/attention/ for the math and kernels/limits.py AttentionExtras for the extras (all implemented here;
    # varlen: a loop over the sequences). Materialises the (Lq, Lk) scores: a reference, not a kernel.
    def attention_reasons(self, attn_mask=None, **_):
        return mask_grad_reasons(attn_mask)

    def attention_fwd(self, q, k, v, mask, is_causal, scale, dropout_p, seed, extras=NO_EXTRAS):
        if extras.varlen:
            return _varlen_fwd(q, k, v, is_causal, scale, dropout_p, seed, extras)
        return _attention_out(q, k, v, mask, is_causal, scale, dropout_p, seed, extras)

    def attention_bwd(self, do, q, k, v, o, lse, mask, is_causal, scale, dropout_p, seed, extras=NO_EXTRAS):
        if extras.varlen:
            return _varlen_bwd(do, q, k, v, is_causal, scale, dropout_p, seed, extras)
        return _attention_grads(do, q, k, v, mask, is_causal, scale, dropout_p, seed, extras)

    # ---- linear_act (x (M, K), weight (N, K)), gelu / relu / silu, softmax over the last dim of (M, N)
    def linear_act_fwd(self, x, weight, bias, activation):
        acc = _acc_dtype(x)
        z = x.to(acc) @ weight.to(acc).t()
        if bias is not None:
            z = z + bias.to(acc)
        y = _act(z, activation).to(x.dtype)
        return y, z.to(x.dtype) if activation in ("gelu", "gelu_tanh", "silu") else None

    def linear_act_bwd(self, dy, x, weight, saved, y, activation, has_bias):
        acc = _acc_dtype(x)
        dz = dy.to(acc)
        if activation in ("gelu", "gelu_tanh", "silu"):
            dz = dz * _act_grad(saved.to(acc), activation)
        elif activation == "relu":
            dz = dz * (y > 0)
        dx = (dz @ weight.to(acc)).to(x.dtype)
        dw = (dz.t() @ x.to(acc)).to(weight.dtype)
        return dx, dw, dz.sum(0).to(weight.dtype) if has_bias else None

    def activation_fwd(self, x, activation):
        return _act(x.to(_acc_dtype(x)), activation).to(x.dtype)

    def gated_activation_fwd(self, gate, up, activation):
        acc = _acc_dtype(gate)
        return (_act(gate.to(acc), activation) * up.to(acc)).to(gate.dtype)

    def gated_activation_bwd(self, dy, gate, up, activation, keep_acc=False):
        acc = _acc_dtype(gate)
        g, u, d = gate.to(acc), up.to(acc), dy.to(acc)
        dg, du = d * u * _act_grad(g, activation), d * _act(g, activation)
        return (dg, du) if keep_acc else (dg.to(gate.dtype), du.to(up.dtype))

    # ---- gated_linear: x (M, K), w_gate / w_up (N, K); see kernels/gated_linear.py for the math
    def gated_linear_fwd(self, x, w_gate, w_up, activation, save):
        acc = _acc_dtype(x)
        g, u = x.to(acc) @ w_gate.to(acc).t(), x.to(acc) @ w_up.to(acc).t()
        h = (_act(g, activation) * u).to(x.dtype)
        return (h, g.to(x.dtype), u.to(x.dtype)) if save else (h, None, None)

    def gated_linear_bwd(self, dh, x, w_gate, w_up, g, u, activation):
        dg, du = self.gated_activation_bwd(dh, g, u, activation, keep_acc=True)  # unrounded: fp32 / fp64
        acc = dg.dtype
        dx = dg @ w_gate.to(acc) + du @ w_up.to(acc)
        return dx.to(x.dtype), (dg.t() @ x.to(acc)).to(w_gate.dtype), (du.t() @ x.to(acc)).to(w_up.dtype)

    def activation_bwd(self, dy, x, activation):
        acc = _acc_dtype(x)
        return (dy.to(acc) * _act_grad(x.to(acc), activation)).to(x.dtype)

    def softmax_fwd(self, x):
        return torch.softmax(x.to(_acc_dtype(x)), dim=-1).to(x.dtype)

    def softmax_bwd(self, dy, y):
        acc = _acc_dtype(y)
        yf, dyf = y.to(acc), dy.to(acc)
        return (yf * (dyf - (dyf * yf).sum(-1, keepdim=True))).to(y.dtype)

    # ---- cross_entropy: logits (N, C) (unit column stride), target (N,) int64; see kernels/cross_entropy.py.
    # Per row, with z = softcap * tanh(logits / softcap) (softcap 0: z = logits) and eps = label_smoothing:
    #   loss_i = (1 - eps) (lse_i - z_{i,t_i}) + eps (lse_i - mean_j z_ij),   0 where t_i == ignore_index
    #   dlogits_ij = g_i (softmax(z_i)_j - (1 - eps) [j == t_i] - eps / C) * dz/dlogits,  dz/dlogits = 1 - tanh^2
    # loss and lse are fp32 (fp64 for fp64 logits: the oracle keeps its precision). The ops layer checks targets;
    # a non-ignored target outside [0, C) that gets here anyway (a compiled graph) gives NaN rows, as the kernels.
    def cross_entropy_fwd(self, logits, target, ignore_index, label_smoothing, softcap):
        acc = _acc_dtype(logits)
        z = _softcapped(logits.to(acc), softcap)
        lse = torch.logsumexp(z, dim=1)
        valid, inside = target != ignore_index, (target >= 0) & (target < logits.size(1))
        zt = z.gather(1, torch.where(valid & inside, target, 0)[:, None]).squeeze(1)
        loss = torch.where(inside, lse - zt, float("nan"))
        if label_smoothing:
            loss = (1.0 - label_smoothing) * loss + label_smoothing * (lse - z.mean(dim=1))
        out = torch.float64 if acc == torch.float64 else torch.float32
        return torch.where(valid, loss, 0.0).to(out), lse.to(out)

    def cross_entropy_bwd(self, grad_loss, logits, target, lse, ignore_index, label_smoothing, softcap, out):
        """Writes dlogits into `out` (which may be `logits`: every read happens before the write) and returns it.
        The softmax is recomputed from the logits in the accumulation dtype (the oracle does not trust `lse`)."""
        acc = _acc_dtype(logits)
        x = logits.to(acc)
        z = _softcapped(x, softcap)
        valid, inside = target != ignore_index, (target >= 0) & (target < logits.size(1))
        d = torch.softmax(z, dim=1)
        if label_smoothing:
            d = d - label_smoothing / logits.size(1)
        d = d.scatter_add(1, torch.where(valid & inside, target, 0)[:, None],
                          inside.to(acc)[:, None] * -(1.0 - label_smoothing))
        g = torch.where(inside, grad_loss.to(acc), float("nan"))
        d = torch.where(valid[:, None], d * g[:, None], 0.0)
        if softcap:
            t = torch.tanh(x / softcap)
            d = d * (1.0 - t * t)
        out.copy_(d)
        return out


def _softcapped(x, softcap):
    """softcap * tanh(x / softcap) (Gemma 2's final_logit_softcapping); softcap 0 is off."""
    return softcap * torch.tanh(x / softcap) if softcap else x


def _repeat_kv(t, heads):
    """(B, Hkv, L, D) -> (B, heads, L, D): each kv head serves heads // Hkv query heads (GQA)."""
    return t if t.size(1) == heads else t.repeat_interleave(heads // t.size(1), dim=1)


def _sum_groups(g, like):
    """(B, Hq, L, D) gradient -> (B, Hkv, L, D): sum over the query heads that share a kv head."""
    b, hq, n, d = g.shape
    hkv = like.size(1)
    return g if hq == hkv else g.view(b, hkv, hq // hkv, n, d).sum(2)


def _attention_probs(q, k, mask, is_causal, scale, acc, extras=NO_EXTRAS, diag=0):
    """P = softmax(scale * q k^T + mask) and its log-sum-exp; rows with no visible key get P = 0, lse = +inf.
    With extras (limits.AttentionExtras; diag = Lk - Lq aligns a varlen sequence bottom-right): softcap, ALiBi,
    window and sinks as the docstring there says. Returns (P, lse, dcap): dcap = 1 - tanh^2 with softcap, else None."""
    s = scale * (q.to(acc) @ _repeat_kv(k, q.size(1)).to(acc).transpose(-1, -2))
    dcap = None
    if extras.softcap is not None:
        t = torch.tanh(s / extras.softcap)
        s, dcap = extras.softcap * t, 1.0 - t * t
    lq, lk = s.shape[-2:]
    if extras.alibi_slopes is not None or extras.has_window:
        rel = (torch.arange(lq, device=s.device)[:, None] + diag) - torch.arange(lk, device=s.device)  # i + diag - j
    if extras.alibi_slopes is not None:
        s = s - extras.alibi_slopes.to(acc)[:, None, None] * rel.abs().to(acc)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.to(acc)
    if is_causal:
        s = s.masked_fill(torch.ones(lq, lk, dtype=torch.bool, device=s.device).triu(diag + 1), float("-inf"))
    if extras.window_left is not None:  # j >= i + diag - left
        s = s.masked_fill(rel > extras.window_left, float("-inf"))
    if extras.window_right is not None:  # j <= i + diag + right
        s = s.masked_fill(rel < -extras.window_right, float("-inf"))
    # P as softmax computes it, in `acc` from the scores: exp(s - rowmax) / rowsum. (exp(s - lse) with lse in fp32
    # does not sum to 1 when |s| is large: lse's rounding error becomes a relative error of every probability.)
    m = s.amax(dim=-1, keepdim=True) if lk else s.new_full((*s.shape[:-1], 1), float("-inf"))
    sinks = None if extras.sinks is None else extras.sinks.to(acc)[:, None, None]  # (Hq, 1, 1)
    if sinks is not None:
        m = torch.maximum(m, sinks)
    m = m.masked_fill(m == float("-inf"), 0.0)  # rows with no visible key (and no sink): e = 0 below
    e = torch.exp(s - m)
    denom = e.sum(dim=-1, keepdim=True)
    if sinks is not None:  # the sink's logit joins the denominator (it has no value)
        denom = denom + torch.exp(sinks - m)
    p = torch.where(denom > 0, e / denom.clamp_min(torch.finfo(acc).tiny), 0.0)
    lse = (m + torch.log(denom)).squeeze(-1)
    lse = lse.masked_fill(lse == float("-inf"), float("inf"))
    return p, lse, dcap


def _attention_out(q, k, v, mask, is_causal, scale, dropout_p, seed, extras, diag=0):
    """(O, lse) of one dense (B, H, L, D) problem."""
    acc = _acc_dtype(q)
    p, lse, _ = _attention_probs(q, k, mask, is_causal, scale, acc, extras, diag)
    pd = p * _dropout_keep(p, dropout_p, seed) if dropout_p > 0 else p
    o = pd @ _repeat_kv(v, q.size(1)).to(acc)
    return o.to(q.dtype), lse.float()


def _attention_grads(do, q, k, v, mask, is_causal, scale, dropout_p, seed, extras, diag=0):
    """(dq, dk, dv) of one dense problem, P recomputed from q and k; with sinks also rowsum(P * dP) in `acc` (the
    sinks' delta, see bigmodel/library/attention.py)."""
    acc = _acc_dtype(q)
    p, _, dcap = _attention_probs(q, k, mask, is_causal, scale, acc, extras, diag)
    keep = _dropout_keep(p, dropout_p, seed) if dropout_p > 0 else None
    dof, vf = do.to(acc), _repeat_kv(v, q.size(1)).to(acc)
    dv = (p * keep if keep is not None else p).transpose(-1, -2) @ dof
    dp = dof @ vf.transpose(-1, -2)
    if keep is not None:
        dp = dp * keep
    ds = p * (dp - (p * dp).sum(-1, keepdim=True))  # rowsum(P * dP) = rowsum(dO * O); the sink has no dP
    if dcap is not None:  # softcap: d(c tanh(s / c)) / ds = 1 - tanh^2
        ds = ds * dcap
    dq = scale * ds @ _repeat_kv(k, q.size(1)).to(acc)
    dk = scale * ds.transpose(-1, -2) @ q.to(acc)
    grads = dq.to(q.dtype), _sum_groups(dk, k).to(k.dtype), _sum_groups(dv, v).to(v.dtype)
    return grads if extras.sinks is None else (*grads, (p * dp).sum(-1))


def _sequences(extras):
    """[(b, q rows, k rows, diag)] of a packed batch, from cu_seqlens (one host sync each); diag = Lk_b - Lq_b
    aligns the sequence's causal / window bottom-right (FlashAttention's varlen)."""
    cq, ck = extras.cu_seqlens_q.tolist(), extras.cu_seqlens_k.tolist()
    return [(b, slice(cq[b], cq[b + 1]), slice(ck[b], ck[b + 1]), (ck[b + 1] - ck[b]) - (cq[b + 1] - cq[b]))
            for b in range(len(cq) - 1)]


def _dense(extras):
    return extras._replace(cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0)


def _varlen_fwd(q, k, v, is_causal, scale, dropout_p, seed, extras):
    """Packed (1, H, total, D) tensors: the dense math per sequence; dropout draws sequence b's mask from seed + b.
    Rows of a sequence with no keys keep O = 0 and lse = +inf (sinks[h] with sinks)."""
    o = q.new_zeros(*q.shape[:-1], v.size(-1))
    lse = torch.full(q.shape[:-1], float("inf"), dtype=torch.float32, device=q.device)
    if extras.sinks is not None:
        lse.copy_(extras.sinks[None, :, None].expand(lse.shape))
    dense = _dense(extras)
    for b, rq, rk, diag in _sequences(extras):
        if rq.stop > rq.start and rk.stop > rk.start:
            o[:, :, rq], lse[:, :, rq] = _attention_out(q[:, :, rq], k[:, :, rk], v[:, :, rk], None, is_causal, scale,
                                                        dropout_p, seed + b, dense, diag)
    return o, lse


def _varlen_bwd(do, q, k, v, is_causal, scale, dropout_p, seed, extras):
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    row_pdp = q.new_zeros(q.shape[:-1], dtype=_acc_dtype(q))
    dense = _dense(extras)
    for b, rq, rk, diag in _sequences(extras):
        if rq.stop > rq.start and rk.stop > rk.start:  # else: no queries or no keys, zero gradients
            grads = _attention_grads(do[:, :, rq], q[:, :, rq], k[:, :, rk], v[:, :, rk], None, is_causal, scale,
                                     dropout_p, seed + b, dense, diag)
            dq[:, :, rq], dk[:, :, rk], dv[:, :, rk] = grads[:3]
            if extras.sinks is not None:
                row_pdp[:, :, rq] = grads[3]
    return (dq, dk, dv) if extras.sinks is None else (dq, dk, dv, row_pdp)


def _dropout_keep(p, dropout_p, seed):
    """keep / (1 - p) for every score, a pure function of `seed` (the backward draws the same mask)."""
    gen = torch.Generator(device=p.device)
    gen.manual_seed(int(seed))
    keep = torch.rand(p.shape, generator=gen, device=p.device) >= dropout_p
    return keep.to(p.dtype) / (1.0 - dropout_p)


def _act_grad(z, activation):
    """d act / dz, written out (the tests compare it with torch's autograd in fp64)."""
    if activation == "gelu":  # Phi(z) + z phi(z)
        return 0.5 * (1 + torch.erf(z * 0.5**0.5)) + z * torch.exp(-0.5 * z * z) * (2 * torch.pi) ** -0.5
    if activation == "gelu_tanh":  # t = tanh(c (z + a z^3)): 0.5 (1 + t) + 0.5 z (1 - t^2) c (1 + 3 a z^2)
        c, a = (2 / torch.pi) ** 0.5, 0.044715
        t = torch.tanh(c * (z + a * z**3))
        return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * c * (1 + 3 * a * z * z)
    if activation == "relu":
        return (z > 0).to(z.dtype)
    if activation == "silu":  # s (1 + z (1 - s)), s = sigmoid(z)
        s = torch.sigmoid(z)
        return s * (1 + z * (1 - s))
    return torch.ones_like(z)


def _rotate(x, cos, sin, interleaved, sign):
    """sign +1: y1 = x1 c1 - x2 s1, y2 = x2 c2 + x1 s2; sign -1 (the backward): dx1 = dy1 c1 + dy2 s2,
    dx2 = dy2 c2 - dy1 s1. Pairs: halves (rotate_half) or even / odd features (interleaved); features past R pass."""
    acc = _acc_dtype(x)
    r = cos.size(-1)
    xf, c, s = x[..., :r].to(acc), cos.to(acc), sin.to(acc)
    pick = (lambda t: (t[..., 0::2], t[..., 1::2])) if interleaved else (lambda t: t.chunk(2, dim=-1))
    (x1, x2), (c1, c2), (s1, s2) = pick(xf), pick(c), pick(s)
    if sign > 0:
        y1, y2 = x1 * c1 - x2 * s1, x2 * c2 + x1 * s2
    else:
        y1, y2 = x1 * c1 + x2 * s2, x2 * c2 - x1 * s1
    y = torch.stack((y1, y2), dim=-1).flatten(-2) if interleaved else torch.cat((y1, y2), dim=-1)
    return torch.cat((y.to(x.dtype), x[..., r:]), dim=-1).contiguous()
