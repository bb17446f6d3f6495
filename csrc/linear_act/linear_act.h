// The cuBLASLt GEMM of the CUDA linear_act, shared by linear_act_api.cpp (checks, allocates, picks the epilogue)
// and linear_act_gemm.cpp (the cuBLASLt calls). Host-only and ATen-free.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "common/dtype.h"

namespace bigmodel {

// What the GEMM's epilogue applies after x W^T (+ b when LtGemmParams::bias is set).
enum class LtEpilogue {
  kIdentity,     // CUBLASLT_EPILOGUE_DEFAULT / _BIAS
  kRelu,         // CUBLASLT_EPILOGUE_RELU / _RELU_BIAS
  kGeluTanhAux,  // CUBLASLT_EPILOGUE_GELU_AUX / _GELU_AUX_BIAS: cuBLASLt's GELU is the tanh approximation; the
                 // aux output is the pre-activation x W^T + b that the backward reads
};

// y = epilogue(x W^T + b) on row-major tensors. cuBLASLt is column-major, so it computes y^T = W x^T:
// A = W (stored k x n, op T), B = x^T (stored k x m, op N), D = y^T (n x m); the bias runs along D's rows.
struct LtGemmParams {
  int64_t m = 0, n = 0, k = 0;  // y (m, n), x (m, k), W (n, k); all > 0
  const void* x = nullptr;
  int64_t ldx = 0;  // row strides in elements (unit column strides), >= k for x / W and >= n for y
  const void* w = nullptr;
  int64_t ldw = 0;
  void* y = nullptr;
  int64_t ldy = 0;
  const void* bias = nullptr;  // (n,) contiguous, y's dtype; nullptr: no bias
  void* aux = nullptr;         // kGeluTanhAux: pre-activation (m, n), row stride ldaux (a multiple of 8)
  int64_t ldaux = 0;
  DType dtype = DType::kFloat32;  // of x, W, b, y and aux; accumulation is fp32
  LtEpilogue epilogue = LtEpilogue::kIdentity;
  bool allow_tf32 = false;  // fp32 only: CUBLAS_COMPUTE_32F_FAST_TF32 instead of CUBLAS_COMPUTE_32F
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  cudaStream_t stream = nullptr;
};

// Enqueues the GEMM and returns CUBLAS_STATUS_SUCCESS, or returns CUBLAS_STATUS_NOT_SUPPORTED when cuBLASLt has
// no algorithm for this problem (epilogue, alignment, shape): nothing was enqueued and the caller falls back.
// Any other status is a failure of the call itself.
cublasStatus_t lt_linear(const LtGemmParams& p);

}  // namespace bigmodel
