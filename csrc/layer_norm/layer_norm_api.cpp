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

// x: 2-D, unit column stride, a kernel dtype, then CUDA (cuda = false: the caller checks the device later, so that
// the other arguments' shape / dtype checks run on CPU tensors too). Returns its DType.
DType check_rows(const at::Tensor& x, const char* op, const char* name, bool cuda = true) {
  if (cuda) check_cuda(x, op, name);
  TORCH_CHECK(x.dim() == 2, op, ": ", name, " must be 2-D (rows, cols); got shape ", x.sizes());
  // Column loops use 32-bit indices; grids take one row (block mode) or 4 rows (warp mode) per block.
  TORCH_CHECK(x.size(1) > 0 && x.size(1) <= kMaxCols, op, ": ", name, " must have 1 to ", kMaxCols,
              " columns; got ", x.size(1));
  TORCH_CHECK(x.size(0) <= INT_MAX, op, ": ", name, " must have at most ", INT_MAX, " rows; got ", x.size(0));
  check_unit_last_stride(x, op, name);
  return to_dtype(x, op, name);
}

// t: x's shape and dtype, unit column stride (any row stride); device checked by the caller.
void check_like_rows(const at::Tensor& t, const at::Tensor& x, const char* op, const char* name,
                     const char* x_name) {
  check_shape(t, x.sizes(), op, name);
  check_same_dtype(t, x, op, name, x_name);
  check_unit_last_stride(t, op, name);
}

// weight / bias: absent, or CUDA, contiguous, shape (cols,), dtype = x's or float32. Sets *param_dtype.
void check_param(const c10::optional<at::Tensor>& t, const at::Tensor& x, DType x_dtype, const char* op,
                 const char* name, DType* param_dtype, bool* seen) {
  if (!t.has_value()) return;
  check_shape(*t, {x.size(1)}, op, name);
  TORCH_CHECK(t->is_contiguous(), op, ": ", name, " must be contiguous; got strides ", t->strides());
  const DType dt = to_dtype(*t, op, name);
  TORCH_CHECK(dt == x_dtype || dt == DType::kFloat32, op, ": ", name, " must have x's dtype (",
              dtype_name(x_dtype), ") or float32; got ", dtype_name(dt));
  TORCH_CHECK(!*seen || dt == *param_dtype, op, ": weight and bias must share one dtype; got ",
              dtype_name(*param_dtype), " and ", dtype_name(dt));
  *param_dtype = dt;
  *seen = true;
  check_same_device(*t, x, op, name, "x");
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

// rstd: (rows,) contiguous float32 (device checked by the caller).
void check_stat(const at::Tensor& t, const at::Tensor& x, const char* op, const char* name) {
  check_shape(t, {x.size(0)}, op, name);
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous(), op, ": ", name,
              " must be a contiguous float32 tensor; got ", t.scalar_type(), " with strides ", t.strides());
}

// The forward's common parameters: x (rows, cols) and its row stride, dtypes, weight (or null), eps, y.
LayerNormParams fwd_params(const at::Tensor& x, const at::Tensor& y, const c10::optional<at::Tensor>& weight,
                           DType dtype, DType param_dtype, double eps) {
  LayerNormParams p;
  p.rows = x.size(0);
  p.cols = x.size(1);
  p.x_stride = x.stride(0);
  p.dtype = dtype;
  p.param_dtype = param_dtype;
  p.x = x.data_ptr();
  p.weight = ptr_or_null(weight);
  p.eps = static_cast<float>(eps);
  p.y = y.data_ptr();
  return p;
}

constexpr const char* kRmsFwd = "bigmodel._C.rms_norm_fwd";
constexpr const char* kRmsBwd = "bigmodel._C.rms_norm_bwd";
constexpr const char* kAddRmsFwd = "bigmodel._C.add_rms_norm_fwd";
constexpr const char* kAddRmsBwd = "bigmodel._C.add_rms_norm_bwd";

// The RMSNorm forward, with h = x + residual when residual is given (add_rms_norm). Returns {y, h or empty, rstd}.
std::vector<at::Tensor> rms_fwd(const at::Tensor& x, const at::Tensor* residual,
                                const c10::optional<at::Tensor>& weight, double eps, const char* op) {
  const DType dtype = check_rows(x, op, "x", /*cuda=*/false);
  if (residual) check_like_rows(*residual, x, op, "residual", "x");
  const DType param_dtype = check_params(weight, c10::nullopt, x, dtype, op);
  TORCH_CHECK(eps >= 0, op, ": eps must be non-negative; got ", eps);
  check_cuda(x, op, "x");
  if (residual) check_same_device(*residual, x, op, "residual", "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = x.size(0), cols = x.size(1);
  at::Tensor y = at::empty({rows, cols}, x.options());
  at::Tensor h = residual ? at::empty({rows, cols}, x.options()) : at::empty({0}, x.options());
  at::Tensor rstd = at::empty({rows}, x.options().dtype(at::kFloat));
  if (rows == 0) return {y, h, rstd};

  LayerNormParams p = fwd_params(x, y, weight, dtype, param_dtype, eps);
  if (residual) {
    p.residual = residual->data_ptr();
    p.residual_stride = residual->stride(0);
    p.h = h.data_ptr();
  }
  p.rstd = rstd.data_ptr<float>();
  check_launch(rms_norm_fwd_cuda(p, at::cuda::getCurrentCUDAStream()), op);
  return {y, h, rstd};
}

// The RMSNorm backward at x (add_rms_norm: x = h, and dh is added to dx). Returns {dx, dweight or None}.
std::vector<c10::optional<at::Tensor>> rms_bwd(const at::Tensor& dy, const at::Tensor* dh, const at::Tensor& x,
                                               const char* x_name, const c10::optional<at::Tensor>& weight,
                                               const at::Tensor& rstd, const char* op) {
  const DType dtype = check_rows(x, op, x_name, /*cuda=*/false);
  check_like_rows(dy, x, op, "dy", x_name);
  if (dh) check_like_rows(*dh, x, op, "dh", x_name);
  const DType param_dtype = check_params(weight, c10::nullopt, x, dtype, op);
  check_stat(rstd, x, op, "rstd");
  check_cuda(x, op, x_name);
  check_same_device(dy, x, op, "dy", x_name);
  if (dh) check_same_device(*dh, x, op, "dh", x_name);
  check_same_device(rstd, x, op, "rstd", x_name);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = x.size(0), cols = x.size(1);
  at::Tensor dx = at::empty({rows, cols}, x.options());
  c10::optional<at::Tensor> dweight;
  if (weight.has_value()) dweight = at::empty_like(*weight);
  if (rows == 0) {
    if (dweight) dweight->zero_();  // a sum over no rows
    return {dx, dweight};
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
  p.rstd = rstd.data_ptr<float>();
  p.dy = dy.data_ptr();
  if (dh) {
    p.dh = dh->data_ptr();
    p.dh_stride = dh->stride(0);
  }
  p.dx = dx.data_ptr();
  p.dweight = dweight ? dweight->data_ptr() : nullptr;
  p.sm_count = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  p.param_splits = layer_norm_param_splits(rows, cols, p.sm_count);
  at::Tensor partial;
  if (p.dweight) {
    partial = at::empty({p.param_splits * cols}, x.options().dtype(at::kFloat));  // dW rows only
    p.partial = partial.data_ptr<float>();
  }
  check_launch(rms_norm_bwd_cuda(p, at::cuda::getCurrentCUDAStream()), op);
  return {dx, dweight};
}

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

  LayerNormParams p = fwd_params(x, y, weight, dtype, param_dtype, eps);
  p.bias = ptr_or_null(bias);
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

namespace bigmodel {

std::vector<at::Tensor> rms_norm_fwd(const at::Tensor& x, const c10::optional<at::Tensor>& weight, double eps) {
  std::vector<at::Tensor> r = rms_fwd(x, nullptr, weight, eps, kRmsFwd);
  return {r[0], r[2]};
}

std::vector<c10::optional<at::Tensor>> rms_norm_bwd(const at::Tensor& dy, const at::Tensor& x,
                                                    const c10::optional<at::Tensor>& weight, const at::Tensor& rstd) {
  return rms_bwd(dy, nullptr, x, "x", weight, rstd, kRmsBwd);
}

std::vector<at::Tensor> add_rms_norm_fwd(const at::Tensor& x, const at::Tensor& residual,
                                         const c10::optional<at::Tensor>& weight, double eps) {
  return rms_fwd(x, &residual, weight, eps, kAddRmsFwd);
}

std::vector<c10::optional<at::Tensor>> add_rms_norm_bwd(const at::Tensor& dy, const at::Tensor& dh,
                                                        const at::Tensor& h, const c10::optional<at::Tensor>& weight,
                                                        const at::Tensor& rstd) {
  return rms_bwd(dy, &dh, h, "h", weight, rstd, kAddRmsBwd);
}

}  // namespace bigmodel
