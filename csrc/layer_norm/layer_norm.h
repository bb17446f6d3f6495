// LayerNorm launch parameters, shared by layer_norm_api.cpp (checks, allocates) and layer_norm_kernel.cu.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/dtype.h"

namespace bigmodel {

// LayerNorm, and RMSNorm (no mean, no bias; mean == nullptr) with its optional residual add (add_rms_norm).
struct LayerNormParams {
  int64_t rows = 0, cols = 0;
  int64_t x_stride = 0, dy_stride = 0;  // row strides in elements; outputs are contiguous (stride = cols)
  int64_t residual_stride = 0, dh_stride = 0;
  DType dtype = DType::kFloat32;        // x, y, dy, dx
  DType param_dtype = DType::kFloat32;  // weight, bias and their gradients: dtype or float32
  const void* x = nullptr;
  const void* weight = nullptr;  // nullptr: no weight
  const void* bias = nullptr;    // nullptr: no bias
  float eps = 1e-5f;
  const void* residual = nullptr;  // add_rms_norm forward: h = x + residual (rounded to dtype) is normalised
  void* h = nullptr;               // and written here (contiguous)
  // forward outputs
  void* y = nullptr;
  float* mean = nullptr;
  float* rstd = nullptr;
  // backward
  const void* dy = nullptr;
  const void* dh = nullptr;  // add_rms_norm backward: the gradient of h, added to dx; x is then h
  void* dx = nullptr;
  void* dweight = nullptr;   // nullptr: not wanted
  void* dbias = nullptr;     // nullptr: not wanted
  float* partial = nullptr;  // fp32 scratch: 2 * param_splits * cols (dW rows, then dB rows; RMS: dW rows only)
  int param_splits = 1;
  int sm_count = 1;
};

cudaError_t layer_norm_fwd_cuda(const LayerNormParams& p, cudaStream_t stream);
cudaError_t layer_norm_bwd_cuda(const LayerNormParams& p, cudaStream_t stream);
// RMSNorm: p.mean, p.bias, p.dbias unused; p.residual / p.h (forward) and p.dh (backward) set for add_rms_norm.
cudaError_t rms_norm_fwd_cuda(const LayerNormParams& p, cudaStream_t stream);
cudaError_t rms_norm_bwd_cuda(const LayerNormParams& p, cudaStream_t stream);
int layer_norm_param_splits(int64_t rows, int64_t cols, int sm_count);

}  // namespace bigmodel
