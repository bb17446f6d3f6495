"""The adapter interface every backend implements."""
import torch

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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
