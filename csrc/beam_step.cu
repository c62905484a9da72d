// Host launcher of the fused beam step: raw pointers in, errors out as exceptions.
#include "beam_step.cuh"

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace ega_infer {
namespace {

constexpr const char* kKernels = "beam_step_rows_kernel/beam_step_merge_kernel";

[[noreturn]] void step_error(const char* file, int line, const char* kernel, const std::string& what) {
  throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + kernel + ": " + what);
}

#define EGA_STEP_CHECK(cond, what)                                 \
  do {                                                             \
    if (!(cond)) step_error(__FILE__, __LINE__, kKernels, (what)); \
  } while (0)

#define EGA_CUDA_CHECK(expr, kernel)                                                             \
  do {                                                                                           \
    const cudaError_t err_ = (expr);                                                             \
    if (err_ != cudaSuccess)                                                                     \
      step_error(__FILE__, __LINE__, (kernel),                                                   \
                 std::string(#expr) + " failed: " + cudaGetErrorName(err_) + ": " +             \
                     cudaGetErrorString(err_));                                                  \
  } while (0)

void check_shape(int64_t requests, int64_t beams, int64_t vocab, int64_t k) {
  if (requests < 1 || beams < 1 || vocab < 1 || k < 1)
    throw std::invalid_argument("beam_step: requests, beams, vocab and k must be >= 1; got " +
                                std::to_string(requests) + ", " + std::to_string(beams) + ", " +
                                std::to_string(vocab) + ", " + std::to_string(k));
  if (beams > 0xffffffffLL / vocab)
    throw std::invalid_argument("beam_step: beams * vocab = " + std::to_string(beams) + " * " +
                                std::to_string(vocab) + " must be < 2^32 (keys hold beam * vocab + rank)");
  if (requests * beams > 0x7fffffffLL)
    throw std::invalid_argument("beam_step: requests * beams = " + std::to_string(requests * beams) +
                                " exceeds the grid limit 2^31 - 1");
}

// Opts a kernel into more than 48 KiB of dynamic shared memory when it needs it.
template <typename Kernel>
void allow_smem(Kernel kernel, int64_t bytes, const char* name) {
  if (bytes > 48 * 1024)
    EGA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)),
                   name);
}

template <typename T>
void launch_typed(const detail::beam::Params& params, cudaStream_t stream) {
  namespace beam = detail::beam;
  const BeamStepPlan& plan = params.plan;
  const int64_t rows = plan.requests * plan.beams;
  const int64_t row_smem = plan.row_smem_children * 4;
  const int64_t merge_smem = plan.merge_smem_keys * 8;
  const auto rows_kernel = beam::beam_step_rows_kernel<T, beam::kRowThreads>;
  const auto merge_kernel = beam::beam_step_merge_kernel<T, beam::kMergeThreads>;
  allow_smem(rows_kernel, row_smem, "beam_step_rows_kernel");
  allow_smem(merge_kernel, merge_smem, "beam_step_merge_kernel");

  rows_kernel<<<static_cast<unsigned int>(rows), beam::kRowThreads, static_cast<size_t>(row_smem), stream>>>(params);
  EGA_CUDA_CHECK(cudaGetLastError(), "beam_step_rows_kernel");
  const int64_t merge_blocks = plan.requests * plan.level[0].nodes;
  merge_kernel<<<static_cast<unsigned int>(merge_blocks), beam::kMergeThreads, static_cast<size_t>(merge_smem), stream>>>(params);
  EGA_CUDA_CHECK(cudaGetLastError(), "beam_step_merge_kernel");
}

}  // namespace

int64_t beam_step_workspace_bytes(int64_t requests, int64_t beams, int64_t vocab, int64_t k) {
  check_shape(requests, beams, vocab, k);
  return plan_beam_step(requests, beams, vocab, k).bytes;
}

void launch_beam_step(const void* logits, LogitsDtype logits_dtype, int64_t logits_row_stride,
                      const float* beam_scores, const int64_t* row_node, const int64_t* child_ptr,
                      const int32_t* child_code, const float* child_max_bid, const uint8_t* allowed,
                      int64_t requests, int64_t beams, int64_t vocab, int64_t k, float alpha,
                      float beta, void* workspace, int64_t workspace_bytes, float* score,
                      int64_t* parent, int64_t* token, int64_t* child, float* logp,
                      cudaStream_t stream) {
  try {
    check_shape(requests, beams, vocab, k);
  } catch (const std::invalid_argument& e) {
    step_error(__FILE__, __LINE__, kKernels, e.what());
  }
  const BeamStepPlan plan = plan_beam_step(requests, beams, vocab, k);
  EGA_STEP_CHECK(plan.levels <= kBeamStepMaxLevels, "merge tree deeper than kBeamStepMaxLevels");
  EGA_STEP_CHECK(workspace != nullptr && workspace_bytes >= plan.bytes,
                 "workspace of " + std::to_string(workspace_bytes) + " bytes; need " +
                     std::to_string(plan.bytes) + " (beam_step_workspace_bytes)");
  EGA_STEP_CHECK(reinterpret_cast<uintptr_t>(workspace) % 256 == 0, "workspace must be 256-byte aligned");
  EGA_STEP_CHECK(logits != nullptr && beam_scores != nullptr && row_node != nullptr &&
                     child_ptr != nullptr && score != nullptr && parent != nullptr &&
                     token != nullptr && child != nullptr && logp != nullptr,
                 "logits, beam_scores, row_node, child_ptr and the outputs must be non-null");
  EGA_STEP_CHECK(logits_row_stride >= 0, "logits_row_stride must be >= 0");

  detail::beam::Params params = detail::beam::make_params(plan, workspace);
  params.logits = logits;
  params.logits_row_stride = logits_row_stride;
  params.beam_scores = beam_scores;
  params.row_node = row_node;
  params.child_ptr = child_ptr;
  params.allowed = allowed;
  params.scoring = detail::beam::Scoring{child_code, child_max_bid, vocab, alpha, beta,
                                         std::log(1.0f + beta)};
  params.score = score;
  params.parent = parent;
  params.token = token;
  params.child = child;
  params.logp = logp;

  switch (logits_dtype) {
    case LogitsDtype::kFloat32:
      launch_typed<float>(params, stream);
      break;
    case LogitsDtype::kBFloat16:
      launch_typed<__nv_bfloat16>(params, stream);
      break;
    case LogitsDtype::kFloat16:
      launch_typed<__half>(params, stream);
      break;
    default:
      step_error(__FILE__, __LINE__, kKernels,
                 "unknown logits dtype code " + std::to_string(static_cast<int>(logits_dtype)));
  }
}

}  // namespace ega_infer
