// The activation formulas and their derivatives, in fp32, used by every kernel (bias_act, activation).
// They follow PyTorch's CUDA kernels (aten/src/ATen/native/cuda/ActivationGeluKernel.cu, threshold_backward):
//   gelu       y = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))
//              dy/dx = Phi(x) + x phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
//   gelu_tanh  y = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
//              dy/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
//   relu       y = max(x, 0) (NaN propagates);  dx = x > 0 ? dy : 0 (a select, as threshold_backward: the
//              same test works on the input or on the output y, since y > 0 exactly when x > 0)
//   silu       y = x s,  s = sigmoid(x) = 1 / (1 + exp(-x));  dy/dx = s (1 + x (1 - s))  (exp(-x) = inf for
//              x << 0 gives s = 0, y = -0, dy/dx = 0: no NaN)
//   none       y = x;  dx = dy
#pragma once
#include "common/activation.h"

namespace bigmodel {

constexpr float kActSqrt1_2 = 0.70710678118654752440f;       // 1 / sqrt(2)
constexpr float kActInvSqrt2Pi = 0.39894228040143267794f;    // 1 / sqrt(2 pi)
constexpr float kActSqrt2OverPi = 0.79788456080286535588f;   // sqrt(2 / pi)
constexpr float kActTanhCoef = 0.044715f;

template <Activation A>
__device__ __forceinline__ float activation_fwd(float x) {
  if constexpr (A == Activation::kGelu) {
    return 0.5f * x * (1.f + erff(x * kActSqrt1_2));
  } else if constexpr (A == Activation::kGeluTanh) {
    const float u = kActSqrt2OverPi * (x + kActTanhCoef * x * x * x);
    return 0.5f * x * (1.f + tanhf(u));
  } else if constexpr (A == Activation::kRelu) {
    return x < 0.f ? 0.f : x;  // NaN < 0 is false: NaN passes through, like torch.relu
  } else if constexpr (A == Activation::kSilu) {
    return x / (1.f + expf(-x));
  } else {
    return x;
  }
}

// dL/dx given dL/dy = dy at input x (for relu, x may equally be the output y).
template <Activation A>
__device__ __forceinline__ float activation_bwd(float dy, float x) {
  if constexpr (A == Activation::kGelu) {
    const float cdf = 0.5f * (1.f + erff(x * kActSqrt1_2));
    const float pdf = kActInvSqrt2Pi * expf(-0.5f * x * x);
    return dy * (cdf + x * pdf);
  } else if constexpr (A == Activation::kGeluTanh) {
    const float x2 = x * x;
    const float t = tanhf(kActSqrt2OverPi * (x + kActTanhCoef * x2 * x));
    const float left = 0.5f * (1.f + t);
    const float right = 0.5f * x * (1.f - t * t) * kActSqrt2OverPi * (1.f + 3.f * kActTanhCoef * x2);
    return dy * (left + right);
  } else if constexpr (A == Activation::kRelu) {
    return x > 0.f ? dy : 0.f;
  } else if constexpr (A == Activation::kSilu) {
    const float s = 1.f / (1.f + expf(-x));
    return dy * (s * (1.f + x * (1.f - s)));
  } else {
    return dy;
  }
}

}  // namespace bigmodel
