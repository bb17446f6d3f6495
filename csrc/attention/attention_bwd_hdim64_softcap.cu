// Attention backward instances for head dim 64 with the logit softcap (kSoftcap): {fp16, bf16} x
// {causal, not} (preprocess, dK/dV and dQ kernels).
#include "attention/attention_bwd_kernel.cuh"

namespace bigmodel {

cudaError_t attention_bwd_hdim64_softcap(const AttentionParams& p, cudaStream_t stream) {
  return attn::attention_bwd_dispatch<64, true>(p, stream);
}

}  // namespace bigmodel
