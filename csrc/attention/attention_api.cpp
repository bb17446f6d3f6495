// Attention entry points of bigmodel._C: check inputs (messages say what arrived), allocate, launch on the
// current stream. The kernels are in attention_{fwd,bwd}_kernel.cuh, instantiated per head dim in the .cu files.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>

#include "api.h"
#include "attention/attention.h"
#include "common/check.h"

namespace bigmodel {
namespace {

constexpr const char* kFwd = "bigmodel._C.attention_fwd";
constexpr const char* kBwd = "bigmodel._C.attention_bwd";
constexpr int64_t kMaxGridYZ = 65535;             // heads -> grid.y, batch -> grid.z
constexpr int64_t kMaxLen = int64_t{1} << 30;     // sequence indices are 32-bit in the kernels

// Shapes, dtypes and strides are checked before devices, so that every message can be exercised on a machine
// without a GPU; the device checks follow.
void check_4d(const at::Tensor& t, const char* op, const char* name, const char* dims) {
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must be 4-D ", dims, "; got shape ", t.sizes());
}

void check_same_dtype(const at::Tensor& t, const at::Tensor& q, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == q.scalar_type(), op, ": ", name, " must have q's dtype (", q.scalar_type(),
              "); got ", t.scalar_type());
}

// Checks the window and softcap arguments and fills their fields of p (check_qkv leaves them alone; called
// before it, so that these messages come before the device checks too). A window side is an int >= 0 or None
// (unbounded); with causal the right side is min(right, 0).
void set_extras(const c10::optional<int64_t>& window_left, const c10::optional<int64_t>& window_right,
                double softcap, bool is_causal, double scale, const char* op, AttentionParams& p) {
  for (const auto& [side, name] : {std::pair<const c10::optional<int64_t>&, const char*>{window_left, "window_left"},
                                   {window_right, "window_right"}})
    TORCH_CHECK(!side.has_value() || *side >= 0, op, ": ", name, " must be >= 0 (None = unbounded); got ", *side);
  auto clamp = [](const c10::optional<int64_t>& side) {
    return side.has_value() ? static_cast<int>(std::min<int64_t>(*side, kWindowUnbounded)) : kWindowUnbounded;
  };
  p.window_left = clamp(window_left);
  p.window_right = clamp(window_right);
  if (is_causal) p.window_right = std::min(p.window_right, 0);
  // causal alone (left unbounded, right 0) is the causal kernel's mask: the window kernels only for real bounds
  p.window = p.window_left != kWindowUnbounded || (!is_causal && p.window_right != kWindowUnbounded);
  TORCH_CHECK(softcap == 0.0 || (std::isfinite(softcap) && softcap > 0.0 && softcap <= FLT_MAX &&
                                 static_cast<float>(softcap) > 0.f),
              op, ": softcap must be 0 (none) or a positive finite float32 value; got ", softcap);
  if (softcap > 0.0) {
    TORCH_CHECK(std::isfinite(static_cast<float>(scale / softcap)), op, ": scale / softcap must be finite in float32 "
                "(the kernels' tanh argument is (scale / softcap) * q.k); got scale ", scale, ", softcap ", softcap);
    p.softcap = static_cast<float>(softcap);
    p.softcap_mul = static_cast<float>(scale / softcap);
    p.softcap_log2 = static_cast<float>(softcap * 1.4426950408889634);
  }
}

// Checks q, k, v (and the key padding mask) and fills the shape / pointer / stride fields of p.
void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
               const c10::optional<at::Tensor>& key_padding_mask, bool is_causal, double scale, const char* op,
               AttentionParams& p) {
  check_4d(q, op, "q", "(batch, heads, seq_len, head_dim)");
  check_4d(k, op, "k", "(batch, kv_heads, kv_len, head_dim)");
  check_4d(v, op, "v", "(batch, kv_heads, kv_len, head_dim)");
  TORCH_CHECK(q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16, op,
              ": q must be float16 or bfloat16; got ", q.scalar_type());
  check_same_dtype(k, q, op, "k");
  check_same_dtype(v, q, op, "v");
  p.dtype = q.scalar_type() == at::kHalf ? DType::kFloat16 : DType::kBFloat16;
  const int64_t B = q.size(0), Hq = q.size(1), Lq = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), Lk = k.size(2);
  TORCH_CHECK(D == 64 || D == 128, op, ": head_dim (q.size(-1)) must be 64 or 128; got ", D, " (q shape ",
              q.sizes(), ")");
  TORCH_CHECK(k.size(0) == B && k.size(3) == D, op, ": k must have shape (", B, ", kv_heads, kv_len, ", D,
              ") to match q ", q.sizes(), "; got ", k.sizes());
  TORCH_CHECK(v.sizes() == k.sizes(), op, ": v must have k's shape ", k.sizes(), "; got ", v.sizes());
  TORCH_CHECK(Hkv > 0 && Hq % Hkv == 0, op, ": q's heads (", Hq, ") must be a multiple of k's and v's heads (",
              Hkv, ")");
  TORCH_CHECK(B <= kMaxGridYZ && Hq <= kMaxGridYZ, op, ": batch and heads must each be at most ", kMaxGridYZ,
              "; got batch ", B, ", heads ", Hq);
  TORCH_CHECK(Lq <= kMaxLen && Lk <= kMaxLen, op, ": sequence lengths must be at most ", kMaxLen, "; got q ", Lq,
              ", k ", Lk);
  TORCH_CHECK(std::isfinite(scale), op, ": scale must be finite; got ", scale);
  check_unit_last_stride(q, op, "q");
  check_unit_last_stride(k, op, "k");
  check_unit_last_stride(v, op, "v");
  if (key_padding_mask.has_value()) {
    const at::Tensor& m = *key_padding_mask;
    TORCH_CHECK(m.scalar_type() == at::kBool, op, ": key_padding_mask must be a bool tensor (True = attend); got ",
                m.scalar_type());
    TORCH_CHECK(m.dim() == 2 && m.size(0) == B && m.size(1) == Lk, op,
                ": key_padding_mask must have shape (batch, kv_len) = (", B, ", ", Lk, "); got ", m.sizes());
  }
  check_cuda(q, op, "q");
  check_same_device(k, q, op, "k", "q");
  check_same_device(v, q, op, "v", "q");
  if (key_padding_mask.has_value()) {
    const at::Tensor& m = *key_padding_mask;
    check_same_device(m, q, op, "key_padding_mask", "q");
    p.kpm = m.data_ptr<bool>();
    p.kpm_stride_b = m.stride(0);
    p.kpm_stride_k = m.stride(1);
  }
  p.batch = static_cast<int>(B);
  p.heads_q = static_cast<int>(Hq);
  p.heads_kv = static_cast<int>(Hkv);
  p.len_q = static_cast<int>(Lq);
  p.len_k = static_cast<int>(Lk);
  p.head_dim = static_cast<int>(D);
  for (int i = 0; i < 3; ++i) {
    p.q_stride[i] = q.stride(i);
    p.k_stride[i] = k.stride(i);
    p.v_stride[i] = v.stride(i);
  }
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.causal = is_causal;
  p.scale = static_cast<float>(scale);
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
}

// 16-byte vector loads need a 16-byte aligned pointer and strides that are multiples of 8 elements (a dim of
// size 1 is never stepped over, so its stride does not matter).
bool vec_loadable(const at::Tensor& t) {
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0) return false;
  for (int i = 0; i < 3; ++i)
    if (t.size(i) > 1 && t.stride(i) % 8 != 0) return false;
  return true;
}

cudaError_t run_fwd(const AttentionParams& p, cudaStream_t stream) {
  if (p.softcap > 0.f)
    return p.head_dim == 64 ? attention_fwd_hdim64_softcap(p, stream) : attention_fwd_hdim128_softcap(p, stream);
  return p.head_dim == 64 ? attention_fwd_hdim64(p, stream) : attention_fwd_hdim128(p, stream);
}

cudaError_t run_bwd(const AttentionParams& p, cudaStream_t stream) {
  if (p.softcap > 0.f)
    return p.head_dim == 64 ? attention_bwd_hdim64_softcap(p, stream) : attention_bwd_hdim128_softcap(p, stream);
  return p.head_dim == 64 ? attention_bwd_hdim64(p, stream) : attention_bwd_hdim128(p, stream);
}

}  // namespace

std::vector<at::Tensor> attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const c10::optional<at::Tensor>& key_padding_mask, bool is_causal,
                                      double scale, const c10::optional<int64_t>& window_left,
                                      const c10::optional<int64_t>& window_right, double softcap) {
  AttentionParams p;
  set_extras(window_left, window_right, softcap, is_causal, scale, kFwd, p);
  check_qkv(q, k, v, key_padding_mask, is_causal, scale, kFwd, p);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor o = at::empty({p.batch, p.heads_q, p.len_q, p.head_dim}, q.options());
  at::Tensor lse = at::empty({p.batch, p.heads_q, p.len_q}, q.options().dtype(at::kFloat));
  if (o.numel() == 0) return {o, lse};
  p.vec_loads = vec_loadable(q) && vec_loadable(k) && vec_loadable(v);
  p.o = o.data_ptr();
  p.lse = lse.data_ptr<float>();
  check_launch(run_fwd(p, at::cuda::getCurrentCUDAStream()), kFwd);
  return {o, lse};
}

std::vector<at::Tensor> attention_bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v, const at::Tensor& o, const at::Tensor& lse,
                                      const c10::optional<at::Tensor>& key_padding_mask, bool is_causal,
                                      double scale, const c10::optional<int64_t>& window_left,
                                      const c10::optional<int64_t>& window_right, double softcap) {
  // Shapes and dtypes of do, o, lse first (see check_qkv), then q, k, v with their devices, then these devices.
  check_4d(q, kBwd, "q", "(batch, heads, seq_len, head_dim)");
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{dout, "do"}, {o, "o"}}) {
    check_4d(t, kBwd, name, "(batch, heads, seq_len, head_dim) like q");
    check_same_dtype(t, q, kBwd, name);
    check_shape(t, q.sizes(), kBwd, name);
    check_unit_last_stride(t, kBwd, name);
  }
  TORCH_CHECK(lse.scalar_type() == at::kFloat, kBwd, ": lse must be float32; got ", lse.scalar_type());
  check_shape(lse, {q.size(0), q.size(1), q.size(2)}, kBwd, "lse");
  TORCH_CHECK(lse.is_contiguous(), kBwd, ": lse must be contiguous; got strides ", lse.strides());
  AttentionParams p;
  set_extras(window_left, window_right, softcap, is_causal, scale, kBwd, p);
  check_qkv(q, k, v, key_padding_mask, is_causal, scale, kBwd, p);
  check_same_device(dout, q, kBwd, "do", "q");
  check_same_device(o, q, kBwd, "o", "q");
  check_same_device(lse, q, kBwd, "lse", "q");

  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor dq = at::empty({p.batch, p.heads_q, p.len_q, p.head_dim}, q.options());
  at::Tensor dk = at::empty({p.batch, p.heads_kv, p.len_k, p.head_dim}, k.options());
  at::Tensor dv = at::empty({p.batch, p.heads_kv, p.len_k, p.head_dim}, v.options());
  if (dq.numel() == 0) {  // no queries: dk, dv are sums over nothing
    dk.zero_();
    dv.zero_();
    return {dq, dk, dv};
  }
  at::Tensor delta = at::empty({p.batch, p.heads_q, p.len_q}, q.options().dtype(at::kFloat));
  for (int i = 0; i < 3; ++i) {
    p.do_stride[i] = dout.stride(i);
    p.o_stride[i] = o.stride(i);
  }
  p.vec_loads = vec_loadable(q) && vec_loadable(k) && vec_loadable(v) && vec_loadable(dout) && vec_loadable(o);
  p.dout = dout.data_ptr();
  p.o = const_cast<void*>(o.data_ptr());
  p.lse = const_cast<float*>(lse.data_ptr<float>());
  p.delta = delta.data_ptr<float>();
  p.dq = dq.data_ptr();
  p.dk = dk.data_ptr();
  p.dv = dv.data_ptr();
  check_launch(run_bwd(p, at::cuda::getCurrentCUDAStream()), kBwd);
  return {dq, dk, dv};
}

}  // namespace bigmodel
