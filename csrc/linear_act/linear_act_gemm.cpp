// The cuBLASLt call of the CUDA linear_act: descriptors, the heuristic's first algorithm, one cublasLtMatmul.
// Descriptors are built per call (a few microseconds of host time, as torch's own cuBLASLt path does).
#include <memory>
#include <type_traits>

#include "linear_act/linear_act.h"

namespace bigmodel {
namespace {

#define LT_TRY(expr)                                  \
  do {                                                \
    const cublasStatus_t status_ = (expr);            \
    if (status_ != CUBLAS_STATUS_SUCCESS) return status_; \
  } while (0)

template <typename T, cublasStatus_t (*Destroy)(T)>
struct LtDeleter {
  void operator()(T d) const { Destroy(d); }
};
using OpDesc = std::unique_ptr<std::remove_pointer_t<cublasLtMatmulDesc_t>,
                               LtDeleter<cublasLtMatmulDesc_t, cublasLtMatmulDescDestroy>>;
using Layout = std::unique_ptr<std::remove_pointer_t<cublasLtMatrixLayout_t>,
                               LtDeleter<cublasLtMatrixLayout_t, cublasLtMatrixLayoutDestroy>>;
using Pref = std::unique_ptr<std::remove_pointer_t<cublasLtMatmulPreference_t>,
                             LtDeleter<cublasLtMatmulPreference_t, cublasLtMatmulPreferenceDestroy>>;

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::kFloat32: return CUDA_R_32F;
    case DType::kFloat16: return CUDA_R_16F;
    case DType::kBFloat16: return CUDA_R_16BF;
  }
  return CUDA_R_32F;
}

cublasLtEpilogue_t lt_epilogue(LtEpilogue e, bool bias) {
  switch (e) {
    case LtEpilogue::kIdentity: return bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    case LtEpilogue::kRelu: return bias ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_RELU;
    case LtEpilogue::kGeluTanhAux: return bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
  }
  return CUBLASLT_EPILOGUE_DEFAULT;
}

// The largest power of two (up to 256, cuBLASLt's default assumption) dividing the address: the heuristic then
// only offers kernels that can load from it (torch's cuBLASLt path does the same).
uint32_t alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && a % al != 0) al /= 2;
  return al;
}

template <typename V>
cublasStatus_t set(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr, const V& v) {
  return cublasLtMatmulDescSetAttribute(d, attr, &v, sizeof(v));
}

template <typename V>
cublasStatus_t set(cublasLtMatmulPreference_t d, cublasLtMatmulPreferenceAttributes_t attr, const V& v) {
  return cublasLtMatmulPreferenceSetAttribute(d, attr, &v, sizeof(v));
}

cublasStatus_t layout(Layout* out, cudaDataType_t dt, int64_t rows, int64_t cols, int64_t ld) {
  cublasLtMatrixLayout_t raw = nullptr;
  LT_TRY(cublasLtMatrixLayoutCreate(&raw, dt, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols), ld));
  out->reset(raw);
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

cublasStatus_t lt_linear(const LtGemmParams& p) {
  const cudaDataType_t dt = cuda_type(p.dtype);
  const bool fp32 = p.dtype == DType::kFloat32;
  const cublasComputeType_t compute = fp32 && p.allow_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;

  cublasLtMatmulDesc_t op_raw = nullptr;
  LT_TRY(cublasLtMatmulDescCreate(&op_raw, compute, CUDA_R_32F));  // fp32 alpha / beta and accumulation
  const OpDesc op(op_raw);
  LT_TRY(set(op.get(), CUBLASLT_MATMUL_DESC_TRANSA, CUBLAS_OP_T));
  LT_TRY(set(op.get(), CUBLASLT_MATMUL_DESC_TRANSB, CUBLAS_OP_N));
  LT_TRY(set(op.get(), CUBLASLT_MATMUL_DESC_EPILOGUE, lt_epilogue(p.epilogue, p.bias != nullptr)));
  if (p.bias) LT_TRY(set(op.get(), CUBLASLT_MATMUL_DESC_BIAS_POINTER, p.bias));
  if (p.epilogue == LtEpilogue::kGeluTanhAux) {
    LT_TRY(set(op.get(), CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, p.aux));
    LT_TRY(set(op.get(), CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, p.ldaux));
  }

  Layout a, b, d;  // column-major views of the row-major W (k x n), x (k x m), y (n x m)
  LT_TRY(layout(&a, dt, p.k, p.n, p.ldw));
  LT_TRY(layout(&b, dt, p.k, p.m, p.ldx));
  LT_TRY(layout(&d, dt, p.n, p.m, p.ldy));

  cublasLtMatmulPreference_t pref_raw = nullptr;
  LT_TRY(cublasLtMatmulPreferenceCreate(&pref_raw));
  const Pref pref(pref_raw);
  LT_TRY(set(pref.get(), CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, static_cast<uint64_t>(p.workspace_bytes)));
  LT_TRY(set(pref.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, alignment(p.w)));
  LT_TRY(set(pref.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, alignment(p.x)));
  LT_TRY(set(pref.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, alignment(p.y)));
  LT_TRY(set(pref.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, alignment(p.y)));
  // Split-K partial sums are added out of place in fp32 by a separate pass in a fixed order: never in fp16 / bf16
  // (OUTPUT_TYPE for 16-bit outputs), never in place (INPLACE adds into D through counters). No split-K is always
  // allowed.
  const uint32_t reductions =
      CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE | (fp32 ? CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE : 0);
  LT_TRY(set(pref.get(), CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, reductions));

  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  // "No algorithm" (NOT_SUPPORTED, or INVALID_VALUE for shapes the epilogue kernels do not cover, e.g. a dim of 1)
  // sends the caller to its fallback, which counts itself (linear_act_fallbacks) so GPU tests can tell; any other
  // status is an error the caller raises.
  const cublasStatus_t h = cublasLtMatmulAlgoGetHeuristic(p.handle, op.get(), a.get(), b.get(), d.get(), d.get(),
                                                          pref.get(), 1, &result, &found);
  const bool none_found = h == CUBLAS_STATUS_SUCCESS && found == 0;
  if (h == CUBLAS_STATUS_NOT_SUPPORTED || h == CUBLAS_STATUS_INVALID_VALUE || none_found) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (h != CUBLAS_STATUS_SUCCESS) return h;
  if (result.state != CUBLAS_STATUS_SUCCESS) return result.state;
  const float alpha = 1.f, beta = 0.f;
  // C = D with beta = 0: C is never read.
  return cublasLtMatmul(p.handle, op.get(), &alpha, p.w, a.get(), p.x, b.get(), &beta, p.y, d.get(), p.y, d.get(),
                        &result.algo, p.workspace, p.workspace_bytes, p.stream);
}

}  // namespace bigmodel
