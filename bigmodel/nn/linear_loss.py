"""bigmodel.nn.LinearCrossEntropyLoss: the classifier head's GEMM and the cross-entropy loss as one chunked op
(bigmodel.ops.linear_cross_entropy), shaped like Liger-Kernel's LigerFusedLinearCrossEntropyLoss."""
import torch

from .. import ops


class LinearCrossEntropyLoss(torch.nn.Module):
    """`loss_fn(input, weight, target, bias=None)` = F.cross_entropy(F.linear(input, weight, bias), target, ...)
    without materialising the (N, V) logits. The module holds no parameters: pass the head's weight (lm_head.weight,
    or the tied embedding matrix) and bias at each call.

    ignore_index, reduction ("mean", "sum", "none") and label_smoothing as torch.nn.CrossEntropyLoss; softcap=c
    applies c * tanh(logits / c) before the loss (Gemma 2's final_logit_softcapping); backend as every bigmodel op.
    """

    def __init__(self, ignore_index=-100, reduction="mean", label_smoothing=0.0, softcap=None, *, backend=None):
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"LinearCrossEntropyLoss: reduction must be one of 'mean', 'sum', 'none'; got "
                             f"{reduction!r}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"LinearCrossEntropyLoss: label_smoothing must be in [0.0, 1.0]; got {label_smoothing!r}")
        if softcap is not None and not softcap > 0:
            raise ValueError(f"LinearCrossEntropyLoss: softcap must be None or positive; got {softcap!r}")
        self.ignore_index, self.reduction, self.label_smoothing = ignore_index, reduction, label_smoothing
        self.softcap, self.backend = softcap, backend

    def forward(self, input, weight, target, bias=None):
        return ops.linear_cross_entropy(input, weight, target, bias, ignore_index=self.ignore_index,
                                        reduction=self.reduction, label_smoothing=self.label_smoothing,
                                        softcap=self.softcap, backend=self.backend)

    def extra_repr(self):
        parts = [f"ignore_index={self.ignore_index}", f"reduction={self.reduction!r}"]
        parts += [f"{k}={getattr(self, k)!r}" for k in ("label_smoothing", "softcap", "backend") if getattr(self, k)]
        return ", ".join(parts)
