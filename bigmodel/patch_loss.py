"""patch() for a Hugging Face causal LM's loss: with labels, the loss comes from bigmodel.ops.linear_cross_entropy on
the final hidden states and the LM head's weight, so the (batch, seq, vocab) logits are never materialised.

Recognised by structure, not by model: a module with
* an `lm_head` that is exactly a torch.nn.Linear (a LoRA-style wrapper or other subclass may change its forward),
* a base model (`getattr(m, m.base_model_prefix)`, or what `m.get_decoder()` returns),
* Hugging Face's causal-LM forward signature: `labels` and `logits_to_keep` parameters,
* and a loss that is what the fused path computes: on a small probe input (eval mode, no grad) the model's own
  forward with labels and the fused path give the same loss. This is the check that finds a forward doing more to
  its logits than Gemma 2's `config.final_logit_softcapping` (which the fused path applies), e.g. a logit scale, or
  a different loss_function; such a model keeps its forward, with the reason in model.bigmodel_skipped.

What the patched model's forward returns (the rule: Liger-Kernel's lce_forward, `skip_logits`):
* `labels` given and the logits not wanted: the model's own output class with `loss` from linear_cross_entropy
  and `logits=None` (with return_dict=False: the tuple `(loss, None, ...)`, logits' place kept). The other
  fields (cache, hidden_states, attentions, cross_attentions) are the base model's, as in the model's own output.
* The logits are wanted when `return_logits=True` is passed (a keyword the patched forward adds), or when
  `return_logits` is not passed and the module is in eval mode (so `Trainer.evaluate` and metrics still see
  logits); `return_logits=False` skips them in eval mode too. Then, and whenever labels are None (generate()),
  or `logits_to_keep` is not 0, the model's original forward runs unchanged.

The loss is Hugging Face's ForCausalLMLoss: labels shifted left by one (the last position ignored), or the
`shift_labels` keyword as given; `ignore_index` (default -100); with `num_items_in_batch` the summed loss divided
by it, else the mean over the positions not ignored.

How, without logits: the patched forward calls the base model with every argument the class's forward would hand
it (all but labels and logits_to_keep), computes the loss from its last hidden state and lm_head's weight and bias,
and builds the class's own output type (its forward's return annotation). So only classes whose forward passes
everything else to the base model, and whose output has no fields besides loss, logits, cache, hidden_states,
attentions and cross_attentions, are patched (a MoE's aux_loss is not computed here: such classes are skipped).
No module is modified per call: the patched forward traces under torch.compile(fullgraph=True).
"""
import dataclasses
import functools
import inspect
import types

import torch

from . import ops

RETURN_LOGITS = "return_logits"


def _forward_params(cls):
    try:
        return inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        return None


def _base_model(m):
    prefix = getattr(m, "base_model_prefix", None)
    base = getattr(m, prefix, None) if isinstance(prefix, str) and prefix else None
    if isinstance(base, torch.nn.Module) and base is not m:
        return base
    get_decoder = getattr(m, "get_decoder", None)
    if callable(get_decoder):
        try:
            base = get_decoder()
        except Exception:  # noqa: BLE001 - HF raises for models it has no rule for
            base = None
        if isinstance(base, torch.nn.Module) and base is not m:
            return base
    return None


def _softcap(m):
    cap = getattr(getattr(m, "config", None), "final_logit_softcapping", None)
    return float(cap) if cap else None


def causal_lm_loss(hidden, head: torch.nn.Linear, labels, *, num_items_in_batch=None, ignore_index=-100,
                   shift_labels=None, softcap=None, backend=None):
    """Hugging Face's ForCausalLMLoss of head(hidden) (softcapped), computed by ops.linear_cross_entropy.

    hidden (B, L, C) (or any (..., C) matching the labels), labels (B, L): position t predicts labels[:, t + 1]
    (the last position predicts nothing). shift_labels, when given, are the targets as they are (labels unused).
    """
    if shift_labels is None:
        shift_labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    target = shift_labels.to(hidden.device)
    extra = {"softcap": softcap} if softcap is not None else {}
    reduction = "sum" if num_items_in_batch is not None else "mean"
    loss = ops.linear_cross_entropy_fp32(hidden, head.weight, target, head.bias, ignore_index=ignore_index,
                                         reduction=reduction, backend=backend, **extra)  # fp32: HF's logits.float()
    if num_items_in_batch is not None:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss


class _Plan:
    """What the fused forward of one causal-LM class needs, read once from its signatures at patch time."""

    def __init__(self, cls, base):
        self.original = cls.forward
        signature = inspect.signature(cls.forward)
        params = list(signature.parameters.values())[1:]  # after self
        self.positional = [p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                                inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        self.named = {p.name for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD}
        self.output = signature.return_annotation
        base_params = _forward_params(type(base)) or {}
        self.own = sorted(self.named - set(base_params) - {"labels", "logits_to_keep"})
        at = next((i for i, p in enumerate(signature.parameters.values())
                   if p.kind is inspect.Parameter.VAR_KEYWORD), len(signature.parameters))
        shown = list(signature.parameters.values())
        shown.insert(at, inspect.Parameter(RETURN_LOGITS, inspect.Parameter.KEYWORD_ONLY, default=None))
        self.signature = signature.replace(parameters=shown)  # what generate() reads of forward's parameters

    def reason_to_skip(self):
        output = self.output
        fields = {f.name for f in dataclasses.fields(output)} if dataclasses.is_dataclass(output) else None
        if fields is None or not {"loss", "logits"} <= fields:
            return f"its forward's return annotation {output!r} is not a ModelOutput with loss and logits"
        extra = fields - OUTPUT_FIELDS
        if extra:
            return f"its output has {', '.join(sorted(extra))} besides the loss and logits (extra behaviour)"
        if self.own:
            return (f"its forward takes arguments its base model does not ({', '.join(self.own)}): they may change "
                    f"the loss")
        self.fields = tuple(f.name for f in dataclasses.fields(output) if f.name not in ("loss", "logits"))
        return None


# The fields of a causal LM's output that the fused forward fills: the loss, logits=None, and the base model's.
OUTPUT_FIELDS = {"loss", "logits", "cache", "past_key_values", "hidden_states", "attentions", "cross_attentions"}


def _fused_call(m, plan, args, kwargs, backend):
    """The patched forward's body: the class's own forward, or the base model then the fused loss."""
    return_logits = kwargs.pop(RETURN_LOGITS, None)
    if len(args) > len(plan.positional):
        return plan.original(m, *args, **kwargs)  # let the model's own forward report the bad call
    given = {**dict(zip(plan.positional, args)), **kwargs}
    labels = given.get("labels")
    keep = given.get("logits_to_keep", 0)
    want_logits = (not m.training) if return_logits is None else bool(return_logits)
    if labels is None or want_logits or not isinstance(keep, int) or keep != 0 \
            or type(m.lm_head) is not torch.nn.Linear:  # a head wrapped after patch() (LoRA, quantised): its forward
        return plan.original(m, *args, **kwargs)

    return_dict = given.pop("return_dict", None)
    if return_dict is None:
        return_dict = getattr(getattr(m, "config", None), "return_dict", True)
    given.pop("labels")
    given.pop("logits_to_keep", None)
    outputs = _base_model(m)(**given)  # what the class's forward hands its base model: every other argument
    hidden = outputs[0]  # last_hidden_state
    loss = causal_lm_loss(hidden, m.lm_head, labels, num_items_in_batch=given.get("num_items_in_batch"),
                          ignore_index=given.get("ignore_index", -100), shift_labels=given.get("shift_labels"),
                          softcap=_softcap(m), backend=backend)
    fields = {name: outputs.get(name) for name in plan.fields} if hasattr(outputs, "get") else {}
    out = plan.output(loss=loss, logits=None, **fields)
    if not return_dict:  # HF's tuple leaves None fields out; the logits' place is kept, as Liger-Kernel does
        return (loss, None, *(v for k, v in out.items() if k != "loss"))
    return out


def _make_forward(plan, backend):
    @functools.wraps(plan.original)
    def forward(self, *args, **kwargs):
        return _fused_call(self, plan, args, kwargs, backend)

    forward.__signature__ = plan.signature
    forward._bigmodel_loss = True
    return forward


def _probe(m, plan):
    """None when the fused loss equals the model's own on a small input (eval mode, no grad), else the reason."""
    head = m.lm_head
    vocab = head.out_features
    embeddings = m.get_input_embeddings() if hasattr(m, "get_input_embeddings") else None
    if isinstance(getattr(embeddings, "num_embeddings", None), int):
        vocab = min(vocab, embeddings.num_embeddings)
    ids = (torch.arange(12, device=head.weight.device).reshape(2, 6) * 7919 + 3) % vocab
    labels = ids.clone()
    labels[0, 2] = -100
    kwargs = dict(input_ids=ids, labels=labels)
    if "use_cache" in plan.named:
        kwargs["use_cache"] = False
    modes = [(module, module.training) for module in m.modules()]
    m.eval()
    try:
        with torch.no_grad():
            want = plan.original(m, **kwargs)
            got = _fused_call(m, plan, (), {**kwargs, RETURN_LOGITS: False}, "torch")
    except Exception as e:  # noqa: BLE001 - any failure means "not the forward we replace"
        return f"its forward failed on a probe input ({type(e).__name__}: {e})"
    finally:
        for module, mode in modes:
            module.training = mode
    want = want[0] if isinstance(want, tuple) else getattr(want, "loss", None)
    got = got[0] if isinstance(got, tuple) else got.loss
    if not torch.is_tensor(want) or want.dim() != 0:
        return "its forward returned no scalar loss for labels"
    tol = 1e-4 if head.weight.dtype in (torch.float32, torch.float64) else 3e-2
    if not torch.isfinite(want) or (got.float() - want.float()).abs() > tol * want.float().abs().clamp_min(1e-6):
        return (f"its loss is not cross_entropy(lm_head(hidden states)) as Hugging Face's ForCausalLMLoss computes "
                f"it (extra behaviour, e.g. a logit scale; probe: {want.item():.6g}, fused {got.item():.6g})")
    return None


def _reason_to_skip(m):
    params = _forward_params(type(m))
    if params is None or "labels" not in params:
        return "its forward takes no labels (not Hugging Face's causal-LM signature)"
    if "logits_to_keep" not in params:
        return "its forward takes no logits_to_keep (not Hugging Face's causal-LM signature)"
    if type(m.lm_head) is not torch.nn.Linear:
        return f"its lm_head is a {type(m.lm_head).__name__}, not a torch.nn.Linear"
    if _base_model(m) is None:
        return "no base model (base_model_prefix / get_decoder())"
    if "forward" in vars(m):
        return "the module already has its own per-instance forward"
    if m.lm_head.weight.device.type == "meta":
        return "on the meta device: its loss cannot be checked"
    return None


def patch_causal_lm_loss(model, backend, counts, skipped):
    """Give every causal LM module of `model` (the root or one inside) the fused-loss forward; count it in counts
    as "<class>.loss" and put each look-alike left alone (a module with an lm_head) in skipped with its reason."""
    plans = {}
    for _, m in model.named_modules():
        if not isinstance(getattr(m, "lm_head", None), torch.nn.Module):
            continue
        if getattr(m.forward, "_bigmodel_loss", False):  # an earlier patch(): already counted
            continue
        key = f"{type(m).__name__}.loss"
        reason = _reason_to_skip(m)
        if reason is None:
            plan = plans.get(type(m)) or _Plan(type(m), _base_model(m))
            plans[type(m)] = plan
            reason = plan.reason_to_skip() or _probe(m, plan)
        if reason is not None:
            skipped[key] = reason
            continue
        m.forward = types.MethodType(_make_forward(plan, backend), m)
        counts[key] = counts.get(key, 0) + 1
