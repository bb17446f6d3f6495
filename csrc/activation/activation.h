// Elementwise activation launch parameters, shared by activation_api.cpp and activation_kernel.cu.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/activation.h"
#include "common/dtype.h"

namespace bigmodel {

struct ActParams {
  int64_t n = 0;  // elements; every tensor is contiguous
  DType dtype = DType::kFloat32;
  Activation act = Activation::kGelu;
  const void* x = nullptr;   // the activation's input
  const void* dy = nullptr;  // backward only
  void* out = nullptr;       // y (forward) or dx (backward)
  int sm_count = 1;
};

cudaError_t act_fwd_cuda(const ActParams& p, cudaStream_t stream);
cudaError_t act_bwd_cuda(const ActParams& p, cudaStream_t stream);

// Gated activation (SwiGLU / GeGLU): y = act(gate) * up; every tensor contiguous, one shape and dtype.
struct GatedParams {
  int64_t n = 0;
  DType dtype = DType::kFloat32;
  Activation act = Activation::kSilu;  // silu, gelu or gelu_tanh
  const void* gate = nullptr;
  const void* up = nullptr;
  const void* dy = nullptr;  // backward only
  void* out = nullptr;       // y (forward) or dgate (backward)
  void* out2 = nullptr;      // dup (backward only)
  int sm_count = 1;
};

cudaError_t gated_fwd_cuda(const GatedParams& p, cudaStream_t stream);
cudaError_t gated_bwd_cuda(const GatedParams& p, cudaStream_t stream);

}  // namespace bigmodel
