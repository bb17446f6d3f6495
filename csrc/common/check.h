// Input checks for the *_api.cpp files: every message names the argument, what was expected and what arrived.
#pragma once
#include <torch/extension.h>

#include "common/dtype.h"

namespace bigmodel {

inline DType to_dtype(const at::Tensor& t, const char* op, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default:
      TORCH_CHECK(false, op, ": ", name, " must be float32, float16 or bfloat16; got ", t.scalar_type());
  }
  return DType::kFloat32;
}

inline void check_cuda(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor; got a tensor on ", t.device());
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name,
                              const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name, " is on ",
              ref.device());
}

inline void check_same_dtype(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name,
                             const char* ref_name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have ", ref_name, "'s dtype (",
              ref.scalar_type(), "); got ", t.scalar_type());
}

// An optional bias: (n,) contiguous, in ref's dtype and on ref's device; `what_n` says where n comes from.
inline void check_bias(const c10::optional<at::Tensor>& bias, const at::Tensor& ref, int64_t n, const char* op,
                       const char* ref_name, const char* what_n) {
  if (!bias.has_value()) return;
  check_same_dtype(*bias, ref, op, "bias", ref_name);
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == n, op, ": bias must have shape (", n, ",) (", what_n, "); got ",
              bias->sizes());
  TORCH_CHECK(bias->is_contiguous(), op, ": bias must be contiguous; got strides ", bias->strides());
  check_same_device(*bias, ref, op, "bias", ref_name);
}

inline void check_shape(const at::Tensor& t, at::IntArrayRef expected, const char* op, const char* name) {
  TORCH_CHECK(t.sizes() == expected, op, ": ", name, " must have shape ", expected, "; got ", t.sizes());
}

inline void check_unit_last_stride(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.size(-1) <= 1 || t.stride(-1) == 1, op, ": ", name,
              " must have unit stride in its last dim; got strides ", t.strides());
}

inline void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

}  // namespace bigmodel
