// The functions bigmodel._C exports (bindings.cpp); each is defined in csrc/<op>/<op>_api.cpp.
#pragma once
#include <torch/extension.h>

#include <vector>

namespace bigmodel {

// x: (rows, cols) with unit column stride. Returns {y (rows, cols), mean (rows,) fp32, rstd (rows,) fp32}.
std::vector<at::Tensor> layer_norm_fwd(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                       const c10::optional<at::Tensor>& bias, double eps);
// Returns {dx, dweight or None, dbias or None}.
std::vector<c10::optional<at::Tensor>> layer_norm_bwd(const at::Tensor& dy, const at::Tensor& x,
                                                      const c10::optional<at::Tensor>& weight,
                                                      const c10::optional<at::Tensor>& bias,
                                                      const at::Tensor& mean, const at::Tensor& rstd);

}  // namespace bigmodel
