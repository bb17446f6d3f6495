// Rotary entry points of bigmodel._C: check inputs (dtype, rank, shape, strides, then device, so that all but the
// device checks run on CPU tensors; messages say what arrived), allocate, launch on the current stream. The kernel
// is in rotary_kernel.cu.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <climits>

#include "api.h"
#include "common/check.h"
#include "rotary/rotary.h"

namespace bigmodel {
namespace {

constexpr const char* kFwd = "bigmodel._C.rotary_fwd";
constexpr const char* kBwd = "bigmodel._C.rotary_bwd";

// Strides of a (B, H, L, *) view for the kernel: a size-1 dim's stride is never used, so it reads as 0 (and cannot
// spoil the vector-alignment test).
void copy_strides(const at::Tensor& t, int64_t (&out)[3]) {
  for (int i = 0; i < 3; ++i) out[i] = t.size(i) == 1 ? 0 : t.stride(i);
}

at::Tensor rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool interleaved, bool backward,
                  const char* op, const char* x_name) {
  const DType dtype = to_dtype(x, op, x_name);
  TORCH_CHECK(x.dim() == 4, op, ": ", x_name, " must be 4-D (B, H, L, D); got shape ", x.sizes());
  check_unit_last_stride(x, op, x_name);
  const int64_t d = x.size(3);
  TORCH_CHECK(d <= INT_MAX, op, ": ", x_name, " must have a head dim of at most ", INT_MAX, "; got ", d);
  const DType table_dtype = to_dtype(cos, op, "cos");
  TORCH_CHECK(table_dtype == dtype || table_dtype == DType::kFloat32, op, ": cos must have ", x_name, "'s dtype (",
              dtype_name(dtype), ") or float32; got ", dtype_name(table_dtype));
  check_same_dtype(sin, cos, op, "sin", "cos");
  TORCH_CHECK(cos.dim() == 4, op, ": cos must be 4-D (B, H, L, R), a broadcast view; got shape ", cos.sizes());
  const int64_t r = cos.size(3);
  TORCH_CHECK(r >= 2 && r <= d && r % 2 == 0, op, ": the rotary dim R = cos.size(-1) must be even and in [2, ", d,
              "] (", x_name, "'s head dim); got ", r);
  check_shape(cos, {x.size(0), x.size(1), x.size(2), r}, op, "cos");
  check_shape(sin, cos.sizes(), op, "sin");
  check_unit_last_stride(cos, op, "cos");
  check_unit_last_stride(sin, op, "sin");
  const int64_t rows = x.size(0) * x.size(1) * x.size(2);
  TORCH_CHECK(rows <= INT_MAX, op, ": at most ", INT_MAX, " rows (B * H * L) in the CUDA kernel; got ", rows);
  check_cuda(x, op, x_name);
  check_same_device(cos, x, op, "cos", x_name);
  check_same_device(sin, x, op, "sin", x_name);

  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  if (rows == 0) return y;
  RotaryParams p;
  p.b = x.size(0);
  p.h = x.size(1);
  p.l = x.size(2);
  p.d = d;
  p.r = r;
  copy_strides(x, p.x_stride);
  copy_strides(cos, p.cos_stride);
  copy_strides(sin, p.sin_stride);
  p.dtype = dtype;
  p.table_dtype = table_dtype;
  p.interleaved = interleaved;
  p.backward = backward;
  p.x = x.data_ptr();
  p.cos = cos.data_ptr();
  p.sin = sin.data_ptr();
  p.y = y.data_ptr();
  check_launch(rotary_cuda(p, at::cuda::getCurrentCUDAStream()), op);
  return y;
}

}  // namespace

at::Tensor rotary_fwd(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool interleaved) {
  return rotary(x, cos, sin, interleaved, /*backward=*/false, kFwd, "x");
}

at::Tensor rotary_bwd(const at::Tensor& dy, const at::Tensor& cos, const at::Tensor& sin, bool interleaved) {
  return rotary(dy, cos, sin, interleaved, /*backward=*/true, kBwd, "dy");
}

}  // namespace bigmodel
