// Host emulation of the CUDA execution model, just enough to run the attention kernels' source on a CPU:
// one std::thread per CUDA thread, std::barrier for __syncthreads / warp collectives, and the PTX primitives
// of common/mma.cuh (ldmatrix, mma.m16n8k16, cp.async groups) implemented from the PTX ISA fragment tables.
// cp.async copies are deferred until the cp.async.wait_group that must complete them (latest legal time), so a
// missing wait reads stale shared memory (which is poisoned with NaN bytes before every block).
#pragma once
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_types.h>

#include <barrier>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <thread>
#include <vector>

#undef __device__
#undef __global__
#undef __forceinline__
#undef __host__
#undef __launch_bounds__
#define __device__
#define __global__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

namespace emu {

struct Warp {
  std::barrier<>* bar;
  uint32_t frag[32][6];
  const unsigned char* ptr[32];
  float xf[32];
};
struct Block {
  std::barrier<>* bar;
  Warp warps[4];
};
struct Copy {
  void* dst;
  const void* src;
};

inline thread_local uint3 tl_threadIdx;
inline thread_local uint3 tl_blockIdx;
inline dim3 g_gridDim, g_blockDim;
inline thread_local Block* tl_block;
inline thread_local Warp* tl_warp;
inline thread_local std::deque<std::vector<Copy>> tl_groups;
inline thread_local std::vector<Copy> tl_pending;
alignas(16) inline unsigned char g_smem[200 * 1024];
inline int g_smem_bytes = 0;
inline long g_collectives = 0;

inline void fail(const char* what) {
  fprintf(stderr, "EMU FAILURE: %s\n", what);
  abort();
}
inline bool in_smem(const void* p, int bytes) {
  auto* c = static_cast<const unsigned char*>(p);
  return c >= g_smem && c + bytes <= g_smem + g_smem_bytes;
}

}  // namespace emu

#define threadIdx (emu::tl_threadIdx)
#define blockIdx (emu::tl_blockIdx)
#define gridDim (emu::g_gridDim)
#define blockDim (emu::g_blockDim)

inline void __syncthreads() { emu::tl_block->bar->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::tl_warp->bar->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned mask, float v, int m) {
  if (mask != 0xffffffffu) emu::fail("partial shuffle mask");
  emu::Warp* w = emu::tl_warp;
  const int lane = threadIdx.x % 32;
  w->xf[lane] = v;
  w->bar->arrive_and_wait();
  const float r = w->xf[lane ^ m];
  w->bar->arrive_and_wait();
  return r;
}

// tanh.approx.f32 (the softcap's tanh, attention_common.cuh): tanh with a deterministic relative error of up to
// 1.2e-5 (a bit above the instruction's measured 1.1e-5), so that the tolerances see an error of that size.
namespace emu {
inline float tanh_approx(float x) {
  uint32_t b;
  memcpy(&b, &x, 4);
  b *= 2654435761u;
  const float rel = (static_cast<float>(b >> 8) * (2.f / 16777216.f) - 1.f) * 1.2e-5f;
  return fmaxf(-1.f, fminf(1.f, std::tanh(x) * (1.f + rel)));
}
}  // namespace emu
#define BIGMODEL_EMU_TANH(x) emu::tanh_approx(x)

// ------------------------------------------------------------------ replacement for common/mma.cuh
#define BIGMODEL_COMMON_MMA_CUH_
#include "common/dtype.h"

namespace bigmodel {

inline char* dynamic_smem() { return reinterpret_cast<char*>(emu::g_smem); }

namespace emu_detail {
inline void ldmatrix(uint32_t (&r)[4], const void* p, bool trans) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) emu::fail("ldmatrix row address not 16-byte aligned");
  if (!emu::in_smem(p, 16)) emu::fail("ldmatrix row outside dynamic smem");
  emu::Warp* w = emu::tl_warp;
  const int lane = threadIdx.x % 32;
  w->ptr[lane] = static_cast<const unsigned char*>(p);
  w->bar->arrive_and_wait();
  for (int i = 0; i < 4; ++i) {
    if (!trans) {
      // matrix i's row (lane / 4), elements 2 (lane % 4), +1
      memcpy(&r[i], w->ptr[i * 8 + lane / 4] + (lane % 4) * 4, 4);
    } else {
      // stored rows 2 (lane % 4) and +1, column lane / 4
      uint16_t lo, hi;
      memcpy(&lo, w->ptr[i * 8 + 2 * (lane % 4)] + (lane / 4) * 2, 2);
      memcpy(&hi, w->ptr[i * 8 + 2 * (lane % 4) + 1] + (lane / 4) * 2, 2);
      r[i] = uint32_t(lo) | (uint32_t(hi) << 16);
    }
  }
  ++emu::g_collectives;
  w->bar->arrive_and_wait();
}

template <typename T>
inline float bits_to_float(uint16_t h) {
  T x;
  memcpy(&x, &h, 2);
  if constexpr (std::is_same_v<T, __half>) return __half2float(x);
  else return __bfloat162float(x);
}
}  // namespace emu_detail

inline void ldmatrix_x4(uint32_t (&r)[4], const void* p) { emu_detail::ldmatrix(r, p, false); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) { emu_detail::ldmatrix(r, p, true); }

template <typename T>
inline void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  emu::Warp* w = emu::tl_warp;
  const int lane = threadIdx.x % 32;
  for (int i = 0; i < 4; ++i) w->frag[lane][i] = a[i];
  w->frag[lane][4] = b0;
  w->frag[lane][5] = b1;
  w->bar->arrive_and_wait();
  // PTX ISA, mma.m16n8k16 (f16/bf16): A reg j of lane: row g + 8 (j & 1), cols 2t + 8 (j >> 1) + {0, 1};
  // B reg j: rows 2t + 8 j + {0, 1}, col g; C: c[i] at row g + 8 (i >> 1), col 2t + (i & 1).
  auto A = [&](int row, int col) {
    const int l = (row % 8) * 4 + (col % 8) / 2, reg = (row >= 8 ? 1 : 0) + (col >= 8 ? 2 : 0);
    const uint32_t u = w->frag[l][reg];
    return emu_detail::bits_to_float<T>(static_cast<uint16_t>((col % 2) ? (u >> 16) : (u & 0xffffu)));
  };
  auto B = [&](int k, int n) {
    const int l = n * 4 + (k % 8) / 2, reg = 4 + (k >= 8 ? 1 : 0);
    const uint32_t u = w->frag[l][reg];
    return emu_detail::bits_to_float<T>(static_cast<uint16_t>((k % 2) ? (u >> 16) : (u & 0xffffu)));
  };
  const int g = lane / 4, t = lane % 4;
  float out[4];
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
    float acc = d[i];
    for (int k = 0; k < 16; ++k) acc += A(row, k) * B(k, col);
    out[i] = acc;
  }
  ++emu::g_collectives;
  w->bar->arrive_and_wait();
  for (int i = 0; i < 4; ++i) d[i] = out[i];
}

template <typename T>
inline uint32_t pack2(float lo, float hi);
template <>
inline uint32_t pack2<__half>(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  uint32_t u;
  memcpy(&u, &h, 4);
  return u;
}
template <>
inline uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  uint32_t u;
  memcpy(&u, &h, 4);
  return u;
}

inline void cp_async_16(void* smem, const void* gmem) {
  if (reinterpret_cast<uintptr_t>(smem) % 16 || reinterpret_cast<uintptr_t>(gmem) % 16)
    emu::fail("cp.async 16 with a misaligned address");
  if (!emu::in_smem(smem, 16)) emu::fail("cp.async destination outside dynamic smem");
  emu::tl_pending.push_back({smem, gmem});
}
inline void cp_async_commit() {
  emu::tl_groups.push_back(std::move(emu::tl_pending));
  emu::tl_pending.clear();
}
template <int N>
inline void cp_async_wait() {
  while (static_cast<int>(emu::tl_groups.size()) > N) {
    for (const auto& c : emu::tl_groups.front()) memcpy(c.dst, c.src, 16);
    emu::tl_groups.pop_front();
  }
}

}  // namespace bigmodel

namespace emu {

// Runs body() as a grid of blocks of 128 threads, one block at a time.
template <typename F>
void launch(dim3 grid, int smem_bytes, F body) {
  if (smem_bytes > static_cast<int>(sizeof(g_smem))) fail("smem too large");
  g_gridDim = grid;
  g_blockDim = dim3(128, 1, 1);
  g_smem_bytes = smem_bytes;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        memset(g_smem, 0xff, sizeof(g_smem));  // NaN in fp16 and bf16
        std::barrier<> block_bar(128);
        std::barrier<> wb0(32), wb1(32), wb2(32), wb3(32);
        Block blk;
        blk.bar = &block_bar;
        blk.warps[0].bar = &wb0;
        blk.warps[1].bar = &wb1;
        blk.warps[2].bar = &wb2;
        blk.warps[3].bar = &wb3;
        std::vector<std::thread> th;
        for (unsigned tid = 0; tid < 128; ++tid)
          th.emplace_back([&, tid] {
            tl_threadIdx = make_uint3(tid, 0, 0);
            tl_blockIdx = make_uint3(x, y, z);
            tl_block = &blk;
            tl_warp = &blk.warps[tid / 32];
            tl_groups.clear();
            tl_pending.clear();
            body();
            if (!tl_pending.empty() || !tl_groups.empty()) fail("cp.async copies outstanding at kernel exit");
          });
        for (auto& t : th) t.join();
      }
}

}  // namespace emu
