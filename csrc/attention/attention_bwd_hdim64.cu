// Attention backward instances for head dim 64: {fp16, bf16} x {causal, not} (preprocess, dK/dV and dQ
// kernels), no softcap (one file per head dim, pass and softcap so that the build compiles them in parallel).
#include "attention/attention_bwd_kernel.cuh"

namespace bigmodel {

cudaError_t attention_bwd_hdim64(const AttentionParams& p, cudaStream_t stream) {
  return attn::attention_bwd_dispatch<64, false>(p, stream);
}

}  // namespace bigmodel
