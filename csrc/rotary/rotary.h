// Rotary launch parameters, shared by rotary_api.cpp (checks, allocates) and rotary_kernel.cu.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/dtype.h"

namespace bigmodel {

// x (B, H, L, D) with unit last stride, any b / h / l strides; cos / sin (B, H, L, R) views of the broadcast tables
// (stride 0 on broadcast dims), unit last stride; y (B, H, L, D) contiguous. The first R features rotate.
struct RotaryParams {
  int64_t b = 0, h = 0, l = 0, d = 0, r = 0;
  int64_t x_stride[3] = {0, 0, 0};  // b, h, l strides in elements (0 where the dim has size 1)
  int64_t cos_stride[3] = {0, 0, 0};
  int64_t sin_stride[3] = {0, 0, 0};
  DType dtype = DType::kFloat32;        // x, y
  DType table_dtype = DType::kFloat32;  // cos, sin: dtype or float32
  bool interleaved = false;             // GPT-J pairs (2i, 2i + 1) instead of rotate_half's (i, i + R/2)
  bool backward = false;                // rotate by -theta (the transposed rotation)
  const void* x = nullptr;
  const void* cos = nullptr;
  const void* sin = nullptr;
  void* y = nullptr;
};

cudaError_t rotary_cuda(const RotaryParams& p, cudaStream_t stream);

}  // namespace bigmodel
