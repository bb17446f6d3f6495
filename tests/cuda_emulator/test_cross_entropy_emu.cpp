// Runs the real cross-entropy kernel source (csrc/cross_entropy/cross_entropy_kernel.cuh) under the host emulator
// (emu.h: 128-thread blocks, one std::thread per CUDA thread) and compares loss, lse and dlogits (written in place
// over the logits) with a double-precision reference. ex2.approx.ftz is emulated as an exact exp2 with subnormal
// results flushed to 0, so this checks the logic (online log-sum-exp and its merges, vector / tail loops, ignored
// and out-of-range targets, -inf logits, smoothing, softcap), not the SFU's rounding.
#include "emu.h"
// (emu.h must come first: it replaces the CUDA keywords)
#include <algorithm>
#include <random>
#include <string>

#undef __shared__
#define __shared__ static  // one block runs at a time: a static is the block's shared memory
inline float __frcp_rn(float x) { return 1.f / x; }
inline float __shfl_sync(unsigned mask, float v, int src) {
  if (mask != 0xffffffffu) emu::fail("partial shuffle mask");
  emu::Warp* w = emu::tl_warp;
  w->xf[threadIdx.x % 32] = v;
  w->bar->arrive_and_wait();
  const float r = w->xf[src];
  w->bar->arrive_and_wait();
  return r;
}
inline float __shfl_down_sync(unsigned mask, float v, int d) {
  if (mask != 0xffffffffu) emu::fail("partial shuffle mask");
  emu::Warp* w = emu::tl_warp;
  const int lane = threadIdx.x % 32;
  w->xf[lane] = v;
  w->bar->arrive_and_wait();
  const float r = lane + d < 32 ? w->xf[lane + d] : v;
  w->bar->arrive_and_wait();
  return r;
}
#define BIGMODEL_CE_HOST_EX2
namespace bigmodel {
namespace ce {
inline float ex2(float x) {
  const float y = std::exp2(x);
  return y < 1.17549435e-38f ? 0.f : y;  // .ftz
}
}  // namespace ce
}  // namespace bigmodel
#include "cross_entropy/cross_entropy_kernel.cuh"

using namespace bigmodel;

template <typename T>
float tf(T x) {
  if constexpr (std::is_same_v<T, float>) return x;
  else if constexpr (std::is_same_v<T, __half>) return __half2float(x);
  else return __bfloat162float(x);
}
template <typename T>
T ft(float x) {
  if constexpr (std::is_same_v<T, float>) return x;
  else if constexpr (std::is_same_v<T, __half>) return __float2half_rn(x);
  else return __float2bfloat16_rn(x);
}
template <typename T>
const char* tname() {
  if constexpr (std::is_same_v<T, float>) return "fp32";
  else if constexpr (std::is_same_v<T, __half>) return "fp16";
  else return "bf16";
}
template <typename T>
double ulp() {
  if constexpr (std::is_same_v<T, float>) return 0x1p-23;
  else if constexpr (std::is_same_v<T, __half>) return 0x1p-10;
  else return 0x1p-7;
}

constexpr int64_t kIgnore = -100;
int failures = 0, passes = 0;

// rows: 0 ignored, 1 out of range (C), 2 out of range (-3), 3 a -inf prefix (no smoothing), the rest plain.
template <typename T, int VEC, bool CAP>
void run_case(int C, int pad, float eps, float cap, uint32_t seed) {
  const int N = 7;
  const int64_t stride = C + pad;
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, CAP ? 8.f : 2.f);
  alignas(16) static T store[7 * (40000 + 16)];
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < C; ++j) store[i * stride + j] = ft<T>(nd(rng));
  if (eps == 0.f && C > 4)
    for (int j = 0; j < C / 2; ++j) store[3 * stride + j] = ft<T>(-INFINITY);
  std::vector<int64_t> target(N);
  for (int i = 0; i < N; ++i) target[i] = std::uniform_int_distribution<int>(i == 3 && C > 4 ? C / 2 : 0, C - 1)(rng);
  target[0] = kIgnore, target[1] = C, target[2] = -3;
  std::vector<float> gl(N), loss(N, -1.f), lse(N, -1.f);
  for (int i = 0; i < N; ++i) gl[i] = 0.25f + 0.1f * i;
  // reference (double) from the logits as stored
  std::vector<double> rloss(N), rlse(N), rdx(size_t(N) * C);
  for (int i = 0; i < N; ++i) {
    std::vector<double> z(C), dz(C);
    double m = -INFINITY;
    for (int j = 0; j < C; ++j) {
      const double x = tf(store[i * stride + j]);
      z[j] = CAP ? cap * std::tanh(x / cap) : x;
      dz[j] = CAP ? 1.0 - std::tanh(x / cap) * std::tanh(x / cap) : 1.0;
      m = std::max(m, z[j]);
    }
    double s = 0, sz = 0;
    for (int j = 0; j < C; ++j) s += std::exp(z[j] - m), sz += z[j];
    rlse[i] = m + std::log(s);
    const int64_t t = target[i];
    const bool inside = t >= 0 && t < C;
    rloss[i] = t == kIgnore ? 0.0 : !inside ? NAN : rlse[i] - (1.0 - eps) * z[t] - (eps / C) * (eps ? sz : 0.0);
    for (int j = 0; j < C; ++j) {
      double d = std::exp(z[j] - rlse[i]) - eps / C - (j == t ? 1.0 - eps : 0.0);
      rdx[size_t(i) * C + j] = t == kIgnore ? 0.0 : !inside ? NAN : gl[i] * d * dz[j];
    }
  }
  CrossEntropyParams p;
  p.rows = N, p.cols = C, p.logits_stride = stride, p.out_stride = stride, p.grad_stride = 1;
  p.logits = store, p.target = target.data(), p.ignore_index = kIgnore, p.smoothing = eps, p.softcap = cap;
  p.loss = loss.data(), p.lse = lse.data(), p.grad_loss = gl.data(), p.lse_in = lse.data(), p.out = store;
  emu::launch(dim3(N), 0, [&] { ce::cross_entropy_fwd_kernel<T, VEC, CAP>(p); });
  emu::launch(dim3(N), 0, [&] { ce::cross_entropy_bwd_kernel<T, VEC, CAP>(p); });  // in place
  double e_loss = 0, e_lse = 0, e_dx = 0, s_lse = 1e-30, s_dx = 0.1;  // dx floor: C = 1 has dx = 0
  bool nan_ok = true;
  for (int i = 0; i < N; ++i) {
    s_lse = std::max(s_lse, std::fabs(rlse[i]));
    if (std::isnan(rloss[i])) nan_ok &= std::isnan(loss[i]);
    else e_loss = std::max(e_loss, std::fabs(loss[i] - rloss[i]));
    e_lse = std::max(e_lse, std::fabs(lse[i] - rlse[i]));
    for (int j = 0; j < C; ++j) {
      const double r = rdx[size_t(i) * C + j], o = tf(store[i * stride + j]);
      if (std::isnan(r)) { nan_ok &= std::isnan(o); continue; }
      if (std::isnan(o)) { nan_ok = false; continue; }
      s_dx = std::max(s_dx, std::fabs(r));
      // the output's own rounding plus fp32 math
      e_dx = std::max(e_dx, std::fabs(o - r) - ulp<T>() * std::fabs(r));
    }
  }
  const bool ok = nan_ok && e_loss <= 1e-5 * s_lse && e_lse <= 1e-5 * s_lse && e_dx <= 1e-5 * s_dx &&
                  loss[0] == 0.f;
  std::string name = std::string(tname<T>()) + " VEC" + std::to_string(VEC) + " C" + std::to_string(C) + " pad" +
                     std::to_string(pad) + " eps" + std::to_string(eps).substr(0, 3) + (CAP ? " softcap" : "");
  printf("%s %s: loss err %.2e, lse err %.2e (|lse| %.2f), dx err %.2e (max|dx| %.2e)%s\n", ok ? "PASS" : "FAIL",
         name.c_str(), e_loss, e_lse, s_lse, e_dx, s_dx, nan_ok ? "" : " NaN mismatch");
  (ok ? passes : failures)++;
}

template <typename T>
void run_dtype() {
  constexpr int V = kVec16<T>;
  uint32_t seed = 1;
  for (float eps : {0.f, 0.1f}) {
    for (int C : {1, 7, 1000, 4099}) {  // tail-only, short, and a C > U * 128 threads * VEC loop
      run_case<T, 1, false>(C, 3, eps, 0.f, seed++);
      run_case<T, 1, true>(C, 3, eps, 30.f, seed++);
    }
    for (int C : {V * 3, 1000 / V * V, 32768 + V * 5}) {  // vectorized: rows of whole vectors, aligned row stride
      run_case<T, V, false>(C, V, eps, 0.f, seed++);
      run_case<T, V, true>(C, V, eps, 30.f, seed++);
    }
  }
}

int main() {
  run_dtype<float>();
  run_dtype<__half>();
  run_dtype<__nv_bfloat16>();
  printf("%d passed, %d failed\n", passes, failures);
  if (failures == 0) printf("ALL PASS\n");
  return failures ? 1 : 0;
}
