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

}  // namespace bigmodel
