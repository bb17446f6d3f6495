"""Size limits of the Triton attention kernels, in plain Python (no triton import): kernels/attention/ launches
within them, and bigmodel.backends.triton reports them as not_supported_reasons while torch.compile traces the
backend choice (plain arithmetic on the sizes)."""

from typing import Any, NamedTuple, Optional

MAX_GRID_YZ = 65535  # CUDA's limit on grid axes 1 and 2: more heads or batch than this take the folded grid


# Limits of the folded grid and of the 32-bit index arithmetic the kernels keep (see attention_limits_reasons).
MAX_PROGRAMS = 2**31 - 1  # CUDA's grid axis 0
MIN_BLOCK = 16  # the smallest row block of any config (CONFIGS, INTERPRETER_CONFIGS, delta_config): most programs
MAX_SEQ_LEN = 2**31 - 2**10  # rows are int32 inside a program: start + BLOCK must not wrap
MAX_ROW_STRIDE = 2**31 // 256  # in-tile offsets rows * row_stride are int32 (tiles up to 128 rows, with margin)


def attention_limits_reasons(q, k) -> list:
    """Why the kernels cannot run q (B, Hq, Lq, D) against k (B, Hkv, Lk, D), as not_supported_reasons texts
    ([] when they can). Only sizes matter (stride-0 expanded inputs count at their full shape). Heads and batch
    are unlimited up to the total program count (the folded grid)."""
    B, Hq, Lq = q.shape[0], q.shape[1], q.shape[2]
    Hkv, Lk = k.shape[1], k.shape[2]
    reasons = []
    for name, length in (("Lq", Lq), ("Lk", Lk)):
        if length > MAX_SEQ_LEN:
            reasons.append(f"attention: sequence length {name} = {length} exceeds the Triton kernels' limit of "
                           f"{MAX_SEQ_LEN} (32-bit row indices)")
    for what, length, heads in (("query", Lq, Hq), ("key", Lk, Hkv)):
        programs = (length + MIN_BLOCK - 1) // MIN_BLOCK * heads * B
        if programs > MAX_PROGRAMS:
            reasons.append(f"attention: batch {B} x {what} heads {heads} x {what} blocks of {MIN_BLOCK} "
                           f"(length {length}) = {programs} programs exceeds CUDA's grid limit of {MAX_PROGRAMS}")
    return reasons


def varlen_limits_reasons(sequences: int, heads: int) -> list:
    """Why the varlen kernels cannot run (their grid puts heads on axis 1 and sequences on axis 2; no folded
    variant): [] when they can."""
    if max(sequences, heads) > MAX_GRID_YZ:
        return [f"varlen: at most {MAX_GRID_YZ} sequences and heads (grid axes 1, 2); got {sequences} sequences, "
                f"{heads} heads"]
    return []


class AttentionExtras(NamedTuple):
    """The score modifiers and the packed (varlen) layout of bigmodel.ops.attention / attention_varlen, as every
    backend's attention_fwd / attention_bwd / attention_reasons receive them (`extras=`; NO_EXTRAS: none).
    Per (query i, key j) of one sequence, with diag = 0 (dense: top-left, as SDPA's is_causal) or Lk - Lq (varlen:
    bottom-right per sequence, as FlashAttention):
        s = scale * q_i . k_j;  softcap c: s = c * tanh(s / c);  alibi: s -= slope[h] * |i + diag - j|;  + mask
        visible: j <= i + diag (causal), i + diag - left <= j <= i + diag + right (window; None = unbounded)
        sinks: softmax denominator + exp(sinks[h]) (a logit with no value); lse includes it.
    Tensors are (Hq,) fp32 contiguous on q's device (sinks detached: its gradient is taken from lse by the caller);
    cu_seqlens_* are (batch + 1,) int32 on q's device, and then q is (1, Hq, total_q, D), k / v (1, Hkv, total_k, D),
    lse (1, Hq, total_q), and no mask."""
    window_left: Optional[int] = None
    window_right: Optional[int] = None
    softcap: Optional[float] = None
    alibi_slopes: Any = None
    sinks: Any = None
    cu_seqlens_q: Any = None
    cu_seqlens_k: Any = None
    max_seqlen_q: int = 0
    max_seqlen_k: int = 0

    @property
    def varlen(self) -> bool:
        return self.cu_seqlens_q is not None

    @property
    def has_window(self) -> bool:
        return self.window_left is not None or self.window_right is not None

    @property
    def names(self) -> list:
        """The extras in use, by their ops-level names (for not_supported_reasons texts)."""
        used = [("window", self.has_window), ("softcap", self.softcap is not None),
                ("alibi_slopes", self.alibi_slopes is not None), ("sinks", self.sinks is not None),
                ("varlen", self.varlen)]
        return [name for name, on in used if on]


NO_EXTRAS = AttentionExtras()
