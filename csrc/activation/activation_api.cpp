// Elementwise activation entry points of bigmodel._C (act_fwd / act_bwd, gated_activation_fwd / _bwd on any-shape
// contiguous tensors): check inputs (activation, dtype, shape, layout, then device, so that all but the device check
// run on CPU tensors), allocate, launch on the current stream. The kernels are in activation_kernel.cu.
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
constexpr const char* kGatedFwd = "bigmodel._C.gated_activation_fwd";
constexpr const char* kGatedBwd = "bigmodel._C.gated_activation_bwd";

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

// silu, gelu or gelu_tanh (the gated activations: SwiGLU, GeGLU).
Activation parse_gated(const std::string& s, const char* op) {
  TORCH_CHECK(s == "silu" || s == "gelu" || s == "gelu_tanh", op,
              ": activation must be one of 'silu', 'gelu', 'gelu_tanh'; got '", s, "'");
  return parse_activation(s, op, /*allow_none=*/false);
}

// t: contiguous, ref's dtype and shape (device checked later, after everything a CPU tensor can show).
void check_like(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name, const char* ref_name) {
  check_same_dtype(t, ref, op, name, ref_name);
  TORCH_CHECK(t.sizes() == ref.sizes(), op, ": ", name, " must have ", ref_name, "'s shape ", ref.sizes(), "; got ",
              t.sizes());
  check_contiguous(t, op, name);
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

namespace bigmodel {

at::Tensor gated_activation_fwd(const at::Tensor& gate, const at::Tensor& up, const std::string& activation) {
  const Activation act = parse_gated(activation, kGatedFwd);
  const DType dtype = to_dtype(gate, kGatedFwd, "gate");
  check_contiguous(gate, kGatedFwd, "gate");
  check_like(up, gate, kGatedFwd, "up", "gate");
  check_cuda(gate, kGatedFwd, "gate");
  check_same_device(up, gate, kGatedFwd, "up", "gate");
  const c10::cuda::CUDAGuard guard(gate.device());
  at::Tensor y = at::empty_like(gate, at::MemoryFormat::Contiguous);
  if (gate.numel() == 0) return y;
  GatedParams p;
  p.n = gate.numel();
  p.dtype = dtype;
  p.act = act;
  p.gate = gate.data_ptr();
  p.up = up.data_ptr();
  p.out = y.data_ptr();
  p.sm_count = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  check_launch(gated_fwd_cuda(p, at::cuda::getCurrentCUDAStream()), kGatedFwd);
  return y;
}

std::vector<at::Tensor> gated_activation_bwd(const at::Tensor& dy, const at::Tensor& gate, const at::Tensor& up,
                                             const std::string& activation) {
  const Activation act = parse_gated(activation, kGatedBwd);
  const DType dtype = to_dtype(gate, kGatedBwd, "gate");
  check_contiguous(gate, kGatedBwd, "gate");
  check_like(up, gate, kGatedBwd, "up", "gate");
  check_like(dy, gate, kGatedBwd, "dy", "gate");
  check_cuda(gate, kGatedBwd, "gate");
  check_same_device(up, gate, kGatedBwd, "up", "gate");
  check_same_device(dy, gate, kGatedBwd, "dy", "gate");
  const c10::cuda::CUDAGuard guard(gate.device());
  at::Tensor dgate = at::empty_like(gate, at::MemoryFormat::Contiguous);
  at::Tensor dup = at::empty_like(up, at::MemoryFormat::Contiguous);
  if (gate.numel() == 0) return {dgate, dup};
  GatedParams p;
  p.n = gate.numel();
  p.dtype = dtype;
  p.act = act;
  p.gate = gate.data_ptr();
  p.up = up.data_ptr();
  p.dy = dy.data_ptr();
  p.out = dgate.data_ptr();
  p.out2 = dup.data_ptr();
  p.sm_count = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  check_launch(gated_bwd_cuda(p, at::cuda::getCurrentCUDAStream()), kGatedBwd);
  return {dgate, dup};
}

}  // namespace bigmodel
