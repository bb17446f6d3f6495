// Attention forward instances for head dim 128 with the logit softcap (kSoftcap): {fp16, bf16} x {causal, not}.
#include "attention/attention_fwd_kernel.cuh"

namespace bigmodel {

cudaError_t attention_fwd_hdim128_softcap(const AttentionParams& p, cudaStream_t stream) {
  return attn::attention_fwd_dispatch<128, true>(p, stream);
}

}  // namespace bigmodel
