// Softmax entry points of bigmodel._C (over the last dim of a 2-D input): check inputs (dtype, shape, layout,
// then device, so that all but the device check run on CPU tensors), allocate, launch on the current stream.
// The kernels are in softmax_kernel.cu.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <climits>

#include "api.h"
#include "common/check.h"
#include "softmax/softmax.h"

namespace bigmodel {
namespace {

constexpr const char* kFwd = "bigmodel._C.softmax_fwd";
constexpr const char* kBwd = "bigmodel._C.softmax_bwd";
constexpr int64_t kMaxCols = int64_t{1} << 30;

// 2-D (rows, cols), unit column stride, a kernel dtype; the device is checked by the caller last.
DType check_rows(const at::Tensor& t, const char* op, const char* name) {
  const DType dt = to_dtype(t, op, name);
  TORCH_CHECK(t.dim() == 2, op, ": ", name, " must be 2-D (rows, cols), the softmax over the last dim; got shape ",
              t.sizes());
  // Column loops use 32-bit indices; the long-row grid takes one row per block.
  TORCH_CHECK(t.size(1) <= kMaxCols, op, ": ", name, " must have at most ", kMaxCols, " columns; got ", t.size(1));
  TORCH_CHECK(t.size(0) <= INT_MAX, op, ": ", name, " must have at most ", INT_MAX, " rows; got ", t.size(0));
  check_unit_last_stride(t, op, name);
  return dt;
}

}  // namespace

at::Tensor softmax_fwd(const at::Tensor& x) {
  const DType dtype = check_rows(x, kFwd, "x");
  check_cuda(x, kFwd, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = x.size(0), cols = x.size(1);
  at::Tensor y = at::empty({rows, cols}, x.options());
  if (rows == 0 || cols == 0) return y;
  SoftmaxParams p;
  p.rows = rows;
  p.cols = cols;
  p.x_stride = x.stride(0);
  p.dtype = dtype;
  p.x = x.data_ptr();
  p.out = y.data_ptr();
  check_launch(softmax_fwd_cuda(p, at::cuda::getCurrentCUDAStream()), kFwd);
  return y;
}

at::Tensor softmax_bwd(const at::Tensor& dy, const at::Tensor& y) {
  const DType dtype = check_rows(y, kBwd, "y");
  check_rows(dy, kBwd, "dy");
  TORCH_CHECK(dy.scalar_type() == y.scalar_type(), kBwd, ": dy must have y's dtype (", y.scalar_type(), "); got ",
              dy.scalar_type());
  TORCH_CHECK(dy.sizes() == y.sizes(), kBwd, ": dy must have y's shape ", y.sizes(), "; got ", dy.sizes());
  check_cuda(y, kBwd, "y");
  check_same_device(dy, y, kBwd, "dy", "y");
  const c10::cuda::CUDAGuard guard(y.device());
  const int64_t rows = y.size(0), cols = y.size(1);
  at::Tensor dx = at::empty({rows, cols}, y.options());
  if (rows == 0 || cols == 0) return dx;
  SoftmaxParams p;
  p.rows = rows;
  p.cols = cols;
  p.x_stride = y.stride(0);
  p.dy_stride = dy.stride(0);
  p.dtype = dtype;
  p.x = y.data_ptr();
  p.dy = dy.data_ptr();
  p.out = dx.data_ptr();
  check_launch(softmax_bwd_cuda(p, at::cuda::getCurrentCUDAStream()), kBwd);
  return dx;
}

}  // namespace bigmodel
