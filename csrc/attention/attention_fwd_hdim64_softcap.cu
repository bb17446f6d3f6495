// Attention forward instances for head dim 64 with the logit softcap (kSoftcap): {fp16, bf16} x {causal, not}.
#include "attention/attention_fwd_kernel.cuh"

namespace bigmodel {

cudaError_t attention_fwd_hdim64_softcap(const AttentionParams& p, cudaStream_t stream) {
  return attn::attention_fwd_dispatch<64, true>(p, stream);
}

}  // namespace bigmodel
