// The record of what nvcc built: compiled_cuda_archs() (common.cuh), read by ega-infer info.
#include "common.cuh"

#include <vector>

namespace ega_infer {

std::vector<int> compiled_cuda_archs() {
#ifdef __CUDA_ARCH_LIST__
  return {__CUDA_ARCH_LIST__};
#else
  return {};
#endif
}

}  // namespace ega_infer
