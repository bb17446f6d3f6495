// LayerNorm launch parameters, shared by layer_norm_api.cpp (checks, allocates) and layer_norm_kernel.cu.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/dtype.h"

namespace bigmodel {

struct LayerNormParams {
  int64_t rows = 0, cols = 0;
  int64_t x_stride = 0, dy_stride = 0;  // row strides in elements; outputs are contiguous (stride = cols)
  DType dtype = DType::kFloat32;        // x, y, dy, dx
  DType param_dtype = DType::kFloat32;  // weight, bias and their gradients: dtype or float32
  const void* x = nullptr;
  const void* weight = nullptr;  // nullptr: no weight
  const void* bias = nullptr;    // nullptr: no bias
  float eps = 1e-5f;
  // forward outputs
  void* y = nullptr;
  float* mean = nullptr;
  float* rstd = nullptr;
  // backward
  const void* dy = nullptr;
  void* dx = nullptr;
  void* dweight = nullptr;   // nullptr: not wanted
  void* dbias = nullptr;     // nullptr: not wanted
  float* partial = nullptr;  // fp32 scratch: 2 * param_splits * cols (dW rows, then dB rows)
  int param_splits = 1;
  int sm_count = 1;
};

cudaError_t layer_norm_fwd_cuda(const LayerNormParams& p, cudaStream_t stream);
cudaError_t layer_norm_bwd_cuda(const LayerNormParams& p, cudaStream_t stream);
int layer_norm_param_splits(int64_t rows, int64_t cols, int sm_count);

}  // namespace bigmodel
