// Cross-entropy launch parameters, shared by cross_entropy_api.cpp (checks, allocates) and cross_entropy_kernel.cu.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/dtype.h"

namespace bigmodel {

struct CrossEntropyParams {
  int64_t rows = 0, cols = 0;   // logits (rows, cols): one row per token, cols classes; cols in [1, 2^30]
  int64_t logits_stride = 0;    // row stride of logits; unit column stride
  int64_t out_stride = 0;       // row stride of out (backward's dlogits); unit column stride
  int64_t grad_stride = 0;      // stride of grad_loss (backward; 0 for an expanded scalar)
  DType dtype = DType::kFloat32;  // logits' (and out's) element type
  const void* logits = nullptr;
  const int64_t* target = nullptr;  // (rows,) contiguous; ignore_index rows are skipped; others outside
                                    // [0, cols) are never read through (NaN loss and gradient row): no device assert
  int64_t ignore_index = -100;
  float smoothing = 0.f;  // label smoothing eps in [0, 1]
  float softcap = 0.f;    // 0: off, else z = softcap * tanh(logits / softcap)
  // forward outputs: loss (rows,) fp32, lse (rows,) fp32
  float* loss = nullptr;
  float* lse = nullptr;
  // backward inputs: grad_loss (rows,) fp32 strided, lse_in (rows,) fp32 contiguous; output out (rows, cols)
  const float* grad_loss = nullptr;
  const float* lse_in = nullptr;
  void* out = nullptr;  // may alias logits (in place): every element is read before it is written
};

cudaError_t cross_entropy_fwd_cuda(const CrossEntropyParams& p, cudaStream_t stream);
cudaError_t cross_entropy_bwd_cuda(const CrossEntropyParams& p, cudaStream_t stream);

}  // namespace bigmodel
