// Rotary position embedding kernels, templated on the element type T, the table type C (T or float), the layout
// (rotate_half or GPT-J interleaved pairs), the direction and whether 16-byte vectors are usable. Math in fp32 with
// x1 / x2 the two members of each rotated pair and c1, c2, s1, s2 the matching cos / sin entries:
//   forward   y1 = x1 c1 - x2 s1,    y2 = x2 c2 + x1 s2          (= x cos + rotate_half(x) sin)
//   backward  dx1 = dy1 c1 + dy2 s2,  dx2 = dy2 c2 - dy1 s1      (the transpose: rotation by -theta)
// Features R .. D-1 are copied unchanged. Block (TX, TY): TY rows (b, h, l flattened), TX threads across a row's
// pair units; cos / sin are read through their strides, so broadcast tables are never copied. Offsets are int64.
#include <algorithm>
#include <cstdint>

#include "common/launch.h"
#include "common/vec.cuh"
#include "rotary/rotary.h"

namespace bigmodel {
namespace {

constexpr int kThreads = 256;

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <typename T, int N, bool kVec>
__device__ __forceinline__ void load_n(const T* p, float (&out)[N]) {
  if constexpr (kVec) {
    load_vec<T, N>(p, out);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = to_float(p[i]);
  }
}

template <typename T, int N, bool kVec>
__device__ __forceinline__ void store_n(T* p, const float (&in)[N]) {
  if constexpr (kVec) {
    store_vec<T, N>(p, in);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) p[i] = from_float<T>(in[i]);
  }
}

template <bool BACKWARD>
__device__ __forceinline__ void rotate(float x1, float x2, float c1, float c2, float s1, float s2, float& y1,
                                       float& y2) {
  if constexpr (BACKWARD) {
    y1 = x1 * c1 + x2 * s2;
    y2 = x2 * c2 - x1 * s1;
  } else {
    y1 = x1 * c1 - x2 * s1;
    y2 = x2 * c2 + x1 * s2;
  }
}

template <typename T, typename C, bool INTERLEAVED, bool BACKWARD, bool kVec>
__global__ void __launch_bounds__(kThreads) rotary_kernel(RotaryParams p) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (row >= p.b * p.h * p.l) return;  // no barrier below
  const int64_t l = row % p.l, bh = row / p.l, h = bh % p.h, b = bh / p.h;
  const T* x = static_cast<const T*>(p.x) + b * p.x_stride[0] + h * p.x_stride[1] + l * p.x_stride[2];
  const C* cs = static_cast<const C*>(p.cos) + b * p.cos_stride[0] + h * p.cos_stride[1] + l * p.cos_stride[2];
  const C* sn = static_cast<const C*>(p.sin) + b * p.sin_stride[0] + h * p.sin_stride[1] + l * p.sin_stride[2];
  T* y = static_cast<T*>(p.y) + row * p.d;
  const int d = static_cast<int>(p.d), r = static_cast<int>(p.r), half = r / 2;
  constexpr int E = kVec ? kVec16<T> : 1;  // elements per vector of x
  if constexpr (INTERLEAVED) {
    constexpr int N = E >= 2 ? E : 2;  // a unit of N / 2 whole pairs
    for (int e = threadIdx.x * N; e < r; e += blockDim.x * N) {
      float v[N], c[N], s[N];
      load_n<T, N, kVec>(x + e, v);
      load_n<C, N, kVec>(cs + e, c);
      load_n<C, N, kVec>(sn + e, s);
#pragma unroll
      for (int k = 0; k < N; k += 2) {
        float y1, y2;
        rotate<BACKWARD>(v[k], v[k + 1], c[k], c[k + 1], s[k], s[k + 1], y1, y2);
        v[k] = y1;
        v[k + 1] = y2;
      }
      store_n<T, N, kVec>(y + e, v);
    }
  } else {
    for (int j = threadIdx.x * E; j < half; j += blockDim.x * E) {
      float x1[E], x2[E], c1[E], c2[E], s1[E], s2[E];
      load_n<T, E, kVec>(x + j, x1);
      load_n<T, E, kVec>(x + half + j, x2);
      load_n<C, E, kVec>(cs + j, c1);
      load_n<C, E, kVec>(cs + half + j, c2);
      load_n<C, E, kVec>(sn + j, s1);
      load_n<C, E, kVec>(sn + half + j, s2);
#pragma unroll
      for (int k = 0; k < E; ++k) rotate<BACKWARD>(x1[k], x2[k], c1[k], c2[k], s1[k], s2[k], x1[k], x2[k]);
      store_n<T, E, kVec>(y + j, x1);
      store_n<T, E, kVec>(y + half + j, x2);
    }
  }
  for (int e = r + threadIdx.x * E; e < d; e += blockDim.x * E) {  // pass-through features: copied as stored
    if constexpr (kVec) {
      *reinterpret_cast<Pack<T, E>*>(y + e) = *reinterpret_cast<const Pack<T, E>*>(x + e);
    } else {
      y[e] = x[e];
    }
  }
}

// 16-byte vectors of x when every offset a vector starts at is a multiple of the width and every base is aligned.
template <typename T, typename C>
bool can_vectorize(const RotaryParams& p) {
  constexpr int E = kVec16<T>;
  const int64_t pair_span = p.interleaved ? p.r : p.r / 2;  // rotate_half: the second half starts at R/2
  bool ok = pair_span % E == 0 && p.d % E == 0 && aligned(p.x, sizeof(T) * E) && aligned(p.y, sizeof(T) * E) &&
            aligned(p.cos, sizeof(C) * E) && aligned(p.sin, sizeof(C) * E);
  for (int i = 0; i < 3; ++i)
    ok = ok && p.x_stride[i] % E == 0 && p.cos_stride[i] % E == 0 && p.sin_stride[i] % E == 0;
  return ok;
}

template <typename T, typename C, bool INTERLEAVED, bool BACKWARD>
cudaError_t launch(const RotaryParams& p, cudaStream_t stream) {
  const bool vec = can_vectorize<T, C>(p);
  const int64_t e = vec ? kVec16<T> : 1;
  // threads across a row: enough for the larger of the rotated units and the pass-through vectors, at most 32
  const int64_t units = std::max(ceil_div(p.interleaved ? p.r : p.r / 2, p.interleaved ? std::max<int64_t>(e, 2) : e),
                                 ceil_div(p.d - p.r, e));
  int tx = 1;
  while (tx < 32 && tx < units) tx *= 2;
  const int ty = kThreads / tx;
  const dim3 grid(static_cast<unsigned>(ceil_div(p.b * p.h * p.l, ty))), block(tx, ty);
  if (vec) rotary_kernel<T, C, INTERLEAVED, BACKWARD, true><<<grid, block, 0, stream>>>(p);
  else rotary_kernel<T, C, INTERLEAVED, BACKWARD, false><<<grid, block, 0, stream>>>(p);
  return cudaGetLastError();
}

template <typename T, typename C>
cudaError_t dispatch(const RotaryParams& p, cudaStream_t stream) {
  if (p.interleaved) return p.backward ? launch<T, C, true, true>(p, stream) : launch<T, C, true, false>(p, stream);
  return p.backward ? launch<T, C, false, true>(p, stream) : launch<T, C, false, false>(p, stream);
}

}  // namespace

cudaError_t rotary_cuda(const RotaryParams& p, cudaStream_t stream) {
  cudaError_t err = cudaSuccess;
  BIGMODEL_DISPATCH_FLOAT(p.dtype, T, [&] {
    err = p.table_dtype == DType::kFloat32 ? dispatch<T, float>(p, stream) : dispatch<T, T>(p, stream);
  });
  return err;
}

}  // namespace bigmodel
