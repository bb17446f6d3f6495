// Softmax launch parameters, shared by softmax_api.cpp (checks, allocates) and softmax_kernel.cu.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/dtype.h"

namespace bigmodel {

struct SoftmaxParams {
  int64_t rows = 0, cols = 0;  // softmax over each row; cols <= 2^30
  int64_t x_stride = 0;        // row stride of x (forward) or y (backward); unit column stride
  int64_t dy_stride = 0;       // row stride of dy (backward)
  DType dtype = DType::kFloat32;
  const void* x = nullptr;   // forward: the input x; backward: the forward's output y
  const void* dy = nullptr;  // backward only
  void* out = nullptr;       // y (forward) or dx (backward), contiguous (row stride = cols)
};

cudaError_t softmax_fwd_cuda(const SoftmaxParams& p, cudaStream_t stream);
cudaError_t softmax_bwd_cuda(const SoftmaxParams& p, cudaStream_t stream);

}  // namespace bigmodel
