// Activation kinds shared by the host (.cpp: maps the Python string onto them) and the device code
// (common/activation.cuh: the formulas). Host-safe: no device code here.
#pragma once

namespace bigmodel {

enum class Activation { kGelu, kGeluTanh, kRelu, kSilu, kNone };

inline const char* activation_name(Activation a) {
  switch (a) {
    case Activation::kGelu: return "gelu";
    case Activation::kGeluTanh: return "gelu_tanh";
    case Activation::kRelu: return "relu";
    case Activation::kSilu: return "silu";
    case Activation::kNone: return "none";
  }
  return "?";
}

}  // namespace bigmodel

// BIGMODEL_DISPATCH_ACTIVATION(act, A, ...): runs the body with `constexpr Activation A` bound to act.
#define BIGMODEL_DISPATCH_ACT_CASE(ENUM, A, ...)                      \
  case ::bigmodel::Activation::ENUM: {                                \
    constexpr ::bigmodel::Activation A = ::bigmodel::Activation::ENUM; \
    __VA_ARGS__();                                                    \
    break;                                                            \
  }
#define BIGMODEL_DISPATCH_ACTIVATION(ACT, A, ...)             \
  switch (ACT) {                                              \
    BIGMODEL_DISPATCH_ACT_CASE(kGelu, A, __VA_ARGS__)         \
    BIGMODEL_DISPATCH_ACT_CASE(kGeluTanh, A, __VA_ARGS__)     \
    BIGMODEL_DISPATCH_ACT_CASE(kRelu, A, __VA_ARGS__)         \
    BIGMODEL_DISPATCH_ACT_CASE(kSilu, A, __VA_ARGS__)         \
    BIGMODEL_DISPATCH_ACT_CASE(kNone, A, __VA_ARGS__)         \
  }
