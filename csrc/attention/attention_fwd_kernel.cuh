// FlashAttention-2-style forward: o = softmax(scale * q k^T + mask) v and lse = log(sum exp(...)) per row,
// O(L) memory. Templated on the element type T (__half / __nv_bfloat16), head dim D (64 / 128), the mask mode
// (kCausal, or kWindow: a sliding window with runtime bounds p.window_left / right, causal folded in as right <= 0)
// and softcap (kSoftcap: scores c * tanh(scale * q.k / c), before the masks). Template flags, not runtime ones:
// the kernels without them compile to exactly the code they were before windows and softcaps existed (these
// kernels sit at 245-255 registers; a runtime window alone pushed the dense ones over, measured).
//
// Block = 128 threads (4 warps) = 128 query rows of one (batch, query head); warp w owns rows 32w .. 32w + 31 as
// two 16-row m-tiles, so every K / V fragment one ldmatrix brings into registers feeds 4 MMAs (2 n-tiles x 2
// m-tiles) instead of 2: half the shared-memory reads per FLOP of 16 rows per warp (NOTES.md has the figures).
// Shared memory (padded rows, see attention_common.cuh): Q 128 x D, then two stages of (K, V), BN x D each,
//   BN = 64 (D = 64): 54 KB; BN = 32 (D = 128): 68 KB (above the 48 KB default: the launcher raises the limit;
//   under the 99 KB opt-in limit of sm_86 / sm_89 too).
// Per block:
//   1. Q tile -> shared memory; D = 64: -> registers (A fragments qf[2][D / 16][4], kept for the whole loop);
//      D = 128 re-reads its fragments from shared memory per key tile (registers go to the 2 x 16 x 128 fp32 O).
//   2. Key tiles, double-buffered: while tile j is computed from stage j % 2, cp.async brings tile j + 1 into the
//      other stage; one __syncthreads per tile (it both publishes tile j + 1 and retires tile j - 1's stage).
//      Causal: only tiles up to the block's diagonal are loaded, and a warp skips the tiles past its own last row.
//      Window: only the tiles that hold a key inside some row's window are loaded (the loop starts at nb_begin),
//      and a warp skips the tiles outside all of its rows' windows; tiles across a window edge are masked.
//      S = Q K^T (fp32 C fragments s[2][BN / 8][4]), scaled by scale * log2(e) (softcap: c log2(e) tanh(scale
//      S / c)), masked (-inf) where the key is past len_k, padded (key_padding_mask false), after the query
//      (causal) or outside the query's window;
//      online softmax per row in registers (each row lives in one quad: quad_max / quad_sum):
//        m_new = max(m, rowmax(S)); alpha = exp2(m - m_new); P = exp2(S - m_new); l = l * alpha + rowsum(P);
//        O = O * alpha + P V  (P converted in registers from C fragments to A fragments, see acc_to_a).
//      A row with every key masked so far has m = -inf; it then uses 0 as its reference (so exp2 never
//      sees -inf - -inf = NaN): P = exp2(-inf) = 0, alpha = exp2(-inf) = 0, l and O stay 0.
//   3. o = O / l (0 where l = 0: fully masked row), lse = (m + log2 l) * ln 2 (+inf where l = 0); O is staged in
//      the warp's own rows of the Q tile and written with 16-byte stores.
#pragma once

#include "attention/attention_common.cuh"

namespace bigmodel {
namespace attn {

template <int D>
struct FwdConfig {
  static constexpr int kMTiles = 2;  // 16-row m-tiles per warp
  static constexpr int kBlockM = kWarps * 16 * kMTiles, kBlockN = D <= 64 ? 64 : 32;
  static constexpr bool kQInRegisters = D <= 64;
  static constexpr int kStride = smem_stride<D>();
  static constexpr int kSmemBytes = (kBlockM + 2 * 2 * kBlockN) * kStride * 2;  // 16-bit elements
  static dim3 grid(const AttentionParams& p) {
    return dim3(static_cast<unsigned>(ceil_div(p.len_q, kBlockM)), static_cast<unsigned>(p.heads_q),
                static_cast<unsigned>(p.batch));
  }
};

template <typename T, int D, bool kCausal, bool kWindow, bool kSoftcap>
__global__ void __launch_bounds__(kThreads) attention_fwd_kernel(const AttentionParams p) {
  static_assert(!(kCausal && kWindow), "causal with a window is the window with right <= 0");
  using Cfg = FwdConfig<D>;
  constexpr int BM = Cfg::kBlockM, BN = Cfg::kBlockN, S = Cfg::kStride, MT = Cfg::kMTiles;
  constexpr int kQFrags = Cfg::kQInRegisters ? D / 16 : 1;

  T* sQ = reinterpret_cast<T*>(dynamic_smem());
  T* sKV = sQ + BM * S;  // stage s: K at sKV + 2 s BN S, V right after it
  auto stage_k = [&](int st) { return sKV + 2 * st * BN * S; };

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

  // Key tiles [nb_begin, nb_end) can hold a key visible to some row of this block (causal: keys < m0 + BM;
  // window: keys in some row's window). Tile nb lives in stage nb % 2 (also when the loop starts at nb_begin > 0).
  int nb_begin = 0, nb_end;
  if constexpr (kWindow) key_tiles<BN>(p, m0, m0 + BM - 1, p.len_k, nb_begin, nb_end);
  else nb_end = ceil_div(kCausal ? imin(p.len_k, m0 + BM) : p.len_k, BN);
  const int warp_row0 = m0 + warp * 16 * MT;  // this warp's first query row; its last is warp_row0 + 16 MT - 1
  const T* sQw = sQ + warp * 16 * MT * S;

  load_tile<T, BM, D>(sQ, q, p.q_stride[2], m0, p.len_q, p.vec_loads);
  if (nb_end > nb_begin) {
    load_tile<T, BN, D>(stage_k(nb_begin & 1), k, p.k_stride[2], nb_begin * BN, p.len_k, p.vec_loads);
    load_tile<T, BN, D>(stage_k(nb_begin & 1) + BN * S, v, p.v_stride[2], nb_begin * BN, p.len_k, p.vec_loads);
  }
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();

  uint32_t qf[MT][kQFrags][4];
  if constexpr (Cfg::kQInRegisters) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) load_a<S>(qf[mt][kk], sQw + mt * 16 * S, kk, lane);
  }

  float acc_o[MT][D / 8][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) zero(acc_o[mt]);
  float m_run[MT][2], l_run[MT][2];  // running max (log2 units) / this lane's part of the running sum, rows g, g + 8
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) m_run[mt][0] = m_run[mt][1] = -INFINITY, l_run[mt][0] = l_run[mt][1] = 0.f;

  for (int nb = nb_begin; nb < nb_end; ++nb) {
    const int n0 = nb * BN, st = nb & 1;
    // (window: also on the first tile, a no-op there, so that nb_begin need not stay in a register)
    if (kWindow || nb > 0) {
      cp_async_wait<0>();  // tile nb landed (this thread's copies) ...
      __syncthreads();     // ... every thread's; and every warp is done with tile nb - 1's stage
    }
    if (nb + 1 < nb_end) {
      load_tile<T, BN, D>(stage_k(st ^ 1), k, p.k_stride[2], n0 + BN, p.len_k, p.vec_loads);
      load_tile<T, BN, D>(stage_k(st ^ 1) + BN * S, v, p.v_stride[2], n0 + BN, p.len_k, p.vec_loads);
    }
    cp_async_commit();
    // Causal: keys past this warp's last row are masked for all of its rows; window: the tile is outside every
    // row's window (warp-uniform skips).
    if (kCausal && n0 > warp_row0 + 16 * MT - 1) continue;
    if (kWindow && window_excludes(p, warp_row0, warp_row0 + 16 * MT - 1, n0, n0 + BN - 1)) continue;
    const T* sK = stage_k(st);
    const T* sV = sK + BN * S;

    float s[MT][BN / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) zero(s[mt]);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        if constexpr (Cfg::kQInRegisters) {
#pragma unroll
          for (int i = 0; i < 4; ++i) a[mt][i] = qf[mt][kk][i];
        } else {
          load_a<S>(a[mt], sQw + mt * 16 * S, kk, lane);
        }
      }
      mma_bt_rows<T, MT, BN, S>(s, a, sK, kk, lane);
    }

    const bool need_mask = n0 + BN > p.len_k || kpm != nullptr || (kCausal && n0 + BN - 1 > warp_row0) ||
                           (kWindow && window_cuts(p, warp_row0, warp_row0 + 16 * MT - 1, n0, n0 + BN - 1));
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const int row_g = warp_row0 + mt * 16 + g;  // query index of fragment row g (row g + 8 is row_g + 8)
#pragma unroll
      for (int j = 0; j < BN / 8; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          if constexpr (kSoftcap) s[mt][j][i] = p.softcap_log2 * tanh_approx(s[mt][j][i] * p.softcap_mul);
          else s[mt][j][i] *= p.scale_log2;
        }
      if (need_mask) {
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int col = n0 + j * 8 + 2 * t + e;
            const bool key_ok =
                col < p.len_k && (kpm == nullptr || kpm[static_cast<int64_t>(col) * p.kpm_stride_k]);
#pragma unroll
            for (int r = 0; r < 2; ++r) {
              const bool ok =
                  key_ok && (!kCausal || col <= row_g + 8 * r) && (!kWindow || in_window(p, row_g + 8 * r, col));
              if (!ok) s[mt][j][2 * r + e] = -INFINITY;
            }
          }
        }
      }

      // Online softmax, row by row (r = 0: row g, r = 1: row g + 8).
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) mx = fmaxf(mx, fmaxf(s[mt][j][2 * r], s[mt][j][2 * r + 1]));
        mx = quad_max(mx);
        const float m_new = fmaxf(m_run[mt][r], mx);
        const float m_ref = m_new == -INFINITY ? 0.f : m_new;
        const float alpha = exp2f(m_run[mt][r] - m_ref);
        m_run[mt][r] = m_new;
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float pv = exp2f(s[mt][j][2 * r + e] - m_ref);
            s[mt][j][2 * r + e] = pv;
            sum += pv;
          }
        }
        l_run[mt][r] = l_run[mt][r] * alpha + sum;
#pragma unroll
        for (int j = 0; j < D / 8; ++j) {
          acc_o[mt][j][2 * r] *= alpha;
          acc_o[mt][j][2 * r + 1] *= alpha;
        }
      }
    }

    // O += P V: P (2 x 16 x BN) as A fragments straight from the registers, V as B via ldmatrix.trans.
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) acc_to_a<T>(a[mt], s[mt], kk);
      mma_b_rows<T, MT, D, S>(acc_o, a, sV, kk, lane);
    }
  }
  cp_async_wait<0>();  // nothing is in flight (also when there are no key tiles)

  // The warp's own 32 rows of sQ are free (only this warp ever read them) and no other warp reads them.
  const int64_t bh = static_cast<int64_t>(b) * p.heads_q + h;
  T* o = static_cast<T*>(p.o) + bh * p.len_q * D;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int row_g = warp_row0 + mt * 16 + g;
    float inv_l[2], lse[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float l = quad_sum(l_run[mt][r]);
      // l >= 1 whenever the row saw a key (its maximum contributes exp2(0)); l == 0 only for a fully masked row.
      inv_l[r] = l > 0.f ? 1.f / l : 0.f;
      lse[r] = l > 0.f ? m_run[mt][r] * kLn2 + logf(l) : INFINITY;
    }
    T* stage = const_cast<T*>(sQw) + mt * 16 * S;
    stage_acc<T, D>(stage, acc_o[mt], inv_l[0], inv_l[1], lane);
    __syncwarp();
    store_tile16<T, D>(o, stage, warp_row0 + mt * 16, p.len_q, lane);
    if (t == 0) {
#pragma unroll
      for (int r = 0; r < 2; ++r)
        if (row_g + 8 * r < p.len_q) p.lse[bh * p.len_q + row_g + 8 * r] = lse[r];
    }
  }
}

#if defined(__CUDACC__)
template <typename T, int D, bool kCausal, bool kWindow, bool kSoftcap>
cudaError_t launch_attention_fwd(const AttentionParams& p, cudaStream_t stream) {
  using Cfg = FwdConfig<D>;
  auto kernel = attention_fwd_kernel<T, D, kCausal, kWindow, kSoftcap>;
  if (Cfg::kSmemBytes > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
    if (err != cudaSuccess) return err;
  }
  kernel<<<Cfg::grid(p), kThreads, Cfg::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

template <typename T, int D, bool kSoftcap>
cudaError_t attention_fwd_mode(const AttentionParams& p, cudaStream_t stream) {
  if (p.window) return launch_attention_fwd<T, D, false, true, kSoftcap>(p, stream);  // causal folded in
  return p.causal ? launch_attention_fwd<T, D, true, false, kSoftcap>(p, stream)
                  : launch_attention_fwd<T, D, false, false, kSoftcap>(p, stream);
}

// kSoftcap must agree with p.softcap > 0 (the caller picks the file of the instances).
template <int D, bool kSoftcap>
cudaError_t attention_fwd_dispatch(const AttentionParams& p, cudaStream_t stream) {
  if (p.head_dim != D || (p.softcap > 0.f) != kSoftcap) return cudaErrorInvalidValue;
  if (p.dtype == DType::kFloat16) return attention_fwd_mode<__half, D, kSoftcap>(p, stream);
  if (p.dtype == DType::kBFloat16) return attention_fwd_mode<__nv_bfloat16, D, kSoftcap>(p, stream);
  return cudaErrorInvalidValue;
}
#endif

}  // namespace attn
}  // namespace bigmodel
