// Host launcher of the fused beam step: raw pointers in, errors out as exceptions.
#include "beam_step.cuh"

#include <cstdint>

namespace ega_infer {

void launch_beam_step(const BeamStepArgs& args, void* workspace, int64_t workspace_bytes,
                      cudaStream_t stream) {
  detail::beam::run_beam_step(
      args, BeamStepLimits{}, workspace, workspace_bytes,
      [&](auto kernel, const char* name, dim3 grid, int threads, int64_t smem, const auto& params) {
        allow_dynamic_smem(kernel, smem, name);
        kernel<<<grid, threads, static_cast<size_t>(smem), stream>>>(params);
        EGA_CHECK_CUDA(cudaGetLastError(), name);
      });
}

}  // namespace ega_infer
