// bias_act launch parameters, shared by bias_act_api.cpp (checks, allocates) and bias_act_kernel.cu.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/activation.h"
#include "common/dtype.h"

namespace bigmodel {

struct BiasActParams {
  int64_t rows = 0, cols = 0;
  int64_t in_stride = 0;  // row stride (elements) of z (forward) or of pre_or_y (backward); unit column stride
  int64_t dy_stride = 0;  // row stride of dy (backward); outputs are contiguous (row stride = cols)
  DType dtype = DType::kFloat32;
  Activation act = Activation::kGelu;
  // forward: y = act(z + bias), pre = z + bias
  const void* z = nullptr;
  const void* bias = nullptr;  // nullptr: no bias
  void* y = nullptr;
  void* pre = nullptr;  // nullptr: not saved (relu / none)
  // backward: dz = act'(pre) * dy (relu: from y), dbias = column sums of dz
  const void* dy = nullptr;
  const void* saved = nullptr;  // pre (gelu / gelu_tanh / silu) or y (relu); unused for none
  void* dz = nullptr;  // nullptr: not written (linear_act_bwd with no activation only wants dbias of dy)
  void* dbias = nullptr;     // nullptr: not wanted
  float* partial = nullptr;  // fp32 scratch: splits * cols (one row of column sums per row split)
  int splits = 1;            // row splits (grid.y); fixed by (rows, cols, sm_count): deterministic dbias
  int sm_count = 1;
};

cudaError_t bias_act_fwd_cuda(const BiasActParams& p, cudaStream_t stream);
cudaError_t bias_act_bwd_cuda(const BiasActParams& p, cudaStream_t stream);
int bias_act_splits(int64_t rows, int64_t cols, int sm_count);

}  // namespace bigmodel
