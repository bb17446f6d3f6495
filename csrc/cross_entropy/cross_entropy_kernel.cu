// Cross-entropy kernel launches: the vector width (16 bytes when the pointers, row strides and cols allow, else 1),
// the softcap instantiation and the block size (32 to 1024 threads by the row length, about two unrolled iterations
// per thread); one block per row. The kernels and their numerics are in cross_entropy_kernel.cuh.
#include <cstdint>

#include "common/launch.h"
#include "cross_entropy/cross_entropy_kernel.cuh"

namespace bigmodel {
namespace {

using ce::cross_entropy_bwd_kernel;
using ce::cross_entropy_fwd_kernel;
using ce::kMaxThreads;
using ce::unroll;

bool aligned(const void* p, size_t bytes) { return !p || reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// ------------------------------------------------------------------------------------------ launch
using Kernel = void (*)(CrossEntropyParams);

template <typename T>
bool can_vectorize(const CrossEntropyParams& p, bool backward) {
  constexpr int V = kVec16<T>;
  constexpr size_t kBytes = sizeof(T) * V;
  bool ok = p.cols % V == 0 && p.logits_stride % V == 0 && aligned(p.logits, kBytes);
  if (backward) ok = ok && p.out_stride % V == 0 && aligned(p.out, kBytes);
  return ok;
}

template <typename T, bool BACKWARD, int VEC>
Kernel pick(bool cap) {
  if constexpr (BACKWARD) {
    return cap ? cross_entropy_bwd_kernel<T, VEC, true> : cross_entropy_bwd_kernel<T, VEC, false>;
  } else {
    return cap ? cross_entropy_fwd_kernel<T, VEC, true> : cross_entropy_fwd_kernel<T, VEC, false>;
  }
}

template <typename T, bool BACKWARD>
cudaError_t launch(const CrossEntropyParams& p, cudaStream_t stream) {
  constexpr int V = kVec16<T>;
  const bool vec = can_vectorize<T>(p, BACKWARD);
  const bool cap = p.softcap != 0.f;
  const Kernel k = vec ? pick<T, BACKWARD, V>(cap) : pick<T, BACKWARD, 1>(cap);
  const int vw = vec ? V : 1, u = vec ? unroll<T, V>() : unroll<T, 1>();
  const int64_t vectors = ceil_div(p.cols, vw);
  int threads = 32;  // about two unrolled iterations per thread, up to 1024 threads
  while (threads < kMaxThreads && int64_t{threads} * 2 * u < vectors) threads *= 2;
  k<<<static_cast<unsigned>(p.rows), threads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t cross_entropy_fwd_cuda(const CrossEntropyParams& p, cudaStream_t stream) {
  cudaError_t err = cudaSuccess;
  BIGMODEL_DISPATCH_FLOAT(p.dtype, T, [&] { err = launch<T, false>(p, stream); });
  return err;
}

cudaError_t cross_entropy_bwd_cuda(const CrossEntropyParams& p, cudaStream_t stream) {
  cudaError_t err = cudaSuccess;
  BIGMODEL_DISPATCH_FLOAT(p.dtype, T, [&] { err = launch<T, true>(p, stream); });
  return err;
}

}  // namespace bigmodel
