// Trie-masked, bid-weighted log-softmax: raw-pointer CUDA kernel (no torch, no pybind11).
//
// For row r at trie node n = row_node[r] and each child j of n with code c = child_code[j]:
//   w_j = log(child_max_bid[j]^alpha + beta),  v_j = float(logits[r, c]) + w_j
// admissible when w_j > -inf and (allowed == nullptr or allowed[r, c] != 0);
//   out[r, c] = v_j - logsumexp(v) for admissible children, -inf for every other code.
// A row with n < 0 or with no admissible child is all -inf. powf(0, 0) == 1, so alpha = beta = 0
// gives every child weight 0 (plain constrained decoding).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

namespace ega_infer {

enum class LogitsDtype : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// Launches one block per row on `stream`; throws std::runtime_error if the launch fails.
// logits: [rows, vocab] with row stride `logits_row_stride` (elements) and unit column stride;
// allowed: [rows, vocab] contiguous uint8 or nullptr; out: [rows, vocab] contiguous float32.
void launch_trie_log_softmax(const void* logits, LogitsDtype logits_dtype, int64_t logits_row_stride,
                             const int64_t* row_node, const int64_t* child_ptr,
                             const int32_t* child_code, const float* child_max_bid,
                             const uint8_t* allowed, float* out, int64_t rows, int64_t vocab,
                             float alpha, float beta, cudaStream_t stream);

// CUDA architectures the kernels were compiled for (nvcc's __CUDA_ARCH_LIST__), e.g. {800, 900}.
std::vector<int> compiled_cuda_archs();

#if defined(__CUDACC__)  // the kernel itself: nvcc only; host-compiled bindings see the API above
namespace detail {

constexpr int kTrieSoftmaxThreads = 256;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

// Running (max, sum of exp(x - max)) pair; merge is associative and safe for an empty side.
struct MaxSum {
  float m;
  float s;
};

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, 0.0f};
  return {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

// Child j's score for this row, or -inf when the child is not admissible.
template <typename T>
__device__ __forceinline__ float child_score(const T* logits_row, const uint8_t* allowed_row,
                                             const int32_t* child_code, const float* child_max_bid,
                                             int64_t j, int64_t vocab, float alpha, float beta,
                                             int32_t* code_out) {
  const int32_t code = child_code[j];
  *code_out = code;
  if (code < 0 || code >= vocab) return -INFINITY;  // malformed trie: never write out of the row
  const float w = logf(powf(child_max_bid[j], alpha) + beta);
  if (!(w > -INFINITY)) return -INFINITY;  // also drops a NaN weight, like the reference
  if (allowed_row != nullptr && allowed_row[code] == 0) return -INFINITY;
  return to_float(logits_row[code]) + w;
}

template <typename T>
__global__ void __launch_bounds__(kTrieSoftmaxThreads)
trie_log_softmax_kernel(const T* __restrict__ logits, int64_t logits_row_stride,
                        const int64_t* __restrict__ row_node, const int64_t* __restrict__ child_ptr,
                        const int32_t* __restrict__ child_code,
                        const float* __restrict__ child_max_bid,
                        const uint8_t* __restrict__ allowed, float* __restrict__ out,
                        int64_t vocab, float alpha, float beta) {
  constexpr int kWarps = kTrieSoftmaxThreads / 32;
  __shared__ MaxSum warp_partials[kWarps];
  __shared__ MaxSum row_total;

  const int64_t r = blockIdx.x;
  float* out_row = out + r * vocab;
  for (int64_t v = threadIdx.x; v < vocab; v += kTrieSoftmaxThreads) out_row[v] = -INFINITY;

  const int64_t node = row_node[r];
  if (node < 0) return;  // dead beam: uniform across the block
  const int64_t begin = child_ptr[node];
  const int64_t end = child_ptr[node + 1];
  const T* logits_row = logits + r * logits_row_stride;
  const uint8_t* allowed_row = allowed == nullptr ? nullptr : allowed + r * vocab;

  // Pass 1: per-thread online max / sum of exp, then a block reduction.
  MaxSum acc{-INFINITY, 0.0f};
  for (int64_t j = begin + threadIdx.x; j < end; j += kTrieSoftmaxThreads) {
    int32_t code;
    const float v = child_score(logits_row, allowed_row, child_code, child_max_bid, j, vocab, alpha, beta, &code);
    acc = merge(acc, MaxSum{v, v == -INFINITY ? 0.0f : 1.0f});
  }
  for (int offset = 16; offset > 0; offset >>= 1) {
    const MaxSum other{__shfl_xor_sync(0xffffffffu, acc.m, offset),
                       __shfl_xor_sync(0xffffffffu, acc.s, offset)};
    acc = merge(acc, other);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_partials[warp] = acc;
  __syncthreads();  // also orders the -inf fill above before the writes below
  if (warp == 0) {
    acc = lane < kWarps ? warp_partials[lane] : MaxSum{-INFINITY, 0.0f};
    for (int offset = 16; offset > 0; offset >>= 1) {
      const MaxSum other{__shfl_xor_sync(0xffffffffu, acc.m, offset),
                         __shfl_xor_sync(0xffffffffu, acc.s, offset)};
      acc = merge(acc, other);
    }
    if (lane == 0) row_total = acc;
  }
  __syncthreads();
  if (row_total.m == -INFINITY) return;  // no admissible child: the row stays -inf
  const float lse = row_total.m + logf(row_total.s);

  // Pass 2: write the admissible children.
  for (int64_t j = begin + threadIdx.x; j < end; j += kTrieSoftmaxThreads) {
    int32_t code;
    const float v = child_score(logits_row, allowed_row, child_code, child_max_bid, j, vocab, alpha, beta, &code);
    if (v != -INFINITY) out_row[code] = v - lse;
  }
}

}  // namespace detail
#endif  // __CUDACC__
}  // namespace ega_infer
