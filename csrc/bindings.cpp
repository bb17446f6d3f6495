// The Python module bigmodel._C.
#include <torch/extension.h>

#include "api.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "bigmodel CUDA C++ kernels (see csrc/)";
  m.def("layer_norm_fwd", &bigmodel::layer_norm_fwd, "LayerNorm forward: (y, mean, rstd)", py::arg("x"),
        py::arg("weight"), py::arg("bias"), py::arg("eps"));
  m.def("layer_norm_bwd", &bigmodel::layer_norm_bwd, "LayerNorm backward: (dx, dweight, dbias)", py::arg("dy"),
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("mean"), py::arg("rstd"));
}
