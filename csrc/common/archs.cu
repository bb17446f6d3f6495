// The architectures bigmodel._C was compiled for, so the Python side can tell "no kernel image for this GPU"
// before a launch fails (bigmodel/backends/cuda.py: arch_reasons).
#include <cstdint>
#include <vector>  // not api.h: torch's headers would cost minutes of nvcc for one line

namespace bigmodel {

std::vector<int64_t> cuda_archs() {
  // nvcc defines __CUDA_ARCH_LIST__ in every pass of a .cu file: the -gencode virtual archs, e.g. 800,900.
  return {__CUDA_ARCH_LIST__};
}

}  // namespace bigmodel
