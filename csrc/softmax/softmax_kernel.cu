// Softmax over the last dim of (rows, cols), statistics in fp32, templated on the element type T and the vector
// width VEC (16 bytes when every pointer and row stride allows, else 1).
//   forward   m = max_j x_j, s = sum_j exp(x_j - m), y = exp(x - m) / s
//   backward  dx = y * (dy - sum_j dy_j y_j)
// cols <= kWarpMaxCols: one warp per row (4 rows per block), the row held in registers (CHUNKS vectors per lane,
//   a compile-time count, so everything stays in registers).
// Longer rows: one block per row, two passes over global memory: pass 1 keeps a running (max, rescaled sum) per
//   thread and merges them across the block; pass 2 re-reads the row and normalises. Any length works.
// -inf entries: exp(-inf - m) = 0. The exponent's offset is ms = (m == -inf ? 0 : m), which keeps a row that is
// -inf so far from producing exp(-inf - -inf) = NaN in the running sum; a row that is -inf everywhere then has
// s = 0 and every y = 0 * (1 / 0) = NaN, exactly as torch.softmax gives. +inf or NaN anywhere in a row make its
// sum NaN and so the whole row NaN (again as torch). Every thread uses lane 0's reduced value (xor-butterfly
// sums may round differently per lane), so a row is normalised by one number.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "common/launch.h"
#include "common/reduce.cuh"
#include "common/vec.cuh"
#include "softmax/softmax.h"

namespace bigmodel {
namespace {

constexpr int kWarpRowsPerBlock = 4;
constexpr int64_t kWarpMaxCols = 1024;

bool aligned(const void* p, size_t bytes) { return !p || reinterpret_cast<uintptr_t>(p) % bytes == 0; }

__device__ __forceinline__ float exp_offset(float m) { return m == -INFINITY ? 0.f : m; }

__device__ __forceinline__ float warp_max_bcast(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, off));
  return __shfl_sync(kFullMask, v, 0);
}

__device__ __forceinline__ float warp_sum_bcast(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return __shfl_sync(kFullMask, v, 0);
}

// Merges the running softmax statistics (m2, s2) into (m, s): s is a sum of exp(x - exp_offset(m)).
__device__ __forceinline__ void online_merge(float& m, float& s, float m2, float s2) {
  const float mn = fmaxf(m, m2), off = exp_offset(mn);
  s = s * expf(m - off) + s2 * expf(m2 - off);
  m = mn;
}

__device__ __forceinline__ void warp_online(float& m, float& s) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(kFullMask, m, o), s2 = __shfl_xor_sync(kFullMask, s, o);
    online_merge(m, s, m2, s2);
  }
  m = __shfl_sync(kFullMask, m, 0);
  s = __shfl_sync(kFullMask, s, 0);
}

// Block-wide merge (blockDim.x a multiple of 32, blockDim.y == 1); every thread gets the same (m, s).
__device__ __forceinline__ void block_online(float& m, float& s) {
  warp_online(m, s);
  __shared__ float pm[32], ps[32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  if (lane == 0) {
    pm[warp] = m;
    ps[warp] = s;
  }
  __syncthreads();
  m = lane < warps ? pm[lane] : -INFINITY;
  s = lane < warps ? ps[lane] : 0.f;
  warp_online(m, s);  // every warp reduces the same partials in the same order: the same result
}

__device__ __forceinline__ float block_sum_bcast(float v) {
  Floats<1> a{{v}};
  a = row_group_sum(a);
  return __shfl_sync(kFullMask, a.v[0], 0);
}

// ------------------------------------------------------------------------------------------ warp per row
template <typename T, int VEC, int CHUNKS>
__global__ void __launch_bounds__(32 * kWarpRowsPerBlock) softmax_fwd_warp_kernel(SoftmaxParams p) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (row >= p.rows) return;  // whole warps leave together
  const int cols = static_cast<int>(p.cols), lane = threadIdx.x;
  const T* x = static_cast<const T*>(p.x) + row * p.x_stride;
  T* y = static_cast<T*>(p.out) + row * p.cols;
  float v[CHUNKS][VEC];
  float m = -INFINITY;
#pragma unroll
  for (int j = 0; j < CHUNKS; ++j) {
    const int c = (j * 32 + lane) * VEC;
    if (c < cols) {  // cols % VEC == 0 when VEC > 1: a vector is all in or all out
      load_vec<T, VEC>(x + c, v[j]);
    } else {
#pragma unroll
      for (int i = 0; i < VEC; ++i) v[j][i] = -INFINITY;  // contributes exp(-inf) = 0 below
    }
#pragma unroll
    for (int i = 0; i < VEC; ++i) m = fmaxf(m, v[j][i]);
  }
  const float off = exp_offset(warp_max_bcast(m));
  float s = 0.f;
#pragma unroll
  for (int j = 0; j < CHUNKS; ++j)
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      v[j][i] = expf(v[j][i] - off);
      s += v[j][i];
    }
  const float inv = __frcp_rn(warp_sum_bcast(s));  // = 1 / s, correctly rounded, no division subroutine
#pragma unroll
  for (int j = 0; j < CHUNKS; ++j) {
    const int c = (j * 32 + lane) * VEC;
    if (c < cols) {
#pragma unroll
      for (int i = 0; i < VEC; ++i) v[j][i] *= inv;
      store_vec<T, VEC>(y + c, v[j]);
    }
  }
}

template <typename T, int VEC, int CHUNKS>
__global__ void __launch_bounds__(32 * kWarpRowsPerBlock) softmax_bwd_warp_kernel(SoftmaxParams p) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (row >= p.rows) return;
  const int cols = static_cast<int>(p.cols), lane = threadIdx.x;
  const T* y = static_cast<const T*>(p.x) + row * p.x_stride;
  const T* dy = static_cast<const T*>(p.dy) + row * p.dy_stride;
  T* dx = static_cast<T*>(p.out) + row * p.cols;
  float yv[CHUNKS][VEC], g[CHUNKS][VEC];
  float dot = 0.f;
#pragma unroll
  for (int j = 0; j < CHUNKS; ++j) {
    const int c = (j * 32 + lane) * VEC;
    if (c < cols) {
      load_vec<T, VEC>(y + c, yv[j]);
      load_vec<T, VEC>(dy + c, g[j]);
    } else {
#pragma unroll
      for (int i = 0; i < VEC; ++i) yv[j][i] = g[j][i] = 0.f;
    }
#pragma unroll
    for (int i = 0; i < VEC; ++i) dot += yv[j][i] * g[j][i];
  }
  dot = warp_sum_bcast(dot);
#pragma unroll
  for (int j = 0; j < CHUNKS; ++j) {
    const int c = (j * 32 + lane) * VEC;
    if (c < cols) {
#pragma unroll
      for (int i = 0; i < VEC; ++i) g[j][i] = yv[j][i] * (g[j][i] - dot);
      store_vec<T, VEC>(dx + c, g[j]);
    }
  }
}

// ------------------------------------------------------------------------------------------ block per row
template <typename T, int VEC>
__global__ void __launch_bounds__(1024) softmax_fwd_block_kernel(SoftmaxParams p) {
  const int64_t row = blockIdx.x;
  const int cols = static_cast<int>(p.cols);
  const T* x = static_cast<const T*>(p.x) + row * p.x_stride;
  T* y = static_cast<T*>(p.out) + row * p.cols;
  // pass 1: running max m and sum s of exp(x - exp_offset(m)), rescaled whenever m grows
  float m = -INFINITY, s = 0.f;
  for (int c = threadIdx.x * VEC; c < cols; c += blockDim.x * VEC) {
    float v[VEC];
    load_vec<T, VEC>(x + c, v);
    float vm = v[0];
#pragma unroll
    for (int i = 1; i < VEC; ++i) vm = fmaxf(vm, v[i]);
    const float mn = fmaxf(m, vm), off = exp_offset(mn);
    float add = 0.f;
#pragma unroll
    for (int i = 0; i < VEC; ++i) add += expf(v[i] - off);
    s = s * expf(m - off) + add;
    m = mn;
  }
  block_online(m, s);
  const float off = exp_offset(m), inv = __frcp_rn(s);
  // pass 2: normalise
  for (int c = threadIdx.x * VEC; c < cols; c += blockDim.x * VEC) {
    float v[VEC];
    load_vec<T, VEC>(x + c, v);
#pragma unroll
    for (int i = 0; i < VEC; ++i) v[i] = expf(v[i] - off) * inv;
    store_vec<T, VEC>(y + c, v);
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(1024) softmax_bwd_block_kernel(SoftmaxParams p) {
  const int64_t row = blockIdx.x;
  const int cols = static_cast<int>(p.cols);
  const T* y = static_cast<const T*>(p.x) + row * p.x_stride;
  const T* dy = static_cast<const T*>(p.dy) + row * p.dy_stride;
  T* dx = static_cast<T*>(p.out) + row * p.cols;
  float dot = 0.f;
  for (int c = threadIdx.x * VEC; c < cols; c += blockDim.x * VEC) {
    float yv[VEC], g[VEC];
    load_vec<T, VEC>(y + c, yv);
    load_vec<T, VEC>(dy + c, g);
#pragma unroll
    for (int i = 0; i < VEC; ++i) dot += yv[i] * g[i];
  }
  dot = block_sum_bcast(dot);
  for (int c = threadIdx.x * VEC; c < cols; c += blockDim.x * VEC) {
    float yv[VEC], g[VEC];
    load_vec<T, VEC>(y + c, yv);
    load_vec<T, VEC>(dy + c, g);
#pragma unroll
    for (int i = 0; i < VEC; ++i) g[i] = yv[i] * (g[i] - dot);
    store_vec<T, VEC>(dx + c, g);
  }
}

// ------------------------------------------------------------------------------------------ launch
template <typename T>
bool can_vectorize(const SoftmaxParams& p, bool backward) {
  constexpr int V = kVec16<T>;
  constexpr size_t kBytes = sizeof(T) * V;
  bool ok = p.cols % V == 0 && p.x_stride % V == 0 && aligned(p.x, kBytes) && aligned(p.out, kBytes);
  if (backward) ok = ok && p.dy_stride % V == 0 && aligned(p.dy, kBytes);
  return ok;
}

using Kernel = void (*)(SoftmaxParams);

template <typename T, int VEC, int CHUNKS>
Kernel fwd_warp() { return softmax_fwd_warp_kernel<T, VEC, CHUNKS>; }
template <typename T, int VEC, int CHUNKS>
Kernel bwd_warp() { return softmax_bwd_warp_kernel<T, VEC, CHUNKS>; }

// The warp kernel with the fewest CHUNKS (candidates ascending; the last must cover kWarpMaxCols) for cols.
template <typename T, int VEC, bool BACKWARD, int CHUNKS, int... MORE>
Kernel pick_warp_kernel(int64_t cols) {
  if constexpr (sizeof...(MORE) == 0) {
    return BACKWARD ? bwd_warp<T, VEC, CHUNKS>() : fwd_warp<T, VEC, CHUNKS>();
  } else {
    if (cols <= int64_t{32} * VEC * CHUNKS)
      return BACKWARD ? bwd_warp<T, VEC, CHUNKS>() : fwd_warp<T, VEC, CHUNKS>();
    return pick_warp_kernel<T, VEC, BACKWARD, MORE...>(cols);
  }
}

template <typename T, bool BACKWARD>
cudaError_t launch(const SoftmaxParams& p, cudaStream_t stream) {
  constexpr int V = kVec16<T>;
  const bool vec = can_vectorize<T>(p, BACKWARD);
  if (p.cols <= kWarpMaxCols) {
    Kernel k;
    if (vec) {
      if constexpr (V == 8) k = pick_warp_kernel<T, V, BACKWARD, 1, 2, 4>(p.cols);          // 1024 = 32 * 8 * 4
      else k = pick_warp_kernel<T, V, BACKWARD, 1, 2, 4, 8>(p.cols);                        // 1024 = 32 * 4 * 8
    } else {
      k = pick_warp_kernel<T, 1, BACKWARD, 2, 8, 32>(p.cols);                               // 1024 = 32 * 32
    }
    k<<<static_cast<unsigned>(ceil_div(p.rows, kWarpRowsPerBlock)), dim3(32, kWarpRowsPerBlock), 0, stream>>>(p);
    return cudaGetLastError();
  }
  const int vw = vec ? V : 1;
  const int64_t vectors = ceil_div(p.cols, vw);
  int threads = 128;
  while (threads < 1024 && threads * 8 < vectors) threads *= 2;  // up to about 8 vectors per thread per pass
  const Kernel k = BACKWARD ? (vec ? softmax_bwd_block_kernel<T, V> : softmax_bwd_block_kernel<T, 1>)
                            : (vec ? softmax_fwd_block_kernel<T, V> : softmax_fwd_block_kernel<T, 1>);
  k<<<static_cast<unsigned>(p.rows), threads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t softmax_fwd_cuda(const SoftmaxParams& p, cudaStream_t stream) {
  cudaError_t err = cudaSuccess;
  BIGMODEL_DISPATCH_FLOAT(p.dtype, T, [&] { err = launch<T, false>(p, stream); });
  return err;
}

cudaError_t softmax_bwd_cuda(const SoftmaxParams& p, cudaStream_t stream) {
  cudaError_t err = cudaSuccess;
  BIGMODEL_DISPATCH_FLOAT(p.dtype, T, [&] { err = launch<T, true>(p, stream); });
  return err;
}

}  // namespace bigmodel
