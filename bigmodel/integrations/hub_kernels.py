"""bigmodel's layers as a local `kernels` repository (pure Python, variant "torch-universal"), for the `kernels`
package's `kernelize()` and transformers' `KernelConfig`: no Hub access, nothing compiled, nothing downloaded.

Mapped, by the hub names transformers gives its layers:
- "RMSNorm" (every class decorated @use_kernel_forward_from_hub("RMSNorm"): LlamaRMSNorm, MistralRMSNorm, Qwen2/3,
  ...; all compute weight * norm(x). Gemma's (1 + weight) RMSNorm carries no hub name in transformers 5.24, so it is
  never mapped) -> bigmodel.ops.rms_norm(x, weight.shape, weight, variance_epsilon (or eps)).
- "rotary_pos_emb" (apply_rotary_pos_emb, reached through attention classes decorated @use_kernelized_func) ->
  bigmodel.ops.rotary_qk; layouts it is not written for (partial rotary, other unsqueeze dims) keep HF's formula.
  The function is one object per modeling module: kernelizing one model rebinds it for every model of that family
  in the process.
- "GatedMLP": not a transformers name (LlamaMLP has no hub decorator in 5.24; only its activation is "SiLU").
  kernelize(model, mlp=True) names each gated MLP class of the model with kernels.replace_kernel_forward_from_hub
  first -> bigmodel.ops.gated_feed_forward(x, gate_proj.weight, up_proj.weight, down_proj.weight, activation).

transformers 5.24 only uses kernels 0.18.2 <= version < 0.19: with another version its decorators are no-ops,
`use_kernels=True` raises, and kernelize() below raises (nothing in the model is named). KernelConfig also refuses
device "cpu"; kernels.kernelize itself accepts it (device "cuda" queries the GPU's compute capability)."""
import json
import os
import tempfile
import types
from pathlib import Path

import torch

from .. import ops

NAME = "bigmodel-hf"  # kernel name; the Python package is bigmodel_hf
METADATA = {"id": "bigmodel_hf_universal", "name": NAME, "version": 1, "license": "Apache-2.0",
            "python-depends": [], "kernel-depends": [], "backend": {"type": "cpu"}}
INIT = "from bigmodel.integrations.hub_kernels import layers  # noqa: F401  (the layer classes live in bigmodel)\n"
HUB_NAMES = {"RMSNorm": "RMSNorm", "rotary_pos_emb": "RotaryPosEmb", "GatedMLP": "GatedMLP"}
_GELUS = {"GELUActivation": "gelu", "GELUTanh": "gelu_tanh", "PytorchGELUTanh": "gelu_tanh",
          "NewGELUActivation": "gelu_tanh", "FastGELUActivation": "gelu_tanh"}


def _activation(act):
    """bigmodel's gated activation name for an MLP's act_fn module, or None."""
    if isinstance(act, torch.nn.SiLU) or type(act).__name__ in ("SiLUActivation", "SiLU"):
        return "silu"
    if isinstance(act, torch.nn.GELU):
        return "gelu_tanh" if act.approximate == "tanh" else "gelu"
    return _GELUS.get(type(act).__name__)


def is_gated_mlp(m) -> bool:
    """gate_proj / up_proj / down_proj bias-free Linears and a SiLU / GELU act_fn: down(act(gate(x)) * up(x))."""
    linears = [getattr(m, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
    return (all(isinstance(lin, torch.nn.Linear) and lin.bias is None for lin in linears)
            and _activation(getattr(m, "act_fn", None)) is not None)


# Kernel layers: no __init__ and no members (kernels checks); forward is bound to the Hugging Face module.
class RMSNorm(torch.nn.Module):
    has_backward = True

    def forward(self, hidden_states):
        eps = getattr(self, "variance_epsilon", getattr(self, "eps", None))
        return ops.rms_norm(hidden_states, self.weight.shape, self.weight, eps)


class RotaryPosEmb(torch.nn.Module):
    has_backward = True

    def forward(self, q, k, cos, sin, unsqueeze_dim=1):
        if cos.dim() == 3 and cos.size(-1) == q.size(-1):
            if unsqueeze_dim in (1, -3):  # q, k (B, H, L, D); cos / sin (B, L, D)
                return ops.rotary_qk(q, k, cos.unsqueeze(1), sin.unsqueeze(1))
            if unsqueeze_dim in (2, -2):  # q, k (B, L, H, D)
                yq, yk = ops.rotary_qk(q.transpose(1, 2), k.transpose(1, 2), cos.unsqueeze(1), sin.unsqueeze(1))
                return yq.transpose(1, 2), yk.transpose(1, 2)
        cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)

        def rot(x):
            x1, x2 = x[..., : x.size(-1) // 2], x[..., x.size(-1) // 2:]
            return torch.cat((-x2, x1), dim=-1)
        return q * cos + rot(q) * sin, k * cos + rot(k) * sin


class GatedMLP(torch.nn.Module):
    has_backward = True

    def forward(self, x):
        return ops.gated_feed_forward(x, self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight,
                                      _activation(self.act_fn))


layers = types.SimpleNamespace(RMSNorm=RMSNorm, RotaryPosEmb=RotaryPosEmb, GatedMLP=GatedMLP)


def repository(path=None) -> Path:
    """Write (if missing or stale) and return the local kernel repository: PATH/build/torch-universal/
    {metadata.json, bigmodel_hf/__init__.py}. Default PATH: $BIGMODEL_HUB_KERNELS or <tmp>/bigmodel-hub-kernels."""
    root = Path(path or os.environ.get("BIGMODEL_HUB_KERNELS")
                or Path(tempfile.gettempdir()) / "bigmodel-hub-kernels").absolute()
    variant = root / "build" / "torch-universal"
    files = {variant / "metadata.json": json.dumps(METADATA, indent=1) + "\n", variant / "bigmodel_hf" / "__init__.py": INIT}
    for file, text in files.items():
        if not file.exists() or file.read_text() != text:
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(text)
    return root


def _kernels():
    """Hugging Face's `kernels` package. bigmodel's source tree has its own top-level kernels/ (installed as
    bigmodel.kernels), which shadows it when the repository root is on sys.path (python -m ... run from there)."""
    import kernels
    if not hasattr(kernels, "kernelize"):
        raise ImportError(f"`import kernels` found {kernels.__path__[0]}, not Hugging Face's kernels package: run from "
                          "outside bigmodel's repository root (or with python -P)")
    return kernels


def kernel_mapping(path=None, devices=("cuda", "cpu")) -> dict:
    """{hub name: {device: kernels.LocalLayerRepository}} for kernels.use_kernel_mapping / register_kernel_mapping."""
    LocalLayerRepository = _kernels().LocalLayerRepository
    root = repository(path)
    return {hub: {d: LocalLayerRepository(repo_path=root, layer_name=layer) for d in devices}
            for hub, layer in HUB_NAMES.items()}


def kernel_config(path=None, devices=("cuda",)):
    """transformers.KernelConfig(use_local_kernel=True) for from_pretrained(..., kernel_config=...) /
    model.set_use_kernels(True, kernel_config): RMSNorm and rotary_pos_emb (the names transformers decorates).
    Unverified here: transformers 5.24 enables it only with kernels 0.18.x, and never for device "cpu"."""
    from transformers import KernelConfig
    root = repository(path)
    return KernelConfig({hub: {d: f"{root}:{HUB_NAMES[hub]}" for d in devices} for hub in ("RMSNorm", "rotary_pos_emb")},
                        use_local_kernel=True)


def register_gated_mlp(cls):
    """Give a gated MLP class (LlamaMLP, ...) the hub name "GatedMLP" (kernels.replace_kernel_forward_from_hub; a
    class attribute, process-wide); instances that are not bias-free SiLU / GELU gated MLPs are skipped."""
    replace_kernel_forward_from_hub = _kernels().replace_kernel_forward_from_hub
    if getattr(cls, "kernel_layer_name", None) is None:
        replace_kernel_forward_from_hub(cls, "GatedMLP", condition=is_gated_mlp)


def kernelize(model, mode=None, device=None, path=None, mlp=True):
    """kernels.kernelize(model) under bigmodel's mapping (other names keep their forward). mode: kernels.Mode
    (default TRAINING or INFERENCE from model.training); device: default the parameters' device type."""
    kernels = _kernels()
    if not any(getattr(type(m), "kernel_layer_name", None) == "RMSNorm" or getattr(m, "_kernel_funcs", None)
               for m in model.modules()):
        raise RuntimeError("bigmodel.integrations.hub_kernels: no RMSNorm / rotary_pos_emb hub names in this model: "
                           f"transformers' kernel decorators are inactive (kernels {kernels.__version__}; transformers "
                           "needs a version it supports, see transformers.utils.import_utils.KERNELS_MIN_VERSION)")
    if mlp:
        for cls in {type(m) for m in model.modules() if is_gated_mlp(m)}:
            register_gated_mlp(cls)
    mode = mode if mode is not None else (kernels.Mode.TRAINING if model.training else kernels.Mode.INFERENCE)
    device = device or next(model.parameters()).device.type
    with kernels.use_kernel_mapping(kernel_mapping(path, devices=(device,))):
        return kernels.kernelize(model, mode=mode, device=device, use_fallback=True)
