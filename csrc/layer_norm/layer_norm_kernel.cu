// LayerNorm and RMSNorm forward / backward kernels, templated on the element type T, the parameter type W (T or
// float), the vector width VEC and kRms (RMSNorm: mean = 0, no bias). Math (statistics in fp32):
//   forward   mean, M2 by Welford + Chan merge; rstd = rsqrt(M2 / N + eps); y = (x - mean) * rstd * w + b
//             RMS: rstd = rsqrt(sum(x^2) / N + eps); y = x * rstd * w (add_rms_norm: x is h = round(x + residual))
//   backward  xhat = (x - mean) * rstd, g = dy * w, dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
//             RMS: dx = rstd * (g - xhat * mean(g * xhat)) (+ dh for add_rms_norm)
//             dw = sum_rows dy * xhat, db = sum_rows dy: per-split partial sums, then a fixed-order sum.
// A row is handled by one warp (cols <= kWarpRowMaxCols, 4 rows per block) or by a whole block.
#include <algorithm>
#include <cstdint>

#include "common/launch.h"
#include "common/reduce.cuh"
#include "common/vec.cuh"
#include "layer_norm/layer_norm.h"

namespace bigmodel {
namespace {

constexpr int kWarpRowsPerBlock = 4;
constexpr int64_t kWarpRowMaxCols = 1024;
constexpr int kParamCols = 32, kParamRowThreads = 8;

template <typename W, int VEC>
__device__ __forceinline__ void load_param(const void* p, int c, float (&out)[VEC], float absent) {
  if (p) {
    load_vec<W, VEC>(static_cast<const W*>(p) + c, out);
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) out[i] = absent;
  }
}

template <typename T>
__device__ __forceinline__ float round_to(float v) { return to_float(from_float<T>(v)); }

// kRms: RMSNorm (mean = 0, no bias); kRes: add_rms_norm's h = round(x + residual) is normalised and written out.
template <typename T, typename W, int VEC, bool kRms, bool kRes>
__global__ void ln_fwd_kernel(LayerNormParams p) {
  static_assert(kRms || !kRes, "the residual add is add_rms_norm's");
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (row >= p.rows) return;  // a whole row group leaves together
  const int cols = static_cast<int>(p.cols);
  const T* x = static_cast<const T*>(p.x) + row * p.x_stride;
  T* y = static_cast<T*>(p.y) + row * p.cols;
  const T* res = kRes ? static_cast<const T*>(p.residual) + row * p.residual_stride : nullptr;
  T* h = kRes ? static_cast<T*>(p.h) + row * p.cols : nullptr;

  float mean = 0.f, rstd;
  if constexpr (kRms) {
    Floats<1> ss{{0.f}};
    for (int c = threadIdx.x * VEC; c < cols; c += blockDim.x * VEC) {
      float v[VEC];
      load_vec<T, VEC>(x + c, v);
      if constexpr (kRes) {
        float r[VEC];
        load_vec<T, VEC>(res + c, r);
#pragma unroll
        for (int i = 0; i < VEC; ++i) v[i] = round_to<T>(v[i] + r[i]);  // rounded as the unfused add
        store_vec<T, VEC>(h + c, v);
      }
#pragma unroll
      for (int i = 0; i < VEC; ++i) ss.v[0] += v[i] * v[i];
    }
    ss = row_group_sum(ss);
    rstd = rsqrtf(ss.v[0] / cols + p.eps);
  } else {
    Welford st{0.f, 0.f, 0.f};
    for (int c = threadIdx.x * VEC; c < cols; c += blockDim.x * VEC) {
      float v[VEC];
      load_vec<T, VEC>(x + c, v);
#pragma unroll
      for (int i = 0; i < VEC; ++i) st.add(v[i]);
    }
    st = row_group_welford(st);
    mean = st.mean;
    rstd = rsqrtf(st.m2 / cols + p.eps);
  }
  if (threadIdx.x == 0) {
    if constexpr (!kRms) p.mean[row] = mean;
    p.rstd[row] = rstd;
  }
  // kRes: the second pass reads h back (this thread wrote these very elements: no barrier needed)
  const T* src = kRes ? h : x;
  for (int c = threadIdx.x * VEC; c < cols; c += blockDim.x * VEC) {
    float v[VEC], w[VEC], b[VEC];
    load_vec<T, VEC>(src + c, v);
    load_param<W, VEC>(p.weight, c, w, 1.f);
    if constexpr (kRms) {
#pragma unroll
      for (int i = 0; i < VEC; ++i) v[i] = v[i] * rstd * w[i];
    } else {
      load_param<W, VEC>(p.bias, c, b, 0.f);
#pragma unroll
      for (int i = 0; i < VEC; ++i) v[i] = (v[i] - mean) * rstd * w[i] + b[i];
    }
    store_vec<T, VEC>(y + c, v);
  }
}

// kRms: c2 = mean(g) = 0 and mean = 0, so dx = rstd * (g - xhat * mean(g * xhat)); kDh: dx += dh (add_rms_norm).
template <typename T, typename W, int VEC, bool kRms, bool kDh>
__global__ void ln_bwd_dx_kernel(LayerNormParams p) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (row >= p.rows) return;
  const int cols = static_cast<int>(p.cols);
  const T* x = static_cast<const T*>(p.x) + row * p.x_stride;
  const T* dy = static_cast<const T*>(p.dy) + row * p.dy_stride;
  const T* dh = kDh ? static_cast<const T*>(p.dh) + row * p.dh_stride : nullptr;
  T* dx = static_cast<T*>(p.dx) + row * p.cols;
  const float mean = kRms ? 0.f : p.mean[row], rstd = p.rstd[row];

  Floats<kRms ? 1 : 2> s;  // sum(g * xhat), sum(g)
#pragma unroll
  for (int i = 0; i < (kRms ? 1 : 2); ++i) s.v[i] = 0.f;
  for (int c = threadIdx.x * VEC; c < cols; c += blockDim.x * VEC) {
    float xv[VEC], g[VEC], w[VEC];
    load_vec<T, VEC>(x + c, xv);
    load_vec<T, VEC>(dy + c, g);
    load_param<W, VEC>(p.weight, c, w, 1.f);
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      g[i] *= w[i];
      s.v[0] += g[i] * (xv[i] - mean) * rstd;
      if constexpr (!kRms) s.v[1] += g[i];
    }
  }
  s = row_group_sum(s);
  const float c1 = s.v[0] / cols;
  float c2 = 0.f;
  if constexpr (!kRms) c2 = s.v[1] / cols;
  for (int c = threadIdx.x * VEC; c < cols; c += blockDim.x * VEC) {
    float xv[VEC], g[VEC], w[VEC];
    load_vec<T, VEC>(x + c, xv);
    load_vec<T, VEC>(dy + c, g);
    load_param<W, VEC>(p.weight, c, w, 1.f);
#pragma unroll
    for (int i = 0; i < VEC; ++i) g[i] = (g[i] * w[i] - c2 - (xv[i] - mean) * rstd * c1) * rstd;
    if constexpr (kDh) {
      float d[VEC];
      load_vec<T, VEC>(dh + c, d);
#pragma unroll
      for (int i = 0; i < VEC; ++i) g[i] += d[i];
    }
    store_vec<T, VEC>(dx + c, g);
  }
}

// Block (kParamCols, kParamRowThreads) sums dy * xhat and dy (not for RMS) over one split of the rows for 32 columns.
template <typename T, bool kRms>
__global__ void ln_bwd_param_partial_kernel(LayerNormParams p, int64_t rows_per_split) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kParamCols + threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_split;
  const int64_t r1 = min(r0 + rows_per_split, p.rows);
  const T* x = static_cast<const T*>(p.x);
  const T* dy = static_cast<const T*>(p.dy);
  float dw = 0.f, db = 0.f;
  if (col < p.cols) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kParamRowThreads) {
      const float g = to_float(dy[r * p.dy_stride + col]);
      const float mean = kRms ? 0.f : p.mean[r];
      dw += g * (to_float(x[r * p.x_stride + col]) - mean) * p.rstd[r];
      if constexpr (!kRms) db += g;
    }
  }
  __shared__ float sw[kParamRowThreads][kParamCols + 1], sb[kParamRowThreads][kParamCols + 1];
  sw[threadIdx.y][threadIdx.x] = dw;
  sb[threadIdx.y][threadIdx.x] = db;
  __syncthreads();
  if (threadIdx.y == 0 && col < p.cols) {
    for (int i = 1; i < kParamRowThreads; ++i) {
      dw += sw[i][threadIdx.x];
      db += sb[i][threadIdx.x];
    }
    p.partial[blockIdx.y * p.cols + col] = dw;
    if constexpr (!kRms) p.partial[(p.param_splits + blockIdx.y) * p.cols + col] = db;
  }
}

template <typename W, bool kRms>
__global__ void ln_bwd_param_final_kernel(LayerNormParams p) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= p.cols) return;
  float dw = 0.f, db = 0.f;
  for (int s = 0; s < p.param_splits; ++s) {
    dw += p.partial[s * p.cols + col];
    if constexpr (!kRms) db += p.partial[(p.param_splits + s) * p.cols + col];
  }
  if (p.dweight) static_cast<W*>(p.dweight)[col] = from_float<W>(dw);
  if (p.dbias) static_cast<W*>(p.dbias)[col] = from_float<W>(db);
}

bool aligned(const void* p, size_t bytes) { return !p || reinterpret_cast<uintptr_t>(p) % bytes == 0; }

struct RowLaunch {
  dim3 grid, block;
};

RowLaunch row_launch(int64_t rows, int64_t cols, int vec) {
  if (cols <= kWarpRowMaxCols)
    return {dim3(static_cast<unsigned>(ceil_div(rows, kWarpRowsPerBlock))), dim3(32, kWarpRowsPerBlock)};
  const int64_t vectors = ceil_div(cols, vec);
  int threads = 32;
  while (threads < 1024 && threads * 4 < vectors) threads *= 2;  // about 4 vectors per thread
  return {dim3(static_cast<unsigned>(rows)), dim3(threads, 1)};
}

// 16-byte vectors when every row and parameter pointer allows them.
template <typename T, typename W>
bool can_vectorize(const LayerNormParams& p, bool backward) {
  constexpr int V = kVec16<T>;
  const size_t tb = sizeof(T) * V, wb = sizeof(W) * V;
  bool ok = p.cols % V == 0 && p.x_stride % V == 0 && aligned(p.x, tb) && aligned(p.weight, wb) &&
            aligned(p.bias, wb);
  if (backward) {
    ok = ok && p.dy_stride % V == 0 && aligned(p.dy, tb) && aligned(p.dx, tb) && p.dh_stride % V == 0 &&
         aligned(p.dh, tb);
  } else {
    ok = ok && aligned(p.y, tb) && p.residual_stride % V == 0 && aligned(p.residual, tb) && aligned(p.h, tb);
  }
  return ok;
}

using RowKernel = void (*)(LayerNormParams);

// One row kernel, with 16-byte vectors when every pointer allows them.
template <typename T, typename W>
void launch_rows(const LayerNormParams& p, bool backward, RowKernel vec_kernel, RowKernel scalar_kernel,
                 cudaStream_t stream) {
  const bool vec = can_vectorize<T, W>(p, backward);
  const RowLaunch l = row_launch(p.rows, p.cols, vec ? kVec16<T> : 1);
  (vec ? vec_kernel : scalar_kernel)<<<l.grid, l.block, 0, stream>>>(p);
}

template <typename T, typename W, bool kRms, bool kRes>
cudaError_t launch_fwd(const LayerNormParams& p, cudaStream_t stream) {
  launch_rows<T, W>(p, false, ln_fwd_kernel<T, W, kVec16<T>, kRms, kRes>, ln_fwd_kernel<T, W, 1, kRms, kRes>, stream);
  return cudaGetLastError();
}

template <typename T, typename W, bool kRms, bool kDh>
cudaError_t launch_bwd(const LayerNormParams& p, cudaStream_t stream) {
  launch_rows<T, W>(p, true, ln_bwd_dx_kernel<T, W, kVec16<T>, kRms, kDh>, ln_bwd_dx_kernel<T, W, 1, kRms, kDh>,
                    stream);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || (!p.dweight && !p.dbias)) return err;
  const int64_t rows_per_split = ceil_div(p.rows, p.param_splits);
  const dim3 grid(static_cast<unsigned>(ceil_div(p.cols, kParamCols)), p.param_splits);
  ln_bwd_param_partial_kernel<T, kRms><<<grid, dim3(kParamCols, kParamRowThreads), 0, stream>>>(p, rows_per_split);
  ln_bwd_param_final_kernel<W, kRms><<<static_cast<unsigned>(ceil_div(p.cols, 256)), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

int layer_norm_param_splits(int64_t rows, int64_t cols, int sm_count) {
  return row_splits(rows, ceil_div(cols, kParamCols), sm_count, 8, 32);
}

// Every entry dispatches on (dtype, parameter dtype: dtype or float32) and runs launch<T, W>.
#define BIGMODEL_DISPATCH_LN(P, ...)                                                                 \
  BIGMODEL_DISPATCH_FLOAT((P).dtype, T, [&] {                                                        \
    if ((P).param_dtype == DType::kFloat32) {                                                        \
      using W = float;                                                                               \
      __VA_ARGS__();                                                                                 \
    } else {                                                                                         \
      using W = T;                                                                                   \
      __VA_ARGS__();                                                                                 \
    }                                                                                                \
  })

cudaError_t layer_norm_fwd_cuda(const LayerNormParams& p, cudaStream_t stream) {
  cudaError_t err = cudaSuccess;
  BIGMODEL_DISPATCH_LN(p, [&] { err = launch_fwd<T, W, false, false>(p, stream); });
  return err;
}

cudaError_t layer_norm_bwd_cuda(const LayerNormParams& p, cudaStream_t stream) {
  cudaError_t err = cudaSuccess;
  BIGMODEL_DISPATCH_LN(p, [&] { err = launch_bwd<T, W, false, false>(p, stream); });
  return err;
}

cudaError_t rms_norm_fwd_cuda(const LayerNormParams& p, cudaStream_t stream) {
  cudaError_t err = cudaSuccess;
  BIGMODEL_DISPATCH_LN(p, [&] {
    err = p.residual ? launch_fwd<T, W, true, true>(p, stream) : launch_fwd<T, W, true, false>(p, stream);
  });
  return err;
}

cudaError_t rms_norm_bwd_cuda(const LayerNormParams& p, cudaStream_t stream) {
  cudaError_t err = cudaSuccess;
  BIGMODEL_DISPATCH_LN(p, [&] {
    err = p.dh ? launch_bwd<T, W, true, true>(p, stream) : launch_bwd<T, W, true, false>(p, stream);
  });
  return err;
}

}  // namespace bigmodel
