// bias_act entry points of bigmodel._C (the epilogue / prologue of the CUDA linear_act path): check inputs
// (messages say what arrived), allocate, launch on the current stream. The kernels are in bias_act_kernel.cu.
// Checks run in the order activation, dtype, shape, strides, device, so that everything but the device can be
// exercised (and tested) with CPU tensors.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <climits>

#include "api.h"
#include "bias_act/bias_act.h"
#include "common/activation_check.h"
#include "common/check.h"

namespace bigmodel {
namespace {

constexpr const char* kFwd = "bigmodel._C.bias_act_fwd";
constexpr const char* kBwd = "bigmodel._C.bias_act_bwd";

// A 2-D (rows, cols) tensor with unit column stride, of a kernel dtype. Returns its DType.
DType check_matrix(const at::Tensor& t, const char* op, const char* name) {
  const DType dt = to_dtype(t, op, name);
  TORCH_CHECK(t.dim() == 2, op, ": ", name, " must be 2-D (rows, cols); got shape ", t.sizes());
  // The kernels count rows within a split in 32 bits.
  TORCH_CHECK(t.size(0) <= INT_MAX, op, ": ", name, " must have at most ", INT_MAX, " rows; got ", t.size(0));
  check_unit_last_stride(t, op, name);
  return dt;
}

}  // namespace

std::vector<at::Tensor> bias_act_fwd(const at::Tensor& z, const c10::optional<at::Tensor>& bias,
                                     const std::string& activation) {
  const Activation act = parse_activation(activation, kFwd, /*allow_none=*/true);
  const DType dtype = check_matrix(z, kFwd, "z");
  const int64_t rows = z.size(0), cols = z.size(1);
  check_bias(bias, z, cols, kFwd, "z", "z's column count");
  check_cuda(z, kFwd, "z");

  const c10::cuda::CUDAGuard guard(z.device());
  at::Tensor y = at::empty({rows, cols}, z.options());
  const bool save_pre = act == Activation::kGelu || act == Activation::kGeluTanh || act == Activation::kSilu;
  at::Tensor pre = save_pre ? at::empty({rows, cols}, z.options()) : at::empty({0}, z.options());
  if (rows == 0 || cols == 0) return {y, pre};

  BiasActParams p;
  p.rows = rows;
  p.cols = cols;
  p.in_stride = z.stride(0);
  p.dtype = dtype;
  p.act = act;
  p.z = z.data_ptr();
  p.bias = bias.has_value() ? bias->data_ptr() : nullptr;
  p.y = y.data_ptr();
  p.pre = save_pre ? pre.data_ptr() : nullptr;
  p.sm_count = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  check_launch(bias_act_fwd_cuda(p, at::cuda::getCurrentCUDAStream()), kFwd);
  return {y, pre};
}

std::vector<at::Tensor> bias_act_bwd(const at::Tensor& dy, const at::Tensor& pre, const std::string& activation,
                                     bool want_dbias) {
  const Activation act = parse_activation(activation, kBwd, /*allow_none=*/true);
  const DType dtype = check_matrix(dy, kBwd, "dy");
  const int64_t rows = dy.size(0), cols = dy.size(1);
  const bool read_pre = act != Activation::kNone;  // "none": pre is not read (the empty saved tensor is fine)
  const char* pre_name = act == Activation::kRelu ? "pre (relu: the output y)" : "pre";
  if (read_pre) {
    check_same_dtype(pre, dy, kBwd, pre_name, "dy");
    TORCH_CHECK(pre.sizes() == dy.sizes(), kBwd, ": ", pre_name, " must have dy's shape ", dy.sizes(), "; got ",
                pre.sizes());
    check_unit_last_stride(pre, kBwd, pre_name);
  }
  check_cuda(dy, kBwd, "dy");
  if (read_pre) check_same_device(pre, dy, kBwd, pre_name, "dy");

  const c10::cuda::CUDAGuard guard(dy.device());
  at::Tensor dz = at::empty({rows, cols}, dy.options());
  at::Tensor dbias = want_dbias ? at::empty({cols}, dy.options()) : at::empty({0}, dy.options());
  if (rows == 0 || cols == 0) {
    if (want_dbias) dbias.zero_();  // a sum over no rows
    return {dz, dbias};
  }

  BiasActParams p;
  p.rows = rows;
  p.cols = cols;
  p.dy_stride = dy.stride(0);
  p.in_stride = read_pre ? pre.stride(0) : 0;
  p.dtype = dtype;
  p.act = act;
  p.dy = dy.data_ptr();
  p.saved = read_pre ? pre.data_ptr() : nullptr;
  p.dz = dz.data_ptr();
  p.sm_count = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  at::Tensor partial;
  if (want_dbias) {
    p.splits = bias_act_splits(rows, cols, p.sm_count);
    partial = at::empty({static_cast<int64_t>(p.splits) * cols}, dy.options().dtype(at::kFloat));
    p.partial = partial.data_ptr<float>();
    p.dbias = dbias.data_ptr();
  }
  check_launch(bias_act_bwd_cuda(p, at::cuda::getCurrentCUDAStream()), kBwd);
  return {dz, dbias};
}

}  // namespace bigmodel
