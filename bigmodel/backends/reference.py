"""The "torch" backend: pure-torch implementations in fp32 (fp64 for fp64 inputs).

It is the CPU fallback and the last entry of every auto list. It writes out each backward formula
instead of calling autograd, so the tests check the math against torch's own autograd in fp64.
"""
import torch

from .base import Backend


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


class TorchBackend(Backend):
    name = "torch"
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
        return y.to(x.dtype), mean.float(), rstd.float()

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
