// Runs the real attention kernel sources (csrc/attention/*.cuh) under the host emulator (emu.h) and compares
// o, lse, dq, dk, dv with a double-precision reference (explicit masks: key padding, causal, sliding window;
// softcap in the score pipeline and its 1 - tanh^2 in the backward).
#include "emu.h"
// (emu.h must come first: it replaces common/mma.cuh and the CUDA keywords)
#include "attention/attention_bwd_kernel.cuh"
#include "attention/attention_fwd_kernel.cuh"

#include <algorithm>
#include <random>
#include <string>
#include <type_traits>

using namespace bigmodel;

template <typename T>
float tf(T x) {
  if constexpr (std::is_same_v<T, __half>) return __half2float(x);
  else return __bfloat162float(x);
}
template <typename T>
T ft(float x) {
  if constexpr (std::is_same_v<T, __half>) return __float2half_rn(x);
  else return __float2bfloat16_rn(x);
}

struct Case {
  std::string name;
  int B, Hq, Hkv, Lq, Lk;
  bool causal;
  int kpm;     // 0 none, 1 random padding + batch 1 fully padded (if B > 1), 2 random padding, strided mask
  int layout;  // 0 contiguous, 1 (B, L, H, D) storage, 2 unaligned (row pad 3, offset 1)
  double scale_mul = 1.0;
  int wl = -1, wr = -1;  // window (left, right); -1 = unbounded side (both -1: no window)
  double softcap = 0.0;  // 0 = none
};

template <typename T>
struct T4 {
  std::vector<T> store;
  int64_t off = 0, st[3] = {0, 0, 0};
  int B = 0, H = 0, L = 0, D = 0;
  void make(int B_, int H_, int L_, int D_, int layout) {
    B = B_, H = H_, L = L_, D = D_;
    if (layout == 0) {
      st[0] = int64_t(H) * L * D, st[1] = int64_t(L) * D, st[2] = D, off = 0;
      store.assign(size_t(B) * H * L * D, ft<T>(0.f));
    } else if (layout == 1) {
      st[0] = int64_t(L) * H * D, st[1] = D, st[2] = int64_t(H) * D, off = 0;
      store.assign(size_t(B) * H * L * D, ft<T>(0.f));
    } else {
      const int rp = D + 3;
      st[0] = int64_t(H) * L * rp, st[1] = int64_t(L) * rp, st[2] = rp, off = 1;
      store.assign(size_t(B) * H * L * rp + 1 + D, ft<T>(0.f));
    }
  }
  T& at(int b, int h, int l, int d) { return store[off + b * st[0] + h * st[1] + l * st[2] + d]; }
  const T* ptr() const { return store.data() + off; }
};

static bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }
template <typename T>
static bool vec_ok(const T4<T>& t) {
  if (!aligned16(t.ptr())) return false;
  const int sizes[3] = {t.B, t.H, t.L};
  for (int i = 0; i < 3; ++i)
    if (sizes[i] > 1 && t.st[i] % 8) return false;
  return true;
}

struct Err {
  double max_err = 0, max_ref = 0;
  bool nan = false;
  void add(double out, double ref) {
    if (std::isnan(out)) nan = true;
    if (std::isinf(ref) || std::isinf(out)) {
      if (out != ref) max_err = INFINITY;
      return;
    }
    max_err = std::max(max_err, std::fabs(out - ref));
    max_ref = std::max(max_ref, std::fabs(ref));
  }
};

template <typename T, int D>
bool run_case(const Case& c, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  T4<T> q, k, v, dO;
  q.make(c.B, c.Hq, c.Lq, D, c.layout);
  k.make(c.B, c.Hkv, c.Lk, D, c.layout);
  v.make(c.B, c.Hkv, c.Lk, D, c.layout);
  dO.make(c.B, c.Hq, c.Lq, D, c.layout == 1 ? 0 : c.layout);
  for (auto* t : {&q, &k, &v, &dO})
    for (int b = 0; b < t->B; ++b)
      for (int h = 0; h < t->H; ++h)
        for (int l = 0; l < t->L; ++l)
          for (int d = 0; d < D; ++d) t->at(b, h, l, d) = ft<T>(nd(rng));
  // key padding mask, stored with strides (kpm_sb, kpm_sk)
  std::vector<char> kpm_store;
  int64_t kpm_sb = 0, kpm_sk = 0;
  auto kpm_at = [&](int b, int j) -> bool { return c.kpm == 0 || kpm_store[b * kpm_sb + j * kpm_sk]; };
  if (c.kpm) {
    kpm_sk = c.kpm == 2 ? 3 : 1;
    kpm_sb = c.kpm == 2 ? int64_t(c.Lk) * 3 + 5 : c.Lk;
    kpm_store.assign(c.B * kpm_sb + c.Lk * kpm_sk + 8, 0);
    std::bernoulli_distribution keep(0.7);
    for (int b = 0; b < c.B; ++b)
      for (int j = 0; j < c.Lk; ++j) kpm_store[b * kpm_sb + j * kpm_sk] = (c.kpm == 1 && b == 1) ? 0 : keep(rng);
  }
  const double scale = c.scale_mul / std::sqrt(double(D));
  const int group = c.Hq / c.Hkv;
  // visible(i, j): the explicit mask of the spec's pipeline (top-left: diag = 0)
  auto visible = [&](int b, int i, int j) {
    if (!kpm_at(b, j) || (c.causal && j > i)) return false;
    if (c.wl >= 0 && j < i - c.wl) return false;
    if (c.wr >= 0 && j > i + c.wr) return false;
    return true;
  };

  // ---------------- reference (double)
  const size_t nq = size_t(c.B) * c.Hq * c.Lq, nk = size_t(c.B) * c.Hkv * c.Lk;
  std::vector<double> o_ref(nq * D), lse_ref(nq), dq_ref(nq * D, 0.0), dk_ref(nk * D, 0.0), dv_ref(nk * D, 0.0);
  for (int b = 0; b < c.B; ++b)
    for (int h = 0; h < c.Hq; ++h) {
      const int hk = h / group;
      for (int i = 0; i < c.Lq; ++i) {
        std::vector<double> s(c.Lk, -INFINITY), dcap(c.Lk, 1.0);  // dcap: d capped / d uncapped score
        double m = -INFINITY;
        for (int j = 0; j < c.Lk; ++j) {
          if (!visible(b, i, j)) continue;
          double acc = 0;
          for (int d = 0; d < D; ++d) acc += double(tf(q.at(b, h, i, d))) * tf(k.at(b, hk, j, d));
          s[j] = acc * scale;
          if (c.softcap > 0) {
            const double th = std::tanh(s[j] / c.softcap);
            s[j] = c.softcap * th;
            dcap[j] = 1 - th * th;
          }
          m = std::max(m, s[j]);
        }
        const size_t row = (size_t(b) * c.Hq + h) * c.Lq + i;
        if (m == -INFINITY) {
          lse_ref[row] = INFINITY;
          for (int d = 0; d < D; ++d) o_ref[row * D + d] = 0;
          continue;
        }
        double l = 0;
        for (int j = 0; j < c.Lk; ++j) l += std::exp(s[j] - m);
        lse_ref[row] = m + std::log(l);
        std::vector<double> P(c.Lk);
        for (int j = 0; j < c.Lk; ++j) P[j] = std::exp(s[j] - lse_ref[row]);
        for (int d = 0; d < D; ++d) {
          double acc = 0;
          for (int j = 0; j < c.Lk; ++j) acc += P[j] * tf(v.at(b, hk, j, d));
          o_ref[row * D + d] = acc;
        }
        double delta = 0;
        for (int d = 0; d < D; ++d) delta += double(tf(dO.at(b, h, i, d))) * o_ref[row * D + d];
        for (int j = 0; j < c.Lk; ++j) {
          if (P[j] == 0) continue;
          double dp = 0;
          for (int d = 0; d < D; ++d) dp += double(tf(dO.at(b, h, i, d))) * tf(v.at(b, hk, j, d));
          const double ds = P[j] * (dp - delta) * dcap[j];
          const size_t krow = (size_t(b) * c.Hkv + hk) * c.Lk + j;
          for (int d = 0; d < D; ++d) {
            dq_ref[row * D + d] += scale * ds * tf(k.at(b, hk, j, d));
            dk_ref[krow * D + d] += scale * ds * tf(q.at(b, h, i, d));
            dv_ref[krow * D + d] += P[j] * tf(dO.at(b, h, i, d));
          }
        }
      }
    }

  // ---------------- kernels
  const int kSentinel = 64;
  const T sentinel = ft<T>(12345.f);
  std::vector<T> o(nq * D + kSentinel, sentinel), dq(nq * D + kSentinel, sentinel), dk(nk * D + kSentinel, sentinel),
      dv(nk * D + kSentinel, sentinel);
  std::vector<float> lse(nq + kSentinel, 777.f), delta(nq + kSentinel, 777.f);
  AttentionParams p;
  p.dtype = std::is_same_v<T, __half> ? DType::kFloat16 : DType::kBFloat16;
  p.batch = c.B, p.heads_q = c.Hq, p.heads_kv = c.Hkv, p.len_q = c.Lq, p.len_k = c.Lk, p.head_dim = D;
  for (int i = 0; i < 3; ++i) {
    p.q_stride[i] = q.st[i], p.k_stride[i] = k.st[i], p.v_stride[i] = v.st[i], p.do_stride[i] = dO.st[i];
    p.o_stride[i] = (i == 0 ? int64_t(c.Hq) * c.Lq * D : i == 1 ? int64_t(c.Lq) * D : D);
  }
  p.q = q.ptr(), p.k = k.ptr(), p.v = v.ptr(), p.dout = dO.ptr();
  p.kpm = c.kpm ? reinterpret_cast<const bool*>(kpm_store.data()) : nullptr;
  p.kpm_stride_b = kpm_sb, p.kpm_stride_k = kpm_sk;
  p.causal = c.causal;
  p.scale = float(scale);
  p.scale_log2 = float(scale * 1.4426950408889634);
  // as attention_api.cpp's set_extras
  p.window_left = c.wl >= 0 ? c.wl : kWindowUnbounded;
  p.window_right = c.wr >= 0 ? c.wr : kWindowUnbounded;
  if (c.causal) p.window_right = std::min(p.window_right, 0);
  p.window = p.window_left != kWindowUnbounded || (!c.causal && p.window_right != kWindowUnbounded);
  if (c.softcap > 0) {
    p.softcap = float(c.softcap);
    p.softcap_mul = float(scale / c.softcap);
    p.softcap_log2 = float(c.softcap * 1.4426950408889634);
  }
  p.vec_loads = vec_ok(q) && vec_ok(k) && vec_ok(v) && vec_ok(dO);
  p.o = o.data(), p.lse = lse.data(), p.delta = delta.data(), p.dq = dq.data(), p.dk = dk.data(), p.dv = dv.data();

  using FC = attn::FwdConfig<D>;
  using BC = attn::BwdConfig<D>;
  emu::g_collectives = 0;
  // the instances attention_{fwd,bwd}_dispatch picks: window (causal folded in), causal or neither; softcap
  auto launch_all = [&](auto causal, auto window, auto softcap) {
    constexpr bool kC = decltype(causal)::value, kW = decltype(window)::value, kS = decltype(softcap)::value;
    emu::launch(FC::grid(p), FC::kSmemBytes, [&] { attn::attention_fwd_kernel<T, D, kC, kW, kS>(p); });
    emu::launch(BC::pre_grid(p), 0, [&] { attn::attention_bwd_preprocess_kernel<T, D>(p); });
    emu::launch(BC::kv_grid(p), BC::kKvSmemBytes, [&] { attn::attention_bwd_dkdv_kernel<T, D, kC, kW, kS>(p); });
    emu::launch(BC::q_grid(p), BC::kQSmemBytes, [&] { attn::attention_bwd_dq_kernel<T, D, kC, kW, kS>(p); });
  };
  auto with_mode = [&](auto softcap) {
    if (p.window) launch_all(std::false_type{}, std::true_type{}, softcap);
    else if (c.causal) launch_all(std::true_type{}, std::false_type{}, softcap);
    else launch_all(std::false_type{}, std::false_type{}, softcap);
  };
  if (c.softcap > 0) with_mode(std::true_type{});
  else with_mode(std::false_type{});

  // ---------------- compare
  bool ok = true;
  auto sentinel_ok = [&](const std::vector<T>& buf, size_t n, const char* name) {
    for (size_t i = n; i < n + kSentinel; ++i)
      if (tf(buf[i]) != tf(sentinel)) {
        printf("  %s: write past the end at %zu\n", name, i - n);
        return false;
      }
    return true;
  };
  ok &= sentinel_ok(o, nq * D, "o") && sentinel_ok(dq, nq * D, "dq") && sentinel_ok(dk, nk * D, "dk") &&
        sentinel_ok(dv, nk * D, "dv");
  for (size_t i = nq; i < nq + kSentinel; ++i)
    if (lse[i] != 777.f) ok = false, printf("  lse written past the end\n");

  Err eo, el, edq, edk, edv;
  for (size_t i = 0; i < nq * D; ++i) eo.add(tf(o[i]), o_ref[i]), edq.add(tf(dq[i]), dq_ref[i]);
  for (size_t i = 0; i < nq; ++i) el.add(lse[i], lse_ref[i]);
  for (size_t i = 0; i < nk * D; ++i) edk.add(tf(dk[i]), dk_ref[i]), edv.add(tf(dv[i]), dv_ref[i]);
  // exact zeros where the reference is exactly zero because of masking
  int zero_viol = 0;
  for (size_t i = 0; i < nq; ++i)
    if (std::isinf(lse_ref[i]))
      for (int d = 0; d < D; ++d) zero_viol += (tf(o[i * D + d]) != 0.f) + (tf(dq[i * D + d]) != 0.f);
  const double tol = std::is_same_v<T, __half> ? 6e-3 : 4e-2;
  auto check = [&](const char* name, const Err& e) {
    const double rel = e.max_err / std::max(1.0, e.max_ref);
    const bool good = !e.nan && rel <= tol;
    printf("  %-4s max_err %.3e  max_ref %.3e  rel %.3e %s\n", name, e.max_err, e.max_ref, rel, good ? "" : "<-- FAIL");
    return good;
  };
  ok &= check("o", eo);
  ok &= check("lse", el);
  ok &= check("dq", edq);
  ok &= check("dk", edk);
  ok &= check("dv", edv);
  if (zero_viol) ok = false, printf("  %d nonzero o/dq entries in fully masked rows\n", zero_viol);
  printf("%s %s [vec=%d, %ld collectives]\n", ok ? "PASS" : "FAIL", c.name.c_str(), int(p.vec_loads),
         emu::g_collectives);
  fflush(stdout);
  return ok;
}

int main(int argc, char** argv) {
  const std::string only = argc > 1 ? argv[1] : "";
  struct Run {
    Case c;
    int dtype;  // 0 fp16, 1 bf16
    int D;
  };
  std::vector<Run> runs = {
      {{"basic-fp16-d64", 1, 2, 2, 64, 64, false, 0, 0}, 0, 64},
      {{"causal-fp16-d64-L77-mqa", 1, 2, 1, 77, 77, true, 0, 0}, 0, 64},
      {{"bf16-d128-gqa-kpm-bLHD", 2, 4, 2, 33, 130, false, 1, 1}, 1, 128},
      {{"fp16-d128-causal-Lq>Lk-unaligned", 1, 2, 1, 130, 70, true, 0, 2}, 0, 128},
      {{"bf16-d64-causal-Lq<Lk-kpm-strided", 2, 2, 2, 50, 200, true, 2, 0}, 1, 64},
      {{"fp16-d64-L1", 1, 1, 1, 1, 1, false, 0, 0}, 0, 64},
      {{"bf16-d128-L1-causal", 1, 1, 1, 1, 1, true, 0, 2}, 1, 128},
      {{"fp16-d64-causal-gqa4-kpm", 2, 4, 1, 150, 150, true, 1, 1}, 0, 64},
      {{"bf16-d128-Lq1-Lk300", 1, 2, 1, 1, 300, false, 0, 0}, 1, 128},
      {{"fp16-d128-causal-kpm-bLHD", 2, 2, 2, 100, 100, true, 1, 1}, 0, 128},
      {{"bf16-d64-bigscale", 1, 2, 2, 70, 90, false, 0, 0, 8.0}, 1, 64},
      {{"x-fp16-d128-causal-gqa4-kpm-big", 2, 8, 2, 200, 200, true, 1, 1}, 0, 128},
      {{"x-bf16-d64-negscale-causal", 1, 2, 1, 130, 100, true, 0, 2, -2.0}, 1, 64},
      {{"x-fp16-d128-gqa3-unaligned", 1, 3, 1, 130, 257, false, 2, 2}, 0, 128},
      // three 128-row forward blocks, 5 / 10 key tiles through both stages, the causal warp skip
      {{"x-bf16-d64-causal-L300", 1, 1, 1, 300, 300, true, 0, 0}, 1, 64},
      {{"x-fp16-d128-causal-L300", 1, 1, 1, 300, 300, true, 0, 0}, 0, 128},
      // sliding window (left, right): key tiles outside every row's window are skipped by all three loops
      // (L 300: fwd blocks of 128 rows, bwd tiles of 64 / 32), tiles across an edge masked
      {{"win-fp16-d64-40-17-L300-mqa", 1, 2, 1, 300, 300, false, 0, 0, 1.0, 40, 17}, 0, 64},
      {{"win-bf16-d128-left50-Lq<Lk", 1, 2, 2, 260, 330, false, 0, 0, 1.0, 50, -1}, 1, 128},
      {{"win-fp16-d128-right5-unaligned", 1, 1, 1, 200, 300, false, 0, 2, 1.0, -1, 5}, 0, 128},
      {{"win-fp16-d128-0-0", 1, 1, 1, 200, 200, false, 0, 0, 1.0, 0, 0}, 0, 128},
      // windows wider than the tiles: interior tiles need no mask (window_cuts false), edge tiles must be masked
      {{"win-fp16-d64-130-70-L400", 1, 1, 1, 400, 400, false, 0, 0, 1.0, 130, 70}, 0, 64},
      {{"win-causal-bf16-d128-100-L400", 1, 1, 1, 400, 400, true, 0, 0, 1.0, 100, -1}, 1, 128},
      // window + causal (right = min(right, 0)); Lq > Lk: rows >= Lk + left see no key (o = 0, lse = +inf)
      {{"win-causal-bf16-d64-64-3-L300", 1, 2, 1, 300, 300, true, 0, 0, 1.0, 64, 3}, 1, 64},
      {{"win-causal-fp16-d128-30-Lq>Lk", 1, 1, 1, 300, 200, true, 0, 1, 1.0, 30, -1}, 0, 128},
      // window + key padding (batch 1 fully padded), GQA
      {{"win-kpm-bf16-d128-20-20-gqa", 2, 4, 2, 150, 180, false, 1, 1, 1.0, 20, 20}, 1, 128},
      {{"win-kpm-fp16-d64-100-9-strided", 2, 2, 1, 200, 260, false, 2, 0, 1.0, 100, 9}, 0, 64},
      // softcap (large scores so that the cap bites), alone, with causal, and Gemma 2's local layer
      {{"softcap-fp16-d64", 1, 2, 2, 150, 200, false, 0, 0, 4.0, -1, -1, 5.0}, 0, 64},
      {{"softcap-bf16-d128-kpm", 2, 2, 1, 100, 140, false, 1, 0, 4.0, -1, -1, 3.0}, 1, 128},
      {{"softcap-causal-bf16-d128", 1, 2, 1, 200, 200, true, 0, 0, 3.0, -1, -1, 2.0}, 1, 128},
      {{"softcap-causal-fp16-d64-gqa", 1, 4, 2, 130, 130, true, 0, 2, 2.0, -1, -1, 30.0}, 0, 64},
      {{"softcap-win-causal-fp16-d128", 1, 2, 1, 300, 300, true, 1, 0, 2.0, 45, -1, 20.0}, 0, 128},
  };
  bool all = true;
  uint32_t seed = 1;
  for (auto& r : runs) {
    ++seed;
    if (!only.empty() && r.c.name.find(only) == std::string::npos) continue;
    bool ok;
    if (r.dtype == 0) ok = r.D == 64 ? run_case<__half, 64>(r.c, seed) : run_case<__half, 128>(r.c, seed);
    else ok = r.D == 64 ? run_case<__nv_bfloat16, 64>(r.c, seed) : run_case<__nv_bfloat16, 128>(r.c, seed);
    all &= ok;
  }
  printf(all ? "ALL PASS\n" : "SOME FAILED\n");
  return all ? 0 : 1;
}
