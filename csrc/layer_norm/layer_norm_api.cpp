// LayerNorm entry points of bigmodel._C: check inputs (messages say what arrived), allocate, launch on the
// current stream. The kernels are in layer_norm_kernel.cu.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <climits>

#include "api.h"
#include "common/check.h"
#include "layer_norm/layer_norm.h"

namespace bigmodel {
namespace {

constexpr const char* kFwd = "bigmodel._C.layer_norm_fwd";
constexpr const char* kBwd = "bigmodel._C.layer_norm_bwd";
constexpr int64_t kMaxCols = int64_t{1} << 30;

// x: CUDA, 2-D, unit column stride, a kernel dtype. Returns its DType.
DType check_rows(const at::Tensor& x, const char* op, const char* name) {
  check_cuda(x, op, name);
  TORCH_CHECK(x.dim() == 2, op, ": ", name, " must be 2-D (rows, cols); got shape ", x.sizes());
  // Column loops use 32-bit indices; grids take one row (block mode) or 4 rows (warp mode) per block.
  TORCH_CHECK(x.size(1) > 0 && x.size(1) <= kMaxCols, op, ": ", name, " must have 1 to ", kMaxCols,
              " columns; got ", x.size(1));
  TORCH_CHECK(x.size(0) <= INT_MAX, op, ": ", name, " must have at most ", INT_MAX, " rows; got ", x.size(0));
  check_unit_last_stride(x, op, name);
  return to_dtype(x, op, name);
}

// weight / bias: absent, or CUDA, contiguous, shape (cols,), dtype = x's or float32. Sets *param_dtype.
void check_param(const c10::optional<at::Tensor>& t, const at::Tensor& x, DType x_dtype, const char* op,
                 const char* name, DType* param_dtype, bool* seen) {
  if (!t.has_value()) return;
  check_same_device(*t, x, op, name, "x");
  check_shape(*t, {x.size(1)}, op, name);
  TORCH_CHECK(t->is_contiguous(), op, ": ", name, " must be contiguous; got strides ", t->strides());
  const DType dt = to_dtype(*t, op, name);
  TORCH_CHECK(dt == x_dtype || dt == DType::kFloat32, op, ": ", name, " must have x's dtype (",
              dtype_name(x_dtype), ") or float32; got ", dtype_name(dt));
  TORCH_CHECK(!*seen || dt == *param_dtype, op, ": weight and bias must share one dtype; got ",
              dtype_name(*param_dtype), " and ", dtype_name(dt));
  *param_dtype = dt;
  *seen = true;
}

DType check_params(const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                   const at::Tensor& x, DType x_dtype, const char* op) {
  DType param_dtype = x_dtype;
  bool seen = false;
  check_param(weight, x, x_dtype, op, "weight", &param_dtype, &seen);
  check_param(bias, x, x_dtype, op, "bias", &param_dtype, &seen);
  return param_dtype;
}

const void* ptr_or_null(const c10::optional<at::Tensor>& t) { return t.has_value() ? t->data_ptr() : nullptr; }

}  // namespace

std::vector<at::Tensor> layer_norm_fwd(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                       const c10::optional<at::Tensor>& bias, double eps) {
  const DType dtype = check_rows(x, kFwd, "x");
  const DType param_dtype = check_params(weight, bias, x, dtype, kFwd);
  TORCH_CHECK(eps >= 0, kFwd, ": eps must be non-negative; got ", eps);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = x.size(0), cols = x.size(1);
  at::Tensor y = at::empty({rows, cols}, x.options());
  at::Tensor mean = at::empty({rows}, x.options().dtype(at::kFloat));
  at::Tensor rstd = at::empty({rows}, x.options().dtype(at::kFloat));
  if (rows == 0) return {y, mean, rstd};

  LayerNormParams p;
  p.rows = rows;
  p.cols = cols;
  p.x_stride = x.stride(0);
  p.dtype = dtype;
  p.param_dtype = param_dtype;
  p.x = x.data_ptr();
  p.weight = ptr_or_null(weight);
  p.bias = ptr_or_null(bias);
  p.eps = static_cast<float>(eps);
  p.y = y.data_ptr();
  p.mean = mean.data_ptr<float>();
  p.rstd = rstd.data_ptr<float>();
  check_launch(layer_norm_fwd_cuda(p, at::cuda::getCurrentCUDAStream()), kFwd);
  return {y, mean, rstd};
}

std::vector<c10::optional<at::Tensor>> layer_norm_bwd(const at::Tensor& dy, const at::Tensor& x,
                                                      const c10::optional<at::Tensor>& weight,
                                                      const c10::optional<at::Tensor>& bias,
                                                      const at::Tensor& mean, const at::Tensor& rstd) {
  const DType dtype = check_rows(x, kBwd, "x");
  check_rows(dy, kBwd, "dy");
  check_same_device(dy, x, kBwd, "dy", "x");
  check_shape(dy, x.sizes(), kBwd, "dy");
  TORCH_CHECK(dy.scalar_type() == x.scalar_type(), kBwd, ": dy must have x's dtype (", x.scalar_type(),
              "); got ", dy.scalar_type());
  const DType param_dtype = check_params(weight, bias, x, dtype, kBwd);
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{mean, "mean"}, {rstd, "rstd"}}) {
    check_same_device(t, x, kBwd, name, "x");
    check_shape(t, {x.size(0)}, kBwd, name);
    TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous(), kBwd, ": ", name,
                " must be a contiguous float32 tensor; got ", t.scalar_type(), " with strides ", t.strides());
  }
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = x.size(0), cols = x.size(1);
  at::Tensor dx = at::empty({rows, cols}, x.options());
  c10::optional<at::Tensor> dweight, dbias;
  if (weight.has_value()) dweight = at::empty_like(*weight);
  if (bias.has_value()) dbias = at::empty_like(*bias);
  if (rows == 0) {  // no rows: parameter gradients are sums over nothing
    if (dweight) dweight->zero_();
    if (dbias) dbias->zero_();
    return {dx, dweight, dbias};
  }

  LayerNormParams p;
  p.rows = rows;
  p.cols = cols;
  p.x_stride = x.stride(0);
  p.dy_stride = dy.stride(0);
  p.dtype = dtype;
  p.param_dtype = param_dtype;
  p.x = x.data_ptr();
  p.weight = ptr_or_null(weight);
  p.mean = mean.data_ptr<float>();
  p.rstd = rstd.data_ptr<float>();
  p.dy = dy.data_ptr();
  p.dx = dx.data_ptr();
  p.dweight = dweight ? dweight->data_ptr() : nullptr;
  p.dbias = dbias ? dbias->data_ptr() : nullptr;
  p.sm_count = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  p.param_splits = layer_norm_param_splits(rows, cols, p.sm_count);
  at::Tensor partial;
  if (p.dweight || p.dbias) {
    partial = at::empty({2 * p.param_splits * cols}, x.options().dtype(at::kFloat));
    p.partial = partial.data_ptr<float>();
  }
  check_launch(layer_norm_bwd_cuda(p, at::cuda::getCurrentCUDAStream()), kBwd);
  return {dx, dweight, dbias};
}

}  // namespace bigmodel
