// Tensor-core and async-copy primitives for sm_80+ (inline PTX), with their exact register layouts.
//
// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}: D (16x8, fp32) += A (16x16) * B (16x8), one warp.
// With lane = 0..31, g = lane / 4 ("groupID"), t = lane % 4 ("threadID_in_group"), each uint32_t holding two
// 16-bit elements (the lower-indexed one in the low 16 bits), every lane holds (PTX ISA, "Matrix Fragments for
// mma.m16n8k16 with floating point type"):
//   A: a[0] = A[g][2t, 2t+1]      a[1] = A[g+8][2t, 2t+1]      a[2] = A[g][2t+8, 2t+9]    a[3] = A[g+8][2t+8, 2t+9]
//   B: b0   = B[2t, 2t+1][g]      b1   = B[2t+8, 2t+9][g]
//   C: c[0] = C[g][2t]  c[1] = C[g][2t+1]  c[2] = C[g+8][2t]  c[3] = C[g+8][2t+1]
// Two C tiles side by side (columns 0-7 in c, 8-15 in c') are therefore, packed pairwise, the A fragment of
// the 16x16 matrix they form: a = {pack(c[0], c[1]), pack(c[2], c[3]), pack(c'[0], c'[1]), pack(c'[2], c'[3])}.
//
// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lanes 8i..8i+7 give the addresses of the 8 rows (16 bytes
// each, 16-byte aligned) of matrix i; register r[i] of every lane receives matrix i's elements
//   (row g, columns 2t, 2t+1)                  without .trans
//   (rows 2t, 2t+1, column g) of the stored matrix   with .trans
// which is exactly the A / B layout above when the four matrices are chosen as documented at each call site.
#ifndef BIGMODEL_COMMON_MMA_CUH_
#define BIGMODEL_COMMON_MMA_CUH_

#include <cstdint>
#include <cstring>

#include "common/dtype.h"

namespace bigmodel {

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// The kernel's dynamic shared memory (16-byte aligned).
__device__ __forceinline__ char* dynamic_smem() {
  extern __shared__ __align__(16) char bigmodel_dynamic_smem[];
  return bigmodel_dynamic_smem;
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(smem_row)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(smem_row)));
}

// d += A * B (fp32 accumulate), T = __half or __nv_bfloat16.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                         uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats rounded to T and packed: `lo` in the low 16 bits (the lower column of a fragment pair).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);

template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  uint32_t u;
  memcpy(&u, &h, sizeof(u));
  return u;
}

template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  uint32_t u;
  memcpy(&u, &h, sizeof(u));
  return u;
}

// 16-byte global -> shared copy, completed by cp_async_wait (both addresses 16-byte aligned).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(smem)),
               "l"(__cvta_generic_to_global(gmem)));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

}  // namespace bigmodel

#endif  // BIGMODEL_COMMON_MMA_CUH_
