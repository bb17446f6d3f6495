// The Python module bigmodel._C.
#include <torch/extension.h>

#include "api.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "bigmodel CUDA C++ kernels (see csrc/)";
  m.def("cuda_archs", &bigmodel::cuda_archs, "compute capabilities compiled for, times 10 (e.g. [800, 900])");
  m.def("layer_norm_fwd", &bigmodel::layer_norm_fwd, "LayerNorm forward: (y, mean, rstd)", py::arg("x"),
        py::arg("weight"), py::arg("bias"), py::arg("eps"));
  m.def("layer_norm_bwd", &bigmodel::layer_norm_bwd, "LayerNorm backward: (dx, dweight, dbias)", py::arg("dy"),
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("mean"), py::arg("rstd"));
  // ---- RMSNorm ----
  m.def("rms_norm_fwd", &bigmodel::rms_norm_fwd, "RMSNorm forward: (y, rstd)", py::arg("x"), py::arg("weight"),
        py::arg("eps"));
  m.def("rms_norm_bwd", &bigmodel::rms_norm_bwd, "RMSNorm backward: (dx, dweight)", py::arg("dy"), py::arg("x"),
        py::arg("weight"), py::arg("rstd"));
  m.def("add_rms_norm_fwd", &bigmodel::add_rms_norm_fwd, "h = x + residual, y = RMSNorm(h): (y, h, rstd)",
        py::arg("x"), py::arg("residual"), py::arg("weight"), py::arg("eps"));
  m.def("add_rms_norm_bwd", &bigmodel::add_rms_norm_bwd, "add_rms_norm backward: (dx = dresidual, dweight)",
        py::arg("dy"), py::arg("dh"), py::arg("h"), py::arg("weight"), py::arg("rstd"));
  // ---- end RMSNorm ----
  // ---- rotary ----
  m.def("rotary_fwd", &bigmodel::rotary_fwd, "rotary embedding: x cos + rotate_half(x) sin", py::arg("x"),
        py::arg("cos"), py::arg("sin"), py::arg("interleaved"));
  m.def("rotary_bwd", &bigmodel::rotary_bwd, "rotary backward: rotation by -theta", py::arg("dy"), py::arg("cos"),
        py::arg("sin"), py::arg("interleaved"));
  // ---- end rotary ----
  // ---- feed-forward / activation / softmax ----
  m.def("bias_act_fwd", &bigmodel::bias_act_fwd, "y = act(z + bias): (y, pre)", py::arg("z"), py::arg("bias"),
        py::arg("activation"));
  m.def("bias_act_bwd", &bigmodel::bias_act_bwd, "dz = act'(pre) * dy, dbias = column sums of dz: (dz, dbias)",
        py::arg("dy"), py::arg("pre"), py::arg("activation"), py::arg("want_dbias"));
  m.def("act_fwd", &bigmodel::act_fwd, "y = act(x), elementwise", py::arg("x"), py::arg("activation"));
  m.def("act_bwd", &bigmodel::act_bwd, "dx = act'(x) * dy, elementwise", py::arg("dy"), py::arg("x"),
        py::arg("activation"));
  m.def("gated_activation_fwd", &bigmodel::gated_activation_fwd, "y = act(gate) * up (SwiGLU / GeGLU)",
        py::arg("gate"), py::arg("up"), py::arg("activation"));
  m.def("gated_activation_bwd", &bigmodel::gated_activation_bwd,
        "dgate = dy * up * act'(gate), dup = dy * act(gate): (dgate, dup)", py::arg("dy"), py::arg("gate"),
        py::arg("up"), py::arg("activation"));
  m.def("softmax_fwd", &bigmodel::softmax_fwd, "softmax over the last dim of (M, N)", py::arg("x"));
  m.def("softmax_bwd", &bigmodel::softmax_bwd, "dx = y * (dy - rowsum(dy * y))", py::arg("dy"), py::arg("y"));
  m.def("linear_act_fwd", &bigmodel::linear_act_fwd, "y = act(x W^T + b), one cuBLASLt GEMM + epilogue: (y, pre)",
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("activation"));
  m.def("linear_act_fallbacks", &bigmodel::linear_act_fallbacks,
        "how many linear_act GEMMs cuBLASLt had no algorithm for (they ran GEMM + bias, then the activation)");
  m.def("linear_act_bwd", &bigmodel::linear_act_bwd, "linear_act backward: (dx, dweight, dbias)", py::arg("dy"),
        py::arg("x"), py::arg("weight"), py::arg("saved"), py::arg("activation"), py::arg("want_dbias"));
  // ---- end feed-forward / activation / softmax ----
  // ---- attention (csrc/attention) ----
  m.def("attention_fwd", &bigmodel::attention_fwd, "Attention forward: [o, lse]", py::arg("q"), py::arg("k"),
        py::arg("v"), py::arg("key_padding_mask"), py::arg("is_causal"), py::arg("scale"),
        py::arg("window_left") = py::none(), py::arg("window_right") = py::none(), py::arg("softcap") = 0.0);
  m.def("attention_bwd", &bigmodel::attention_bwd, "Attention backward: [dq, dk, dv]", py::arg("do"), py::arg("q"),
        py::arg("k"), py::arg("v"), py::arg("o"), py::arg("lse"), py::arg("key_padding_mask"), py::arg("is_causal"),
        py::arg("scale"), py::arg("window_left") = py::none(), py::arg("window_right") = py::none(),
        py::arg("softcap") = 0.0);
  // ---- end attention ----
  // ---- cross-entropy (csrc/cross_entropy) ----
  m.def("cross_entropy_fwd", &bigmodel::cross_entropy_fwd,
        "cross-entropy forward over (N, C) logits, softcap and label smoothing optional: [loss (N,), lse (N,)] fp32",
        py::arg("logits"), py::arg("target"), py::arg("ignore_index"), py::arg("label_smoothing"), py::arg("softcap"));
  m.def("cross_entropy_bwd", &bigmodel::cross_entropy_bwd,
        "cross-entropy backward: dlogits = grad_loss (softmax - smoothed one-hot) written into out (may be logits)",
        py::arg("grad_loss"), py::arg("logits"), py::arg("target"), py::arg("lse"), py::arg("ignore_index"),
        py::arg("label_smoothing"), py::arg("softcap"), py::arg("out"));
  // ---- end cross-entropy ----
}
