// C entry point of the emulated decode attention: csrc/decode_attention.cuh itself (kernels, plan,
// path choice, argument checks) run through detail::dattn::run_decode_attention, as
// decode_attention.cu launches it, with the PTX primitives bound to the emulator's.
#include "cuda_emu.h"

#include "decode_attention.cuh"
#include "emu_entry.h"

namespace ega_infer {
namespace detail {
namespace dattn {

void cp_async_16(void* smem, const void* gmem, int src_bytes) { ega_emu::cp_async_16(smem, gmem, src_bytes); }
void cp_async_commit() { ega_emu::cp_async_commit(); }
template <int N>
void cp_async_wait() {
  ega_emu::cp_async_wait(N);
}
void ldmatrix_x4(uint32_t (&r)[4], const void* smem) { ega_emu::ldmatrix_x4(r, smem, false); }
void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem) { ega_emu::ldmatrix_x4(r, smem, true); }
template <typename T>
void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  ega_emu::mma_m16n8k16(d, a, b0, b1, std::is_same_v<T, __nv_bfloat16>);
}

}  // namespace dattn
}  // namespace detail
}  // namespace ega_infer

extern "C" {

// shape: [N, P, Hq, Hkv, S, T, D]; strides (elements): q[4], ctx_k[4], ctx_v[4], own_k[5],
// own_v[5] back to back; own_k / own_v null when T == 0. out: [N, P, Hq, D] contiguous in the
// input dtype. log: the launches made, or the error. Returns 0, 1 (invalid argument) or 2.
int ega_emu_decode_attention(int dtype, const int64_t* shape, const void* q, const void* ctx_k, const void* ctx_v,
                             const void* ctx_len, int ctx_len_int64, const void* own_k, const void* own_v,
                             const int64_t* strides, float scale, int num_sms, int64_t num_splits, void* out,
                             char* log, int64_t log_len) {
  return ega_emu::guarded_call(log, log_len, [&](std::string& text) {
    const ega_infer::DecodeAttentionShape s{shape[0], shape[1], shape[2], shape[3], shape[4], shape[5], shape[6]};
    ega_infer::DecodeAttentionTensors t{};
    t.q = q;
    t.ctx_k = ctx_k;
    t.ctx_v = ctx_v;
    t.ctx_len = ctx_len;
    t.own_k = own_k;
    t.own_v = own_v;
    t.ctx_len_int64 = ctx_len_int64 != 0;
    for (int i = 0; i < 4; ++i) {
      t.q_stride[i] = strides[i];
      t.ctx_k_stride[i] = strides[4 + i];
      t.ctx_v_stride[i] = strides[8 + i];
    }
    for (int i = 0; i < 5; ++i) {
      t.own_k_stride[i] = strides[12 + i];
      t.own_v_stride[i] = strides[17 + i];
    }
    const auto code = static_cast<ega_infer::DType>(dtype);
    // The workspace as the binding sizes it (decode_attention_workspace_bytes: path-independent).
    const int64_t bytes = ega_infer::plan_decode_attention(code, s, false, num_sms, num_splits).workspace_bytes;
    ega_emu::Guarded workspace(static_cast<size_t>(bytes));
    const size_t out_bytes = static_cast<size_t>(s.requests * s.beams * s.q_heads * s.head_dim) *
                             static_cast<size_t>(code == ega_infer::DType::kFloat32 ? 4 : 2);
    ega_emu::Guarded result(out_bytes);
    ega_infer::detail::dattn::run_decode_attention(code, s, t, result.data(), scale, num_sms, num_splits,
                                                   bytes > 0 ? workspace.data() : nullptr, bytes,
                                                   ega_emu::Launcher{&text});
    workspace.check("the workspace");
    result.copy_to(out, "out");
  });
}

// The kernels' limits, as the Python wrapper must mirror them.
int64_t ega_emu_decode_attention_max_head_dim() { return ega_infer::kDecodeAttentionMaxHeadDim; }
int64_t ega_emu_decode_attention_mma_max_head_dim() { return ega_infer::kDecodeAttentionMmaMaxHeadDim; }

}  // extern "C"
