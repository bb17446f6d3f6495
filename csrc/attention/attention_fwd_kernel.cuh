// FlashAttention-2-style forward: o = softmax(scale * q k^T + mask) v and lse = log(sum exp(...)) per row,
// O(L) memory. Templated on the element type T (__half / __nv_bfloat16), head dim D (64 / 128) and causal.
//
// Block = 128 threads (4 warps) = 64 query rows of one (batch, query head); warp w owns rows 16w .. 16w + 15.
// Shared memory (padded rows, see attention_common.cuh): Q 64 x D, K 64 x D, V 64 x D
//   = 27 KB (D = 64) / 51 KB (D = 128, above the 48 KB default: the launcher raises the limit).
// Per block:
//   1. Q tile -> registers (A fragments qf[D / 16][4], kept for the whole loop).
//   2. For each key tile of 64 (causal: only up to the diagonal, later tiles are fully masked and skipped):
//        S = Q K^T (fp32 C fragments s[8][4], 16 x 64 per warp), scaled by scale * log2(e), masked (-inf) where
//        the key is past len_k, padded (key_padding_mask false) or after the query (causal);
//        online softmax per row in registers (each row lives in one quad: quad_max / quad_sum):
//          m_new = max(m, rowmax(S)); alpha = exp2(m - m_new); P = exp2(S - m_new); l = l * alpha + rowsum(P);
//          O = O * alpha + P V  (P converted in registers from C fragments to A fragments, see acc_to_a).
//        A row with every key masked so far has m = -inf; it then uses 0 as its reference (so exp2 never
//        sees -inf - -inf = NaN): P = exp2(-inf) = 0, alpha = exp2(-inf) = 0, l and O stay 0.
//      Pipelining with single K / V buffers: V(j) is fetched (cp.async) while S(j) and the softmax run, K(j+1)
//      while P V runs.
//   3. o = O / l (0 where l = 0: fully masked row), lse = (m + log2 l) * ln 2 (+inf where l = 0); O is staged in
//      the warp's own rows of the Q tile and written with 16-byte stores.
#pragma once

#include "attention/attention_common.cuh"

namespace bigmodel {
namespace attn {

template <int D>
struct FwdConfig {
  static constexpr int kBlockM = 64, kBlockN = 64;
  static constexpr int kStride = smem_stride<D>();
  static constexpr int kSmemBytes = (kBlockM + 2 * kBlockN) * kStride * 2;  // 16-bit elements
  static dim3 grid(const AttentionParams& p) {
    return dim3(static_cast<unsigned>(ceil_div(p.len_q, kBlockM)), static_cast<unsigned>(p.heads_q),
                static_cast<unsigned>(p.batch));
  }
};

template <typename T, int D, bool kCausal>
__global__ void __launch_bounds__(kThreads) attention_fwd_kernel(const AttentionParams p) {
  using Cfg = FwdConfig<D>;
  constexpr int BM = Cfg::kBlockM, BN = Cfg::kBlockN, S = Cfg::kStride;
  static_assert(BM == 16 * kWarps, "one 16-row slice per warp");

  T* sQ = reinterpret_cast<T*>(dynamic_smem());
  T* sK = sQ + BM * S;
  T* sV = sK + BN * S;

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;
  // Causal blocks near the end of the sequence have the most key tiles: schedule them first.
  const int m_block = kCausal ? static_cast<int>(gridDim.x - 1 - blockIdx.x) : static_cast<int>(blockIdx.x);
  const int m0 = m_block * BM;
  const int h = blockIdx.y, b = blockIdx.z;
  const int hk = h / (p.heads_q / p.heads_kv);

  const T* q = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1];
  const T* k = static_cast<const T*>(p.k) + b * p.k_stride[0] + hk * p.k_stride[1];
  const T* v = static_cast<const T*>(p.v) + b * p.v_stride[0] + hk * p.v_stride[1];
  const bool* kpm = p.kpm ? p.kpm + b * p.kpm_stride_b : nullptr;

  // Keys [0, n_end) can be visible to some row of this block.
  const int n_end = kCausal ? imin(p.len_k, m0 + BM) : p.len_k;
  const int n_blocks = ceil_div(n_end, BN);

  load_tile<T, BM, D>(sQ, q, p.q_stride[2], m0, p.len_q, p.vec_loads);
  cp_async_commit();
  if (n_blocks > 0) load_tile<T, BN, D>(sK, k, p.k_stride[2], 0, p.len_k, p.vec_loads);
  cp_async_commit();
  cp_async_wait<1>();  // Q landed (K may still be in flight)
  __syncthreads();

  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) load_a<S>(qf[kk], sQ + warp * 16 * S, kk, lane);

  float acc_o[D / 8][4];
  zero(acc_o);
  float m_run[2] = {-INFINITY, -INFINITY};  // running max of rows g and g + 8, in log2 units
  float l_run[2] = {0.f, 0.f};              // this lane's part of the running sum of exp2(S - m)
  const int row_g = m0 + warp * 16 + g;     // query index of fragment row g (row g + 8 is row_g + 8)

  for (int nb = 0; nb < n_blocks; ++nb) {
    const int n0 = nb * BN;
    load_tile<T, BN, D>(sV, v, p.v_stride[2], n0, p.len_k, p.vec_loads);
    cp_async_commit();
    cp_async_wait<1>();  // K(nb) landed (V(nb) may still be in flight)
    __syncthreads();

    float s[BN / 8][4];
    zero(s);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) mma_bt<T, BN, S>(s, qf[kk], sK, kk, lane);

#pragma unroll
    for (int j = 0; j < BN / 8; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) s[j][i] *= p.scale_log2;

    const bool need_mask = n0 + BN > p.len_k || kpm != nullptr || (kCausal && n0 + BN - 1 > m0);
    if (need_mask) {
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int col = n0 + j * 8 + 2 * t + e;
          const bool key_ok = col < p.len_k && (kpm == nullptr || kpm[static_cast<int64_t>(col) * p.kpm_stride_k]);
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const bool ok = key_ok && (!kCausal || col <= row_g + 8 * r);
            if (!ok) s[j][2 * r + e] = -INFINITY;
          }
        }
      }
    }

    // Online softmax, row by row (r = 0: row g, r = 1: row g + 8).
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
      mx = quad_max(mx);
      const float m_new = fmaxf(m_run[r], mx);
      const float m_ref = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = exp2f(m_run[r] - m_ref);
      m_run[r] = m_new;
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float pv = exp2f(s[j][2 * r + e] - m_ref);
          s[j][2 * r + e] = pv;
          sum += pv;
        }
      }
      l_run[r] = l_run[r] * alpha + sum;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        acc_o[j][2 * r] *= alpha;
        acc_o[j][2 * r + 1] *= alpha;
      }
    }

    cp_async_wait<0>();  // V(nb) landed
    __syncthreads();     // ... for every thread; and every warp is done reading sK
    if (nb + 1 < n_blocks) load_tile<T, BN, D>(sK, k, p.k_stride[2], n0 + BN, p.len_k, p.vec_loads);
    cp_async_commit();

    // O += P V: P (16 x 64) as A fragments straight from the registers, V as B via ldmatrix.trans.
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t a[4];
      acc_to_a<T>(a, s, kk);
      mma_b<T, D, S>(acc_o, a, sV, kk, lane);
    }
    __syncthreads();  // every warp is done reading sV before the next V tile is fetched into it
  }
  cp_async_wait<0>();  // nothing is in flight (also when n_blocks == 0)

  float inv_l[2], lse[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float l = quad_sum(l_run[r]);
    // l >= 1 whenever the row saw a key (its maximum contributes exp2(0)); l == 0 only for a fully masked row.
    inv_l[r] = l > 0.f ? 1.f / l : 0.f;
    lse[r] = l > 0.f ? m_run[r] * kLn2 + logf(l) : INFINITY;
  }

  // The warp's own 16 rows of sQ are free (Q lives in registers) and no other warp reads them.
  T* stage = sQ + warp * 16 * S;
  stage_acc<T, D>(stage, acc_o, inv_l[0], inv_l[1], lane);
  __syncwarp();
  const int64_t bh = static_cast<int64_t>(b) * p.heads_q + h;
  T* o = static_cast<T*>(p.o) + bh * p.len_q * D;
  store_tile16<T, D>(o, stage, m0 + warp * 16, p.len_q, lane);
  if (t == 0) {
#pragma unroll
    for (int r = 0; r < 2; ++r)
      if (row_g + 8 * r < p.len_q) p.lse[bh * p.len_q + row_g + 8 * r] = lse[r];
  }
}

#if defined(__CUDACC__)
template <typename T, int D, bool kCausal>
cudaError_t launch_attention_fwd(const AttentionParams& p, cudaStream_t stream) {
  using Cfg = FwdConfig<D>;
  auto kernel = attention_fwd_kernel<T, D, kCausal>;
  if (Cfg::kSmemBytes > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
    if (err != cudaSuccess) return err;
  }
  kernel<<<Cfg::grid(p), kThreads, Cfg::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

template <int D>
cudaError_t attention_fwd_dispatch(const AttentionParams& p, cudaStream_t stream) {
  if (p.head_dim != D) return cudaErrorInvalidValue;
  if (p.dtype == DType::kFloat16)
    return p.causal ? launch_attention_fwd<__half, D, true>(p, stream)
                    : launch_attention_fwd<__half, D, false>(p, stream);
  if (p.dtype == DType::kBFloat16)
    return p.causal ? launch_attention_fwd<__nv_bfloat16, D, true>(p, stream)
                    : launch_attention_fwd<__nv_bfloat16, D, false>(p, stream);
  return cudaErrorInvalidValue;
}
#endif

}  // namespace attn
}  // namespace bigmodel
