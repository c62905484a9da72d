// ega_infer._cuda: thin pybind11 bindings over the raw-pointer CUDA launchers.
//
// Only integers cross this boundary (device pointers, a cudaStream_t handle), never torch
// objects, so the module does not depend on torch's C++ ABI. cudart is linked statically.
// Host code only: CMake compiles this file with the C++ compiler, since nvcc would parse the
// pybind11 headers once per GPU architecture (about twice the build time on a 2-core machine).
// The kernels live in beam_step.cu and decode_attention.cu, the __CUDA_ARCH_LIST__ they were built
// for in common.cu.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "beam_step.cuh"
#include "common.cuh"
#include "decode_attention.cuh"

namespace py = pybind11;

namespace {

ega_infer::DType parse_dtype(const std::string& name) {
  if (name == "float32") return ega_infer::DType::kFloat32;
  if (name == "bfloat16") return ega_infer::DType::kBFloat16;
  if (name == "float16") return ega_infer::DType::kFloat16;
  throw std::invalid_argument("dtype: '" + name + "'; expected 'float32', 'bfloat16' or 'float16'");
}

template <typename T>
T* as_ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

void beam_step(uintptr_t logits_ptr, const std::string& logits_dtype, int64_t logits_row_stride,
               uintptr_t beam_scores_ptr, uintptr_t row_node_ptr, uintptr_t child_ptr_ptr,
               uintptr_t child_code_ptr, uintptr_t child_max_bid_ptr, uintptr_t allowed_ptr,
               uintptr_t override_child_ptr, uintptr_t override_bid_ptr, int64_t override_entries,
               int64_t requests, int64_t beams, int64_t vocab, int64_t k, float alpha,
               float log_beta, uintptr_t workspace_ptr, int64_t workspace_bytes, uintptr_t score_ptr,
               uintptr_t parent_ptr, uintptr_t token_ptr, uintptr_t child_ptr_out,
               uintptr_t logp_ptr, uintptr_t stream) {
  ega_infer::BeamStepArgs args{};
  args.logits = as_ptr<const void>(logits_ptr);
  args.logits_dtype = parse_dtype(logits_dtype);
  args.logits_row_stride = logits_row_stride;
  args.beam_scores = as_ptr<const float>(beam_scores_ptr);
  args.row_node = as_ptr<const int64_t>(row_node_ptr);
  args.child_ptr = as_ptr<const int64_t>(child_ptr_ptr);
  args.child_code = as_ptr<const int32_t>(child_code_ptr);
  args.child_max_bid = as_ptr<const float>(child_max_bid_ptr);
  args.allowed = as_ptr<const uint8_t>(allowed_ptr);
  args.override_child = as_ptr<const int64_t>(override_child_ptr);
  args.override_bid = as_ptr<const float>(override_bid_ptr);
  args.override_entries = override_entries;
  args.requests = requests;
  args.beams = beams;
  args.vocab = vocab;
  args.k = k;
  args.alpha = alpha;
  args.log_beta = log_beta;
  args.score = as_ptr<float>(score_ptr);
  args.parent = as_ptr<int64_t>(parent_ptr);
  args.token = as_ptr<int64_t>(token_ptr);
  args.child = as_ptr<int64_t>(child_ptr_out);
  args.logp = as_ptr<float>(logp_ptr);
  py::gil_scoped_release release;
  ega_infer::launch_beam_step(args, as_ptr<void>(workspace_ptr), workspace_bytes,
                              reinterpret_cast<cudaStream_t>(stream));
}

int64_t beam_step_workspace_bytes(int64_t requests, int64_t beams, int64_t vocab, int64_t k) {
  return ega_infer::beam_step_workspace_bytes(requests, beams, vocab, k);
}

// [N, P, Hq, Hkv, S, T, D] from Python.
ega_infer::DecodeAttentionShape attention_shape(const std::vector<int64_t>& shape) {
  if (shape.size() != 7) {
    throw std::invalid_argument("decode_attention: shape has " + std::to_string(shape.size()) +
                                " entries; expected 7 (N, P, Hq, Hkv, S, T, D)");
  }
  for (const int64_t v : shape) {
    if (v < 0) throw std::invalid_argument("decode_attention: shape entries must be >= 0");
  }
  if (shape[3] < 1) throw std::invalid_argument("decode_attention: Hkv must be >= 1");
  return {shape[0], shape[1], shape[2], shape[3], shape[4], shape[5], shape[6]};
}

template <size_t N>
void copy_strides(const char* name, const std::vector<int64_t>& from, int64_t (&to)[N]) {
  if (from.size() != N) {
    throw std::invalid_argument(std::string("decode_attention: ") + name + " has " +
                                std::to_string(from.size()) + " strides; expected " + std::to_string(N));
  }
  for (size_t i = 0; i < N; ++i) to[i] = from[i];
}

int64_t decode_attention_workspace_bytes(const std::string& dtype, const std::vector<int64_t>& shape,
                                         int num_sms, int64_t num_splits) {
  return ega_infer::plan_decode_attention(parse_dtype(dtype), attention_shape(shape), false, num_sms,
                                          num_splits)
      .workspace_bytes;
}

void decode_attention(uintptr_t q_ptr, uintptr_t ctx_k_ptr, uintptr_t ctx_v_ptr,
                      uintptr_t ctx_len_ptr, bool ctx_len_int64, uintptr_t own_k_ptr,
                      uintptr_t own_v_ptr, uintptr_t out_ptr, const std::string& dtype,
                      const std::vector<int64_t>& shape, const std::vector<int64_t>& q_stride,
                      const std::vector<int64_t>& ctx_k_stride, const std::vector<int64_t>& ctx_v_stride,
                      const std::vector<int64_t>& own_k_stride, const std::vector<int64_t>& own_v_stride,
                      float scale, int num_sms, int64_t num_splits, uintptr_t workspace_ptr,
                      int64_t workspace_bytes, uintptr_t stream) {
  const ega_infer::DType code = parse_dtype(dtype);
  const ega_infer::DecodeAttentionShape s = attention_shape(shape);
  ega_infer::DecodeAttentionTensors t{};
  t.q = as_ptr<const void>(q_ptr);
  t.ctx_k = as_ptr<const void>(ctx_k_ptr);
  t.ctx_v = as_ptr<const void>(ctx_v_ptr);
  t.ctx_len = as_ptr<const void>(ctx_len_ptr);
  t.own_k = as_ptr<const void>(own_k_ptr);
  t.own_v = as_ptr<const void>(own_v_ptr);
  t.ctx_len_int64 = ctx_len_int64;
  copy_strides("q", q_stride, t.q_stride);
  copy_strides("ctx_k", ctx_k_stride, t.ctx_k_stride);
  copy_strides("ctx_v", ctx_v_stride, t.ctx_v_stride);
  copy_strides("own_k", own_k_stride, t.own_k_stride);
  copy_strides("own_v", own_v_stride, t.own_v_stride);
  py::gil_scoped_release release;
  ega_infer::launch_decode_attention(code, s, t, as_ptr<void>(out_ptr), scale, num_sms, num_splits,
                                     as_ptr<void>(workspace_ptr), workspace_bytes,
                                     reinterpret_cast<cudaStream_t>(stream));
}

int driver_version() {
  int version = 0;
  if (cudaDriverGetVersion(&version) != cudaSuccess) return 0;
  return version;
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "ega_infer CUDA kernels over raw device pointers (cudart linked statically).";
  m.def("beam_step_workspace_bytes", &beam_step_workspace_bytes, py::arg("requests"),
        py::arg("beams"), py::arg("vocab"), py::arg("k"),
        "Bytes of device workspace beam_step needs for [requests * beams, vocab] logits and k "
        "beams kept per request (ValueError when a size is < 1 or beams * vocab >= 2^32).");
  m.def("beam_step", &beam_step, py::arg("logits_ptr"), py::arg("logits_dtype"),
        py::arg("logits_row_stride"), py::arg("beam_scores_ptr"), py::arg("row_node_ptr"),
        py::arg("child_ptr_ptr"), py::arg("child_code_ptr"), py::arg("child_max_bid_ptr"),
        py::arg("allowed_ptr"), py::arg("override_child_ptr"), py::arg("override_bid_ptr"),
        py::arg("override_entries"), py::arg("requests"), py::arg("beams"), py::arg("vocab"),
        py::arg("k"), py::arg("alpha"), py::arg("log_beta"), py::arg("workspace_ptr"),
        py::arg("workspace_bytes"), py::arg("score_ptr"), py::arg("parent_ptr"),
        py::arg("token_ptr"), py::arg("child_out_ptr"), py::arg("logp_ptr"), py::arg("stream"),
        "Launch the fused beam step (two kernels). Pointers: logits [N*P, V] (row stride given), "
        "beam_scores float32 [N, P], row_node int64 [N*P], child_ptr int64, child_code int32, "
        "child_max_bid float32, allowed uint8 [N*P, V] or 0, override_child int64 / override_bid "
        "float32 [N, override_entries] (a request's own bids for the children it names, -1 = no "
        "entry; both 0 for none), workspace (beam_step_workspace_bytes, 256-byte aligned); outputs "
        "[N, k]: score, logp float32, parent, token, child int64. Token weight "
        "logaddexp(alpha * log(bid), log_beta), with log_beta = log(beta) (-inf for 0).");
  m.def("decode_attention_workspace_bytes", &decode_attention_workspace_bytes, py::arg("dtype"),
        py::arg("shape"), py::arg("num_sms"), py::arg("num_splits"),
        "Bytes of float32 split-K partials decode_attention needs for shape [N, P, Hq, Hkv, S, T, D] "
        "(0 when it runs unsplit); num_splits: 0 = choose from num_sms, > 0 = force.");
  m.def("decode_attention", &decode_attention, py::arg("q_ptr"), py::arg("ctx_k_ptr"),
        py::arg("ctx_v_ptr"), py::arg("ctx_len_ptr"), py::arg("ctx_len_int64"), py::arg("own_k_ptr"),
        py::arg("own_v_ptr"), py::arg("out_ptr"), py::arg("dtype"), py::arg("shape"),
        py::arg("q_stride"), py::arg("ctx_k_stride"), py::arg("ctx_v_stride"),
        py::arg("own_k_stride"), py::arg("own_v_stride"), py::arg("scale"), py::arg("num_sms"),
        py::arg("num_splits"), py::arg("workspace_ptr"), py::arg("workspace_bytes"),
        py::arg("stream"),
        "Launch decode attention (one kernel, plus a merge kernel when split). Pointers: q "
        "[N, P, Hq, D], ctx_k/ctx_v [N, Hkv, S, D], ctx_len int32/int64 [N], own_k/own_v "
        "[N, P, Hkv, T, D] or 0 when T = 0, all with element strides; out contiguous [N, P, Hq, D] "
        "in dtype; workspace: decode_attention_workspace_bytes, 16-byte aligned.");
  m.attr("decode_attention_max_head_dim") = ega_infer::kDecodeAttentionMaxHeadDim;
  m.attr("decode_attention_mma_max_head_dim") = ega_infer::kDecodeAttentionMmaMaxHeadDim;
  m.def("compiled_archs", &ega_infer::compiled_cuda_archs,
        "CUDA architectures compiled in, from nvcc's __CUDA_ARCH_LIST__ (e.g. [800, 900]).");
  m.def("cuda_runtime_version", []() { return CUDART_VERSION; },
        "Version of the statically linked CUDA runtime (e.g. 13000).");
  m.def("cuda_driver_version", &driver_version,
        "CUDA version the installed driver supports (e.g. 13000), 0 without a driver.");
}
