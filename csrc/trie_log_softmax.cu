// Host launcher of the trie log-softmax kernel: raw pointers in, errors out as exceptions.
#include "trie_log_softmax.cuh"

#include <cstdint>
#include <stdexcept>
#include <string>

namespace ega_infer {
namespace {

[[noreturn]] void launch_error(const char* file, int line, const std::string& what) {
  throw std::runtime_error(std::string(file) + ":" + std::to_string(line) +
                           ": trie_log_softmax_kernel: " + what);
}

#define EGA_LAUNCH_CHECK(cond, what) \
  do {                               \
    if (!(cond)) launch_error(__FILE__, __LINE__, (what)); \
  } while (0)

template <typename T>
void launch_typed(const void* logits, int64_t logits_row_stride, const int64_t* row_node,
                  const int64_t* child_ptr, const int32_t* child_code, const float* child_max_bid,
                  const uint8_t* allowed, float* out, int64_t rows, int64_t vocab, float alpha,
                  float beta, cudaStream_t stream) {
  detail::trie_log_softmax_kernel<T><<<static_cast<unsigned int>(rows), detail::kTrieSoftmaxThreads, 0, stream>>>(
      static_cast<const T*>(logits), logits_row_stride, row_node, child_ptr, child_code,
      child_max_bid, allowed, out, vocab, alpha, beta);
}

}  // namespace

void launch_trie_log_softmax(const void* logits, LogitsDtype logits_dtype, int64_t logits_row_stride,
                             const int64_t* row_node, const int64_t* child_ptr,
                             const int32_t* child_code, const float* child_max_bid,
                             const uint8_t* allowed, float* out, int64_t rows, int64_t vocab,
                             float alpha, float beta, cudaStream_t stream) {
  EGA_LAUNCH_CHECK(rows >= 0 && vocab >= 0, "rows and vocab must be >= 0");
  EGA_LAUNCH_CHECK(rows <= 0x7fffffff, "rows = " + std::to_string(rows) + " exceeds the grid limit 2^31 - 1");
  if (rows == 0) return;
  EGA_LAUNCH_CHECK(row_node != nullptr && child_ptr != nullptr && out != nullptr,
                   "row_node, child_ptr and out must be non-null");
  EGA_LAUNCH_CHECK(vocab == 0 || logits != nullptr, "logits must be non-null");
  EGA_LAUNCH_CHECK(logits_row_stride >= 0, "logits_row_stride must be >= 0");
  switch (logits_dtype) {
    case LogitsDtype::kFloat32:
      launch_typed<float>(logits, logits_row_stride, row_node, child_ptr, child_code, child_max_bid,
                          allowed, out, rows, vocab, alpha, beta, stream);
      break;
    case LogitsDtype::kBFloat16:
      launch_typed<__nv_bfloat16>(logits, logits_row_stride, row_node, child_ptr, child_code,
                                  child_max_bid, allowed, out, rows, vocab, alpha, beta, stream);
      break;
    case LogitsDtype::kFloat16:
      launch_typed<__half>(logits, logits_row_stride, row_node, child_ptr, child_code, child_max_bid,
                           allowed, out, rows, vocab, alpha, beta, stream);
      break;
    default:
      launch_error(__FILE__, __LINE__, "unknown logits dtype code " + std::to_string(static_cast<int>(logits_dtype)));
  }
  const cudaError_t err = cudaGetLastError();
  EGA_LAUNCH_CHECK(err == cudaSuccess, std::string("launch failed: ") + cudaGetErrorName(err) + ": " +
                                           cudaGetErrorString(err));
}

std::vector<int> compiled_cuda_archs() {
#ifdef __CUDA_ARCH_LIST__
  return {__CUDA_ARCH_LIST__};
#else
  return {};
#endif
}

}  // namespace ega_infer
