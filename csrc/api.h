// The functions bigmodel._C exports (bindings.cpp); each is defined in csrc/<op>/<op>_api.cpp.
#pragma once
#include <torch/extension.h>

#include <string>
#include <vector>

namespace bigmodel {

// The virtual architectures the .cu files were compiled for (nvcc's __CUDA_ARCH_LIST__: 800, 900, ...).
std::vector<int64_t> cuda_archs();

// x: (rows, cols) with unit column stride. Returns {y (rows, cols), mean (rows,) fp32, rstd (rows,) fp32}.
std::vector<at::Tensor> layer_norm_fwd(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                       const c10::optional<at::Tensor>& bias, double eps);
// Returns {dx, dweight or None, dbias or None}.
std::vector<c10::optional<at::Tensor>> layer_norm_bwd(const at::Tensor& dy, const at::Tensor& x,
                                                      const c10::optional<at::Tensor>& weight,
                                                      const c10::optional<at::Tensor>& bias,
                                                      const at::Tensor& mean, const at::Tensor& rstd);

// ---- RMSNorm (csrc/layer_norm, the LayerNorm kernels with kRms: no mean, no bias) ----
// x: (rows, cols) with unit column stride; weight: None or (cols,) contiguous in x's dtype or float32.
// Returns {y = x * rstd * weight (rows, cols), rstd = rsqrt(mean(x^2) + eps) (rows,) fp32}.
std::vector<at::Tensor> rms_norm_fwd(const at::Tensor& x, const c10::optional<at::Tensor>& weight, double eps);
// dy: x's shape and dtype, unit column stride. With xhat = x * rstd, g = dy * weight:
// dx = rstd * (g - xhat * mean(g * xhat)); dweight = sum over rows of dy * xhat (fixed order). Returns
// {dx, dweight or None}.
std::vector<c10::optional<at::Tensor>> rms_norm_bwd(const at::Tensor& dy, const at::Tensor& x,
                                                    const c10::optional<at::Tensor>& weight, const at::Tensor& rstd);
// residual: x's shape and dtype. h = x + residual (rounded to x's dtype) is normalised. Returns {y, h, rstd}.
std::vector<at::Tensor> add_rms_norm_fwd(const at::Tensor& x, const at::Tensor& residual,
                                         const c10::optional<at::Tensor>& weight, double eps);
// dy, dh: the gradients of y and h, h's shape and dtype. Returns {dx = rms_norm_bwd's dx + dh (the gradient of both
// x and residual), dweight or None}.
std::vector<c10::optional<at::Tensor>> add_rms_norm_bwd(const at::Tensor& dy, const at::Tensor& dh,
                                                        const at::Tensor& h, const c10::optional<at::Tensor>& weight,
                                                        const at::Tensor& rstd);
// ---- end RMSNorm ----

// ---- rotary (csrc/rotary) ----
// x: (B, H, L, D), unit last stride; cos / sin: (B, H, L, R) views (stride 0 on broadcast dims, unit last stride),
// x's dtype or float32, R even in [2, D]: the first R features rotate, the rest pass through. interleaved: GPT-J
// pairs (2i, 2i + 1), else rotate_half's (i, i + R/2). Returns y = x cos + rotate_half(x) sin, (B, H, L, D)
// contiguous; fp32 math.
at::Tensor rotary_fwd(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool interleaved);
// The transposed rotation (by -theta): dx1 = dy1 c1 + dy2 s2, dx2 = dy2 c2 - dy1 s1. dy laid out as x above.
at::Tensor rotary_bwd(const at::Tensor& dy, const at::Tensor& cos, const at::Tensor& sin, bool interleaved);
// ---- end rotary ----

// ---- feed-forward / activation / softmax (csrc/bias_act, csrc/activation, csrc/softmax) ----
// activation: "gelu" (erf), "gelu_tanh", "relu", "silu" or "none" (bias_act_*); act_* take all but "none".
// z: (M, N) with unit column stride; bias: (N,) contiguous, z's dtype. Returns {y = act(z + bias) (M, N),
// pre = z + bias (M, N) for gelu / gelu_tanh / silu, an empty tensor for relu / none}.
std::vector<at::Tensor> bias_act_fwd(const at::Tensor& z, const c10::optional<at::Tensor>& bias,
                                     const std::string& activation);
// dy: (M, N), unit column stride; pre: the forward's pre (gelu*, silu), its y (relu), unused (none). Returns
// {dz = act'(pre) * dy (M, N), dbias = column sums of dz (N,) (deterministic) or an empty tensor}.
std::vector<at::Tensor> bias_act_bwd(const at::Tensor& dy, const at::Tensor& pre, const std::string& activation,
                                     bool want_dbias);
// Any-shape contiguous x (and dy). y = act(x); dx = act'(x) * dy.
at::Tensor act_fwd(const at::Tensor& x, const std::string& activation);
at::Tensor act_bwd(const at::Tensor& dy, const at::Tensor& x, const std::string& activation);
// Gated (SwiGLU "silu", GeGLU "gelu" / "gelu_tanh"): gate, up (and dy) contiguous, one shape and dtype; fp32 math.
// y = act(gate) * up.
at::Tensor gated_activation_fwd(const at::Tensor& gate, const at::Tensor& up, const std::string& activation);
// Returns {dgate = dy * up * act'(gate), dup = dy * act(gate)}.
std::vector<at::Tensor> gated_activation_bwd(const at::Tensor& dy, const at::Tensor& gate, const at::Tensor& up,
                                             const std::string& activation);
// x, y, dy: (M, N) with unit column stride; softmax over the last dim. dx = y * (dy - rowsum(dy * y)).
at::Tensor softmax_fwd(const at::Tensor& x);
at::Tensor softmax_bwd(const at::Tensor& dy, const at::Tensor& y);
// linear_act (csrc/linear_act): x (M, K), weight (N, K), bias (N,) or None, one dtype; activation as bias_act_*.
// Returns {y = act(x weight^T + bias) (M, N) contiguous, pre = x weight^T + bias (M, N) for gelu / gelu_tanh / silu,
// an empty tensor for relu / none}: one cuBLASLt GEMM with a bias / ReLU / GELU-aux epilogue (exact GELU and SiLU:
// GEMM + bias, then one elementwise kernel).
std::vector<at::Tensor> linear_act_fwd(const at::Tensor& x, const at::Tensor& weight,
                                       const c10::optional<at::Tensor>& bias, const std::string& activation);
// How many cuBLASLt GEMMs found no algorithm and took the fallback (GEMM + bias, then the elementwise kernel).
int64_t linear_act_fallbacks();
// dy (M, N) unit column stride; saved: the forward's pre (gelu*, silu), its y (relu), unused (none).
// Returns {dx (M, K), dweight (N, K), dbias (N,) (deterministic) or an empty tensor}.
std::vector<at::Tensor> linear_act_bwd(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight,
                                       const at::Tensor& saved, const std::string& activation, bool want_dbias);
// ---- end feed-forward / activation / softmax ----

// ---- attention (csrc/attention) ----
// FlashAttention-2 style, fp16 / bf16, head_dim 64 or 128.
// q (B, Hq, Lq, D), k / v (B, Hkv, Lk, D), Hq % Hkv == 0, unit last stride; key_padding_mask: bool (B, Lk),
// True = attend; is_causal: query i sees key j iff j <= i. Returns {o (B, Hq, Lq, D) contiguous, lse (B, Hq, Lq)
// fp32 natural log}; a row with no visible key gets o = 0 and lse = +inf.
// window_left / window_right: ints >= 0 or None (unbounded): query i sees key j only if
// i - window_left <= j <= i + window_right (top-left aligned, as is_causal; whole tiles outside are skipped).
// softcap c > 0: scores c * tanh(scale * q.k / c) before the masks; 0 = none.
std::vector<at::Tensor> attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const c10::optional<at::Tensor>& key_padding_mask, bool is_causal,
                                      double scale, const c10::optional<int64_t>& window_left = c10::nullopt,
                                      const c10::optional<int64_t>& window_right = c10::nullopt,
                                      double softcap = 0.0);
// Returns {dq, dk, dv}, contiguous, in the inputs' dtype; dk / dv summed over each kv head's query heads
// deterministically. `dout` is the gradient of o (Python keyword: do). window / softcap: the forward's.
std::vector<at::Tensor> attention_bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v, const at::Tensor& o, const at::Tensor& lse,
                                      const c10::optional<at::Tensor>& key_padding_mask, bool is_causal,
                                      double scale, const c10::optional<int64_t>& window_left = c10::nullopt,
                                      const c10::optional<int64_t>& window_right = c10::nullopt,
                                      double softcap = 0.0);
// ---- end attention ----

// ---- cross-entropy (csrc/cross_entropy) ----
// logits (N, C) with unit column stride (any row stride), fp32 / fp16 / bf16, 1 <= C <= 2^30; target (N,) int64
// contiguous (not range-checked: the Python op does that on the host; the kernels never read through an
// out-of-range target). z = softcap * tanh(logits / softcap) (softcap 0: z = logits), eps = label_smoothing.
// Returns {loss (N,) fp32 = lse - (1 - eps) z_t - (eps / C) sum_j z_j, 0 where target == ignore_index;
// lse (N,) fp32 = log sum_j exp(z_j)}: one pass per row, online log-sum-exp, fp32 math, deterministic.
std::vector<at::Tensor> cross_entropy_fwd(const at::Tensor& logits, const at::Tensor& target, int64_t ignore_index,
                                          double label_smoothing, double softcap);
// grad_loss (N,) fp32 (any stride; 0 for an expanded scalar), lse: the forward's. Writes
// dlogits = grad_loss_i (exp(z - lse_i) - (1 - eps) [j == t_i] - eps / C) (* (1 - tanh^2(logits / softcap))), 0 for
// ignored rows, into out ((N, C), logits' dtype, unit column stride; may be logits itself: in place) and returns it.
at::Tensor cross_entropy_bwd(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& target,
                             const at::Tensor& lse, int64_t ignore_index, double label_smoothing, double softcap,
                             at::Tensor out);
// ---- end cross-entropy ----

}  // namespace bigmodel
