// Cross-entropy entry points of bigmodel._C: check inputs (dtype, shape, layout and scalars first, then devices, so
// that all but the device checks run on CPU tensors), allocate, launch on the current stream. The kernels are in
// cross_entropy_kernel.cu. Targets are not range-checked here (that needs a device sync): the Python op checks them
// on the host; the kernels never read through an out-of-range target.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <climits>
#include <cmath>

#include "api.h"
#include "common/check.h"
#include "cross_entropy/cross_entropy.h"

namespace bigmodel {
namespace {

constexpr const char* kFwd = "bigmodel._C.cross_entropy_fwd";
constexpr const char* kBwd = "bigmodel._C.cross_entropy_bwd";
constexpr int64_t kMaxCols = int64_t{1} << 30;

// logits: 2-D (N, C), 1 <= C <= 2^30, N <= INT_MAX, unit column stride, a kernel dtype.
DType check_logits(const at::Tensor& t, const char* op, const char* name) {
  const DType dt = to_dtype(t, op, name);
  TORCH_CHECK(t.dim() == 2, op, ": ", name, " must be 2-D (N, C): one row of class scores per target; got shape ",
              t.sizes());
  // column loops use 32-bit indices; one block per row on grid x
  TORCH_CHECK(t.size(1) >= 1 && t.size(1) <= kMaxCols, op, ": ", name, " must have 1 to ", kMaxCols,
              " columns (classes); got ", t.size(1));
  TORCH_CHECK(t.size(0) <= INT_MAX, op, ": ", name, " must have at most ", INT_MAX, " rows; got ", t.size(0));
  check_unit_last_stride(t, op, name);
  return dt;
}

void check_target(const at::Tensor& target, const at::Tensor& logits, const char* op) {
  TORCH_CHECK(target.scalar_type() == at::kLong, op, ": target must be an int64 tensor of class indices; got ",
              target.scalar_type());
  TORCH_CHECK(target.dim() == 1 && target.size(0) == logits.size(0), op, ": target must have shape (",
              logits.size(0), ",) (logits' rows); got ", target.sizes());
  TORCH_CHECK(target.is_contiguous(), op, ": target must be contiguous; got strides ", target.strides());
}

// lse / grad_loss: (N,) float32; `contiguous` for lse (grad_loss may be strided, e.g. an expanded scalar).
void check_row_stat(const at::Tensor& t, const at::Tensor& logits, const char* op, const char* name,
                    bool contiguous) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32; got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == logits.size(0), op, ": ", name, " must have shape (", logits.size(0),
              ",) (logits' rows); got ", t.sizes());
  TORCH_CHECK(!contiguous || t.is_contiguous(), op, ": ", name, " must be contiguous; got strides ", t.strides());
}

void check_scalars(double label_smoothing, double softcap, const char* op) {
  TORCH_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0, op, ": label_smoothing must be in [0, 1]; got ",
              label_smoothing);
  TORCH_CHECK(std::isfinite(softcap) && softcap >= 0.0, op,
              ": softcap must be finite and non-negative (0 = off); got ", softcap);
}

CrossEntropyParams params(const at::Tensor& logits, const at::Tensor& target, DType dtype, int64_t ignore_index,
                          double label_smoothing, double softcap) {
  CrossEntropyParams p;
  p.rows = logits.size(0);
  p.cols = logits.size(1);
  p.logits_stride = logits.stride(0);
  p.dtype = dtype;
  p.logits = logits.data_ptr();
  p.target = target.data_ptr<int64_t>();
  p.ignore_index = ignore_index;
  p.smoothing = static_cast<float>(label_smoothing);
  p.softcap = static_cast<float>(softcap);
  return p;
}

}  // namespace

std::vector<at::Tensor> cross_entropy_fwd(const at::Tensor& logits, const at::Tensor& target, int64_t ignore_index,
                                          double label_smoothing, double softcap) {
  const DType dtype = check_logits(logits, kFwd, "logits");
  check_target(target, logits, kFwd);
  check_scalars(label_smoothing, softcap, kFwd);
  check_cuda(logits, kFwd, "logits");
  check_same_device(target, logits, kFwd, "target", "logits");
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t rows = logits.size(0);
  const auto f32 = logits.options().dtype(at::kFloat);
  at::Tensor loss = at::empty({rows}, f32), lse = at::empty({rows}, f32);
  if (rows == 0) return {loss, lse};
  CrossEntropyParams p = params(logits, target, dtype, ignore_index, label_smoothing, softcap);
  p.loss = loss.data_ptr<float>();
  p.lse = lse.data_ptr<float>();
  check_launch(cross_entropy_fwd_cuda(p, at::cuda::getCurrentCUDAStream()), kFwd);
  return {loss, lse};
}

at::Tensor cross_entropy_bwd(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& target,
                             const at::Tensor& lse, int64_t ignore_index, double label_smoothing, double softcap,
                             at::Tensor out) {
  const DType dtype = check_logits(logits, kBwd, "logits");
  check_target(target, logits, kBwd);
  check_row_stat(grad_loss, logits, kBwd, "grad_loss", /*contiguous=*/false);
  check_row_stat(lse, logits, kBwd, "lse", /*contiguous=*/true);
  check_same_dtype(out, logits, kBwd, "out", "logits");
  check_shape(out, logits.sizes(), kBwd, "out");
  check_unit_last_stride(out, kBwd, "out");
  check_scalars(label_smoothing, softcap, kBwd);
  // in place is logits itself; any other overlap would let one row's writes race another row's reads
  TORCH_CHECK(out.numel() == 0 || !out.is_alias_of(logits) ||
                  (out.data_ptr() == logits.data_ptr() && out.stride(0) == logits.stride(0)),
              kBwd, ": out shares logits' storage, so it must be logits itself (in place: same data pointer and row "
              "stride); got storage offsets ", out.storage_offset(), " and ", logits.storage_offset(), ", row strides ",
              out.stride(0), " and ", logits.stride(0));
  check_cuda(logits, kBwd, "logits");
  check_same_device(target, logits, kBwd, "target", "logits");
  check_same_device(grad_loss, logits, kBwd, "grad_loss", "logits");
  check_same_device(lse, logits, kBwd, "lse", "logits");
  check_same_device(out, logits, kBwd, "out", "logits");
  const c10::cuda::CUDAGuard guard(logits.device());
  if (logits.size(0) == 0) return out;
  CrossEntropyParams p = params(logits, target, dtype, ignore_index, label_smoothing, softcap);
  p.grad_loss = grad_loss.data_ptr<float>();
  p.grad_stride = grad_loss.stride(0);
  p.lse_in = lse.data_ptr<float>();
  p.out = out.data_ptr();
  p.out_stride = out.stride(0);
  check_launch(cross_entropy_bwd_cuda(p, at::cuda::getCurrentCUDAStream()), kBwd);
  return out;
}

}  // namespace bigmodel
