// Elementwise activation kernels on flat contiguous tensors: y = act(x), dx = act'(x) * dy, and the gated
// y = act(g) * u with its backward (formulas in common/activation.cuh), fp32 math. Grid-stride loop over VEC-element
// vectors (16 bytes when every pointer is 16-byte aligned, else VEC = 1); the last n % VEC elements are done one per
// thread by the first threads.
#include <algorithm>
#include <cstdint>

#include "activation/activation.h"
#include "common/activation.cuh"
#include "common/launch.h"
#include "common/vec.cuh"

namespace bigmodel {
namespace {

constexpr int kThreads = 256;

bool aligned(const void* p, size_t bytes) { return !p || reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <typename T, Activation A, int VEC, bool BACKWARD>
__global__ void __launch_bounds__(kThreads) act_kernel(ActParams p) {
  const T* x = static_cast<const T*>(p.x);
  const T* dy = static_cast<const T*>(p.dy);
  T* out = static_cast<T*>(p.out);
  const int64_t nvec = p.n / VEC;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t v = first; v < nvec; v += step) {
    float a[VEC];
    load_vec<T, VEC>(x + v * VEC, a);
    if constexpr (BACKWARD) {
      float g[VEC];
      load_vec<T, VEC>(dy + v * VEC, g);
#pragma unroll
      for (int i = 0; i < VEC; ++i) a[i] = activation_bwd<A>(g[i], a[i]);
    } else {
#pragma unroll
      for (int i = 0; i < VEC; ++i) a[i] = activation_fwd<A>(a[i]);
    }
    store_vec<T, VEC>(out + v * VEC, a);
  }
  if constexpr (VEC > 1) {
    const int64_t e = nvec * VEC + first;  // the tail: fewer than VEC elements
    if (e < p.n) {
      const float a = to_float(x[e]);
      out[e] = from_float<T>(BACKWARD ? activation_bwd<A>(to_float(dy[e]), a) : activation_fwd<A>(a));
    }
  }
}

template <typename T, Activation A, bool BACKWARD>
cudaError_t launch(const ActParams& p, cudaStream_t stream) {
  constexpr int V = kVec16<T>;
  constexpr size_t kBytes = sizeof(T) * V;
  const bool vec = aligned(p.x, kBytes) && aligned(p.dy, kBytes) && aligned(p.out, kBytes);
  const int64_t work = vec ? std::max<int64_t>(1, p.n / V) : p.n;
  const int64_t blocks = std::min<int64_t>(ceil_div(work, kThreads), 32LL * p.sm_count);
  if (vec) act_kernel<T, A, V, BACKWARD><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
  else act_kernel<T, A, 1, BACKWARD><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <bool BACKWARD>
cudaError_t dispatch(const ActParams& p, cudaStream_t stream) {
  cudaError_t err = cudaErrorInvalidValue;  // "none" is rejected by the api: no identity kernels are built
  BIGMODEL_DISPATCH_FLOAT(p.dtype, T, [&] {
    switch (p.act) {
      case Activation::kGelu: err = launch<T, Activation::kGelu, BACKWARD>(p, stream); break;
      case Activation::kGeluTanh: err = launch<T, Activation::kGeluTanh, BACKWARD>(p, stream); break;
      case Activation::kRelu: err = launch<T, Activation::kRelu, BACKWARD>(p, stream); break;
      case Activation::kSilu: err = launch<T, Activation::kSilu, BACKWARD>(p, stream); break;
      case Activation::kNone: break;
    }
  });
  return err;
}

// Gated: y = act(g) * u;  backward dg = dy * u * act'(g), du = dy * act(g) (one pass over g, u, dy). Same
// grid-stride vector loop and tail as act_kernel.
template <typename T, Activation A, int VEC, bool BACKWARD>
__device__ __forceinline__ void gated_vec(const GatedParams& p, int64_t e) {
  float g[VEC], u[VEC];
  load_vec<T, VEC>(static_cast<const T*>(p.gate) + e, g);
  load_vec<T, VEC>(static_cast<const T*>(p.up) + e, u);
  if constexpr (BACKWARD) {
    float d[VEC], du[VEC];
    load_vec<T, VEC>(static_cast<const T*>(p.dy) + e, d);
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      du[i] = d[i] * activation_fwd<A>(g[i]);
      g[i] = activation_bwd<A>(d[i] * u[i], g[i]);
    }
    store_vec<T, VEC>(static_cast<T*>(p.out) + e, g);
    store_vec<T, VEC>(static_cast<T*>(p.out2) + e, du);
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) g[i] = activation_fwd<A>(g[i]) * u[i];
    store_vec<T, VEC>(static_cast<T*>(p.out) + e, g);
  }
}

template <typename T, Activation A, int VEC, bool BACKWARD>
__global__ void __launch_bounds__(kThreads) gated_kernel(GatedParams p) {
  const int64_t nvec = p.n / VEC;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t v = first; v < nvec; v += step) gated_vec<T, A, VEC, BACKWARD>(p, v * VEC);
  if constexpr (VEC > 1) {
    const int64_t e = nvec * VEC + first;
    if (e < p.n) gated_vec<T, A, 1, BACKWARD>(p, e);
  }
}

template <typename T, Activation A, bool BACKWARD>
cudaError_t launch_gated(const GatedParams& p, cudaStream_t stream) {
  constexpr int V = kVec16<T>;
  constexpr size_t kBytes = sizeof(T) * V;
  const bool vec = aligned(p.gate, kBytes) && aligned(p.up, kBytes) && aligned(p.dy, kBytes) &&
                   aligned(p.out, kBytes) && aligned(p.out2, kBytes);
  const int64_t work = vec ? std::max<int64_t>(1, p.n / V) : p.n;
  const int64_t blocks = std::min<int64_t>(ceil_div(work, kThreads), 32LL * p.sm_count);
  if (vec) gated_kernel<T, A, V, BACKWARD><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
  else gated_kernel<T, A, 1, BACKWARD><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <bool BACKWARD>
cudaError_t dispatch_gated(const GatedParams& p, cudaStream_t stream) {
  cudaError_t err = cudaErrorInvalidValue;  // relu / none are rejected by the api: no kernels are built
  BIGMODEL_DISPATCH_FLOAT(p.dtype, T, [&] {
    switch (p.act) {
      case Activation::kSilu: err = launch_gated<T, Activation::kSilu, BACKWARD>(p, stream); break;
      case Activation::kGelu: err = launch_gated<T, Activation::kGelu, BACKWARD>(p, stream); break;
      case Activation::kGeluTanh: err = launch_gated<T, Activation::kGeluTanh, BACKWARD>(p, stream); break;
      default: break;
    }
  });
  return err;
}

}  // namespace

cudaError_t gated_fwd_cuda(const GatedParams& p, cudaStream_t stream) { return dispatch_gated<false>(p, stream); }
cudaError_t gated_bwd_cuda(const GatedParams& p, cudaStream_t stream) { return dispatch_gated<true>(p, stream); }

cudaError_t act_fwd_cuda(const ActParams& p, cudaStream_t stream) { return dispatch<false>(p, stream); }
cudaError_t act_bwd_cuda(const ActParams& p, cudaStream_t stream) { return dispatch<true>(p, stream); }

}  // namespace bigmodel
