// Attention launch parameters, shared by attention_api.cpp (checks, allocates) and the attention_*.cu files.
// No ATen here: the .cu files include only CUDA headers, which keeps their compiles fast.
#pragma once
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "common/dtype.h"

namespace bigmodel {

// A window side that does not bound anything (window_left / window_right); host values are clamped to it.
constexpr int kWindowUnbounded = INT_MAX;

// Layouts (element strides; every last dim has unit stride):
//   q, dout (do), o: (batch, heads_q, len_q, head_dim)      strides given for dims 0..2
//   k, v:            (batch, heads_kv, len_k, head_dim)     strides given for dims 0..2
//   outputs o (forward), dq: contiguous (batch, heads_q, len_q, head_dim)
//   outputs dk, dv:          contiguous (batch, heads_kv, len_k, head_dim)
//   lse, delta:              contiguous fp32 (batch, heads_q, len_q); lse in natural log
//   kpm (key padding mask):  bool, element [b, j] at kpm[b * kpm_stride_b + j * kpm_stride_k]; true = attend
struct AttentionParams {
  DType dtype = DType::kFloat16;  // q, k, v, o, do, dq, dk, dv
  int batch = 0, heads_q = 0, heads_kv = 0, len_q = 0, len_k = 0, head_dim = 0;
  int64_t q_stride[3] = {0, 0, 0}, k_stride[3] = {0, 0, 0}, v_stride[3] = {0, 0, 0};
  int64_t o_stride[3] = {0, 0, 0}, do_stride[3] = {0, 0, 0};  // backward inputs o and do
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const bool* kpm = nullptr;  // nullptr: no key padding mask
  int64_t kpm_stride_b = 0, kpm_stride_k = 0;
  bool causal = false;  // top-left: query i sees key j iff j <= i
  // Sliding window, top-left aligned as causal: query i sees key j iff i - window_left <= j <= i + window_right.
  // kWindowUnbounded on a side = no bound there (the default: no window); with causal the host passes
  // window_right = min(right, 0). The kernels only compare these with differences of indices (key - query,
  // query - key), or in int64, so INT_MAX never overflows.
  int window_left = kWindowUnbounded, window_right = kWindowUnbounded;
  // true: the kWindow kernels run (causal folded in as window_right <= 0); set by the host when a side bounds
  // anything beyond what causal does. false: the window fields are not read.
  bool window = false;
  float scale = 1.f;       // softmax scale
  float scale_log2 = 1.f;  // scale * log2(e): the kernels use exp2
  // Logit softcap c > 0 (0 = none: the kernels without kSoftcap): s = c * tanh(scale * q.k / c), before masking.
  float softcap = 0.f;
  float softcap_mul = 0.f;   // scale / c: the tanh argument is softcap_mul * q.k
  float softcap_log2 = 0.f;  // c * log2(e): the exp2-domain score is softcap_log2 * tanh(...)
  // true when every input tensor (pointer and the strides of dims with size > 1) allows 16-byte vector loads;
  // otherwise the kernels load element by element.
  bool vec_loads = true;
  // forward outputs / backward inputs
  void* o = nullptr;
  float* lse = nullptr;
  // backward
  const void* dout = nullptr;
  float* delta = nullptr;  // fp32 scratch (batch, heads_q, len_q): rowsum(do * o)
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
};

// Forward: o, lse.  Backward: delta, then dk/dv, then dq (see attention_bwd_kernel.cuh).
// Each dispatches on dtype and causal; head_dim must match the function. The _softcap forms are the kSoftcap
// instances (p.softcap > 0), in files of their own so that the build compiles them in parallel.
cudaError_t attention_fwd_hdim64(const AttentionParams& p, cudaStream_t stream);
cudaError_t attention_fwd_hdim128(const AttentionParams& p, cudaStream_t stream);
cudaError_t attention_bwd_hdim64(const AttentionParams& p, cudaStream_t stream);
cudaError_t attention_bwd_hdim128(const AttentionParams& p, cudaStream_t stream);
cudaError_t attention_fwd_hdim64_softcap(const AttentionParams& p, cudaStream_t stream);
cudaError_t attention_fwd_hdim128_softcap(const AttentionParams& p, cudaStream_t stream);
cudaError_t attention_bwd_hdim64_softcap(const AttentionParams& p, cudaStream_t stream);
cudaError_t attention_bwd_hdim128_softcap(const AttentionParams& p, cudaStream_t stream);

}  // namespace bigmodel
