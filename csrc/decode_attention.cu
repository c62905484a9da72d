// Host launcher of the decode attention kernels: raw pointers in, errors out as exceptions.
#include "decode_attention.cuh"

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace ega_infer {
namespace {

[[noreturn]] void launch_error(const char* file, int line, const char* kernel, const std::string& what,
                               bool bad_argument) {
  const std::string message = std::string(file) + ":" + std::to_string(line) + ": " + kernel + ": " + what;
  if (bad_argument) throw std::invalid_argument(message);
  throw std::runtime_error(message);
}

#define EGA_DATTN_CHECK_ARG(cond, what)                                                        \
  do {                                                                                         \
    if (!(cond)) launch_error(__FILE__, __LINE__, "decode_attention", (what), true);           \
  } while (0)

#define EGA_DATTN_CHECK_CUDA(call, kernel)                                                     \
  do {                                                                                         \
    const cudaError_t err_ = (call);                                                           \
    if (err_ != cudaSuccess) {                                                                 \
      launch_error(__FILE__, __LINE__, (kernel),                                               \
                   std::string(cudaGetErrorName(err_)) + ": " + cudaGetErrorString(err_), false); \
    }                                                                                          \
  } while (0)

// Launch `kernel` with `smem` bytes of dynamic shared memory (opting in past 48 KiB).
template <typename Kernel>
void launch_main(Kernel kernel, const char* name, dim3 grid, int threads, int64_t smem,
                 const DecodeAttentionParams& params, cudaStream_t stream) {
  EGA_DATTN_CHECK_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(smem)), name);
  kernel<<<grid, threads, static_cast<size_t>(smem), stream>>>(params);
  EGA_DATTN_CHECK_CUDA(cudaGetLastError(), name);
}

template <typename T>
void launch_typed(const DecodeAttentionPlan& plan, const DecodeAttentionParams& params,
                  cudaStream_t stream) {
  using namespace detail::dattn;
  const dim3 grid(static_cast<unsigned int>(plan.programs), static_cast<unsigned int>(plan.num_splits));
  const int d = params.head_dim;
  const int64_t smem = decode_attention_smem_bytes(plan.path, d);
  if (plan.path == DecodeAttentionPath::kMma) {
    if constexpr (!std::is_same_v<T, float>) {
      constexpr const char* kName = "decode_attention_mma_kernel";
      if (d <= 64) {
        launch_main(decode_attention_mma_kernel<T, 4>, kName, grid, kMmaThreads, smem, params, stream);
      } else {
        launch_main(decode_attention_mma_kernel<T, 8>, kName, grid, kMmaThreads, smem, params, stream);
      }
    }
  } else {
    constexpr const char* kName = "decode_attention_scalar_kernel";
    if (d <= 64) {
      launch_main(decode_attention_scalar_kernel<T, 2>, kName, grid, kScalarThreads, smem, params, stream);
    } else if (d <= 128) {
      launch_main(decode_attention_scalar_kernel<T, 4>, kName, grid, kScalarThreads, smem, params, stream);
    } else {
      launch_main(decode_attention_scalar_kernel<T, 8>, kName, grid, kScalarThreads, smem, params, stream);
    }
  }
  if (plan.num_splits > 1) {
    const int64_t blocks = (params.total_rows + kCombineWarps - 1) / kCombineWarps;
    decode_attention_combine_kernel<T><<<static_cast<unsigned int>(blocks), kCombineWarps * 32, 0, stream>>>(
        params.part_acc, params.part_m, params.part_l, static_cast<T*>(params.out), params.total_rows,
        d, static_cast<int>(plan.num_splits));
    EGA_DATTN_CHECK_CUDA(cudaGetLastError(), "decode_attention_combine_kernel");
  }
}

}  // namespace

void launch_decode_attention(LogitsDtype dtype, const DecodeAttentionShape& s,
                             const DecodeAttentionTensors& tensors, void* out, float scale,
                             int num_sms, int64_t num_splits, void* workspace,
                             int64_t workspace_bytes, cudaStream_t stream) {
  EGA_DATTN_CHECK_ARG(s.requests >= 0 && s.beams >= 0 && s.q_heads >= 0 && s.ctx_size >= 0 &&
                          s.own_len >= 0,
                      "sizes must be >= 0");
  EGA_DATTN_CHECK_ARG(s.kv_heads >= 1 && s.q_heads % s.kv_heads == 0,
                      "kv_heads = " + std::to_string(s.kv_heads) + " must be >= 1 and divide q_heads = " +
                          std::to_string(s.q_heads));
  EGA_DATTN_CHECK_ARG(s.head_dim >= 1 && s.head_dim <= kDecodeAttentionMaxHeadDim,
                      "head_dim = " + std::to_string(s.head_dim) + "; expected 1 .. " +
                          std::to_string(kDecodeAttentionMaxHeadDim));
  EGA_DATTN_CHECK_ARG(num_splits >= 0, "num_splits must be >= 0 (0 = choose)");
  EGA_DATTN_CHECK_ARG(dtype == LogitsDtype::kFloat32 || dtype == LogitsDtype::kBFloat16 ||
                          dtype == LogitsDtype::kFloat16,
                      "unknown dtype code " + std::to_string(static_cast<int>(dtype)));
  const int64_t total_rows = s.requests * s.beams * s.q_heads;
  if (total_rows == 0) return;
  EGA_DATTN_CHECK_ARG(tensors.q != nullptr && tensors.ctx_len != nullptr && out != nullptr,
                      "q, ctx_len and out must be non-null");
  EGA_DATTN_CHECK_ARG(s.ctx_size == 0 || (tensors.ctx_k != nullptr && tensors.ctx_v != nullptr),
                      "ctx_k and ctx_v must be non-null when ctx_size > 0");
  EGA_DATTN_CHECK_ARG(s.own_len == 0 || (tensors.own_k != nullptr && tensors.own_v != nullptr),
                      "own_k and own_v must be non-null when own_len > 0");

  const DecodeAttentionPlan plan = plan_decode_attention(
      dtype, s, decode_attention_mma_ok(dtype, s, tensors), num_sms, num_splits);
  EGA_DATTN_CHECK_ARG(plan.programs <= 0x7fffffff, "N * Hkv * row blocks = " + std::to_string(plan.programs) +
                                                       " exceeds the grid limit 2^31 - 1");
  EGA_DATTN_CHECK_ARG(plan.num_splits <= 65535, "num_splits = " + std::to_string(plan.num_splits) +
                                                    " exceeds the grid limit 65535");
  EGA_DATTN_CHECK_ARG(workspace_bytes >= plan.workspace_bytes,
                      "workspace has " + std::to_string(workspace_bytes) + " bytes; the plan needs " +
                          std::to_string(plan.workspace_bytes));
  EGA_DATTN_CHECK_ARG(plan.workspace_bytes == 0 ||
                          (workspace != nullptr && reinterpret_cast<uintptr_t>(workspace) % 16 == 0),
                      "workspace must be non-null and 16-byte aligned");

  const DecodeAttentionParams params =
      make_decode_attention_params(plan, s, tensors, out, scale, workspace);
  switch (dtype) {
    case LogitsDtype::kFloat32:
      launch_typed<float>(plan, params, stream);
      break;
    case LogitsDtype::kBFloat16:
      launch_typed<__nv_bfloat16>(plan, params, stream);
      break;
    case LogitsDtype::kFloat16:
      launch_typed<__half>(plan, params, stream);
      break;
  }
}

}  // namespace ega_infer
