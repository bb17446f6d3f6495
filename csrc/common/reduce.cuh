// Warp / block reductions in fp32. Block reductions assume blockDim.y == 1 when blockDim.x > 32, and
// return the same value to every thread of the row group.
#pragma once

namespace bigmodel {

constexpr unsigned kFullMask = 0xffffffffu;

template <int N>
struct Floats {
  float v[N];
};

template <int N>
__device__ __forceinline__ Floats<N> warp_sum(Floats<N> a) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1)
#pragma unroll
    for (int i = 0; i < N; ++i) a.v[i] += __shfl_xor_sync(kFullMask, a.v[i], off);
  return a;
}

// Sum over the threadIdx.x threads of one row group (a warp, or the whole block when blockDim.x > 32).
template <int N>
__device__ __forceinline__ Floats<N> row_group_sum(Floats<N> a) {
  a = warp_sum(a);
  if (blockDim.x <= 32) return a;
  __shared__ Floats<N> partial[32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  if (lane == 0) partial[warp] = a;
  __syncthreads();
  Floats<N> r;
#pragma unroll
  for (int i = 0; i < N; ++i) r.v[i] = 0.f;
  if (lane < warps) r = partial[lane];  // every warp reduces the partials itself: no second barrier
  r = warp_sum(r);
  __syncthreads();  // `partial` may be reused by the caller's next reduction
  return r;
}

// Welford statistics (count, mean, M2) and Chan's merge.
struct Welford {
  float n, mean, m2;
  __device__ __forceinline__ void add(float x) {
    n += 1.f;
    const float d = x - mean;
    mean += d / n;
    m2 += d * (x - mean);
  }
};

__device__ __forceinline__ Welford welford_merge(Welford a, Welford b) {
  if (b.n == 0.f) return a;  // also keeps d * d * 0 from turning inf into NaN for huge means
  if (a.n == 0.f) return b;
  const float n = a.n + b.n;
  const float d = b.mean - a.mean, wb = b.n / n;
  return {n, a.mean + d * wb, a.m2 + b.m2 + d * d * a.n * wb};
}

__device__ __forceinline__ Welford warp_welford(Welford a) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    Welford b{__shfl_xor_sync(kFullMask, a.n, off), __shfl_xor_sync(kFullMask, a.mean, off),
              __shfl_xor_sync(kFullMask, a.m2, off)};
    a = welford_merge(a, b);
  }
  // xor-merging can round differently per lane: use lane 0's result everywhere.
  return {__shfl_sync(kFullMask, a.n, 0), __shfl_sync(kFullMask, a.mean, 0), __shfl_sync(kFullMask, a.m2, 0)};
}

__device__ __forceinline__ Welford row_group_welford(Welford a) {
  a = warp_welford(a);
  if (blockDim.x <= 32) return a;
  __shared__ Welford partial[32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  if (lane == 0) partial[warp] = a;
  __syncthreads();
  Welford r{0.f, 0.f, 0.f};
  if (lane < warps) r = partial[lane];
  r = warp_welford(r);
  __syncthreads();
  return r;
}

}  // namespace bigmodel
