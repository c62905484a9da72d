// Host launcher of the decode attention kernels: raw pointers in, errors out as exceptions.
#include "decode_attention.cuh"

#include <cstdint>

namespace ega_infer {

void launch_decode_attention(DType dtype, const DecodeAttentionShape& shape,
                             const DecodeAttentionTensors& tensors, void* out, float scale,
                             int num_sms, int64_t num_splits, void* workspace,
                             int64_t workspace_bytes, cudaStream_t stream) {
  detail::dattn::run_decode_attention(
      dtype, shape, tensors, out, scale, num_sms, num_splits, workspace, workspace_bytes,
      [&](auto kernel, const char* name, dim3 grid, int threads, int64_t smem, const auto&... args) {
        allow_dynamic_smem(kernel, smem, name);
        kernel<<<grid, threads, static_cast<size_t>(smem), stream>>>(args...);
        EGA_CHECK_CUDA(cudaGetLastError(), name);
      });
}

}  // namespace ega_infer
