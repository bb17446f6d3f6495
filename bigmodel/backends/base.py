"""The adapter interface every backend implements."""
import logging

import torch
import torch._dynamo

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def trace_constant(fn):
    """Mark a function of plain Python values (no tensors) whose result is plain data: torch.compile runs it for
    real while tracing and keeps the result as a constant. The backend choice runs at trace time in Python (no
    graph break), and what it asks of the machine (is triton importable, was _C built, a GPU's compute capability,
    a kernel module's limits) is such a function; Dynamo cannot trace importlib."""
    return torch._dynamo.assume_constant_result(fn)


_logged: set = set()


@trace_constant
def log_once(message: str) -> bool:
    """Log a message once per process (at INFO, logger "bigmodel"): fallback reasons, tuning-file trouble. Under
    torch.compile it runs at trace time."""
    if message not in _logged:
        _logged.add(message)
        logging.getLogger("bigmodel").info(message)
    return True


def mask_grad_reasons(attn_mask) -> list[str]:
    """The custom-op backends give an attention mask no gradient; PyTorch's SDPA (backend "torch") does."""
    if attn_mask is not None and attn_mask.requires_grad and torch.is_grad_enabled():
        return ["attn_mask requires grad, but the fused kernels give the mask no gradient (backend 'torch', "
                "PyTorch's SDPA, does; or detach the mask)"]
    return []


def rotary_grad_reasons(cos, sin) -> list[str]:
    """The custom-op backends give rotary's cos / sin no gradient; the "torch" composition does."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (cos, sin)):
        return ["cos / sin require grad, but the fused kernels give them none (backend 'torch' does)"]
    return []


class BackendUnavailable(RuntimeError):
    """Raised when the requested backend (or, under auto, every backend) cannot run the given inputs."""


class Backend:
    """One implementation family. An op `foo` is supported when the adapter defines `foo_fwd`
    (and `foo_bwd` for a differentiable op); `foo_reasons(**inputs)` adds op-specific limits."""

    name = "?"
    dtypes = KERNEL_DTYPES

    def machine_reasons(self) -> list[str]:
        """Why this backend cannot run at all on this machine (empty: it can)."""
        return []

    def device_reasons(self, device: torch.device) -> list[str]:
        return []

    def not_supported_reasons(self, op: str, **inputs) -> list[str]:
        reasons = list(self.machine_reasons())
        if reasons:
            return reasons
        if not hasattr(self, f"{op}_fwd"):
            return [f"{self.name} has no {op} implementation"]
        tensors = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        devices = {t.device for t in tensors.values()}
        for device in devices:
            reasons += self.device_reasons(device)
        for k, t in tensors.items():
            if t.dtype == torch.bool:  # boolean masks: their op's `<op>_reasons` judges them
                continue
            if t.dtype not in self.dtypes:
                names = ", ".join(str(d).replace("torch.", "") for d in self.dtypes)
                reasons.append(f"{k} has dtype {str(t.dtype).replace('torch.', '')}; {self.name} supports {names}")
        extra = getattr(self, f"{op}_reasons", None)
        if extra is not None:
            reasons += extra(**inputs)
        return reasons

    def __repr__(self):
        return f"<bigmodel backend {self.name!r}>"
