// FlashAttention-2-style backward, deterministic (no atomics): three kernels, all recomputing P from the LSE.
// Templated on the element type T (__half / __nv_bfloat16), head dim D (64 / 128), the mask mode (kCausal, or
// kWindow with runtime bounds, causal folded in) and softcap, as the forward (attention_fwd_kernel.cuh says why).
//
// With S = scale * q k^T (masked entries -inf), P = exp(S - lse) (lse = +inf for a fully masked row, so P = 0):
//   1. preprocess  delta_i = rowsum(do_i * o_i) in fp32                       (D / 8 threads per row)
//   2. dK / dV     one block per (64 keys, batch, kv head); warp w owns keys 16w .. 16w + 15. It loops over the
//                  query heads of its GQA group and over their query tiles (causal: only tiles at or below the
//                  diagonal), accumulating in fp32 registers
//                    S^T = K Q^T, dP^T = V dO^T (16 keys x BM queries per warp, C fragments),
//                    P^T = exp2(S^T * scale * log2 e - lse * log2 e), dS^T = P^T * (dP^T - delta),
//                    dV += P^T dO, dK += dS^T Q   (P^T / dS^T converted in registers to A fragments),
//                  and writes dK * scale and dV once: the sum over the group's heads is a fixed-order loop.
//                  BM = 64 queries per step for D = 64, 32 for D = 128 (register budget). Q / dO / lse / delta
//                  tiles are double-buffered: step i + 1 is fetched (cp.async) while step i computes.
//                  Shared memory: K, V (64 x D) + 2 x (Q, dO) (BM x D) + 2 x (lse, delta) (BM floats)
//                  = 55 KB (D = 64) / 68.5 KB (D = 128).
//   3. dQ          one block per (64 queries, batch, query head); warp w owns queries 16w .. 16w + 15, Q and dO
//                  stay in registers as A fragments. Over the key tiles (causal: up to the diagonal):
//                    S = Q K^T, dP = dO V^T, P = exp2(...), dS = P * (dP - delta), dQ += dS K,
//                  then writes dQ * scale. BN = 64 keys per step for D = 64, 32 for D = 128; K / V double-buffered.
//                  Shared memory: Q, dO (64 x D) + 2 x (K, V) (BN x D) = 54 KB (D = 64) / 68 KB (D = 128).
// Masking (key past len_k, key padded, causal key > query, key outside the query's window) sets P = 0 before dS
// is formed, so masked entries contribute nothing and never produce NaN (exp2 of a huge value is replaced, not
// multiplied by 0; dK / dV's window mask is a pass of its own after P and dS, assigning 0 to both). Window: both
// loops run only over the tiles that hold a visible pair (query_tiles / key_tiles), and tiles across a window
// edge are masked.
// Softcap c: S = c tanh(scale q k^T / c), recomputed with the forward's tanh so that P matches its lse;
// dS = P * (dP - delta) * (1 - tanh^2) (the chain rule through the cap; the final * scale stays as it was).
#pragma once

#include "attention/attention_common.cuh"

namespace bigmodel {
namespace attn {

template <int D>
struct BwdConfig {
  static constexpr int kStride = smem_stride<D>();
  // preprocess
  static constexpr int kPreThreadsPerRow = D / 8;
  static constexpr int kPreRowsPerBlock = kThreads / kPreThreadsPerRow;
  // dK / dV
  static constexpr int kKvBlockN = 64;
  static constexpr int kKvBlockM = D == 128 ? 32 : 64;
  static constexpr int kKvSmemBytes = (2 * kKvBlockN + 4 * kKvBlockM) * kStride * 2 + 4 * kKvBlockM * 4;
  // dQ
  static constexpr int kQBlockM = 64;
  static constexpr int kQBlockN = D == 128 ? 32 : 64;
  static constexpr int kQSmemBytes = (2 * kQBlockM + 4 * kQBlockN) * kStride * 2;

  __host__ __device__ static int64_t rows(const AttentionParams& p) {
    return static_cast<int64_t>(p.batch) * p.heads_q * p.len_q;
  }
  static dim3 pre_grid(const AttentionParams& p) {
    return dim3(static_cast<unsigned>((rows(p) + kPreRowsPerBlock - 1) / kPreRowsPerBlock));
  }
  static dim3 kv_grid(const AttentionParams& p) {
    return dim3(static_cast<unsigned>(ceil_div(p.len_k, kKvBlockN)), static_cast<unsigned>(p.heads_kv),
                static_cast<unsigned>(p.batch));
  }
  static dim3 q_grid(const AttentionParams& p) {
    return dim3(static_cast<unsigned>(ceil_div(p.len_q, kQBlockM)), static_cast<unsigned>(p.heads_q),
                static_cast<unsigned>(p.batch));
  }
};

// delta[b, h, i] = sum_d do[b, h, i, d] * o[b, h, i, d] (fp32), D / 8 consecutive lanes per row.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads) attention_bwd_preprocess_kernel(const AttentionParams p) {
  using Cfg = BwdConfig<D>;
  constexpr int TPR = Cfg::kPreThreadsPerRow;
  const int64_t rows = Cfg::rows(p);
  const int64_t row = static_cast<int64_t>(blockIdx.x) * Cfg::kPreRowsPerBlock + threadIdx.x / TPR;
  const int c = (threadIdx.x % TPR) * 8;
  float sum = 0.f;
  if (row < rows) {  // no early return: every lane takes part in the shuffles below
    const int64_t i = row % p.len_q, bh = row / p.len_q;
    const int64_t h = bh % p.heads_q, b = bh / p.heads_q;
    const T* dout = static_cast<const T*>(p.dout) + b * p.do_stride[0] + h * p.do_stride[1] + i * p.do_stride[2] + c;
    const T* o = static_cast<const T*>(p.o) + b * p.o_stride[0] + h * p.o_stride[1] + i * p.o_stride[2] + c;
    float x[8], y[8];
    if (p.vec_loads) {
      load_vec<T, 8>(dout, x);
      load_vec<T, 8>(o, y);
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        x[j] = to_float(dout[j]);
        y[j] = to_float(o[j]);
      }
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) sum += x[j] * y[j];
  }
#pragma unroll
  for (int off = TPR / 2; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  if (row < rows && threadIdx.x % TPR == 0) p.delta[row] = sum;
}

template <typename T, int D, bool kCausal, bool kWindow, bool kSoftcap>
__global__ void __launch_bounds__(kThreads) attention_bwd_dkdv_kernel(const AttentionParams p) {
  static_assert(!(kCausal && kWindow), "causal with a window is the window with right <= 0");
  using Cfg = BwdConfig<D>;
  constexpr int BN = Cfg::kKvBlockN, BM = Cfg::kKvBlockM, S = Cfg::kStride;
  static_assert(BN == 16 * kWarps, "one 16-key slice per warp");
  static_assert(BM <= kThreads && BN % BM == 0, "lse / delta loads and the causal start assume these");

  T* sK = reinterpret_cast<T*>(dynamic_smem());
  T* sV = sK + BN * S;
  T* sQ = sV + BN * S;       // [2][BM * S]
  T* sdO = sQ + 2 * BM * S;  // [2][BM * S]
  float* sLse = reinterpret_cast<float*>(sdO + 2 * BM * S);  // [2][BM], lse * log2(e); +inf past len_q
  float* sDelta = sLse + 2 * BM;                              // [2][BM]; 0 past len_q

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;
  const int n0 = blockIdx.x * BN;
  const int hk = blockIdx.y, b = blockIdx.z;
  const int group = p.heads_q / p.heads_kv;

  const T* k = static_cast<const T*>(p.k) + b * p.k_stride[0] + hk * p.k_stride[1];
  const T* v = static_cast<const T*>(p.v) + b * p.v_stride[0] + hk * p.v_stride[1];
  const bool* kpm = p.kpm ? p.kpm + b * p.kpm_stride_b : nullptr;

  // Query tiles [m_begin, m_end) of every head of the group; causal: tiles left of the diagonal see none of
  // these keys; window: nor do the tiles outside every key's window. Step `it` is head hk * group + it / nm,
  // query tile m_begin + it % nm.
  int m_begin, nm;
  if constexpr (kWindow) {
    int m_end;
    query_tiles<BM>(p, n0, n0 + BN - 1, m_begin, m_end);
    nm = m_end - m_begin;
  } else {
    m_begin = kCausal ? n0 / BM : 0;
    const int m_blocks = ceil_div(p.len_q, BM);
    nm = m_blocks > m_begin ? m_blocks - m_begin : 0;
  }
  const int total = group * nm;

  // This lane's key rows: n0 + 16 warp + g (r = 0) and + 8 (r = 1). A key past len_k or padded gets P = 0.
  const int key_g = n0 + warp * 16 + g;
  bool key_ok[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = key_g + 8 * r;
    key_ok[r] = key < p.len_k && (kpm == nullptr || kpm[static_cast<int64_t>(key) * p.kpm_stride_k]);
  }

  auto load_step = [&](int it, int buf) {
    const int h = hk * group + it / nm;
    const int m0 = (m_begin + it % nm) * BM;
    const T* q = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1];
    const T* dout = static_cast<const T*>(p.dout) + b * p.do_stride[0] + h * p.do_stride[1];
    load_tile<T, BM, D>(sQ + buf * BM * S, q, p.q_stride[2], m0, p.len_q, p.vec_loads);
    load_tile<T, BM, D>(sdO + buf * BM * S, dout, p.do_stride[2], m0, p.len_q, p.vec_loads);
    if (static_cast<int>(threadIdx.x) < BM) {
      const int row = m0 + threadIdx.x;
      const int64_t idx = (static_cast<int64_t>(b) * p.heads_q + h) * p.len_q + row;
      sLse[buf * BM + threadIdx.x] = row < p.len_q ? p.lse[idx] * kLog2e : INFINITY;
      sDelta[buf * BM + threadIdx.x] = row < p.len_q ? p.delta[idx] : 0.f;
    }
  };

  load_tile<T, BN, D>(sK, k, p.k_stride[2], n0, p.len_k, p.vec_loads);
  load_tile<T, BN, D>(sV, v, p.v_stride[2], n0, p.len_k, p.vec_loads);
  if (total > 0) load_step(0, 0);
  cp_async_commit();

  float acc_dk[D / 8][4], acc_dv[D / 8][4];
  zero(acc_dk);
  zero(acc_dv);
  const T* sK_warp = sK + warp * 16 * S;
  const T* sV_warp = sV + warp * 16 * S;

  for (int it = 0; it < total; ++it) {
    const int buf = it & 1;
    if (it + 1 < total) {
      load_step(it + 1, buf ^ 1);
      cp_async_commit();
      cp_async_wait<1>();  // step `it` landed (step it + 1 may be in flight)
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int m0 = (m_begin + it % nm) * BM;
    const T* q_t = sQ + buf * BM * S;
    const T* do_t = sdO + buf * BM * S;
    const float* lse_t = sLse + buf * BM;
    const float* delta_t = sDelta + buf * BM;

    // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys x BM queries.
    float s[BM / 8][4], dp[BM / 8][4];
    zero(s);
    zero(dp);
    if constexpr (kSoftcap) {
      // S^T first and its tanh in place (s = tanh(scale S / c)) before dP^T exists: the tanh's temporaries never
      // overlap dP^T's registers (interleaving the two products as below spilled at D = 128, measured).
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t a[4];
        load_a<S>(a, sK_warp, kk, lane);
        mma_bt<T, BM, S>(s, a, q_t, kk, lane);
      }
#pragma unroll
      for (int j = 0; j < BM / 8; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) s[j][i] = tanh_approx(s[j][i] * p.softcap_mul);
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t a[4];
        load_a<S>(a, sV_warp, kk, lane);
        mma_bt<T, BM, S>(dp, a, do_t, kk, lane);
      }
    } else {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t a[4];
        load_a<S>(a, sK_warp, kk, lane);
        mma_bt<T, BM, S>(s, a, q_t, kk, lane);
        load_a<S>(a, sV_warp, kk, lane);
        mma_bt<T, BM, S>(dp, a, do_t, kk, lane);
      }
    }

    // P^T and dS^T in place. Column c of the tile is query m0 + c.
    const bool diag = kCausal && m0 < n0 + BN - 1;  // some key of the block is after some query of the tile
    const bool win = kWindow && window_cuts(p, m0, m0 + BM - 1, n0, n0 + BN - 1);  // a pair outside the window
#pragma unroll
    for (int j = 0; j < BM / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = j * 8 + 2 * t + e;
        const float lse_c = lse_t[c], delta_c = delta_t[c];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          if constexpr (kSoftcap) {  // s holds tanh already; (1 - tanh^2) folded into dP - delta at once
            const float th = s[j][2 * r + e];
            const float ddp = (dp[j][2 * r + e] - delta_c) * (1.f - th * th);
            float pv = exp2f(th * p.softcap_log2 - lse_c);
            if (!key_ok[r] || (diag && key_g + 8 * r > m0 + c)) pv = 0.f;
            s[j][2 * r + e] = pv;
            dp[j][2 * r + e] = pv * ddp;
          } else {
            float pv = exp2f(s[j][2 * r + e] * p.scale_log2 - lse_c);
            if (!key_ok[r] || (diag && key_g + 8 * r > m0 + c)) pv = 0.f;
            s[j][2 * r + e] = pv;
            dp[j][2 * r + e] = pv * (dp[j][2 * r + e] - delta_c);
          }
        }
      }
    }
    if (win) {  // the window's mask as a pass of its own (fewer live registers than one more term above)
#pragma unroll
      for (int j = 0; j < BM / 8; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i)
          if (!in_window(p, m0 + j * 8 + 2 * t + (i & 1), key_g + 8 * (i >> 1))) s[j][i] = dp[j][i] = 0.f;
    }

    // dV += P^T dO, dK += dS^T Q (A from registers, B = the row-major dO / Q tiles via ldmatrix.trans).
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk) {
      uint32_t a[4];
      acc_to_a<T>(a, s, kk);
      mma_b<T, D, S>(acc_dv, a, do_t, kk, lane);
      acc_to_a<T>(a, dp, kk);
      mma_b<T, D, S>(acc_dk, a, q_t, kk, lane);
    }
    __syncthreads();  // every warp is done with buffer `buf` before step it + 2 is fetched into it
  }
  cp_async_wait<0>();  // K / V copies of every thread have landed (also when total == 0) ...
  __syncthreads();     // ... before each warp overwrites its own rows of sK / sV with its results

  T* stage_k = sK + warp * 16 * S;
  T* stage_v = sV + warp * 16 * S;
  stage_acc<T, D>(stage_k, acc_dk, p.scale, p.scale, lane);
  stage_acc<T, D>(stage_v, acc_dv, 1.f, 1.f, lane);
  __syncwarp();
  const int64_t bhk = static_cast<int64_t>(b) * p.heads_kv + hk;
  store_tile16<T, D>(static_cast<T*>(p.dk) + bhk * p.len_k * D, stage_k, n0 + warp * 16, p.len_k, lane);
  store_tile16<T, D>(static_cast<T*>(p.dv) + bhk * p.len_k * D, stage_v, n0 + warp * 16, p.len_k, lane);
}

template <typename T, int D, bool kCausal, bool kWindow, bool kSoftcap>
__global__ void __launch_bounds__(kThreads) attention_bwd_dq_kernel(const AttentionParams p) {
  static_assert(!(kCausal && kWindow), "causal with a window is the window with right <= 0");
  using Cfg = BwdConfig<D>;
  constexpr int BM = Cfg::kQBlockM, BN = Cfg::kQBlockN, S = Cfg::kStride;
  static_assert(BM == 16 * kWarps, "one 16-row slice per warp");

  T* sQ = reinterpret_cast<T*>(dynamic_smem());
  T* sdO = sQ + BM * S;
  T* sK = sdO + BM * S;     // [2][BN * S]
  T* sV = sK + 2 * BN * S;  // [2][BN * S]

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;
  const int m_block = kCausal ? static_cast<int>(gridDim.x - 1 - blockIdx.x) : static_cast<int>(blockIdx.x);
  const int m0 = m_block * BM;
  const int h = blockIdx.y, b = blockIdx.z;
  const int hk = h / (p.heads_q / p.heads_kv);

  const T* q = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1];
  const T* dout = static_cast<const T*>(p.dout) + b * p.do_stride[0] + h * p.do_stride[1];
  const T* k = static_cast<const T*>(p.k) + b * p.k_stride[0] + hk * p.k_stride[1];
  const T* v = static_cast<const T*>(p.v) + b * p.v_stride[0] + hk * p.v_stride[1];
  const bool* kpm = p.kpm ? p.kpm + b * p.kpm_stride_b : nullptr;

  // Key tiles [nb_begin, nb_end): causal up to the diagonal, window: those holding a key in some row's window.
  // Tile nb lives in buffer nb % 2.
  int nb_begin = 0, nb_end;
  if constexpr (kWindow) key_tiles<BN>(p, m0, m0 + BM - 1, p.len_k, nb_begin, nb_end);
  else nb_end = ceil_div(kCausal ? imin(p.len_k, m0 + BM) : p.len_k, BN);

  load_tile<T, BM, D>(sQ, q, p.q_stride[2], m0, p.len_q, p.vec_loads);
  load_tile<T, BM, D>(sdO, dout, p.do_stride[2], m0, p.len_q, p.vec_loads);
  cp_async_commit();
  if (nb_end > nb_begin) {
    load_tile<T, BN, D>(sK + (nb_begin & 1) * BN * S, k, p.k_stride[2], nb_begin * BN, p.len_k, p.vec_loads);
    load_tile<T, BN, D>(sV + (nb_begin & 1) * BN * S, v, p.v_stride[2], nb_begin * BN, p.len_k, p.vec_loads);
  }
  cp_async_commit();

  // Row statistics of this lane's rows g (r = 0) and g + 8 (r = 1); rows past len_q get P = 0.
  const int row_g = m0 + warp * 16 + g;
  const int64_t bh = static_cast<int64_t>(b) * p.heads_q + h;
  float lse_r[2], delta_r[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row_g + 8 * r;
    lse_r[r] = row < p.len_q ? p.lse[bh * p.len_q + row] * kLog2e : INFINITY;
    delta_r[r] = row < p.len_q ? p.delta[bh * p.len_q + row] : 0.f;
  }

  cp_async_wait<1>();  // Q and dO landed
  __syncthreads();
  uint32_t qf[D / 16][4], dof[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    load_a<S>(qf[kk], sQ + warp * 16 * S, kk, lane);
    load_a<S>(dof[kk], sdO + warp * 16 * S, kk, lane);
  }

  float acc[D / 8][4];
  zero(acc);
  for (int nb = nb_begin; nb < nb_end; ++nb) {
    const int buf = nb & 1;
    const int n0 = nb * BN;
    if (nb + 1 < nb_end) {
      load_tile<T, BN, D>(sK + (buf ^ 1) * BN * S, k, p.k_stride[2], n0 + BN, p.len_k, p.vec_loads);
      load_tile<T, BN, D>(sV + (buf ^ 1) * BN * S, v, p.v_stride[2], n0 + BN, p.len_k, p.vec_loads);
      cp_async_commit();
      cp_async_wait<1>();  // tile nb landed (tile nb + 1 may be in flight)
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const T* k_t = sK + buf * BN * S;
    const T* v_t = sV + buf * BN * S;

    float s[BN / 8][4], dp[BN / 8][4];
    zero(s);
    zero(dp);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      mma_bt<T, BN, S>(s, qf[kk], k_t, kk, lane);
      mma_bt<T, BN, S>(dp, dof[kk], v_t, kk, lane);
    }

    const bool need_mask = n0 + BN > p.len_k || kpm != nullptr || (kCausal && n0 + BN - 1 > m0) ||
                           (kWindow && window_cuts(p, m0, m0 + BM - 1, n0, n0 + BN - 1));
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int col = n0 + j * 8 + 2 * t + e;
        const bool key_ok =
            !need_mask ||
            (col < p.len_k && (kpm == nullptr || kpm[static_cast<int64_t>(col) * p.kpm_stride_k]));
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          float pv, dcap = 1.f;
          if constexpr (kSoftcap) {
            const float th = tanh_approx(s[j][2 * r + e] * p.softcap_mul);
            pv = exp2f(th * p.softcap_log2 - lse_r[r]);
            dcap = 1.f - th * th;
          } else {
            pv = exp2f(s[j][2 * r + e] * p.scale_log2 - lse_r[r]);
          }
          const int row = row_g + 8 * r;
          if (need_mask && !(key_ok && (!kCausal || col <= row) && (!kWindow || in_window(p, row, col)))) pv = 0.f;
          if constexpr (kSoftcap) dp[j][2 * r + e] = pv * (dp[j][2 * r + e] - delta_r[r]) * dcap;
          else dp[j][2 * r + e] = pv * (dp[j][2 * r + e] - delta_r[r]);
        }
      }
    }

    // dQ += dS K (dS as A fragments from registers, K row-major via ldmatrix.trans).
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t a[4];
      acc_to_a<T>(a, dp, kk);
      mma_b<T, D, S>(acc, a, k_t, kk, lane);
    }
    __syncthreads();  // every warp is done with buffer `buf` before tile nb + 2 is fetched into it
  }
  cp_async_wait<0>();

  // The warp's own rows of sQ are free (Q lives in registers) and no other warp reads them.
  T* stage = sQ + warp * 16 * S;
  stage_acc<T, D>(stage, acc, p.scale, p.scale, lane);
  __syncwarp();
  store_tile16<T, D>(static_cast<T*>(p.dq) + bh * p.len_q * D, stage, m0 + warp * 16, p.len_q, lane);
}

#if defined(__CUDACC__)
template <typename Kernel>
cudaError_t launch_with_smem(Kernel kernel, dim3 grid, int smem, const AttentionParams& p, cudaStream_t stream) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return cudaSuccess;
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
  }
  kernel<<<grid, kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

template <typename T, int D, bool kCausal, bool kWindow, bool kSoftcap>
cudaError_t launch_attention_bwd(const AttentionParams& p, cudaStream_t stream) {
  using Cfg = BwdConfig<D>;
  cudaError_t err = launch_with_smem(attention_bwd_preprocess_kernel<T, D>, Cfg::pre_grid(p), 0, p, stream);
  if (err != cudaSuccess) return err;
  err = launch_with_smem(attention_bwd_dkdv_kernel<T, D, kCausal, kWindow, kSoftcap>, Cfg::kv_grid(p),
                         Cfg::kKvSmemBytes, p, stream);
  if (err != cudaSuccess) return err;
  return launch_with_smem(attention_bwd_dq_kernel<T, D, kCausal, kWindow, kSoftcap>, Cfg::q_grid(p),
                          Cfg::kQSmemBytes, p, stream);
}

template <typename T, int D, bool kSoftcap>
cudaError_t attention_bwd_mode(const AttentionParams& p, cudaStream_t stream) {
  if (p.window) return launch_attention_bwd<T, D, false, true, kSoftcap>(p, stream);  // causal folded in
  return p.causal ? launch_attention_bwd<T, D, true, false, kSoftcap>(p, stream)
                  : launch_attention_bwd<T, D, false, false, kSoftcap>(p, stream);
}

// kSoftcap must agree with p.softcap > 0 (the caller picks the file of the instances).
template <int D, bool kSoftcap>
cudaError_t attention_bwd_dispatch(const AttentionParams& p, cudaStream_t stream) {
  if (p.head_dim != D || (p.softcap > 0.f) != kSoftcap) return cudaErrorInvalidValue;
  if (p.dtype == DType::kFloat16) return attention_bwd_mode<__half, D, kSoftcap>(p, stream);
  if (p.dtype == DType::kBFloat16) return attention_bwd_mode<__nv_bfloat16, D, kSoftcap>(p, stream);
  return cudaErrorInvalidValue;
}
#endif

}  // namespace attn
}  // namespace bigmodel
