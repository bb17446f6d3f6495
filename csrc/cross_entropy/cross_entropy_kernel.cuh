// Cross-entropy over the rows of (rows, cols) logits, fp32 math for every element type, templated on the element
// type T, the vector width VEC (16 bytes when the pointers, row strides and cols allow, else 1) and CAP (the
// softcap z = softcap * tanh(x / softcap) on or off). One block per row (32 to 1024 threads by the row length),
// each thread looping over the row with UNROLL vector loads in flight; row offsets are int64.
//   forward   one pass: a running (max m, sum s of exp(z - m), sum of z) per thread, rescaled whenever m grows,
//             merged across the block in a fixed order (bitwise deterministic). lse = m + log(s);
//             loss = lse - (1 - eps) z_t - (eps / C) sum_j z_j, 0 for ignored rows.
//   backward  one pass, elementwise: d = g (exp(z - lse) - (1 - eps) [j == t] - eps / C), times 1 - tanh^2(u) with
//             the softcap (u = x / softcap; as 4 e / (1 + e)^2, e = exp(-2|u|): no cancellation at large |u|).
//             Ignored rows are written 0 without reading. `out` may be `logits`: each thread reads its vectors
//             before it writes them.
// exp is ex2.approx.ftz of a fused (z log2 e - m log2 e): terms below 2^-126 of the row's largest flush to 0.
// -inf logits contribute exp(-inf) = 0; the offset is 0 while the running max is -inf (no -inf - -inf = NaN). A
// target outside [0, cols) that is not ignore_index is never read through: its loss and its gradient row are NaN.
// Device code only (no launches), so tests/cuda_emulator can compile it for the host; cross_entropy_kernel.cu
// picks and launches the kernels.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/reduce.cuh"
#include "common/vec.cuh"
#include "cross_entropy/cross_entropy.h"

namespace bigmodel {
namespace ce {

constexpr int kMaxThreads = 1024;
constexpr float kLog2e = 1.4426950408889634f;

// 2^x on the SFU; subnormal results flush to 0, 2^-inf = 0. (The host emulator, tests/cuda_emulator, supplies
// its own ex2 and defines BIGMODEL_CE_HOST_EX2.)
#ifndef BIGMODEL_CE_HOST_EX2
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
#endif

template <bool CAP>
__device__ __forceinline__ float capped(float x, float cap, float inv_cap) {
  if constexpr (CAP) return cap * tanhf(x * inv_cap);
  return x;
}

// Running statistics of one thread (or, merged, of a row): max m, s = sum exp(z - off(m)), sz = sum z.
struct Lse {
  float m, s, sz;
};

__device__ __forceinline__ float exp_offset(float m) { return m == -INFINITY ? 0.f : m; }

template <int N>
__device__ __forceinline__ void lse_add(Lse& a, const float (&z)[N], bool smooth) {
  float bm = z[0];
#pragma unroll
  for (int i = 1; i < N; ++i) bm = fmaxf(bm, z[i]);
  if (bm > a.m) {  // false for NaN: m stays a number, NaN reaches s through its term below
    a.s *= ex2((a.m - bm) * kLog2e);
    a.m = bm;
  }
  const float offl = exp_offset(a.m) * kLog2e;
  float add = 0.f, zs = 0.f;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    add += ex2(fmaf(z[i], kLog2e, -offl));
    zs += z[i];
  }
  a.s += add;
  if (smooth) a.sz += zs;  // only with label smoothing: -inf logits would make it -inf, and 0 * -inf = NaN
}

__device__ __forceinline__ Lse lse_merge(Lse a, Lse b) {
  const float mn = fmaxf(a.m, b.m), off = exp_offset(mn);
  return {mn, a.s * ex2((a.m - off) * kLog2e) + b.s * ex2((b.m - off) * kLog2e), a.sz + b.sz};
}

__device__ __forceinline__ Lse warp_lse_down(Lse a) {  // lane 0 ends with the warp's merge
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const Lse b{__shfl_down_sync(kFullMask, a.m, o), __shfl_down_sync(kFullMask, a.s, o),
                __shfl_down_sync(kFullMask, a.sz, o)};
    a = lse_merge(a, b);
  }
  return a;
}

// Thread 0 gets the block's merge; fixed order (lanes, then warps), so the same inputs give the same bits.
__device__ __forceinline__ Lse block_lse(Lse a) {
  a = warp_lse_down(a);
  __shared__ Lse partial[32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  if (warps == 1) return a;
  if (lane == 0) partial[warp] = a;
  __syncthreads();
  if (warp == 0) {
    a = lane < warps ? partial[lane] : Lse{-INFINITY, 0.f, 0.f};
    a = warp_lse_down(a);
  }
  return a;
}

template <typename T, int VEC>
constexpr int unroll() { return VEC > 1 ? 4 : 8; }  // vectors in flight per thread per iteration

template <typename T, int VEC, bool CAP>
__global__ void __launch_bounds__(kMaxThreads) cross_entropy_fwd_kernel(CrossEntropyParams p) {
  constexpr int U = unroll<T, VEC>();
  const int64_t row = blockIdx.x;
  const int cols = static_cast<int>(p.cols);
  const T* x = static_cast<const T*>(p.logits) + row * p.logits_stride;
  const float cap = p.softcap, inv_cap = CAP ? 1.f / p.softcap : 0.f;
  const bool smooth = p.smoothing != 0.f;

  // thread 0 fetches the target logit first, so its latency hides behind the row loop
  int64_t t = 0;
  float zt = 0.f;
  if (threadIdx.x == 0) {
    t = p.target[row];
    if (t != p.ignore_index) zt = (t >= 0 && t < cols) ? to_float(x[t]) : NAN;
  }

  Lse a{-INFINITY, 0.f, 0.f};
  const int step = blockDim.x * VEC;
  int c = threadIdx.x * VEC;
  for (; c + (U - 1) * step < cols; c += U * step) {  // U vectors, all in the row (cols % VEC == 0 when VEC > 1)
    float v[U * VEC];
#pragma unroll
    for (int u = 0; u < U; ++u) load_vec<T, VEC>(x + c + u * step, *reinterpret_cast<float(*)[VEC]>(v + u * VEC));
#pragma unroll
    for (int i = 0; i < U * VEC; ++i) v[i] = capped<CAP>(v[i], cap, inv_cap);
    lse_add(a, v, smooth);
  }
  for (; c < cols; c += step) {
    float v[VEC];
    load_vec<T, VEC>(x + c, v);
#pragma unroll
    for (int i = 0; i < VEC; ++i) v[i] = capped<CAP>(v[i], cap, inv_cap);
    lse_add(a, v, smooth);
  }
  a = block_lse(a);
  if (threadIdx.x == 0) {
    const float lse = a.m + logf(a.s);
    p.lse[row] = lse;
    float loss = 0.f;
    if (t != p.ignore_index) {
      zt = capped<CAP>(zt, cap, inv_cap);
      loss = smooth ? lse - (1.f - p.smoothing) * zt - (p.smoothing / static_cast<float>(cols)) * a.sz : lse - zt;
    }
    p.loss[row] = loss;
  }
}

template <typename T, int VEC, bool CAP>
__global__ void __launch_bounds__(kMaxThreads) cross_entropy_bwd_kernel(CrossEntropyParams p) {
  constexpr int U = unroll<T, VEC>();
  const int64_t row = blockIdx.x;
  const int cols = static_cast<int>(p.cols);
  const T* x = static_cast<const T*>(p.logits) + row * p.logits_stride;
  T* out = static_cast<T*>(p.out) + row * p.out_stride;
  const int step = blockDim.x * VEC;
  const int64_t t = p.target[row];
  if (t == p.ignore_index) {
    const float zero[VEC] = {};
    for (int c = threadIdx.x * VEC; c < cols; c += step) store_vec<T, VEC>(out + c, zero);
    return;
  }
  const bool inside = t >= 0 && t < cols;
  const int tc = inside ? static_cast<int>(t) : -1;
  const float g = inside ? p.grad_loss[row * p.grad_stride] : NAN;  // out of range: a NaN row, as its NaN loss
  const float lsel = p.lse_in[row] * kLog2e;
  const float on = 1.f - p.smoothing, base = p.smoothing / static_cast<float>(cols);
  const float cap = p.softcap, inv_cap = CAP ? 1.f / p.softcap : 0.f;

  auto grad = [&](float xv, int col) {
    float z = xv, dz = 1.f;
    if constexpr (CAP) {
      const float u = xv * inv_cap, e = ex2(-2.f * kLog2e * fabsf(u)), e1 = 1.f + e;
      z = cap * tanhf(u);
      dz = 4.f * e * __frcp_rn(e1 * e1);  // = 1 - tanh^2(u), without 1 - tanh^2's cancellation for large |u|
    }
    float d = ex2(fmaf(z, kLog2e, -lsel)) - base;
    if (col == tc) d -= on;
    d *= g;
    if constexpr (CAP) d *= dz;
    return d;
  };

  int c = threadIdx.x * VEC;
  for (; c + (U - 1) * step < cols; c += U * step) {
    float v[U][VEC];
#pragma unroll
    for (int u = 0; u < U; ++u) load_vec<T, VEC>(x + c + u * step, v[u]);  // all reads before any write
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int i = 0; i < VEC; ++i) v[u][i] = grad(v[u][i], c + u * step + i);
      store_vec<T, VEC>(out + c + u * step, v[u]);
    }
  }
  for (; c < cols; c += step) {
    float v[VEC];
    load_vec<T, VEC>(x + c, v);
#pragma unroll
    for (int i = 0; i < VEC; ++i) v[i] = grad(v[i], c + i);
    store_vec<T, VEC>(out + c, v);
  }
}

}  // namespace ce
}  // namespace bigmodel
