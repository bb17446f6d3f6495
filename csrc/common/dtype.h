// Element types shared by the .cpp (which maps at::ScalarType onto them) and the .cu files (which
// dispatch on them without including ATen, to keep device compiles fast).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace bigmodel {

enum class DType { kFloat32, kFloat16, kBFloat16 };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
  }
  return "?";
}

}  // namespace bigmodel

// BIGMODEL_DISPATCH_FLOAT(dtype, T, ...): runs the body with T bound to float, __half or __nv_bfloat16.
#define BIGMODEL_DISPATCH_CASE(ENUM, CTYPE, T, ...) \
  case ::bigmodel::DType::ENUM: {                   \
    using T = CTYPE;                                \
    __VA_ARGS__();                                  \
    break;                                          \
  }
#define BIGMODEL_DISPATCH_FLOAT(DT, T, ...)                                \
  switch (DT) {                                                            \
    BIGMODEL_DISPATCH_CASE(kFloat32, float, T, __VA_ARGS__)                \
    BIGMODEL_DISPATCH_CASE(kFloat16, __half, T, __VA_ARGS__)               \
    BIGMODEL_DISPATCH_CASE(kBFloat16, __nv_bfloat16, T, __VA_ARGS__)       \
  }
