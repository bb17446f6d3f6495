"""Training-step benchmark (registered in benchmarks/cases.py's OPS as "train_step"): one optimizer step of a whole
GPT or Llama, reported in tokens/s (the rate column) and peak memory (extra MiB: what the step allocates on top of
the weights, the AdamW state and the inputs).

One step = forward, loss = cross entropy over every position (on fp32 logits, as nanoGPT), backward, AdamW step
(lr 6e-4, fused on a GPU), gradients set to None. Mode "fwd+bwd" only (the step); random token batches, rotated.
  GPU: GPT-2 small (bigmodel.models preset "gpt2-small": 12 layers, d_model 768, 12 heads, vocab 50304, tanh GELU)
       at batch 8 x seq 1024 = 8192 tokens a step, and "llama1b-4layers": the "llama" preset (Llama 3.2 1B's shape:
       d_model 2048, 32 query / 8 key-value heads of 64, SwiGLU 8192, RMSNorm, rotary, vocab 128256, tied) cut to 4
       of its 16 layers (505M parameters, so the step fits and times in seconds) at batch 4 x seq 2048 = 8192 tokens;
       fp32 weights under torch.autocast(bfloat16) for "bf16" (the default), no autocast for "fp32"; fp16 is not
       run (it needs a GradScaler). AdamW(fused=True).
  CPU: "micro" (the "tiny" preset cut to 1 layer, d_model 64, 2 heads, d_ff 256; byte vocab) and "llama-micro" (the
       "llama-tiny" preset cut to 1 layer: d_model 64, 4 query / 2 key-value heads, SwiGLU 256) at batch 2 x seq 32,
       fp32: smoke tests (~1-2 s a step under TRITON_INTERPRET=1; most of it the interpreted GEMMs).
Providers:
  torch            PlainGPT / PlainLlama below: the same model on plain PyTorch modules (nn.LayerNorm or nn.RMSNorm,
                   nn.Linear + F.gelu or F.silu gating, Hugging Face's rotate_half rotary,
                   F.scaled_dot_product_attention(is_causal=True, enable_gqa for Llama)), the same weights and
                   parameter names (the "eager PyTorch (SDPA)" baseline of DESIGN.md; "vs torch" is against it)
  torch.compile    its forward + loss compiled (fullgraph); the optimizer step eager (fused AdamW)
  bigmodel         bigmodel.models.Transformer, backend auto (each op's fastest backend that can run it)
  bigmodel-triton, bigmodel-cuda   the same with model.set_backend("triton" / "cuda"): a backend that cannot run
                   one of the model's ops makes the case skipped, with its reasons
The row's rel_err compares the logits of the first sequence of a batch (the provider's model, eager, in its
dtype) with the plain twin's in fp32 with the same weights: the torch row shows bf16 autocast's own error, the
yardstick; torch.compile is not checked. "max err vs reference": the largest |difference| over those logits, the loss
on that sequence and the loss's gradient for every parameter, against bigmodel's Transformer on the pure-math backend
in fp32 with the same weights. Rates: tokens_per_s = batch * seq / median step time; tflops counts model FLOPs (6 per
parameter per token, position embeddings excluded, plus causal attention 6 * n_layers * seq * d_model per token, as
nanoGPT's MFU).
Notes in the row: the dtype the model's logits came out in (a model whose ops ignore autocast computes in fp32).
Tiers: torch and bigmodel 0 for both models (DESIGN.md's headline: >= 1.15x eager on GPT-2 small and Llama), the other
three 1 (torch.compile compiles each training graph, ~1 min). GPU: 10 cases; estimated (not measured yet) ~40 s plus
the compiles.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import bigmodel
from bigmodel.models import Transformer, TransformerConfig

from .cases import (REFERENCE_BACKEND, Case, OpBench, Prepared, Unavailable, compiled, first_call, n_input_sets,
                    seed_for)
from .ffn_cases import ACTIVATIONS

BIGMODEL_BACKENDS = {"bigmodel": "auto", "bigmodel-triton": "triton", "bigmodel-cuda": "cuda"}
# shape "model" -> (TransformerConfig preset, overrides); micro, llama-micro: small enough for Triton's CPU interpreter
MODELS = {"gpt2-small": ("gpt2-small", {}), "micro": ("tiny", dict(n_layers=1, d_model=64, n_heads=2, d_ff=256)),
          "llama1b-4layers": ("llama", dict(n_layers=4)), "llama-micro": ("llama-tiny", dict(n_layers=1))}
# (batch, seq, model) of each device's cases: 8192 tokens a step on a GPU
SIZES = {"cuda": ((8, 1024, "gpt2-small"), (4, 2048, "llama1b-4layers")),
         "cpu": ((2, 32, "micro"), (2, 32, "llama-micro"))}
LR = 6e-4  # GPT-2 small's (nanoGPT)
REP_MS = 1000  # GPU timing budget per case: ~15-50 steps (do_bench's default 100 ms would time one or two)


# ------------------------------------------------------------------------------------------ the plain-PyTorch twin
class PlainAttention(torch.nn.Module):
    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.n_heads = c.n_heads
        self.qkv_proj = torch.nn.Linear(c.d_model, 3 * c.d_model, bias=c.bias)
        self.out_proj = torch.nn.Linear(c.d_model, c.d_model, bias=c.bias)

    def forward(self, x):
        B, L, C = x.shape
        q, k, v = (t.view(B, L, self.n_heads, C // self.n_heads).transpose(1, 2)
                   for t in self.qkv_proj(x).split(C, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(y.transpose(1, 2).reshape(B, L, C))


class PlainMLP(torch.nn.Module):
    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.fc1 = torch.nn.Linear(c.d_model, c.d_ff, bias=c.bias)
        self.fc2 = torch.nn.Linear(c.d_ff, c.d_model, bias=c.bias)
        self.act = ACTIVATIONS[c.activation]

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class PlainBlock(torch.nn.Module):
    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.ln_1 = torch.nn.LayerNorm(c.d_model, eps=c.layer_norm_eps, bias=c.bias)
        self.attn = PlainAttention(c)
        self.ln_2 = torch.nn.LayerNorm(c.d_model, eps=c.layer_norm_eps, bias=c.bias)
        self.mlp = PlainMLP(c)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class PlainGPT(torch.nn.Module):
    """bigmodel.models.Transformer (pre-norm, learned positions, causal, tied head, no dropout) on plain PyTorch,
    with the same parameter names: load_state_dict(transformer.state_dict()) gives the same function."""

    def __init__(self, c: TransformerConfig):
        super().__init__()
        unsupported = [f"{name}={getattr(c, name)!r}" for name, ok in (
            ("norm", c.norm == "pre"), ("positional", c.positional == "learned"), ("mlp", c.mlp == "dense"),
            ("causal", c.causal),
            ("n_kv_heads", c.n_kv_heads == c.n_heads), ("dropout", c.dropout == 0),
            ("tied_embeddings", c.tied_embeddings)) if not ok]
        if unsupported:
            raise Unavailable(f"PlainGPT mirrors GPT-2-style configs only; got {', '.join(unsupported)}")
        self.tok_emb = torch.nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = torch.nn.Embedding(c.max_seq_len, c.d_model)
        self.blocks = torch.nn.ModuleList(PlainBlock(c) for _ in range(c.n_layers))
        self.ln_f = torch.nn.LayerNorm(c.d_model, eps=c.layer_norm_eps, bias=c.bias)
        self.lm_head = torch.nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight

    def forward(self, ids):
        x = self.tok_emb(ids) + self.pos_emb(torch.arange(ids.size(1), device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def rotate_half(x):
    """Hugging Face's (transformers.models.llama.modeling_llama.rotate_half)."""
    half = x.size(-1) // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class PlainLlamaAttention(torch.nn.Module):
    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = c.n_heads, c.n_kv_heads, c.head_dim
        self.qkv_proj = torch.nn.Linear(c.d_model, (c.n_heads + 2 * c.n_kv_heads) * c.head_dim, bias=c.bias)
        self.out_proj = torch.nn.Linear(c.d_model, c.d_model, bias=c.bias)

    def forward(self, x, cos, sin):
        B, L, C = x.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        q, k, v = self.qkv_proj(x).split([H * D, Hkv * D, Hkv * D], dim=-1)
        q = q.view(B, L, H, D).transpose(1, 2)
        k = k.view(B, L, Hkv, D).transpose(1, 2)
        v = v.view(B, L, Hkv, D).transpose(1, 2)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)  # as Hugging Face's rotary embedding returns them
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=H != Hkv)
        return self.out_proj(y.transpose(1, 2).reshape(B, L, C))


class PlainSwiGLU(torch.nn.Module):
    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.gate_proj = torch.nn.Linear(c.d_model, c.d_ff, bias=c.bias)
        self.up_proj = torch.nn.Linear(c.d_model, c.d_ff, bias=c.bias)
        self.down_proj = torch.nn.Linear(c.d_ff, c.d_model, bias=c.bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class PlainLlamaBlock(torch.nn.Module):
    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.ln_1 = torch.nn.RMSNorm(c.d_model, eps=c.layer_norm_eps)
        self.attn = PlainLlamaAttention(c)
        self.ln_2 = torch.nn.RMSNorm(c.d_model, eps=c.layer_norm_eps)
        self.mlp = PlainSwiGLU(c)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.ln_1(x), cos, sin)
        return x + self.mlp(self.ln_2(x))


class PlainLlama(torch.nn.Module):
    """bigmodel.models.Transformer as Llama (norm "rms", positional "rotary", mlp "swiglu", causal, no dropout) on
    plain PyTorch, written as Hugging Face's eager Llama computes (rotary angles in fp32), with bigmodel's parameter
    names: load_state_dict(transformer.state_dict()) gives the same function."""

    def __init__(self, c: TransformerConfig):
        super().__init__()
        unsupported = [f"{name}={getattr(c, name)!r}" for name, ok in (
            ("norm", c.norm == "rms"), ("positional", c.positional == "rotary"), ("mlp", c.mlp == "swiglu"),
            ("causal", c.causal), ("dropout", c.dropout == 0)) if not ok]
        if unsupported:
            raise Unavailable(f"PlainLlama mirrors Llama-style configs only; got {', '.join(unsupported)}")
        self.head_dim, self.rope_theta = c.head_dim, c.rope_theta
        self.tok_emb = torch.nn.Embedding(c.vocab_size, c.d_model)
        self.blocks = torch.nn.ModuleList(PlainLlamaBlock(c) for _ in range(c.n_layers))
        self.ln_f = torch.nn.RMSNorm(c.d_model, eps=c.layer_norm_eps)
        self.lm_head = torch.nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tied_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    def forward(self, ids):
        device = ids.device
        frequency = 1.0 / self.rope_theta ** (torch.arange(0, self.head_dim, 2, device=device).float() / self.head_dim)
        angles = torch.arange(ids.size(1), device=device).float()[:, None] * frequency[None, :]
        angles = torch.cat((angles, angles), dim=-1)  # (L, D)
        cos, sin = angles.cos(), angles.sin()
        x = self.tok_emb(ids)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.lm_head(self.ln_f(x))


def plain_model(c: TransformerConfig) -> torch.nn.Module:
    """The plain-PyTorch twin of a Transformer with this config: PlainLlama for rotary models, else PlainGPT."""
    return PlainLlama(c) if c.positional == "rotary" else PlainGPT(c)


def twin_of(model: torch.nn.Module, config: TransformerConfig) -> torch.nn.Module:
    """The plain twin (PlainGPT / PlainLlama) with `model`'s weights (a Transformer or another twin), on its device."""
    with torch.device(model.tok_emb.weight.device):
        twin = plain_model(config)
    twin.load_state_dict(model.state_dict())
    return twin


def reference_model(model: torch.nn.Module, config: TransformerConfig) -> torch.nn.Module:
    """bigmodel's Transformer with `model`'s weights (a Transformer or a plain twin) on the pure-math backend."""
    with torch.device(model.tok_emb.weight.device):
        oracle = Transformer(config)
    oracle.load_state_dict(model.state_dict())
    return oracle.set_backend(REFERENCE_BACKEND)


def first_sequence(logits, model: torch.nn.Module, batch: tuple) -> tuple[torch.Tensor, dict]:
    """The logits, the loss and its gradient for every parameter (d<name>) on the batch's first sequence: what
    "max err vs reference" compares (autograd.grad: nothing is left in .grad)."""
    x, y = batch[0][:1], batch[1][:1]
    out = logits(x)
    loss = F.cross_entropy(out.float().view(-1, out.size(-1)), y.view(-1))
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    found = {"logits": out.detach(), "loss": loss.detach()}
    found.update({f"d{name}": g for (name, _), g in zip(named, grads) if g is not None})
    return out.detach(), found


# ------------------------------------------------------------------------------------------ the cases
class TrainStepBench(OpBench):
    name = "train_step"
    providers = ("torch", "torch.compile", "bigmodel", "bigmodel-triton", "bigmodel-cuda")
    baselines = {"torch_compile": ("torch.compile",)}  # report.py: a "vs torch.compile" column (DESIGN.md's target)

    def sizes(self, device: str, quick: bool) -> list[tuple]:
        return [(("batch", batch), ("seqlen", seqlen), ("model", model))
                for batch, seqlen, model in SIZES["cuda" if device == "cuda" else "cpu"]]

    def has_mode(self, shape: tuple, mode: str) -> bool:
        return mode == "fwd+bwd"

    def tier(self, case: Case) -> int:
        return 0 if case.provider in ("torch", "bigmodel") else 1

    def config(self, case: Case) -> TransformerConfig:
        preset, overrides = MODELS[case.params["model"]]
        return TransformerConfig.from_preset(preset, **overrides)

    @staticmethod
    def model_flops_per_token(model: torch.nn.Module, c: TransformerConfig, seqlen: int) -> int:
        pos_emb = getattr(model, "pos_emb", None)  # none in a rotary model
        params = sum(p.numel() for p in model.parameters()) - (pos_emb.weight.numel() if pos_emb is not None else 0)
        return 6 * params + 6 * c.n_layers * seqlen * c.d_model

    def model(self, case: Case, c: TransformerConfig) -> torch.nn.Module:
        """The provider's model, fp32 weights on the case's device (bigmodel's backends checked first)."""
        backend = BIGMODEL_BACKENDS.get(case.provider)
        if backend not in (None, "auto"):
            impl = bigmodel.backends.BACKENDS[backend]
            reasons = impl.machine_reasons() or impl.device_reasons(torch.device(case.device))
            if reasons:
                raise Unavailable("; ".join(reasons))
        with torch.device(case.device):
            model = Transformer(c)
        if backend is not None:
            return model.set_backend(backend)
        return twin_of(model, c)

    def prepare(self, case: Case) -> Prepared:
        if case.dtype == "fp16":
            raise Unavailable("fp16 training needs a GradScaler: train_step runs bf16 (autocast) and fp32 only")
        seed_for(case)
        p, c = case.params, self.config(case)
        autocast = case.dtype == "bf16"

        def forward(model, amp=autocast):
            def logits(x):
                with torch.autocast(case.device, dtype=torch.bfloat16, enabled=amp):
                    return model(x)
            return logits

        def build():
            model = self.model(case, c)
            logits = forward(model)

            def loss(x, y):
                out = logits(x)
                return F.cross_entropy(out.float().view(-1, out.size(-1)), y.view(-1))

            if case.provider == "torch.compile":
                loss = compiled((case.op, case.shape, case.dtype, case.device), loss)
            optimizer = torch.optim.AdamW(model.parameters(), lr=LR, fused=True if case.device == "cuda" else None)
            windows = [torch.randint(c.vocab_size, (p["batch"], p["seqlen"] + 1), device=case.device)
                       for _ in range(n_input_sets(case.device))]
            batches = [(w[:, :-1].contiguous(), w[:, 1:].contiguous()) for w in windows]  # inputs, next tokens

            def step(i):
                value = loss(*batches[i])
                value.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                return {"loss": value.detach()}

            extra = {}

            def check(i):  # the provider's logits, loss and gradients on the first sequence of batch i (eager)
                out, found = first_sequence(logits, model, batches[i])
                extra["logits_dtype"] = str(out.dtype).replace("torch.", "")
                if autocast and out.dtype == torch.float32:
                    extra["note"] = ("logits came out float32 under bf16 autocast: this model's ops ignore "
                                     "torch.autocast, so it computed in fp32")
                return found

            def reference(i):  # the eager plain twin in fp32 with the provider's current weights
                with torch.no_grad():
                    return {"logits": forward(twin_of(model, c), amp=False)(batches[i][0][:1])}

            def exact(i):  # bigmodel's Transformer on the pure-math backend, fp32, the provider's current weights
                oracle = reference_model(model, c)
                return first_sequence(forward(oracle, amp=False), oracle, batches[i])[1]

            tokens, checked = p["batch"] * p["seqlen"], case.provider != "torch.compile"
            return Prepared(step, len(batches), tokens=tokens, rep_ms=REP_MS, extra=extra,
                            flops=tokens * self.model_flops_per_token(model, c, p["seqlen"]),
                            check=check if checked else None, reference=reference if checked else None,
                            exact=exact if checked else None)

        try:
            return first_call(case.provider, build)
        except bigmodel.backends.BackendUnavailable as e:  # an op of the model that this backend cannot run
            raise Unavailable(" ".join(str(e).split())[:500]) from e
