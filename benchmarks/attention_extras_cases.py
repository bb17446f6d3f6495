"""Benchmark cases of attention's issue-15 features (registered in benchmarks/cases.py's OPS): attention_varlen (packed
sequences of mixed lengths), attention_window (sliding window) and attention_softcap (logit soft-capping). Every case
is causal with GQA, modes fwd and fwd+bwd, no dropout; rates in TFLOP/s, as the attention cases (attention_cases.py).

attention_varlen  bigmodel.ops.attention_varlen on q (total, Hq, D), k / v (total, Hkv, D), cu_seqlens int32: `seqs`
  sequences whose lengths are drawn once (torch.Generator seed LENGTH_SEED) uniformly from [min_len, max_len].
  GPU: 16 sequences of 128..2048 tokens (~17k), Hq 32, Hkv 8, D 128 (Llama-3-8B's heads); tier 1 also D 64.
  CPU: 3 sequences of 8..40 tokens (29, 11, 14), Hq 2, Hkv 1, D 16.
  FLOPs (the real work only, padding never counted; causal halves it): fwd = 4 * Hq * D * sum_b L_b^2 / 2,
  bwd 2.5x fwd, fwd+bwd 3.5x (FlashAttention's count).
attention_window  bigmodel.ops.attention(..., is_causal=True, enable_gqa=True, window=(W - 1, 0)): each query sees
  the last W keys, itself included (Mistral's sliding_window = W = 4096). GPU: Hq 32, Hkv 8, D 128 (Mistral 7B), L 16k
  (B 1, tier 0) and 8k (B 2, tier 1); CPU: B 1, 2:1 heads, L 32, D 16, W 8.
  FLOPs of the visible band only: fwd = 4 * B * Hq * D * (L^2 - max(L - W, 0)^2) / 2 (= L * W - W^2 / 2 keys a head:
  the causal triangle less the part beyond the window; the causal count L^2 / 2 when W >= L), bwd 2.5x, fwd+bwd 3.5x.
attention_softcap  bigmodel.ops.attention(..., is_causal=True, enable_gqa=True, softcap=50.0) (Gemma 2's attention
  logit cap: s -> 50 tanh(s / 50)). GPU: B 1, L 8192 (Gemma 2's context), Hq 32, Hkv 8, D 128 (tier 0) and Gemma-2-9B's
  heads Hq 16, Hkv 8, D 256 (tier 1; the cuda backend takes D 64 / 128 only: skipped with its reason); CPU: B 1, 2:1
  heads, L 32, D 16. FLOPs: causal, fwd = 4 * B * Hq * L^2 * D / 2 (tanh not counted), bwd 2.5x, fwd+bwd 3.5x.
  Inputs are randn: |scores| stay well below the cap, so the cap shapes the cost here, not the result (its math is
  tests/test_attention_extras.py's job).

Providers (the "torch" row is the "vs torch" reference, as everywhere):
  torch         what a PyTorch user writes without these features, as Hugging Face's attention does it: K / V repeated
                to Hq heads (repeat_kv: SDPA's enable_gqa takes no mask on its fast kernels), then
                  varlen:  SDPA on the zero-padded batch (B = seqs, L = the longest sequence) with a padding + causal
                           bool mask (B, 1, L, L); the inputs are held padded (the pad is not timed), rows compared
                           unpadded;
                  window:  SDPA with the equivalent bool band mask (1, 1, L, L), i - W < j <= i;
                  softcap: the eager composition of Gemma 2's eager_attention_forward: q k^T * scale, / cap, tanh,
                           * cap, + additive causal mask, softmax in fp32, cast, @ v (skipped when its L x L scores
                           would not fit the free GPU memory).
  torch-varlen  torch.nn.attention.varlen.varlen_attn (torch >= 2.9: FlashAttention inside torch, CUDA only): the
                packed batch as it is (varlen), or the B equal sequences packed (window: window_size=(W - 1, 0)); its
                keywords are read from its signature (window_size / is_causal / enable_gqa differ across torch
                2.9-2.14); skipped with the reason where it is absent or cannot express the case. No softcap row: it
                has none.
  flash_attn    flash-attn's flash_attn_varlen_func / flash_attn_func (causal, window_size, softcap) where the package
                is importable (the GPU machine has no network: carry a wheel in wheels/); else skipped with the reason.
  triton, cuda  bigmodel.ops.attention_varlen / attention(..., backend=...) (cuda: window and softcap at D 64 / 128;
                no varlen: skipped with its reason)
  auto          the same with backend "auto" (its measured choice; the row's note says which it ran)
report.py adds "vs fastest backend" (auto) and, per shape, the speed-up over torch-varlen and flash_attn (columns
torch_varlen, flash_attn). rel_err: against the torch composition upcast to fp32 (softcap: per kv-head group, each
recomputed in the backward) on the same inputs; max err vs reference: bigmodel's pure-math backend, within
attention_cases.MATERIALISE_LIMIT_GIB.

Tiers (cases.all_cases runs them across ops; these ops are last in cases.OPS, so within a tier after the others):
0 = the first GPU shape of each op (varlen D 128, window L 16k, softcap D 128), every provider; 1 = the other shapes.
GPU, bf16: 68 cases, 34 of them tier 0, of which flash_attn (not installed) and cuda varlen are instant skips: 26 that
run, estimated for an H100 (not measured yet) at ~1 s a case (the torch rows and the fp32 checks compute the whole
L x L), plus Triton's first compile of the varlen / window / softcap kernel variants: ~30-60 s. --quick: the tier-0
shapes only. CPU (fp32,
Triton under TRITON_INTERPRET=1): fwd+bwd only, 17 cases, 9 that run (torch, triton, auto; ~15 s), smoke tests only.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import bigmodel
from bigmodel.kernels.limits import AttentionExtras
from bigmodel.library.attention import make_extras

from .attention_cases import MATERIALISE_LIMIT_GIB
from .cases import (Case, InputSet, OpBench, Prepared, Unavailable, first_call, mode_call, n_input_sets,
                    require_backend, require_memory, seed_for)

LENGTH_SEED = 15  # varlen lengths: fixed, so every run and provider packs the same batch
WINDOW, SOFTCAP = 4096, 50.0  # Mistral's sliding window, Gemma 2's attention logit cap
PEERS = ("torch-varlen", "flash_attn")
FLASH_ATTN_MISSING = "flash-attn is not installed (pip install flash-attn; the GPU machine has no network: carry a " \
                     "wheel in wheels/)"


def seq_lengths(p: dict) -> list[int]:
    g = torch.Generator().manual_seed(LENGTH_SEED)
    return torch.randint(p["min_len"], p["max_len"] + 1, (p["seqs"],), generator=g).tolist()


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, Hkv, L, D) -> (B, Hkv * groups, L, D), Hugging Face's repeat_kv (kv head h serves q heads h*g .. h*g+g-1)."""
    if groups == 1:
        return x
    b, h, n, d = x.shape
    return x[:, :, None].expand(b, h, groups, n, d).reshape(b, h * groups, n, d)


@dataclasses.dataclass(frozen=True)
class Layout:
    """A provider's own input layout: `to` maps each canonical tensor (inputs and dy) to it before timing (not timed),
    `back` maps its outputs and gradients to the canonical layout for the checks."""
    to: Callable
    back: Callable


class _ExtrasBench(OpBench):
    """Shared by the three ops: canonical inputs (q, k, v) in the op's layout, causal GQA, fwd and fwd+bwd, peers with
    their own layouts (layout(case)), checked against an fp32 composition (upcast_fn)."""

    providers = ("torch", "torch-varlen", "flash_attn", "triton", "cuda", "auto")
    baselines = {"torch_varlen": ("torch-varlen",), "flash_attn": ("flash_attn",)}

    def shapes(self, device: str) -> list[tuple]:
        """(headline shape, *others) on this device; --quick keeps the first."""
        raise NotImplementedError

    def sizes(self, device: str, quick: bool) -> list[tuple]:
        shapes = self.shapes(device)
        return shapes[:1] if quick else shapes

    def has_mode(self, shape: tuple, mode: str) -> bool:
        # the CPU smoke shape in fwd+bwd only (it runs both kernels; the interpreter takes ~0.3 s a call)
        return mode == "fwd+bwd" if shape in self.shapes("cpu") else mode in ("fwd", "fwd+bwd")

    def tier(self, case: Case) -> int:
        return 0 if case.device == "cuda" and case.shape == self.shapes("cuda")[0] else 1

    def work(self, case: Case) -> dict:
        fwd = self.fwd_flops(case.params)
        return {"flops": {"fwd": fwd, "bwd": 5 * fwd // 2, "fwd+bwd": 7 * fwd // 2}[case.mode]}

    def layout(self, case: Case) -> Layout | None:
        return None

    def input_sets(self, case: Case) -> list[InputSet]:
        q_shape, kv_shape = self.tensor_shapes(case.params)
        kw = dict(device=case.device, dtype=case.torch_dtype)
        grad = case.mode != "fwd"
        return [InputSet((torch.randn(q_shape, **kw).requires_grad_(grad),
                          *(torch.randn(kv_shape, **kw).requires_grad_(grad) for _ in range(2))), ("dq", "dk", "dv"),
                         torch.randn(q_shape, **kw) if grad else None)
                for _ in range(n_input_sets(case.device))]

    def reference_fn(self, case: Case, sample: InputSet):
        return self.upcast_fn(case)

    def reference_backend_fn(self, case: Case, sample: InputSet):
        """The pure-math backend writes out each sequence's L x L scores in fp32: within MATERIALISE_LIMIT_GIB only."""
        if self.score_bytes(case.params, 4) / 2**30 > MATERIALISE_LIMIT_GIB:
            return None
        return super().reference_backend_fn(case, sample)

    def provider_fn(self, case: Case, sample: InputSet):
        if case.provider == "torch":
            return self.torch_fn_for(case)
        if case.provider == "torch-varlen":
            return self.torch_varlen_fn(case, torch_varlen_attn(case))
        if case.provider == "flash_attn":
            return self.flash_attn_fn(case, flash_attn_module(case))
        return self.bigmodel_fn(case, case.provider, sample)

    def prepare(self, case: Case) -> Prepared:
        """OpBench.prepare, with the provider's own layout: it is timed on its inputs, checked in the canonical one."""
        seed_for(case)

        def build():
            sets = self.input_sets(case)
            fn, ref = self.provider_fn(case, sets[0]), self.reference_fn(case, sets[0])
            exact = self.reference_backend_fn(case, sets[0])
            layout = self.layout(case)
            mine = [_moved(s, layout.to) for s in sets] if layout else sets
            check_mode = "fwd" if case.mode == "fwd" else "fwd+bwd"

            def check(i):
                return {name: layout.back(t) for name, t in mode_call(check_mode, fn, mine)(i).items()}

            return Prepared(mode_call(case.mode, fn, mine), len(mine),
                            reference=lambda i: mode_call(check_mode, ref, sets)(i),
                            exact=(lambda i: mode_call(check_mode, exact, sets)(i)) if exact else None,
                            check=check if layout else None, extra=self.extra(case), **self.work(case))

        return first_call(case.provider, build)


def _moved(s: InputSet, to: Callable) -> InputSet:
    """The input set in another layout: fresh leaves (same requires_grad), dy moved alike."""
    args = tuple(to(a.detach()).contiguous().requires_grad_(a.requires_grad) for a in s.args)
    return InputSet(args, s.grad_names, None if s.dy is None else to(s.dy).contiguous())


# ------------------------------------------------------------------------------------------ peers
def torch_varlen_attn(case: Case):
    """torch.nn.attention.varlen.varlen_attn, or Unavailable with the reason."""
    if case.device != "cuda":
        raise Unavailable(f"torch.nn.attention.varlen.varlen_attn runs FlashAttention's CUDA kernels: no CPU path "
                          f"(this run is on {case.device})")
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError as e:
        raise Unavailable(f"torch {torch.__version__} has no torch.nn.attention.varlen.varlen_attn ({e})") from e
    return varlen_attn


def varlen_kwargs(varlen_attn, left: int | None, gqa: bool) -> dict:
    """varlen_attn's keywords for a causal case with an optional window of `left` keys before the diagonal, from its
    signature: torch 2.9 takes is_causal; later ones window_size (-1, 0) = causal, (W - 1, 0) = causal window; 2.14
    adds enable_gqa (FlashAttention takes GQA natively where it is absent)."""
    params = inspect.signature(varlen_attn).parameters
    kw = {}
    if "window_size" in params:
        kw["window_size"] = (-1 if left is None else left, 0)
    elif "is_causal" in params and left is None:
        kw["is_causal"] = True
    else:
        raise Unavailable(f"torch {torch.__version__}'s varlen_attn has no window_size (parameters: "
                          f"{', '.join(params)})")
    if gqa and "enable_gqa" in params:
        kw["enable_gqa"] = True
    return kw


def flash_attn_module(case: Case):
    if importlib.util.find_spec("flash_attn") is None:
        raise Unavailable(FLASH_ATTN_MISSING)
    if case.device != "cuda":
        raise Unavailable(f"flash-attn's kernels are CUDA only (this run is on {case.device})")
    try:
        return importlib.import_module("flash_attn")
    except Exception as e:  # e.g. a wheel built against another torch
        raise Unavailable(f"cannot import flash_attn: {type(e).__name__}: {str(e)[:200]}") from e


def flash_kwargs(fn, left: int | None = None, softcap: float | None = None) -> dict:
    params = inspect.signature(fn).parameters
    kw = {"causal": True}
    if left is not None:
        kw["window_size"] = (left, 0)
    if softcap is not None:
        if "softcap" not in params:
            raise Unavailable("this flash-attn has no softcap (flash-attn >= 2.6)")
        kw["softcap"] = softcap
    return kw


# ------------------------------------------------------------------------------------------ attention_varlen
class VarlenBench(_ExtrasBench):
    name = "attention_varlen"

    def shapes(self, device: str) -> list[tuple]:
        dims = [(16, 128, 2048, 32, 8, 128), (16, 128, 2048, 32, 8, 64)] if device == "cuda" \
            else [(3, 8, 40, 2, 1, 16)]
        return [(("seqs", n), ("min_len", lo), ("max_len", hi), ("heads", hq), ("kv_heads", hkv), ("headdim", d))
                for n, lo, hi, hq, hkv, d in dims]

    def fwd_flops(self, p: dict) -> int:
        return 2 * p["heads"] * p["headdim"] * sum(n * n for n in seq_lengths(p))

    def score_bytes(self, p: dict, itemsize: int) -> int:  # the reference's largest sequence
        return p["heads"] * max(seq_lengths(p)) ** 2 * itemsize

    def tensor_shapes(self, p: dict):
        total = sum(seq_lengths(p))
        return (total, p["heads"], p["headdim"]), (total, p["kv_heads"], p["headdim"])

    @staticmethod
    def packing(p: dict, device: str):
        """(cu_seqlens int32, longest length, rows of the padded (B * L) layout that hold the packed tokens)."""
        lengths = seq_lengths(p)
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
        longest = max(lengths)
        rows = torch.cat([b * longest + torch.arange(n) for b, n in enumerate(lengths)]).to(device)
        return cu, longest, rows

    def pad_unpad(self, p: dict, device: str):
        """(pad, unpad, mask): packed (total, H, D) <-> padded SDPA layout (B, H, L, D) (zeros in the padding), and the
        padding + causal mask (B, 1, L, L): key j visible to query i iff j <= i and j < L_b (a padded query row still
        sees its sequence's keys, so no row is empty; those rows are dropped)."""
        _cu, longest, rows = self.packing(p, device)
        b, lengths = p["seqs"], torch.tensor(seq_lengths(p), device=device)

        def pad(t):
            flat = t.new_zeros(b * longest, *t.shape[1:]).index_put((rows,), t)
            return flat.view(b, longest, *t.shape[1:]).transpose(1, 2)

        def unpad(t):
            return t.transpose(1, 2).reshape(b * longest, *t.shape[1:2], t.size(-1))[rows]

        j = torch.arange(longest, device=device)
        mask = (j[None, :] <= j[:, None])[None] & (j[None, None, :] < lengths[:, None, None])
        return pad, unpad, mask[:, None]

    def extra(self, case: Case) -> dict:
        if case.provider != "torch":
            return {}
        lengths = seq_lengths(case.params)
        rows = len(lengths) * max(lengths)
        return {"note": f"padded batch {len(lengths)} x {max(lengths)} = {rows} rows for {sum(lengths)} tokens "
                        f"({100 * (1 - sum(lengths) / rows):.0f}% padding; the rate counts the real tokens only)"}

    def layout(self, case: Case) -> Layout | None:
        if case.provider != "torch":
            return None
        pad, unpad, _ = self.pad_unpad(case.params, case.device)
        return Layout(pad, unpad)

    def torch_fn_for(self, case: Case):
        p = case.params
        groups = p["heads"] // p["kv_heads"]
        mask = self.pad_unpad(p, case.device)[2]

        def padded_sdpa(q, k, v):  # the padded batch, (B, H, L, D)
            return F.scaled_dot_product_attention(q, repeat_kv(k, groups), repeat_kv(v, groups), attn_mask=mask)

        return padded_sdpa

    def upcast_fn(self, case: Case):
        p = case.params
        pad, unpad, mask = self.pad_unpad(p, case.device)
        groups = p["heads"] // p["kv_heads"]

        def upcast(q, k, v):  # the torch row's math in fp32, packed in and out
            q, k, v = (pad(t.float()) for t in (q, k, v))
            return unpad(F.scaled_dot_product_attention(q, repeat_kv(k, groups), repeat_kv(v, groups),
                                                        attn_mask=mask))

        return upcast

    def torch_varlen_fn(self, case: Case, varlen_attn):
        p = case.params
        cu, longest, _ = self.packing(p, case.device)
        kw = varlen_kwargs(varlen_attn, None, p["heads"] != p["kv_heads"])
        return lambda q, k, v: varlen_attn(q, k, v, cu, cu, longest, longest, **kw)

    def flash_attn_fn(self, case: Case, fa):
        cu, longest, _ = self.packing(case.params, case.device)
        kw = flash_kwargs(fa.flash_attn_varlen_func)
        return lambda q, k, v: fa.flash_attn_varlen_func(q, k, v, cu, cu, longest, longest, **kw)

    def bigmodel_fn(self, case: Case, backend: str, sample: InputSet):
        cu, longest, _ = self.packing(case.params, case.device)
        q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in sample.args)  # what the op hands the backends
        require_backend(backend, "attention", q=q, k=k, v=v, attn_mask=None, dropout_p=0.0, is_causal=True,
                        extras=make_extras(None, None, None, None, None, cu, cu, longest, longest, q.dtype))

        def fused(q, k, v):
            return bigmodel.ops.attention_varlen(q, k, v, cu, cu, longest, longest, is_causal=True, backend=backend)

        return fused


# ------------------------------------------------------------------------------------------ dense: window, softcap
class _DenseBench(_ExtrasBench):
    """q (B, Hq, L, D), k / v (B, Hkv, L, D), causal, with one extra (extra_kw)."""

    plot_x = "seqlen"

    def tensor_shapes(self, p: dict):
        return ((p["batch"], p["heads"], p["seqlen"], p["headdim"]),
                (p["batch"], p["kv_heads"], p["seqlen"], p["headdim"]))

    def score_bytes(self, p: dict, itemsize: int) -> int:
        return p["batch"] * p["heads"] * p["seqlen"] ** 2 * itemsize

    def layout(self, case: Case) -> Layout | None:
        p = case.params
        if case.provider == "flash_attn":  # (B, L, H, D)
            return Layout(lambda t: t.transpose(1, 2), lambda t: t.transpose(1, 2))
        if case.provider == "torch-varlen":  # the B sequences packed: (B * L, H, D)
            b, n = p["batch"], p["seqlen"]
            return Layout(lambda t: t.transpose(1, 2).reshape(b * n, *t.shape[1:2], t.size(-1)),
                          lambda t: t.view(b, n, *t.shape[1:]).transpose(1, 2))
        return None

    def extra_kw(self, p: dict) -> dict:
        raise NotImplementedError

    def extras(self, p: dict) -> AttentionExtras:
        kw = self.extra_kw(p)
        left, right = kw.get("window", (None, None))
        return make_extras(left, right, kw.get("softcap"), None, None, None, None, 0, 0)

    def bigmodel_fn(self, case: Case, backend: str, sample: InputSet):
        q, k, v = sample.args
        kw = self.extra_kw(case.params)
        require_backend(backend, "attention", q=q, k=k, v=v, attn_mask=None, dropout_p=0.0, is_causal=True,
                        enable_gqa=True, extras=self.extras(case.params))

        def fused(q, k, v):
            return bigmodel.ops.attention(q, k, v, is_causal=True, enable_gqa=True, backend=backend, **kw)

        return fused


class WindowBench(_DenseBench):
    name = "attention_window"

    def shapes(self, device: str) -> list[tuple]:
        dims = [(1, 32, 8, 16384, 128, WINDOW), (2, 32, 8, 8192, 128, WINDOW)] if device == "cuda" \
            else [(1, 2, 1, 32, 16, 8)]
        return [(("batch", b), ("heads", hq), ("kv_heads", hkv), ("seqlen", n), ("headdim", d), ("window", w))
                for b, hq, hkv, n, d, w in dims]

    def fwd_flops(self, p: dict) -> int:
        n, w = p["seqlen"], p["window"]
        return 2 * p["batch"] * p["heads"] * p["headdim"] * (n * n - max(n - w, 0) ** 2)

    def extra_kw(self, p: dict) -> dict:
        return {"window": (p["window"] - 1, 0)}

    @staticmethod
    def band(p: dict, device: str) -> torch.Tensor:
        """(1, 1, L, L) bool: key j visible to query i iff i - W < j <= i."""
        i = torch.arange(p["seqlen"], device=device)
        d = i[:, None] - i[None, :]
        return ((d >= 0) & (d < p["window"]))[None, None]

    def torch_fn_for(self, case: Case, dtype=None):
        p = case.params
        groups, mask = p["heads"] // p["kv_heads"], self.band(p, case.device)

        def masked_sdpa(q, k, v):
            if dtype is not None:
                q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
            return F.scaled_dot_product_attention(q, repeat_kv(k, groups), repeat_kv(v, groups), attn_mask=mask)

        return masked_sdpa

    def upcast_fn(self, case: Case):
        return self.torch_fn_for(case, torch.float32)

    def torch_varlen_fn(self, case: Case, varlen_attn):
        p = case.params
        b, n = p["batch"], p["seqlen"]
        cu = torch.arange(0, (b + 1) * n, n, dtype=torch.int32, device=case.device)
        kw = varlen_kwargs(varlen_attn, p["window"] - 1, p["heads"] != p["kv_heads"])
        return lambda q, k, v: varlen_attn(q, k, v, cu, cu, n, n, **kw)

    def flash_attn_fn(self, case: Case, fa):
        kw = flash_kwargs(fa.flash_attn_func, left=case.params["window"] - 1)
        return lambda q, k, v: fa.flash_attn_func(q, k, v, **kw)


class SoftcapBench(_DenseBench):
    name = "attention_softcap"
    providers = ("torch", "flash_attn", "triton", "cuda", "auto")  # torch-varlen has no softcap
    baselines = {"flash_attn": ("flash_attn",)}

    def shapes(self, device: str) -> list[tuple]:
        dims = [(1, 32, 8, 8192, 128), (1, 16, 8, 8192, 256)] if device == "cuda" else [(1, 2, 1, 32, 16)]
        return [(("batch", b), ("heads", hq), ("kv_heads", hkv), ("seqlen", n), ("headdim", d), ("softcap", SOFTCAP))
                for b, hq, hkv, n, d in dims]

    def fwd_flops(self, p: dict) -> int:
        return 2 * p["batch"] * p["heads"] * p["seqlen"] ** 2 * p["headdim"]

    def extra_kw(self, p: dict) -> dict:
        return {"softcap": p["softcap"]}

    def torch_fn_for(self, case: Case):
        p = case.params
        n, cap, groups = p["seqlen"], p["softcap"], p["heads"] // p["kv_heads"]
        dtype = case.torch_dtype
        # fwd: scores, their capped copies and fp32 probabilities at once; fwd+bwd keeps tanh's output, the fp32 and
        # the cast probabilities, and its backward has fp32 temporaries of the same size
        require_memory(case, self.score_bytes(p, 1) * (12 if case.mode == "fwd" else 24))
        causal = torch.full((n, n), torch.finfo(dtype).min, dtype=dtype, device=case.device).triu(1)[None, None]

        def eager(q, k, v):  # Gemma 2's eager_attention_forward (Hugging Face)
            s = torch.matmul(q, repeat_kv(k, groups).transpose(2, 3)) * q.size(-1) ** -0.5
            s = torch.tanh(s / cap) * cap
            p_ = torch.softmax(s + causal, dim=-1, dtype=torch.float32).to(q.dtype)
            return torch.matmul(p_, repeat_kv(v, groups))

        return eager

    def upcast_fn(self, case: Case):
        p = case.params
        n, cap, groups = p["seqlen"], p["softcap"], p["heads"] // p["kv_heads"]
        hidden = torch.ones(n, n, dtype=torch.bool, device=case.device).triu(1)

        def one_group(q, k, v):  # q (B, G, L, D) against one kv head (B, 1, L, D), fp32
            s = torch.tanh((q @ k.transpose(-2, -1)) * q.size(-1) ** -0.5 / cap) * cap
            return torch.softmax(s.masked_fill(hidden, float("-inf")), dim=-1) @ v

        def upcast(q, k, v):  # kv head by kv head, each recomputed in the backward: one group's scores at a time
            q, k, v = q.float(), k.float(), v.float()
            return torch.cat([checkpoint(one_group, q[:, h * groups:(h + 1) * groups], k[:, h:h + 1], v[:, h:h + 1],
                                         use_reentrant=False) for h in range(p["kv_heads"])], dim=1)

        return upcast

    def flash_attn_fn(self, case: Case, fa):
        kw = flash_kwargs(fa.flash_attn_func, softcap=case.params["softcap"])
        return lambda q, k, v: fa.flash_attn_func(q, k, v, **kw)


BUILDERS = (VarlenBench(), WindowBench(), SoftcapBench())
