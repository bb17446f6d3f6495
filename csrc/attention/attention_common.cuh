// Pieces shared by the attention kernels: tile loads into padded shared memory, warp-level 16-row GEMM steps
// on mma.sync.m16n8k16 (layouts in common/mma.cuh), quad reductions, and output staging.
//
// Conventions used by every kernel here:
//   * 128 threads = 4 warps per block; every warp owns 16 rows of the block's "M" dimension (the forward: 32, as
//     two 16-row m-tiles).
//   * lane = threadIdx.x % 32, g = lane / 4, t = lane % 4. In a 16 x N fp32 accumulator held as C fragments
//     acc[N / 8][4], this lane owns rows g (acc[j][0..1]) and g + 8 (acc[j][2..3]) at columns 8j + 2t, 8j + 2t + 1.
//     A row's N values are spread over the 4 lanes of one quad (lanes 4g .. 4g+3): per-row reductions are a
//     thread-local reduction followed by __shfl_xor_sync over lane bits 0 and 1 (quad_max / quad_sum).
//   * Shared-memory tiles are row-major with a row stride of D + 8 elements (16 bytes of padding): the 8 row
//     addresses of one ldmatrix (8 consecutive rows, same column) then fall into 8 different 16-byte bank
//     groups, so ldmatrix and the fragment stores below are free of bank conflicts.
#pragma once

#include <cmath>
#include <cstdint>

#include "attention/attention.h"
#include "common/mma.cuh"
#include "common/vec.cuh"

namespace bigmodel {
namespace attn {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }
__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }

// tanh for the logit softcap: the MUFU tanh.approx.f32 on the device (sm_75+; one instruction, as FlashAttention's
// softcap; maximum relative error about 1.1e-5 by published exhaustive measurements, i.e. far below the 16-bit
// rounding of the scores' inputs). The host emulator substitutes its own model of it (BIGMODEL_EMU_TANH).
__device__ __forceinline__ float tanh_approx(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#elif defined(BIGMODEL_EMU_TANH)
  return BIGMODEL_EMU_TANH(x);
#else
  return tanhf(x);
#endif
}

// Window (see AttentionParams; the kWindow kernels only): the tiles of BN keys that hold a key visible to some
// query in [r0, r1], among keys [0, n_cap): tiles [nb_begin, nb_end). int64, as a side may be kWindowUnbounded.
template <int BN>
__device__ __forceinline__ void key_tiles(const AttentionParams& p, int r0, int r1, int n_cap, int& nb_begin,
                                          int& nb_end) {
  const int64_t lo = r0 - static_cast<int64_t>(p.window_left) > 0 ? r0 - static_cast<int64_t>(p.window_left) : 0;
  const int64_t hi_w = r1 + static_cast<int64_t>(p.window_right) + 1;
  const int64_t hi = hi_w < n_cap ? hi_w : n_cap;
  nb_begin = static_cast<int>(lo / BN);
  nb_end = hi > lo ? static_cast<int>((hi + BN - 1) / BN) : nb_begin;
}

// The tiles of BM queries [m_begin, m_end) that hold a query seeing some key in [n0, n1].
template <int BM>
__device__ __forceinline__ void query_tiles(const AttentionParams& p, int n0, int n1, int& m_begin, int& m_end) {
  int64_t lo = n0 - static_cast<int64_t>(p.window_right);
  if (lo < 0) lo = 0;
  const int64_t hi_w = n1 + static_cast<int64_t>(p.window_left) + 1;
  const int64_t hi = hi_w < p.len_q ? hi_w : p.len_q;
  m_begin = static_cast<int>(lo / BM);
  m_end = hi > lo ? static_cast<int>((hi + BM - 1) / BM) : m_begin;
}

// True when key `key` is inside query `row`'s window (differences of indices < 2^31: no overflow).
__device__ __forceinline__ bool in_window(const AttentionParams& p, int row, int key) {
  return key - row <= p.window_right && row - key <= p.window_left;
}
// True when some (query in [r0, r1], key in [n0, n1]) pair is outside the window: the tile needs the window mask.
__device__ __forceinline__ bool window_cuts(const AttentionParams& p, int r0, int r1, int n0, int n1) {
  return n1 - r0 > p.window_right || r1 - n0 > p.window_left;
}

// True when no pair of the tile is inside the window (a warp skips the tile).
__device__ __forceinline__ bool window_excludes(const AttentionParams& p, int r0, int r1, int n0, int n1) {
  return n0 - r1 > p.window_right || r0 - n1 > p.window_left;
}

// Row stride (elements) of a shared-memory tile with D columns.
template <int D>
constexpr int smem_stride() {
  return D + 8;
}

// Copies rows [row0, row0 + ROWS) of a (len, D) matrix at `gmem` (row stride `ld` elements, unit column
// stride) into the shared tile `smem` (ROWS x D, stride D + 8). Rows at or past `len` are zero-filled, so that
// padded rows hold finite values (0 * garbage could be NaN in a tensor-core product).
// vec: 16-byte cp.async copies (completed by cp_async_wait); otherwise element loads stored synchronously.
template <typename T, int ROWS, int D>
__device__ __forceinline__ void load_tile(T* smem, const T* gmem, int64_t ld, int row0, int len, bool vec) {
  constexpr int kChunksPerRow = D / 8;  // 8 elements = 16 bytes
  constexpr int kChunks = ROWS * kChunksPerRow;
  static_assert(kChunks % kThreads == 0, "tile must split evenly over the block");
#pragma unroll
  for (int i = 0; i < kChunks / kThreads; ++i) {
    const int c = static_cast<int>(threadIdx.x) + i * kThreads;
    const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
    T* dst = smem + r * smem_stride<D>() + col;
    if (row0 + r < len) {
      const T* src = gmem + static_cast<int64_t>(row0 + r) * ld + col;
      if (vec) {
        cp_async_16(dst, src);
      } else {
        Pack<T, 8> pk;
#pragma unroll
        for (int j = 0; j < 8; ++j) pk.v[j] = src[j];
        *reinterpret_cast<Pack<T, 8>*>(dst) = pk;
      }
    } else {
      *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
    }
  }
}

// A fragment (16 x 16, k step kk) of the row-major shared tile whose row 0 is at `tile`.
// ldmatrix matrices: 0 = rows 0-7 / cols 0-7 (a[0]), 1 = rows 8-15 / cols 0-7 (a[1]),
// 2 = rows 0-7 / cols 8-15 (a[2]), 3 = rows 8-15 / cols 8-15 (a[3]); lane l gives row l % 16, col 8 * (l / 16).
template <int kStride, typename T>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* tile, int kk, int lane) {
  ldmatrix_x4(a, tile + (lane % 16) * kStride + kk * 16 + (lane / 16) * 8);
}

// The A fragment of k step kk of a 16 x N tile held as fp32 C fragments c[N / 8][4] (see mma.cuh): columns
// 16kk .. 16kk + 7 are C tile 2kk, columns 16kk + 8 .. 16kk + 15 are C tile 2kk + 1.
template <typename T, int NT>
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&c)[NT][4], int kk) {
  a[0] = pack2<T>(c[2 * kk][0], c[2 * kk][1]);
  a[1] = pack2<T>(c[2 * kk][2], c[2 * kk][3]);
  a[2] = pack2<T>(c[2 * kk + 1][0], c[2 * kk + 1][1]);
  a[3] = pack2<T>(c[2 * kk + 1][2], c[2 * kk + 1][3]);
}

// acc (16 x N) += A (16 x 16, k step kk) * B, with B[k][n] = Bs[n][k]: the shared tile Bs holds B transposed
// (its rows are the N dimension), e.g. S = Q K^T with Bs = K. MT m-tiles (16 rows each, A fragments a[MT]) share
// every B fragment: one ldmatrix feeds 2 * MT MMAs (FlashAttention-2's several rows per warp).
// Per pair of n-tiles (2np, 2np + 1) one ldmatrix (no .trans): matrices 0 = n 0-7 / k 0-7 (b0 of n-tile 2np),
// 1 = n 0-7 / k 8-15 (b1 of 2np), 2 = n 8-15 / k 0-7 (b0 of 2np+1), 3 = n 8-15 / k 8-15 (b1 of 2np+1);
// lane l gives row n = 16np + 8 (l / 16) + l % 8, column k = 16kk + 8 ((l / 8) % 2).
template <typename T, int MT, int N, int kStride>
__device__ __forceinline__ void mma_bt_rows(float (&acc)[MT][N / 8][4], const uint32_t (&a)[MT][4], const T* Bs,
                                            int kk, int lane) {
#pragma unroll
  for (int np = 0; np < N / 16; ++np) {
    uint32_t b[4];
    ldmatrix_x4(b, Bs + (np * 16 + (lane / 16) * 8 + lane % 8) * kStride + kk * 16 + ((lane / 8) % 2) * 8);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      mma_16816<T>(acc[mt][2 * np], a[mt], b[0], b[1]);
      mma_16816<T>(acc[mt][2 * np + 1], a[mt], b[2], b[3]);
    }
  }
}

// acc (16 x N) += A (16 x 16, k step kk) * B, with B[k][n] = Bs[k][n]: the shared tile Bs holds B as is (its
// rows are the K dimension), e.g. O += P V with Bs = V. MT m-tiles share every B fragment as above.
// Per pair of n-tiles (2np, 2np + 1) one ldmatrix.trans: matrices 0 = k 0-7 / n 0-7 (b0 of n-tile 2np),
// 1 = k 8-15 / n 0-7 (b1 of 2np), 2 = k 0-7 / n 8-15 (b0 of 2np+1), 3 = k 8-15 / n 8-15 (b1 of 2np+1);
// lane l gives row k = 16kk + l % 16, column n = 16np + 8 (l / 16).
template <typename T, int MT, int N, int kStride>
__device__ __forceinline__ void mma_b_rows(float (&acc)[MT][N / 8][4], const uint32_t (&a)[MT][4], const T* Bs,
                                           int kk, int lane) {
#pragma unroll
  for (int np = 0; np < N / 16; ++np) {
    uint32_t b[4];
    ldmatrix_x4_trans(b, Bs + (kk * 16 + lane % 16) * kStride + np * 16 + (lane / 16) * 8);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      mma_16816<T>(acc[mt][2 * np], a[mt], b[0], b[1]);
      mma_16816<T>(acc[mt][2 * np + 1], a[mt], b[2], b[3]);
    }
  }
}

// The one-m-tile forms (the backward's 16 rows per warp).
template <typename T, int N, int kStride>
__device__ __forceinline__ void mma_bt(float (&acc)[N / 8][4], const uint32_t (&a)[4], const T* Bs, int kk,
                                       int lane) {
  mma_bt_rows<T, 1, N, kStride>(reinterpret_cast<float(&)[1][N / 8][4]>(acc),
                                reinterpret_cast<const uint32_t(&)[1][4]>(a), Bs, kk, lane);
}

template <typename T, int N, int kStride>
__device__ __forceinline__ void mma_b(float (&acc)[N / 8][4], const uint32_t (&a)[4], const T* Bs, int kk,
                                      int lane) {
  mma_b_rows<T, 1, N, kStride>(reinterpret_cast<float(&)[1][N / 8][4]>(acc),
                               reinterpret_cast<const uint32_t(&)[1][4]>(a), Bs, kk, lane);
}

template <int N>
__device__ __forceinline__ void zero(float (&acc)[N][4]) {
#pragma unroll
  for (int j = 0; j < N; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[j][i] = 0.f;
}

// Max / sum over the 4 lanes of a quad (the lanes that share a fragment row).
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Writes a warp's 16 x D fp32 accumulator acc[D / 8][4] (C fragments), rows g scaled by s0 and rows g + 8 by
// s1, as T into the shared tile `tile` (rows 0..15, stride D + 8).
template <typename T, int D>
__device__ __forceinline__ void stage_acc(T* tile, const float (&acc)[D / 8][4], float s0, float s1, int lane) {
  constexpr int S = smem_stride<D>();
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int j = 0; j < D / 8; ++j) {
    *reinterpret_cast<uint32_t*>(tile + g * S + j * 8 + 2 * t) = pack2<T>(acc[j][0] * s0, acc[j][1] * s0);
    *reinterpret_cast<uint32_t*>(tile + (g + 8) * S + j * 8 + 2 * t) = pack2<T>(acc[j][2] * s1, acc[j][3] * s1);
  }
}

// Copies the warp's staged 16 x D tile (rows row0 .. row0 + 15 of a contiguous (len, D) matrix at `gmem`) out
// with 16-byte stores, skipping rows at or past `len`. Call after __syncwarp() following stage_acc.
template <typename T, int D>
__device__ __forceinline__ void store_tile16(T* gmem, const T* tile, int row0, int len, int lane) {
  constexpr int S = smem_stride<D>();
  constexpr int kChunksPerRow = D / 8;
#pragma unroll
  for (int i = 0; i < 16 * kChunksPerRow / 32; ++i) {
    const int c = lane + 32 * i;
    const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
    if (row0 + r < len)
      *reinterpret_cast<uint4*>(gmem + static_cast<int64_t>(row0 + r) * D + col) =
          *reinterpret_cast<const uint4*>(tile + r * S + col);
  }
}

}  // namespace attn
}  // namespace bigmodel
