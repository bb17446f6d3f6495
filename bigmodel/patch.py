"""bigmodel.patch(model): swap torch.nn (and Hugging Face activation) modules for their bigmodel drop-ins, in place."""
import functools
import inspect
import logging
import sys
import types

import torch

from . import nn as bnn
from . import ops
from .patch_loss import patch_causal_lm_loss

log = logging.getLogger("bigmodel")


def _layer_norm(m: torch.nn.LayerNorm, backend):
    new = bnn.LayerNorm(m.normalized_shape, m.eps, m.elementwise_affine, m.bias is not None, backend=backend)
    # Share the parameters themselves: optimizers and tied references keep working.
    new.weight, new.bias = m.weight, m.bias
    return new


def _multihead_attention(m: torch.nn.MultiheadAttention, backend):
    new = bnn.MultiheadAttention(m.embed_dim, m.num_heads, m.dropout, m.in_proj_bias is not None,
                                 m.bias_k is not None, m.add_zero_attn, m.kdim, m.vdim, m.batch_first,
                                 device="meta", backend=backend)
    new.load_state_dict(m.state_dict(keep_vars=True), assign=True)  # the same Parameter objects
    return new


# torch.nn class -> builder of its drop-in. Exact classes only: a subclass may change forward().
REPLACEMENTS = {
    torch.nn.LayerNorm: _layer_norm,
    torch.nn.RMSNorm: lambda m, backend: _shared(bnn.RMSNorm(m.normalized_shape, m.eps, m.elementwise_affine,
                                                            backend=backend), m) if m.weight is not None
    else bnn.RMSNorm(m.normalized_shape, m.eps, False, backend=backend),
    torch.nn.MultiheadAttention: _multihead_attention,
    torch.nn.GELU: lambda m, backend: bnn.GELU(m.approximate, backend=backend),
    torch.nn.ReLU: lambda m, backend: bnn.ReLU(m.inplace, backend=backend),
    torch.nn.Softmax: lambda m, backend: bnn.Softmax(m.dim, backend=backend),
}


# Hugging Face activation classes (transformers.activations) by name -> GELU's `approximate`. Looked up only when
# transformers is already imported: a model holding these modules has imported it.
HF_GELUS = {"GELUActivation": "none", "NewGELUActivation": "tanh", "GELUTanh": "tanh", "PytorchGELUTanh": "tanh",
            "FastGELUActivation": "tanh", "AccurateGELUActivation": "tanh"}


def _one_input_forward(m: torch.nn.Module) -> bool:
    """forward(self, x): exactly one argument, no extras (an optional second argument would be dropped)."""
    try:
        params = list(inspect.signature(type(m).forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return False
    return len(params) == 1 and params[0].kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                   inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _probe(m: torch.nn.Module, x: torch.Tensor):
    """m(x) without gradients, or the exception's text (a look-alike may not take such an input)."""
    try:
        with torch.no_grad():
            return m(x), None
    except Exception as e:  # noqa: BLE001 - any failure means "not the module we replace"
        return None, f"its forward failed on a probe input ({type(e).__name__}: {e})"


def _rms_norm_by_structure(m: torch.nn.Module, backend):
    """Hugging Face style RMSNorm classes (LlamaRMSNorm, Qwen3RMSNorm, GemmaRMSNorm, ...), by what they are, not by
    model: a class named *RMSNorm with a 1-D `weight` and a float `variance_epsilon` or `eps`. Which formula the
    class computes (w * norm(x), or (1 + w) * norm(x) as Gemma stores its weight) is read off its own forward on a
    probe input; a module matching neither is left alone. Returns (builder, None) or (None, reason)."""
    weight = getattr(m, "weight", None)
    eps = next((getattr(m, a) for a in ("variance_epsilon", "eps") if isinstance(getattr(m, a, None), float)), None)
    if not isinstance(weight, torch.nn.Parameter) or weight.dim() != 1:
        return None, "no 1-D weight parameter"
    if eps is None:
        return None, "no float eps attribute (variance_epsilon or eps)"
    if any(True for _ in m.children()) or any(n != "weight" for n, _ in m.named_parameters()):
        return None, "has submodules or parameters besides weight"
    if not _one_input_forward(m):
        return None, "its forward takes other arguments than the input"
    if weight.device.type == "meta":
        return None, "on the meta device: its formula cannot be checked"
    n = weight.numel()
    generator = torch.Generator(device=weight.device).manual_seed(0)
    x = torch.randn(4, n, generator=generator, device=weight.device).to(weight.dtype) * 3 + 1
    got, failed = _probe(m, x)
    if failed:
        return None, failed
    with torch.no_grad():
        got = got.float()
        w = weight.float()
        xf = x.float()
        normed = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
        tol = 1e-4 if weight.dtype in (torch.float32, torch.float64) else 3e-2
        for offset in (0.0, 1.0):
            want = normed * (offset + w)
            if got.shape == want.shape and (got - want).abs().max() <= tol * want.abs().max().clamp_min(1e-6):
                if offset == 0.0:
                    return (lambda m, backend: _shared(bnn.RMSNorm(n, eps, backend=backend), m)), None
                return (lambda m, backend: _shared(bnn.OffsetRMSNorm(n, eps, offset, backend=backend), m)), None
    return None, "its forward is neither w * x / rms(x) nor (1 + w) * x / rms(x) (extra behaviour)"


def _shared(new: torch.nn.Module, old: torch.nn.Module) -> torch.nn.Module:
    new.weight = old.weight  # the same Parameter: optimizers and tied references keep working
    return new


def _activation_of(act) -> str | None:
    """The gated activation name of an MLP's activation module: SiLU, GELU (tanh) by type or HF class name."""
    if isinstance(act, torch.nn.SiLU) or type(act).__name__ in ("SiLUActivation", "SiLU"):
        return "silu"
    if isinstance(act, torch.nn.GELU):
        return "gelu_tanh" if act.approximate == "tanh" else "gelu"
    approximate = HF_GELUS.get(type(act).__name__)
    return None if approximate is None else ("gelu_tanh" if approximate == "tanh" else "gelu")


def _gated_mlp_by_structure(m: torch.nn.Module, backend):
    """A gated MLP: gate_proj / up_proj / down_proj Linears (or Phi-3's fused gate_up_proj) and an act_fn /
    activation_fn that is SiLU or GELU; the forward must compute down(act(gate(x)) * up(x)), checked on a probe
    input (in eval mode: dropout would be extra behaviour). Returns (builder, None) or (None, reason)."""
    act = getattr(m, "act_fn", getattr(m, "activation_fn", None))
    name = _activation_of(act)
    if name is None:
        return None, f"its activation {type(act).__name__} is not SiLU or GELU"
    fused = hasattr(m, "gate_up_proj")
    linears = ("gate_up_proj", "down_proj") if fused else ("gate_proj", "up_proj", "down_proj")
    if not all(type(getattr(m, a, None)) is torch.nn.Linear for a in linears):
        return None, f"{', '.join(linears)} are not all torch.nn.Linear"
    extra = {n for n, _ in m.named_children()} - set(linears) - {"act_fn", "activation_fn"}
    if extra:
        return None, f"has other submodules ({', '.join(sorted(extra))})"
    if not _one_input_forward(m):
        return None, "its forward takes other arguments than the input"
    down = m.down_proj
    if down.weight.device.type == "meta":
        return None, "on the meta device: its forward cannot be checked"
    d_model, d_ff = down.out_features, down.in_features
    cls = bnn.FusedGatedFeedForward if fused else bnn.GatedFeedForward

    def build(m, backend):
        new = cls(d_model, d_ff, name, device="meta", backend=backend)
        for a in linears:  # the same Linear modules: parameters and tied references kept (hooks: see the module)
            setattr(new, a, getattr(m, a))
        return new

    x = torch.randn(3, d_model, generator=torch.Generator(device=down.weight.device).manual_seed(0),
                    device=down.weight.device).to(down.weight.dtype)
    got, failed = _probe(m, x)
    want, failed_ours = _probe(build(m, "torch"), x)
    if failed or failed_ours:
        return None, failed or failed_ours
    got, want = got.float(), want.float()
    tol = 1e-4 if down.weight.dtype in (torch.float32, torch.float64) else 3e-2
    if got.shape != want.shape or (got - want).abs().max() > tol * want.abs().max().clamp_min(1e-6):
        return None, "its forward is not down(act(gate(x)) * up(x)) (extra behaviour)"
    return build, None


def _is_gated_mlp(m) -> bool:
    return hasattr(m, "down_proj") and (hasattr(m, "gate_up_proj") or (hasattr(m, "gate_proj")
                                                                        and hasattr(m, "up_proj")))


# Structural matchers: (what a module must look like to be a candidate, matcher(module, backend) -> (builder,
# None) when it is one bigmodel replaces, (None, reason) when it looks similar but is left alone).
STRUCTURAL = [(lambda m: type(m).__name__.endswith("RMSNorm") and not isinstance(m, torch.nn.RMSNorm),
               _rms_norm_by_structure),
              (_is_gated_mlp, _gated_mlp_by_structure)]


# ------------------------------------------------------------------------------------------ rotary function
# Hugging Face's attention classes call a module-level apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1). patch()
# rebinds that name for the patched model's attention modules only (a copy of their forward whose globals map it to
# bigmodel.ops.rotary_qk): other models of the same family in the process keep Hugging Face's function.
ROTARY_FN = "apply_rotary_pos_emb"
ROTARY_EXTRA_ARGS = ("position_ids", "unsqueeze_dim")  # what HF's signatures have had after (q, k, cos, sin)


def _innermost(fn):
    while hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__
    return fn


def _calls_rotary_fn(m) -> bool:
    forward = getattr(type(m), "forward", None)
    inner = _innermost(forward) if forward is not None else None
    return isinstance(inner, types.FunctionType) and ROTARY_FN in inner.__code__.co_names


def _with_global(fn, name, value):
    """A copy of fn whose global `name` is `value`, rebuilt through functools.wraps-style decorators that hold the
    wrapped function in their closure (HF's deprecate_kwarg); None where a decorator hides it otherwise."""
    inner = getattr(fn, "__wrapped__", None)
    if inner is None:
        g = dict(fn.__globals__)
        g[name] = value
        new = types.FunctionType(fn.__code__, g, fn.__name__, fn.__defaults__, fn.__closure__)
    else:
        rebuilt = _with_global(inner, name, value)
        cells = [i for i, c in enumerate(fn.__closure__ or ()) if _cell(c) is inner]
        if rebuilt is None or len(cells) != 1:
            return None
        closure = tuple(types.CellType(rebuilt) if i == cells[0] else c for i, c in enumerate(fn.__closure__))
        new = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, closure)
        new.__wrapped__ = rebuilt
    new.__kwdefaults__, new.__qualname__ = fn.__kwdefaults__, fn.__qualname__
    new.__dict__.update({k: v for k, v in fn.__dict__.items() if k != "__wrapped__"})
    return new


def _cell(c):
    try:
        return c.cell_contents
    except ValueError:  # an empty cell
        return None


def _rotary_fn_by_structure(cls, backend):
    """(bigmodel's apply_rotary_pos_emb for cls's forward, None) or (None, reason): HF's function must take
    (q, k, cos, sin[, position_ids][, unsqueeze_dim]) and compute Hugging Face's rotation, checked on a probe."""
    original = _innermost(cls.forward).__globals__.get(ROTARY_FN)
    try:
        params = list(inspect.signature(original).parameters)
    except (TypeError, ValueError):
        return None, f"its {ROTARY_FN} has no readable signature"
    if len(params) < 4 or any(p not in ROTARY_EXTRA_ARGS for p in params[4:]):
        return None, f"its {ROTARY_FN}{tuple(params)} takes other arguments than (q, k, cos, sin, unsqueeze_dim)"
    unsqueeze_at = params[4:].index("unsqueeze_dim") if "unsqueeze_dim" in params else None

    @functools.wraps(original)
    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
        dim = kwargs.get("unsqueeze_dim", args[unsqueeze_at] if unsqueeze_at is not None and len(args) > unsqueeze_at
                         else 1)
        if cos.dim() != 3 or dim not in (1, 2, -2, -3) or k.dtype != q.dtype or sin.dtype != cos.dtype \
                or cos.dtype not in (q.dtype, torch.float32):  # layouts / dtype mixes ops.rotary_qk does not take:
            return original(q, k, cos, sin, *args, **kwargs)  # Hugging Face's own formula (type promotion)
        if dim in (1, -3):  # q, k (B, H, L, D), cos / sin (B, L, R)
            return ops.rotary_qk(q, k, cos.unsqueeze(1), sin.unsqueeze(1), backend=backend)
        yq, yk = ops.rotary_qk(q.transpose(1, 2), k.transpose(1, 2), cos.unsqueeze(1), sin.unsqueeze(1),
                               backend=backend)  # q, k (B, L, H, D)
        return yq.transpose(1, 2), yk.transpose(1, 2)

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 5, 16, generator=g), torch.randn(2, 2, 5, 16, generator=g)
    theta = torch.randn(2, 5, 8, generator=g)
    cos, sin = torch.cat((theta, theta), -1).cos(), torch.cat((theta, theta), -1).sin()
    try:
        with torch.no_grad():
            want = original(q, k, cos, sin)
            got = ops.rotary_qk(q, k, cos.unsqueeze(1), sin.unsqueeze(1), backend="reference")
    except Exception as e:  # noqa: BLE001 - any failure means "not the function we replace"
        return None, f"its {ROTARY_FN} failed on a probe input ({type(e).__name__}: {e})"
    if not (isinstance(want, tuple) and len(want) == 2 and all(torch.allclose(a, b, rtol=1e-4, atol=1e-5)
                                                              for a, b in zip(got, want))):
        return None, f"its {ROTARY_FN} does not compute Hugging Face's rotate_half rotation"
    return apply_rotary_pos_emb, None


def _patch_rotary(model, targets, backend, counts, skipped):
    """Rebind apply_rotary_pos_emb in the forward of each attention module that calls it (outside replaced modules)."""
    built = {}
    for name, m in model.named_modules():
        if getattr(m.forward, "_bigmodel_rotary", False) or not _calls_rotary_fn(m):
            continue
        if any(name == t or name.startswith(t + ".") for t, _, _ in targets if t):
            continue
        cls = type(m)
        if "forward" in vars(m):  # another library's per-instance forward (a hook wrapper): keep it
            skipped[f"{cls.__name__}.{ROTARY_FN}"] = "the module already has its own per-instance forward"
            continue
        if cls not in built:
            fn, reason = _rotary_fn_by_structure(cls, backend)
            forward = _with_global(cls.forward, ROTARY_FN, fn) if fn is not None else None
            if fn is not None and forward is None:
                reason = "a decorator on its forward hides the function it wraps"
            if forward is not None:
                forward._bigmodel_rotary = True
            built[cls] = forward
            if reason:
                skipped[f"{cls.__name__}.{ROTARY_FN}"] = reason
        if built[cls] is not None:
            m.forward = types.MethodType(built[cls], m)
            key = f"{cls.__name__}.{ROTARY_FN}"
            counts[key] = counts.get(key, 0) + 1


def _replacements() -> dict:
    table = dict(REPLACEMENTS)
    hf = sys.modules.get("transformers.activations")
    for name, approximate in HF_GELUS.items():
        cls = getattr(hf, name, None)
        if cls is not None:
            table.setdefault(cls, lambda m, backend, a=approximate: bnn.GELU(a, backend=backend))
    return table


def patch(model: torch.nn.Module, *, backend=None) -> torch.nn.Module:
    """Replace every module whose class is in REPLACEMENTS, or that a STRUCTURAL matcher recognises (Hugging Face
    RMSNorm classes and gated MLPs), with the bigmodel equivalent, sharing its parameters and keeping device, dtype
    and train/eval state; attention modules that call Hugging Face's apply_rotary_pos_emb call bigmodel's fused
    q + k rotary instead (this model's modules only). Returns the same `model` object (patched in place); model.bigmodel_patched counts the replacements per
    class, model.bigmodel_skipped gives the reason for each similar-looking class left alone."""
    from .backends import check_name

    if backend is not None:
        check_name(backend)
    counts, skipped = dict(getattr(model, "bigmodel_patched", {})), {}  # a second patch() adds to the first's
    table = _replacements()
    targets = []
    for name, m in model.named_modules():
        if any(name.startswith(t + ".") for t, _, _ in targets if t):  # inside a module being replaced
            continue
        if type(m) in table:
            targets.append((name, m, table[type(m)]))
            continue
        for is_candidate, matcher in STRUCTURAL:
            if is_candidate(m):
                builder, reason = matcher(m, backend)
                if builder is not None:
                    targets.append((name, m, builder))
                else:
                    skipped[type(m).__name__] = reason
                break
    for name, m, builder in targets:
        new = builder(m, backend)
        new.train(m.training)
        if not name:  # the model itself is a replaceable module: patch cannot swap the root object
            raise TypeError(f"bigmodel.patch: model is itself a {type(m).__name__}; wrap it in a container or use "
                            f"bigmodel.nn.{type(new).__name__} directly")
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, new)
        counts[type(m).__name__] = counts.get(type(m).__name__, 0) + 1
    _patch_rotary(model, targets, backend, counts, skipped)
    patch_causal_lm_loss(model, backend, counts, skipped)  # HF causal LMs: the fused loss (patch_loss.py)
    summary = ", ".join(f"{n} x{c}" for n, c in counts.items()) or "nothing"
    log.info("bigmodel.patch: replaced %s", summary)
    for cls, reason in skipped.items():
        log.info("bigmodel.patch: left %s alone: %s", cls, reason)
    model.bigmodel_patched = counts
    model.bigmodel_skipped = skipped
    return model
