// bias + activation kernels for the CUDA linear_act path (the GEMMs are cuBLAS'), templated on the element
// type T, the activation A and the vector width VEC (16 bytes, or 1 when some pointer / stride forbids it).
//   forward   pre = z + b, y = act(pre)                          (fp32 math, one rounding per output)
//   backward  dz = act'(pre) * dy (relu: y > 0 ? dy : 0),  dbias = sum over rows of dz (fp32, unrounded dz)
// Both use one tiling: block (TX, TY) = 256 threads, TX threads across VEC-wide column vectors, TY threads down
// the rows; grid (column tiles of TX * VEC, row splits). A thread keeps one column vector for its whole split,
// so the bias is read once and the dbias partial sum stays in registers. dbias: each block sums its TY row
// partials in a fixed order into partial[split][col]; a second kernel sums the splits in order (deterministic,
// no atomics).
#include <algorithm>
#include <cstdint>

#include "bias_act/bias_act.h"
#include "common/activation.cuh"
#include "common/launch.h"
#include "common/vec.cuh"

namespace bigmodel {
namespace {

constexpr int kThreads = 256;
constexpr int kSplitTileCols = 256;  // column tile width used to choose the split count (independent of VEC)

bool aligned(const void* p, size_t bytes) { return !p || reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <typename T, Activation A, int VEC>
__global__ void __launch_bounds__(kThreads) bias_act_fwd_kernel(BiasActParams p, int64_t rows_per_split) {
  const int64_t c = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  if (c >= p.cols) return;  // no barrier below
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_split;
  // 32-bit trip counter (rows <= INT_MAX, checked by the api): a 64-bit one costs a division subroutine
  const int nrows = static_cast<int>(min(rows_per_split, p.rows - r0));
  float b[VEC];
  if (p.bias) {
    load_vec<T, VEC>(static_cast<const T*>(p.bias) + c, b);
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) b[i] = 0.f;
  }
  const T* z = static_cast<const T*>(p.z) + c;
  T* y = static_cast<T*>(p.y) + c;
  T* pre = static_cast<T*>(p.pre);
  for (int i = threadIdx.y; i < nrows; i += blockDim.y) {
    const int64_t r = r0 + i;
    float v[VEC];
    load_vec<T, VEC>(z + r * p.in_stride, v);
#pragma unroll
    for (int i = 0; i < VEC; ++i) v[i] += b[i];
    if (pre) store_vec<T, VEC>(pre + r * p.cols + c, v);
#pragma unroll
    for (int i = 0; i < VEC; ++i) v[i] = activation_fwd<A>(v[i]);
    store_vec<T, VEC>(y + r * p.cols, v);
  }
}

template <typename T, Activation A, int VEC>
__global__ void __launch_bounds__(kThreads) bias_act_bwd_kernel(BiasActParams p, int64_t rows_per_split) {
  const int64_t c = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  const bool active = c < p.cols;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_split;
  const int nrows = static_cast<int>(min(rows_per_split, p.rows - r0));  // 32-bit trip counter, as above
  float acc[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) acc[i] = 0.f;
  if (active) {
    const T* dy = static_cast<const T*>(p.dy) + c;
    const T* saved = static_cast<const T*>(p.saved) + c;
    T* dz = p.dz ? static_cast<T*>(p.dz) + c : nullptr;
    for (int i = threadIdx.y; i < nrows; i += blockDim.y) {
      const int64_t r = r0 + i;
      float g[VEC], s[VEC];
      load_vec<T, VEC>(dy + r * p.dy_stride, g);
      if constexpr (A != Activation::kNone) {
        load_vec<T, VEC>(saved + r * p.in_stride, s);
      } else {
#pragma unroll
        for (int i = 0; i < VEC; ++i) s[i] = 0.f;
      }
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        g[i] = activation_bwd<A>(g[i], s[i]);
        acc[i] += g[i];
      }
      if (p.dz) store_vec<T, VEC>(dz + r * p.cols, g);  // nullptr: dbias only (activation none, dz = dy)
    }
  }
  if (!p.partial) return;  // uniform over the grid: no thread is left waiting at the barrier
  __shared__ float red[kThreads * VEC];
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
#pragma unroll
  for (int i = 0; i < VEC; ++i) red[tid * VEC + i] = acc[i];
  __syncthreads();
  if (threadIdx.y != 0 || !active) return;
  for (int j = 1; j < static_cast<int>(blockDim.y); ++j) {  // fixed order: row thread 0, 1, ..., TY - 1
    const int t = j * blockDim.x + threadIdx.x;
#pragma unroll
    for (int i = 0; i < VEC; ++i) acc[i] += red[t * VEC + i];
  }
  float* out = p.partial + static_cast<int64_t>(blockIdx.y) * p.cols + c;
#pragma unroll
  for (int i = 0; i < VEC; ++i) out[i] = acc[i];
}

// dbias[col] = sum over splits, in split order, of partial[split][col].
template <typename T>
__global__ void __launch_bounds__(kThreads) bias_act_dbias_final_kernel(BiasActParams p) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= p.cols) return;
  float s = 0.f;
  for (int j = 0; j < p.splits; ++j) s += p.partial[static_cast<int64_t>(j) * p.cols + col];
  static_cast<T*>(p.dbias)[col] = from_float<T>(s);
}

struct Tiling {
  dim3 grid, block;
  int64_t rows_per_split;
};

Tiling tiling(const BiasActParams& p, int vec, int splits) {
  const int64_t vectors = ceil_div(p.cols, vec);
  int tx = 1;
  while (tx < 32 && tx < vectors) tx *= 2;
  const int ty = kThreads / tx;
  const int64_t rows_per_split = ceil_div(p.rows, splits);
  const int64_t used_splits = ceil_div(p.rows, rows_per_split);  // <= splits; every split non-empty
  return {dim3(static_cast<unsigned>(ceil_div(vectors, tx)), static_cast<unsigned>(used_splits)), dim3(tx, ty),
          rows_per_split};
}

template <typename T>
bool can_vectorize(const BiasActParams& p, bool backward) {
  constexpr int V = kVec16<T>;
  constexpr size_t kBytes = sizeof(T) * V;
  bool ok = p.cols % V == 0;
  if (backward) {
    ok = ok && p.dy_stride % V == 0 && aligned(p.dy, kBytes) && aligned(p.dz, kBytes);
    if (p.act != Activation::kNone) ok = ok && p.in_stride % V == 0 && aligned(p.saved, kBytes);
  } else {
    ok = ok && p.in_stride % V == 0 && aligned(p.z, kBytes) && aligned(p.bias, kBytes) && aligned(p.y, kBytes) &&
         aligned(p.pre, kBytes);
  }
  return ok;
}

// The forward's split count: enough blocks to fill the GPU; no dbias scratch to keep small.
int fwd_splits(int64_t rows, int64_t cols, int sm_count) {
  return row_splits(rows, ceil_div(cols, kSplitTileCols), sm_count, 16, 16);
}

template <typename T, Activation A>
cudaError_t launch_fwd(const BiasActParams& p, cudaStream_t stream) {
  constexpr int V = kVec16<T>;
  const bool vec = can_vectorize<T>(p, false);
  const Tiling t = tiling(p, vec ? V : 1, fwd_splits(p.rows, p.cols, p.sm_count));
  if (vec) bias_act_fwd_kernel<T, A, V><<<t.grid, t.block, 0, stream>>>(p, t.rows_per_split);
  else bias_act_fwd_kernel<T, A, 1><<<t.grid, t.block, 0, stream>>>(p, t.rows_per_split);
  return cudaGetLastError();
}

template <typename T, Activation A>
cudaError_t launch_bwd(const BiasActParams& p, cudaStream_t stream) {
  constexpr int V = kVec16<T>;
  const bool vec = can_vectorize<T>(p, true);
  // With dbias the split count is the api's (it sized the scratch); both depend only on (rows, cols, SMs).
  const Tiling t = tiling(p, vec ? V : 1, p.partial ? p.splits : fwd_splits(p.rows, p.cols, p.sm_count));
  if (vec) bias_act_bwd_kernel<T, A, V><<<t.grid, t.block, 0, stream>>>(p, t.rows_per_split);
  else bias_act_bwd_kernel<T, A, 1><<<t.grid, t.block, 0, stream>>>(p, t.rows_per_split);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || !p.partial) return err;
  BiasActParams q = p;
  q.splits = static_cast<int>(t.grid.y);  // splits actually written (each non-empty)
  bias_act_dbias_final_kernel<T><<<static_cast<unsigned>(ceil_div(p.cols, kThreads)), kThreads, 0, stream>>>(q);
  return cudaGetLastError();
}

}  // namespace

int bias_act_splits(int64_t rows, int64_t cols, int sm_count) {
  return row_splits(rows, ceil_div(cols, kSplitTileCols), sm_count, 8, 32);
}

cudaError_t bias_act_fwd_cuda(const BiasActParams& p, cudaStream_t stream) {
  cudaError_t err = cudaSuccess;
  BIGMODEL_DISPATCH_FLOAT(p.dtype, T, [&] {
    BIGMODEL_DISPATCH_ACTIVATION(p.act, A, [&] { err = launch_fwd<T, A>(p, stream); });
  });
  return err;
}

cudaError_t bias_act_bwd_cuda(const BiasActParams& p, cudaStream_t stream) {
  cudaError_t err = cudaSuccess;
  BIGMODEL_DISPATCH_FLOAT(p.dtype, T, [&] {
    BIGMODEL_DISPATCH_ACTIVATION(p.act, A, [&] { err = launch_bwd<T, A>(p, stream); });
  });
  return err;
}

}  // namespace bigmodel
