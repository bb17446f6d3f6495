// linear_act entry points of bigmodel._C: y = act(x W^T + b) as one cuBLASLt GEMM whose epilogue applies the bias
// and the activation, so the CUDA path moves no more bytes than F.linear (+ F.gelu for exact GELU):
//   none       one GEMM, CUBLASLT_EPILOGUE_BIAS (DEFAULT without bias); nothing saved
//   relu       one GEMM, CUBLASLT_EPILOGUE_RELU_BIAS (RELU); the backward reads y > 0
//   gelu_tanh  one GEMM, CUBLASLT_EPILOGUE_GELU_AUX_BIAS (GELU_AUX), which also writes the pre-activation the backward
//              reads (cuBLASLt's GELU is the tanh form). The aux leading dimension must be a multiple of 8, so an N
//              that is not takes the two-step path.
//   gelu       cuBLASLt has no erf GELU: GEMM + BIAS writes z = the saved pre-activation, then one elementwise GELU
//              kernel (csrc/activation) writes y.
//   silu       no SiLU epilogue either: as gelu (z saved, the backward reads act'(z)).
// Where cuBLASLt offers no algorithm (alignment, degenerate shapes) the two-step path runs, with torch's own GEMM
// if need be. K = 0 needs no GEMM: y = act(b). The backward is the fused dz = act'(pre) * dy + deterministic dbias
// kernel (csrc/bias_act; with no activation dz is dy itself and only dbias is computed) and two torch GEMMs.
// Checks run in the order activation, dtype, shape, device, so all but the device check run on CPU tensors.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <climits>

#include "activation/activation.h"
#include "api.h"
#include "bias_act/bias_act.h"
#include "common/activation_check.h"
#include "common/check.h"
#include "linear_act/linear_act.h"

namespace bigmodel {
namespace {

constexpr const char* kFwd = "bigmodel._C.linear_act_fwd";
constexpr const char* kBwd = "bigmodel._C.linear_act_bwd";

void check_2d(const at::Tensor& t, const char* op, const char* name, const char* dims) {
  TORCH_CHECK(t.dim() == 2, op, ": ", name, " must be 2-D ", dims, "; got shape ", t.sizes());
}

// cuBLASLt reads a matrix through one leading dimension: unit column stride and a row stride of at least the row
// length (anything for a single row). Other layouts are copied once; row-strided views (slices) are not.
at::Tensor gemm_operand(const at::Tensor& t) {
  const bool cols_ok = t.size(1) <= 1 || t.stride(1) == 1;
  const bool rows_ok = t.size(0) <= 1 || t.stride(0) >= std::max<int64_t>(t.size(1), 1);
  return cols_ok && rows_ok ? t : t.contiguous();
}

int64_t leading_dim(const at::Tensor& t) {
  return t.size(0) <= 1 ? std::max<int64_t>(t.size(1), 1) : t.stride(0);
}

// y = act(in) elementwise on contiguous (M, N) tensors (in == out for relu: in place).
void launch_act(const at::Tensor& in, at::Tensor& out, Activation act, DType dtype) {
  ActParams p;
  p.n = in.numel();
  p.dtype = dtype;
  p.act = act;
  p.x = in.data_ptr();
  p.out = out.data_ptr();
  p.sm_count = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  check_launch(act_fwd_cuda(p, at::cuda::getCurrentCUDAStream()), kFwd);
}

std::atomic<int64_t> g_fallbacks{0};

// true: the GEMM is enqueued; false: cuBLASLt has no algorithm for it (nothing was enqueued; counted).
bool run_lt(const LtGemmParams& g) {
  const cublasStatus_t status = lt_linear(g);
  if (status == CUBLAS_STATUS_NOT_SUPPORTED) {
    ++g_fallbacks;
    return false;
  }
  TORCH_CHECK(status == CUBLAS_STATUS_SUCCESS, kFwd, ": cublasLtMatmul failed: ", cublasLtGetStatusString(status),
              " (M=", g.m, ", N=", g.n, ", K=", g.k, ", ", dtype_name(g.dtype), ")");
  return true;
}

}  // namespace

int64_t linear_act_fallbacks() { return g_fallbacks.load(); }

std::vector<at::Tensor> linear_act_fwd(const at::Tensor& x_in, const at::Tensor& weight_in,
                                       const c10::optional<at::Tensor>& bias, const std::string& activation) {
  const Activation act = parse_activation(activation, kFwd, /*allow_none=*/true);
  const DType dtype = to_dtype(x_in, kFwd, "x");
  check_2d(x_in, kFwd, "x", "(M, K)");
  const int64_t m = x_in.size(0), k = x_in.size(1);
  check_same_dtype(weight_in, x_in, kFwd, "weight", "x");
  TORCH_CHECK(weight_in.dim() == 2 && weight_in.size(1) == k, kFwd, ": weight must have shape (N, ", k,
              ") (K = x's last dim); got ", weight_in.sizes());
  const int64_t n = weight_in.size(0);
  check_bias(bias, x_in, n, kFwd, "x", "N = weight's first dim");
  check_cuda(x_in, kFwd, "x");
  check_same_device(weight_in, x_in, kFwd, "weight", "x");

  const c10::cuda::CUDAGuard guard(x_in.device());
  const bool save_pre = act == Activation::kGelu || act == Activation::kGeluTanh || act == Activation::kSilu;
  at::Tensor y = at::empty({m, n}, x_in.options());
  at::Tensor pre = save_pre ? at::empty({m, n}, x_in.options()) : at::empty({0}, x_in.options());
  if (m == 0 || n == 0) return {y, pre};
  at::Tensor z = save_pre ? pre : y;  // where the GEMM + bias lands when the activation is not in its epilogue

  if (k == 0) {  // x W^T is all zeros (cuBLASLt takes no k = 0): y = act(b)
    if (bias.has_value()) z.copy_(bias->expand({m, n}));
    else z.zero_();
    if (act != Activation::kNone) launch_act(z, y, act, dtype);
    return {y, pre};
  }

  const at::Tensor x = gemm_operand(x_in), w = gemm_operand(weight_in);
  LtGemmParams g;
  g.m = m;
  g.n = n;
  g.k = k;
  g.x = x.data_ptr();
  g.ldx = leading_dim(x);
  g.w = w.data_ptr();
  g.ldw = leading_dim(w);
  // cuBLASLt has no alignment preference for the epilogue's bias and may pick a kernel that assumes 16 bytes: an
  // offset view (b[1:]) is copied, N elements.
  const at::Tensor b = !bias.has_value() ? at::Tensor()
                       : reinterpret_cast<uintptr_t>(bias->data_ptr()) % 16 ? bias->clone() : *bias;
  g.bias = b.defined() ? b.data_ptr() : nullptr;
  g.dtype = dtype;
  // TF32 only where torch's own fp32 GEMMs use it (torch.backends.cuda.matmul.allow_tf32; default off).
  g.allow_tf32 = at::globalContext().allowTF32CuBLAS();
  g.handle = at::cuda::getCurrentCUDABlasLtHandle();
  // torch's cuBLASLt workspace for this device and stream (from the caching allocator; no per-call allocation)
  g.workspace = at::cuda::getCUDABlasLtWorkspace();
  g.workspace_bytes = at::cuda::getCUDABlasLtWorkspaceSize();
  g.stream = at::cuda::getCurrentCUDAStream();

  // 1. The whole op in one GEMM.
  if (act != Activation::kGelu && act != Activation::kSilu && !(act == Activation::kGeluTanh && n % 8 != 0)) {
    g.y = y.data_ptr();
    g.ldy = n;
    g.epilogue = act == Activation::kRelu ? LtEpilogue::kRelu
                 : act == Activation::kGeluTanh ? LtEpilogue::kGeluTanhAux
                                                : LtEpilogue::kIdentity;
    if (act == Activation::kGeluTanh) {
      g.aux = pre.data_ptr();
      g.ldaux = n;
    }
    if (run_lt(g)) return {y, pre};
  }
  // 2. z = x W^T + b, then y = act(z) elementwise (exact GELU and SiLU always; the others only where step 1 had no
  // algorithm).
  g.y = z.data_ptr();
  g.ldy = n;
  g.epilogue = LtEpilogue::kIdentity;
  g.aux = nullptr;
  g.ldaux = 0;
  if (!run_lt(g)) {
    if (bias.has_value()) at::addmm_out(z, *bias, x, w.t());
    else at::mm_out(z, x, w.t());
  }
  if (act != Activation::kNone) launch_act(z, y, act, dtype);
  return {y, pre};
}

std::vector<at::Tensor> linear_act_bwd(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight,
                                       const at::Tensor& saved, const std::string& activation, bool want_dbias) {
  const Activation act = parse_activation(activation, kBwd, /*allow_none=*/true);
  const DType dtype = to_dtype(dy, kBwd, "dy");
  check_2d(dy, kBwd, "dy", "(M, N)");
  const int64_t m = dy.size(0), n = dy.size(1);
  // The dz / dbias kernel counts rows within a split in 32 bits.
  TORCH_CHECK(m <= INT_MAX, kBwd, ": dy must have at most ", INT_MAX, " rows; got ", m);
  check_unit_last_stride(dy, kBwd, "dy");
  check_same_dtype(x, dy, kBwd, "x", "dy");
  TORCH_CHECK(x.dim() == 2 && x.size(0) == m, kBwd, ": x must have shape (", m, ", K) (M = dy's rows); got ",
              x.sizes());
  const int64_t k = x.size(1);
  check_same_dtype(weight, dy, kBwd, "weight", "dy");
  check_shape(weight, {n, k}, kBwd, "weight");
  const bool read_saved = act != Activation::kNone;  // none saves an empty tensor, never read
  const char* saved_name = act == Activation::kRelu ? "saved (relu: the output y)" : "saved (the pre-activation)";
  if (read_saved) {
    check_same_dtype(saved, dy, kBwd, saved_name, "dy");
    check_shape(saved, dy.sizes(), kBwd, saved_name);
    check_unit_last_stride(saved, kBwd, saved_name);
  }
  check_cuda(dy, kBwd, "dy");
  check_same_device(x, dy, kBwd, "x", "dy");
  check_same_device(weight, dy, kBwd, "weight", "dy");
  if (read_saved) check_same_device(saved, dy, kBwd, saved_name, "dy");

  const c10::cuda::CUDAGuard guard(dy.device());
  at::Tensor dz, dbias;
  if (read_saved) {
    std::vector<at::Tensor> r = bias_act_bwd(dy, saved, activation, want_dbias);
    dz = r[0];
    dbias = r[1];
  } else {
    // dz = dy: no copy. dbias = column sums of dy by the bias_act kernel with its dz store off (fixed order).
    dz = dy;
    dbias = want_dbias ? at::empty({n}, dy.options()) : at::empty({0}, dy.options());
    if (want_dbias && (m == 0 || n == 0)) {
      dbias.zero_();  // a sum over no rows
    } else if (want_dbias) {
      BiasActParams p;
      p.rows = m;
      p.cols = n;
      p.dy_stride = dy.stride(0);
      p.dtype = dtype;
      p.act = Activation::kNone;
      p.dy = dy.data_ptr();
      p.sm_count = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
      p.splits = bias_act_splits(m, n, p.sm_count);
      const at::Tensor partial = at::empty({static_cast<int64_t>(p.splits) * n}, dy.options().dtype(at::kFloat));
      p.partial = partial.data_ptr<float>();
      p.dbias = dbias.data_ptr();
      check_launch(bias_act_bwd_cuda(p, at::cuda::getCurrentCUDAStream()), kBwd);
    }
  }
  // torch's GEMMs (they follow torch's TF32 setting, as the forward does); K = 0 or M = 0 give empty / zero results.
  at::Tensor dx = at::mm(dz, weight);
  at::Tensor dweight = at::mm(dz.t(), x);
  return {dx, dweight, dbias};
}

}  // namespace bigmodel
