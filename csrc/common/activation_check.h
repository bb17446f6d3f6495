// Host-side mapping of the Python activation string onto Activation (for the *_api.cpp files).
#pragma once
#include <torch/extension.h>

#include <string>

#include "common/activation.h"

namespace bigmodel {

// allow_none: whether "none" (identity) is accepted. Unknown names raise, naming the accepted ones.
inline Activation parse_activation(const std::string& s, const char* op, bool allow_none) {
  if (s == "gelu") return Activation::kGelu;
  if (s == "gelu_tanh") return Activation::kGeluTanh;
  if (s == "relu") return Activation::kRelu;
  if (s == "silu") return Activation::kSilu;
  if (allow_none && s == "none") return Activation::kNone;
  TORCH_CHECK(false, op, ": activation must be one of 'gelu', 'gelu_tanh', 'relu', 'silu'",
              allow_none ? ", 'none'" : "", "; got '", s, "'");
  return Activation::kNone;
}

}  // namespace bigmodel
