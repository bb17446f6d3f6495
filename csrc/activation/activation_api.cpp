// Elementwise activation entry points of bigmodel._C (act_fwd / act_bwd on any-shape contiguous tensors): check
// inputs (activation, dtype, shape, layout, then device, so that all but the device check run on CPU tensors),
// allocate, launch on the current stream. The kernels are in activation_kernel.cu.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "activation/activation.h"
#include "api.h"
#include "common/activation_check.h"
#include "common/check.h"

namespace bigmodel {
namespace {

constexpr const char* kFwd = "bigmodel._C.act_fwd";
constexpr const char* kBwd = "bigmodel._C.act_bwd";

void check_contiguous(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous; got shape ", t.sizes(), " with strides ",
              t.strides());
}

void launch(ActParams& p, const char* op, bool backward) {
  if (p.n == 0) return;
  p.sm_count = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  check_launch(backward ? act_bwd_cuda(p, stream) : act_fwd_cuda(p, stream), op);
}

}  // namespace

at::Tensor act_fwd(const at::Tensor& x, const std::string& activation) {
  const Activation act = parse_activation(activation, kFwd, /*allow_none=*/false);
  const DType dtype = to_dtype(x, kFwd, "x");
  check_contiguous(x, kFwd, "x");
  check_cuda(x, kFwd, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  ActParams p;
  p.n = x.numel();
  p.dtype = dtype;
  p.act = act;
  p.x = x.data_ptr();
  p.out = y.data_ptr();
  launch(p, kFwd, false);
  return y;
}

at::Tensor act_bwd(const at::Tensor& dy, const at::Tensor& x, const std::string& activation) {
  const Activation act = parse_activation(activation, kBwd, /*allow_none=*/false);
  const DType dtype = to_dtype(x, kBwd, "x");
  TORCH_CHECK(dy.scalar_type() == x.scalar_type(), kBwd, ": dy must have x's dtype (", x.scalar_type(), "); got ",
              dy.scalar_type());
  TORCH_CHECK(dy.sizes() == x.sizes(), kBwd, ": dy must have x's shape ", x.sizes(), "; got ", dy.sizes());
  check_contiguous(x, kBwd, "x");
  check_contiguous(dy, kBwd, "dy");
  check_cuda(x, kBwd, "x");
  check_same_device(dy, x, kBwd, "dy", "x");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  ActParams p;
  p.n = x.numel();
  p.dtype = dtype;
  p.act = act;
  p.x = x.data_ptr();
  p.dy = dy.data_ptr();
  p.out = dx.data_ptr();
  launch(p, kBwd, true);
  return dx;
}

}  // namespace bigmodel
