// Decode attention of a request's beams over its shared context: raw-pointer CUDA kernels (no
// torch, no pybind11).
//
// For request n, beam p, query head h and its key/value head g = h / (Hq / Hkv):
//   keys   = ctx_k[n, g, :len_n] ++ own_k[n, p, g, :T],  values likewise,
//   len_n  = clamp(ctx_len[n], 0, S),
//   out[n, p, h] = softmax(scale * keys . q[n, p, h]) . values     (one softmax over both parts),
// float32 accumulation whatever the input dtype; a query with no key (len_n == 0, T == 0) gives 0.
// Semantics and the PyTorch reference: ega_infer/ops/decode_attention.py.
//
// Work decomposition (both paths). The query rows of one (request n, kv head g) are the P beams x
// G = Hq / Hkv heads of the group, flattened as row = beam * G + (h - g * G); a CTA takes 64
// consecutive rows ("row block") and one range of the context (a split), so the context K/V of
// (n, g) is streamed once per row block for all its beams and heads instead of once per beam.
// Grid: x = N * Hkv * row_blocks (row blocks of one (n, g) are adjacent, so when P * G > 64 their
// context reads meet in L2), y = num_splits. Rows past P * G are computed on zero queries and
// never stored. The beams' own positions (T, a handful in LazyAR) go to split 0: each row has its
// own keys there, so they are row-wise dot products, not matrix products.
//
// Split-K (flash-decoding): with fewer than 2 CTAs per SM and S >= 512, the context is cut into
// num_splits ranges of split_len (a multiple of 64). Each split writes its unnormalised float32
// accumulator with its running max (base 2) and sum to the workspace, and
// decode_attention_combine_kernel merges them. Splitting is only chosen when the partials cost
// <= ~10% of the context bytes (the Triton kernel's rule; 64 beams x 16 heads of partials cost
// more than a split saves).
//
// Path 1, tensor cores (bf16/fp16, D % 16 == 0, D <= 128, unit stride along D everywhere, context
// rows 16-byte aligned): decode_attention_mma_kernel, 4 warps, 16 query rows per warp. Registers
// are sized for D <= 64 or D <= 128 (kDTiles 4 / 8; ptxas: ~168 / ~254 registers, no spills on
// sm_80 and sm_90, so 2 CTAs per SM at D = 128).
//   * Q: each warp keeps its 16 x D query tile in registers as mma A fragments (read once).
//   * K/V: tiles of 64 keys x D staged in shared memory with cp.async (16-byte chunks, zero-fill
//     past the split's end), double-buffered (2 stages: tile i + 1 loads while tile i computes).
//     Rows are padded to D + 8 elements, which makes every 8-row ldmatrix conflict-free for any
//     D % 16 == 0 (row pitch = an odd multiple of 16 bytes). D = 128: 68 KiB of shared memory.
//   * S = Q K^T: mma.sync.m16n8k16 (row.col, f32 accumulate), B fragments by ldmatrix.x4 from K.
//   * Online softmax in base 2 on the S fragments (scores x scale x log2 e; row max and sum by
//     shuffles within the 4 lanes that share a row), FA2-style: P is repacked from the S
//     accumulator registers into A fragments (bf16/fp16) without going through shared memory.
//   * O += P V: mma.sync.m16n8k16 with V's B fragments by ldmatrix.x4.trans; O stays in registers
//     (16 x D float32 per warp) and is divided by the row sum once at the end.
// Path 2, scalar float32 (fp32 inputs, D not a multiple of 16 or > 128, other layouts; D <= 256):
//   decode_attention_scalar_kernel, 8 warps x 8 query rows, tiles of 32 keys converted to float32
//   in shared memory (K rows padded to an odd pitch). Scores: lane j scores key j for the warp's
//   8 rows; P V: lane c owns output columns c, c + 32, ...; exact fp32 FMAs, no tensor cores
//   (fp32 inputs are not rounded to TF32, matching the float32 reference to ~1e-6).
//
// Checked on every test run on the CPU (tests/test_cuda_emulation.py): both paths, the merge and
// the plan run through run_decode_attention below in a block emulator (a fiber per thread; mma,
// ldmatrix and cp.async emulated from the PTX ISA's fragment layouts) against the PyTorch
// reference. The inline PTX itself (the __CUDACC__ branch below) only runs on a GPU.
// Not tuned (nothing here has run on an H100 yet): tile sizes (64 rows x 64 keys, 4 warps) and the
// 2-stage pipeline are FA2-like starting points; with mma.sync (no wgmma/TMA) a Hopper kernel is
// expected to plateau well below the 400 TFLOP/s goal at 512 beams, and 64-row blocks re-read the
// context once per row block from L2 (512 beams x 4 heads = 32 row blocks per (n, g)). Next steps,
// measured: 128-row blocks (8 warps, or 32 rows per warp), separate K and V cp.async groups so
// Q K^T starts before V lands, 3 stages, a persistent grid, and a Hopper wgmma + TMA variant
// (sm_90a) for the compute-bound 512-beam case. The split heuristic mirrors the Triton kernel's.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "common.cuh"

namespace ega_infer {

constexpr int64_t kDecodeAttentionMaxHeadDim = 256;  // the scalar path's per-lane accumulator
constexpr int64_t kDecodeAttentionMmaMaxHeadDim = 128;
constexpr int64_t kDecodeAttentionRowBlock = 64;   // query rows per CTA, both paths
constexpr int64_t kDecodeAttentionSplitAlign = 64;  // split_len granularity (the mma key tile)

struct DecodeAttentionShape {
  int64_t requests;   // N
  int64_t beams;      // P
  int64_t q_heads;    // Hq
  int64_t kv_heads;   // Hkv, divides Hq
  int64_t ctx_size;   // S
  int64_t own_len;    // T (0: no own positions)
  int64_t head_dim;   // D
};

// Device pointers and element strides. q [N, P, Hq, D], ctx_k/ctx_v [N, Hkv, S, D],
// own_k/own_v [N, P, Hkv, T, D] (null when T == 0), ctx_len [N] int32 or int64; any strides.
struct DecodeAttentionTensors {
  const void* q;
  const void* ctx_k;
  const void* ctx_v;
  const void* ctx_len;
  const void* own_k;
  const void* own_v;
  int64_t q_stride[4];
  int64_t ctx_k_stride[4];
  int64_t ctx_v_stride[4];
  int64_t own_k_stride[5];
  int64_t own_v_stride[5];
  bool ctx_len_int64;
};

enum class DecodeAttentionPath : int { kMma = 0, kScalar = 1 };

struct DecodeAttentionPlan {
  DecodeAttentionPath path;
  int64_t group;            // Hq / Hkv
  int64_t row_blocks;       // per (request, kv head): ceil(P * group / 64)
  int64_t programs;         // grid x = N * Hkv * row_blocks
  int64_t num_splits;       // grid y
  int64_t split_len;        // context positions per split (a multiple of 64)
  int64_t workspace_bytes;  // split partials; 0 when num_splits == 1
};

inline int64_t decode_attention_cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Whether the tensor-core path can take these inputs: 16-bit dtype, D % 16 == 0, D <= 128,
// context K/V rows that cp.async can copy in 16-byte chunks (unit stride along D, other strides
// multiples of 8 elements, 16-byte aligned base), and unit stride along D for q, own_k, own_v.
inline bool decode_attention_mma_ok(DType dtype, const DecodeAttentionShape& shape,
                                    const DecodeAttentionTensors& t) {
  if (dtype == DType::kFloat32) return false;
  if (shape.head_dim % 16 != 0 || shape.head_dim > kDecodeAttentionMmaMaxHeadDim) return false;
  for (const int64_t* stride : {t.ctx_k_stride, t.ctx_v_stride}) {
    if (stride[3] != 1 || stride[0] % 8 != 0 || stride[1] % 8 != 0 || stride[2] % 8 != 0) {
      return false;
    }
  }
  // Unit stride along D for q and the own positions too: their fragment columns are then
  // constant offsets (a general stride costs a 64-bit address per column and spills at D = 128).
  if (t.q_stride[3] != 1) return false;
  if (shape.own_len > 0 && (t.own_k_stride[4] != 1 || t.own_v_stride[4] != 1)) return false;
  return reinterpret_cast<uintptr_t>(t.ctx_k) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(t.ctx_v) % 16 == 0;
}

// Grid and split choice; the workspace size depends on the shape only (not on the path).
// num_splits > 0 forces that many splits (capped so none is empty past S); 0 picks.
inline DecodeAttentionPlan plan_decode_attention(DType dtype, const DecodeAttentionShape& s,
                                                 bool mma_ok, int num_sms, int64_t num_splits) {
  DecodeAttentionPlan plan{};
  plan.path = mma_ok ? DecodeAttentionPath::kMma : DecodeAttentionPath::kScalar;
  plan.group = s.kv_heads > 0 ? s.q_heads / s.kv_heads : 1;
  plan.row_blocks = std::max<int64_t>(1, decode_attention_cdiv(s.beams * plan.group,
                                                               kDecodeAttentionRowBlock));
  plan.programs = s.requests * s.kv_heads * plan.row_blocks;
  int64_t splits = num_splits > 0 ? num_splits : 1;
  if (num_splits <= 0 && plan.programs < 2 * int64_t{num_sms} && s.ctx_size >= 512) {
    // Partials: float32 accumulator + max + sum per query row and split, written and read back.
    const double partial_bytes = 2.0 * s.beams * s.q_heads * (s.head_dim + 2) * 4;
    const double ctx_bytes = 2.0 * s.kv_heads * s.ctx_size * s.head_dim * dtype_bytes(dtype);
    const int64_t budget = std::max<int64_t>(1, static_cast<int64_t>(0.1 * ctx_bytes / partial_bytes));
    splits = std::min({decode_attention_cdiv(2 * int64_t{num_sms}, std::max<int64_t>(plan.programs, 1)),
                       s.ctx_size / 256, budget});
    splits = std::max<int64_t>(splits, 1);
  }
  const int64_t ctx = std::max<int64_t>(s.ctx_size, 1);
  plan.split_len = decode_attention_cdiv(decode_attention_cdiv(ctx, splits), kDecodeAttentionSplitAlign) *
                   kDecodeAttentionSplitAlign;
  plan.num_splits = std::max<int64_t>(1, decode_attention_cdiv(s.ctx_size, plan.split_len));
  const int64_t rows = s.requests * s.beams * s.q_heads;
  plan.workspace_bytes = plan.num_splits > 1 ? plan.num_splits * rows * (s.head_dim + 2) * 4 : 0;
  return plan;
}

// Launches on `stream`; throws std::invalid_argument / std::runtime_error (with file:line and the
// kernel name) on bad sizes or a failed launch. out: contiguous [N, P, Hq, D] in the input dtype.
// num_sms: the device's SM count (for the split choice); num_splits: 0 = choose, > 0 = force.
// workspace: >= plan_decode_attention(...).workspace_bytes bytes, 16-byte aligned (or null when 0).
void launch_decode_attention(DType dtype, const DecodeAttentionShape& shape,
                             const DecodeAttentionTensors& tensors, void* out, float scale,
                             int num_sms, int64_t num_splits, void* workspace,
                             int64_t workspace_bytes, cudaStream_t stream);

// Everything a kernel reads, by value (never take its address in device code: the kernel
// parameter would be copied to local memory).
struct DecodeAttentionParams {
  const void* q;
  const void* ctx_k;
  const void* ctx_v;
  const void* ctx_len;
  const void* own_k;
  const void* own_v;
  void* out;        // contiguous [N, P, Hq, D], input dtype
  float* part_acc;  // [splits, N * P * Hq, D] when num_splits > 1
  float* part_m;    // [splits, N * P * Hq]
  float* part_l;    // [splits, N * P * Hq]
  int64_t q_stride[4];
  int64_t ctx_k_stride[4];
  int64_t ctx_v_stride[4];
  int64_t own_k_stride[5];
  int64_t own_v_stride[5];
  int64_t beams, q_heads, kv_heads, ctx_size, own_len;
  int64_t group, group_rows, row_blocks, split_len;
  int64_t total_rows;  // N * P * Hq: the row count of the output and of each split's partials
  int head_dim;
  int num_splits;
  int ctx_len_int64;
  float scale_log2;  // scale * log2(e): scores live in base 2
};

// The kernel parameters of one call (host side; shared by the launcher and the CPU emulation).
inline DecodeAttentionParams make_decode_attention_params(const DecodeAttentionPlan& plan,
                                                           const DecodeAttentionShape& s,
                                                           const DecodeAttentionTensors& t, void* out,
                                                           float scale, void* workspace) {
  constexpr float kLog2e = 1.4426950408889634f;
  DecodeAttentionParams p{};
  p.q = t.q;
  p.ctx_k = t.ctx_k;
  p.ctx_v = t.ctx_v;
  p.ctx_len = t.ctx_len;
  p.own_k = t.own_k;
  p.own_v = t.own_v;
  p.out = out;
  for (int i = 0; i < 4; ++i) {
    p.q_stride[i] = t.q_stride[i];
    p.ctx_k_stride[i] = t.ctx_k_stride[i];
    p.ctx_v_stride[i] = t.ctx_v_stride[i];
  }
  for (int i = 0; i < 5; ++i) {
    p.own_k_stride[i] = t.own_k_stride[i];
    p.own_v_stride[i] = t.own_v_stride[i];
  }
  p.beams = s.beams;
  p.q_heads = s.q_heads;
  p.kv_heads = s.kv_heads;
  p.ctx_size = s.ctx_size;
  p.own_len = s.own_len;
  p.group = plan.group;
  p.group_rows = s.beams * plan.group;
  p.row_blocks = plan.row_blocks;
  p.split_len = plan.split_len;
  p.total_rows = s.requests * s.beams * s.q_heads;
  p.head_dim = static_cast<int>(s.head_dim);
  p.num_splits = static_cast<int>(plan.num_splits);
  p.ctx_len_int64 = t.ctx_len_int64 ? 1 : 0;
  p.scale_log2 = scale * kLog2e;
  if (plan.num_splits > 1) {  // workspace: acc [splits, rows, D], then m and l [splits, rows]
    float* base = static_cast<float*>(workspace);
    p.part_acc = base;
    p.part_m = base + plan.num_splits * p.total_rows * s.head_dim;
    p.part_l = p.part_m + plan.num_splits * p.total_rows;
  }
  return p;
}

// Dynamic shared memory of the two main kernels.
inline int64_t decode_attention_smem_bytes(DecodeAttentionPath path, int64_t d) {
  if (path == DecodeAttentionPath::kMma) return int64_t{2} * 2 * 64 * (d + 8) * 2;  // 2 stages x K, V
  return (64 * d + 32 * (d | 1) + 32 * d + 8 * 8 * 32) * 4;  // q, K, V (float32), P per warp
}

// The kernels: nvcc only, or host code for the CPU emulation (EGA_INFER_EMULATE_KERNELS, see
// common.cuh), which then also supplies the detail::dattn primitives declared below without a body.
#if defined(__CUDACC__) || defined(EGA_INFER_EMULATE_KERNELS)
namespace detail {
namespace dattn {

constexpr int kMmaWarps = 4;
constexpr int kMmaThreads = kMmaWarps * 32;
constexpr int kMmaRows = 16 * kMmaWarps;  // == kDecodeAttentionRowBlock
constexpr int kMmaKeys = 64;
constexpr int kScalarWarps = 8;
constexpr int kScalarThreads = kScalarWarps * 32;
constexpr int kScalarRowsPerWarp = 8;
constexpr int kScalarRows = kScalarWarps * kScalarRowsPerWarp;  // == kDecodeAttentionRowBlock
constexpr int kScalarKeys = 32;
constexpr int kCombineWarps = 4;
static_assert(kMmaRows == kDecodeAttentionRowBlock && kScalarRows == kDecodeAttentionRowBlock,
              "both paths cut the rows the same way (the plan does not depend on the path)");
static_assert(kMmaKeys == 64 && kScalarKeys == 32 && kScalarWarps * kScalarRowsPerWarp == 64,
              "decode_attention_smem_bytes assumes these tiles");
static_assert(kDecodeAttentionSplitAlign % kMmaKeys == 0 && kDecodeAttentionSplitAlign % kScalarKeys == 0,
              "a split boundary never cuts a key tile");

// ---- dtype helpers -----------------------------------------------------------------------------

__host__ __device__ __forceinline__ uint16_t bits16(__nv_bfloat16 x) { return __bfloat16_as_ushort(x); }
__host__ __device__ __forceinline__ uint16_t bits16(__half x) { return __half_as_ushort(x); }

template <typename T>
__host__ __device__ __forceinline__ float float_of_bits(uint16_t bits) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __bfloat162float(__ushort_as_bfloat16(bits));
  } else {
    return __half2float(__ushort_as_half(bits));
  }
}

// Two 16-bit values in one 32-bit register, `lo` in the low half (the lower column of a fragment).
template <typename T>
__host__ __device__ __forceinline__ uint32_t pack2(T lo, T hi) {
  return static_cast<uint32_t>(bits16(lo)) | (static_cast<uint32_t>(bits16(hi)) << 16);
}

template <typename T>
__host__ __device__ __forceinline__ float unpack_lo(uint32_t r) {
  return float_of_bits<T>(static_cast<uint16_t>(r & 0xffffu));
}

template <typename T>
__host__ __device__ __forceinline__ float unpack_hi(uint32_t r) {
  return float_of_bits<T>(static_cast<uint16_t>(r >> 16));
}

// ---- online softmax (base 2), shared by every path and testable on the host -------------------

// Running max m, the factor alpha = 2^(m_old - m_new) that rescales what was accumulated, and the
// safe subtrahend for the new exponentials (0 while every score so far is -inf, so that
// 2^(-inf - 0) = 0 and never -inf - -inf = NaN).
struct OnlineStep {
  float m_new;
  float m_safe;
  float alpha;
};

__host__ __device__ __forceinline__ OnlineStep online_step(float m_old, float tile_max) {
  const float m_new = fmaxf(m_old, tile_max);
  const float m_safe = m_new == -INFINITY ? 0.0f : m_new;
  return {m_new, m_safe, exp2f(m_old - m_safe)};
}

// Merge of split partials (max m_i, sum l_i, unnormalised accumulator acc_i) for one output
// element: sum_i 2^(m_i - M) acc_i / sum_i 2^(m_i - M) l_i, and 0 when no split saw a key.
__host__ __device__ __forceinline__ float merge_weight(float m_i, float m_max) {
  return exp2f(m_i - (m_max == -INFINITY ? 0.0f : m_max));
}

__host__ __device__ __forceinline__ float finish(float acc, float l) {
  return l > 0.0f ? acc / l : 0.0f;
}

template <typename T>
__host__ __device__ __forceinline__ const T* at(const void* base, int64_t offset) {
  return static_cast<const T*>(base) + offset;
}

// clamp(ctx_len[req], 0, S).
__host__ __device__ __forceinline__ int64_t context_length(const void* ctx_len, int is_int64,
                                                           int64_t ctx_size, int64_t req) {
  const int64_t len = is_int64 ? static_cast<const int64_t*>(ctx_len)[req]
                               : int64_t{static_cast<const int32_t*>(ctx_len)[req]};
  return len < 0 ? 0 : (len > ctx_size ? ctx_size : len);
}

// ---- warp-level primitives ---------------------------------------------------------------------

#if defined(__CUDACC__)
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, asynchronous; src_bytes == 0 writes 16 zero bytes and reads nothing.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
               "r"(src_bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Wait until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Four 8x8 b16 matrices; lane i gives the address of row i % 8 of matrix i / 8, r[j] is matrix j.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(smem)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(smem)));
}

// d += a (16x16, row) * b (16x8, col), float32 accumulators.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}
#else
// Supplied by the emulation harness, with the semantics documented above.
void cp_async_16(void* smem, const void* gmem, int src_bytes);
void cp_async_commit();
template <int N>
void cp_async_wait();
void ldmatrix_x4(uint32_t (&r)[4], const void* smem);
void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem);
template <typename T>
void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
#endif

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(kFullMask, x, 1));
  return fmaxf(x, __shfl_xor_sync(kFullMask, x, 2));
}

__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(kFullMask, x, 1);
  return x + __shfl_xor_sync(kFullMask, x, 2);
}

// One query row of a CTA: its beam and query head, or invalid past the group's P * G rows.
struct RowRef {
  int64_t beam;
  int64_t head;
  bool valid;
};

__device__ __forceinline__ RowRef row_ref(int64_t row, int64_t group_rows, int64_t group, int64_t kv_head) {
  const bool valid = row < group_rows;
  const int64_t r = valid ? row : 0;
  return {r / group, kv_head * group + r % group, valid};
}

// CTA coordinates: (request, kv head, row block) from blockIdx.x, split from blockIdx.y.
struct CtaRef {
  int64_t req;
  int64_t kv_head;
  int64_t row0;
  int64_t split;
};

__device__ __forceinline__ CtaRef cta_ref(int64_t row_blocks, int64_t kv_heads, int64_t rows_per_block) {
  const int64_t pid = blockIdx.x;
  const int64_t row_block = pid % row_blocks;
  return {pid / row_blocks / kv_heads, (pid / row_blocks) % kv_heads, row_block * rows_per_block,
          static_cast<int64_t>(blockIdx.y)};
}

// ---- path 1: tensor cores ----------------------------------------------------------------------

// Issue the cp.async copies of context keys [s0, s0 + 64) of K and V into one stage (rows >= hi
// are zero-filled). Each row is D / 8 chunks of 16 bytes; the shared row pitch is D + 8 elements.
template <typename T>
__device__ __forceinline__ void mma_load_tile(T* ks, T* vs, const T* k_base, const T* v_base,
                                              int64_t k_stride_s, int64_t v_stride_s, int64_t s0,
                                              int64_t hi, int d, int ld) {
  const int chunks_per_row = d / 8;
  const int chunks = kMmaKeys * chunks_per_row;
  for (int c = threadIdx.x; c < chunks; c += kMmaThreads) {
    const int r = c / chunks_per_row;
    const int col = (c % chunks_per_row) * 8;
    const int64_t s = s0 + r;
    const bool ok = s < hi;
    cp_async_16(ks + r * ld + col, ok ? k_base + s * k_stride_s + col : k_base, ok ? 16 : 0);
    cp_async_16(vs + r * ld + col, ok ? v_base + s * v_stride_s + col : v_base, ok ? 16 : 0);
  }
}

// kDTiles: head-dim tiles of 16 the registers are sized for (4: D <= 64, 8: D <= 128); the
// actual count is D / 16 at run time.
template <typename T, int kDTiles>
__global__ void __launch_bounds__(kMmaThreads)
decode_attention_mma_kernel(const DecodeAttentionParams p) {
  const int d = p.head_dim;
  const int d_tiles = d / 16;
  const int ld = d + 8;  // shared row pitch in elements: an odd multiple of 16 bytes
  T* smem = reinterpret_cast<T*>(dynamic_smem());  // [2 stages][K, V][64 keys][ld]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t4 = lane % 4;  // mma fragment coordinates: row group, thread in group

  const CtaRef cta = cta_ref(p.row_blocks, p.kv_heads, kMmaRows);
  const int64_t warp_row0 = cta.row0 + warp * 16;
  const RowRef rows[2] = {row_ref(warp_row0 + g, p.group_rows, p.group, cta.kv_head),
                          row_ref(warp_row0 + g + 8, p.group_rows, p.group, cta.kv_head)};

  // Q as A fragments: qa[kk][0] = (row g, cols 16kk + 2t4 + {0,1}), [1] = row g + 8, [2] / [3] =
  // the same rows at cols + 8. Zero for invalid rows and past D.
  uint32_t qa[kDTiles][4];
#pragma unroll
  for (int kk = 0; kk < kDTiles; ++kk) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const RowRef& row = rows[i % 2];
      const int col = kk * 16 + 2 * t4 + (i / 2) * 8;
      T lo = from_float<T>(0.0f), hi = from_float<T>(0.0f);
      if (row.valid && kk < d_tiles) {
        const T* q = at<T>(p.q, cta.req * p.q_stride[0] + row.beam * p.q_stride[1] +
                                    row.head * p.q_stride[2]);
        lo = q[col];  // unit stride along D on this path
        hi = q[col + 1];
      }
      qa[kk][i] = pack2<T>(lo, hi);
    }
  }

  float o[2 * kDTiles][4];  // O fragments: d tile j holds cols 8j + 2t4 + {0,1} of rows g, g + 8
#pragma unroll
  for (int j = 0; j < 2 * kDTiles; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY};  // running max of rows g, g + 8 (base 2), quad-uniform
  float l[2] = {0.0f, 0.0f};            // this lane's share of the running sums (quad-summed at the end)

  const int64_t len = context_length(p.ctx_len, p.ctx_len_int64, p.ctx_size, cta.req);
  const int64_t lo = cta.split * p.split_len;
  const int64_t hi = lo + p.split_len < len ? lo + p.split_len : len;
  const int64_t num_tiles = hi > lo ? (hi - lo + kMmaKeys - 1) / kMmaKeys : 0;
  const T* k_base = at<T>(p.ctx_k, cta.req * p.ctx_k_stride[0] + cta.kv_head * p.ctx_k_stride[1]);
  const T* v_base = at<T>(p.ctx_v, cta.req * p.ctx_v_stride[0] + cta.kv_head * p.ctx_v_stride[1]);
  const int stage_elems = 2 * kMmaKeys * ld;

  if (num_tiles > 0) {
    mma_load_tile<T>(smem, smem + kMmaKeys * ld, k_base, v_base, p.ctx_k_stride[2], p.ctx_v_stride[2],
                     lo, hi, d, ld);
  }
  cp_async_commit();
  for (int64_t tile = 0; tile < num_tiles; ++tile) {
    const int64_t s0 = lo + tile * kMmaKeys;
    if (tile + 1 < num_tiles) {
      T* next = smem + ((tile + 1) % 2) * stage_elems;
      mma_load_tile<T>(next, next + kMmaKeys * ld, k_base, v_base, p.ctx_k_stride[2],
                       p.ctx_v_stride[2], s0 + kMmaKeys, hi, d, ld);
    }
    cp_async_commit();  // possibly empty: keeps "all but the newest group" == this tile
    cp_async_wait<1>();
    __syncthreads();
    const T* ks = smem + (tile % 2) * stage_elems;
    const T* vs = ks + kMmaKeys * ld;

    // S = Q K^T for 64 keys: s[j] holds keys 8j + 2t4 + {0,1} of rows g (e 0,1) and g + 8 (e 2,3).
    float s[8][4];
#pragma unroll
    for (int j = 0; j < 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < kDTiles; ++kk) {
      if (kk < d_tiles) {
#pragma unroll
        for (int np = 0; np < 4; ++np) {
          // Matrices: (keys +0..7, d +0..7), (keys +0..7, d +8..15), (keys +8..15, d +0..7), (+8, +8).
          uint32_t b[4];
          const int key = np * 16 + (lane % 8) + 8 * (lane / 16);
          const int col = kk * 16 + 8 * ((lane / 8) % 2);
          ldmatrix_x4(b, ks + key * ld + col);
          mma_16816<T>(s[2 * np], qa[kk], b[0], b[1]);
          mma_16816<T>(s[2 * np + 1], qa[kk], b[2], b[3]);
        }
      }
    }

    // Online softmax over this tile (keys >= hi are -inf).
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t key = s0 + 8 * j + 2 * t4 + (e % 2);
        s[j][e] = key < hi ? s[j][e] * p.scale_log2 : -INFINITY;
        tile_max[e / 2] = fmaxf(tile_max[e / 2], s[j][e]);
      }
    }
    OnlineStep step[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      step[h] = online_step(m[h], quad_max(tile_max[h]));
      m[h] = step[h].m_new;
      l[h] *= step[h].alpha;
    }
#pragma unroll
    for (int j = 0; j < 2 * kDTiles; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) o[j][e] *= step[e / 2].alpha;
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[j][e] = exp2f(s[j][e] - step[e / 2].m_safe);
        l[e / 2] += s[j][e];
      }
    }

    // O += P V, 16 keys per k step; P's A fragment comes straight from two S fragments.
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      uint32_t pa[4];
      pa[0] = pack2<T>(from_float<T>(s[2 * kk][0]), from_float<T>(s[2 * kk][1]));
      pa[1] = pack2<T>(from_float<T>(s[2 * kk][2]), from_float<T>(s[2 * kk][3]));
      pa[2] = pack2<T>(from_float<T>(s[2 * kk + 1][0]), from_float<T>(s[2 * kk + 1][1]));
      pa[3] = pack2<T>(from_float<T>(s[2 * kk + 1][2]), from_float<T>(s[2 * kk + 1][3]));
#pragma unroll
      for (int dp = 0; dp < kDTiles; ++dp) {
        if (dp < d_tiles) {
          // Matrices (transposed): (keys +0..7, d +0..7), (keys +8..15, d +0..7), (+0, +8), (+8, +8).
          uint32_t b[4];
          const int key = kk * 16 + (lane % 8) + 8 * ((lane / 8) % 2);
          const int col = dp * 16 + 8 * (lane / 16);
          ldmatrix_x4_trans(b, vs + key * ld + col);
          mma_16816<T>(o[2 * dp], pa, b[0], b[1]);
          mma_16816<T>(o[2 * dp + 1], pa, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }

  // The beams' own positions (split 0): one key per row and position, a row-wise dot product of
  // the lane's q fragment columns reduced over the 4 lanes of the row.
  if (cta.split == 0) {
#pragma unroll 1
    for (int64_t t = 0; t < p.own_len; ++t) {
      float score[2];
      const T* ok[2];
      const T* ov[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const RowRef& row = rows[h];
        const int64_t kv_off = cta.req * p.own_k_stride[0] + row.beam * p.own_k_stride[1] +
                               cta.kv_head * p.own_k_stride[2] + t * p.own_k_stride[3];
        const int64_t vv_off = cta.req * p.own_v_stride[0] + row.beam * p.own_v_stride[1] +
                               cta.kv_head * p.own_v_stride[2] + t * p.own_v_stride[3];
        ok[h] = at<T>(p.own_k, kv_off);
        ov[h] = at<T>(p.own_v, vv_off);
        float partial = 0.0f;
        if (row.valid) {
#pragma unroll
          for (int kk = 0; kk < kDTiles; ++kk) {
            if (kk < d_tiles) {
#pragma unroll
              for (int half = 0; half < 2; ++half) {
                const uint32_t r = qa[kk][h + 2 * half];
                const int col = kk * 16 + 2 * t4 + 8 * half;
                partial += unpack_lo<T>(r) * to_float(ok[h][col]);  // unit stride along D
                partial += unpack_hi<T>(r) * to_float(ok[h][col + 1]);
              }
            }
          }
        }
        score[h] = quad_sum(partial) * p.scale_log2;
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const OnlineStep step = online_step(m[h], score[h]);
        const float prob = exp2f(score[h] - step.m_safe);
        m[h] = step.m_new;
        l[h] = l[h] * step.alpha + (t4 == 0 ? prob : 0.0f);  // one lane of the quad counts it
#pragma unroll
        for (int j = 0; j < 2 * kDTiles; ++j) {
          if (j / 2 < d_tiles) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int col = 8 * j + 2 * t4 + e;
              const float v = rows[h].valid ? to_float(ov[h][col]) : 0.0f;
              o[j][2 * h + e] = o[j][2 * h + e] * step.alpha + prob * v;
            }
          }
        }
      }
    }
  }

  // Epilogue: normalise and store (one split), or hand the partials to the combine kernel.
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float l_row = quad_sum(l[h]);
    const RowRef& row = rows[h];
    if (!row.valid) continue;
    const int64_t out_row = (cta.req * p.beams + row.beam) * p.q_heads + row.head;
    if (p.num_splits == 1) {
      T* out = static_cast<T*>(p.out) + out_row * d;
#pragma unroll
      for (int j = 0; j < 2 * kDTiles; ++j) {
        if (j / 2 < d_tiles) {
          const int col = 8 * j + 2 * t4;
          out[col] = from_float<T>(finish(o[j][2 * h], l_row));
          out[col + 1] = from_float<T>(finish(o[j][2 * h + 1], l_row));
        }
      }
    } else {
      const int64_t part_row = cta.split * p.total_rows + out_row;
      float* acc = p.part_acc + part_row * d;
#pragma unroll
      for (int j = 0; j < 2 * kDTiles; ++j) {
        if (j / 2 < d_tiles) {
          const int col = 8 * j + 2 * t4;
          acc[col] = o[j][2 * h];
          acc[col + 1] = o[j][2 * h + 1];
        }
      }
      if (t4 == 0) {
        p.part_m[part_row] = m[h];
        p.part_l[part_row] = l_row;
      }
    }
  }
}

// ---- path 2: scalar float32 --------------------------------------------------------------------

// kCols: output columns per lane the registers are sized for (ceil(D / 32) <= kCols).
template <typename T, int kCols>
__global__ void __launch_bounds__(kScalarThreads)
decode_attention_scalar_kernel(const DecodeAttentionParams p) {
  const int d = p.head_dim;
  const int kld = d | 1;  // odd K pitch: lane j reading row j hits 32 different banks
  float* q_s = reinterpret_cast<float*>(dynamic_smem());  // [64 rows][d]
  float* k_s = q_s + kScalarRows * d;                      // [32 keys][kld]
  float* v_s = k_s + kScalarKeys * kld;                    // [32 keys][d]
  float* p_s = v_s + kScalarKeys * d;                      // [8 warps][8 rows][32 keys]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const CtaRef cta = cta_ref(p.row_blocks, p.kv_heads, kScalarRows);

  for (int i = threadIdx.x; i < kScalarRows * d; i += kScalarThreads) {
    const RowRef row = row_ref(cta.row0 + i / d, p.group_rows, p.group, cta.kv_head);
    const int col = i % d;
    q_s[i] = row.valid ? to_float(*at<T>(p.q, cta.req * p.q_stride[0] + row.beam * p.q_stride[1] +
                                                   row.head * p.q_stride[2] + col * p.q_stride[3]))
                       : 0.0f;
  }

  RowRef rows[kScalarRowsPerWarp];
  float m[kScalarRowsPerWarp], l[kScalarRowsPerWarp], acc[kScalarRowsPerWarp][kCols];
#pragma unroll
  for (int r = 0; r < kScalarRowsPerWarp; ++r) {
    rows[r] = row_ref(cta.row0 + warp * kScalarRowsPerWarp + r, p.group_rows, p.group, cta.kv_head);
    m[r] = -INFINITY;
    l[r] = 0.0f;
#pragma unroll
    for (int c = 0; c < kCols; ++c) acc[r][c] = 0.0f;
  }
  const float* q_warp = q_s + warp * kScalarRowsPerWarp * d;
  float* p_warp = p_s + warp * kScalarRowsPerWarp * kScalarKeys;

  const int64_t len = context_length(p.ctx_len, p.ctx_len_int64, p.ctx_size, cta.req);
  const int64_t lo = cta.split * p.split_len;
  const int64_t hi = lo + p.split_len < len ? lo + p.split_len : len;
  const T* k_base = at<T>(p.ctx_k, cta.req * p.ctx_k_stride[0] + cta.kv_head * p.ctx_k_stride[1]);
  const T* v_base = at<T>(p.ctx_v, cta.req * p.ctx_v_stride[0] + cta.kv_head * p.ctx_v_stride[1]);
  __syncthreads();  // q_s complete
  for (int64_t s0 = lo; s0 < hi; s0 += kScalarKeys) {
    for (int i = threadIdx.x; i < kScalarKeys * d; i += kScalarThreads) {
      const int r = i / d, col = i % d;
      const int64_t s = s0 + r;
      const bool ok = s < hi;
      k_s[r * kld + col] = ok ? to_float(k_base[s * p.ctx_k_stride[2] + col * p.ctx_k_stride[3]]) : 0.0f;
      v_s[r * d + col] = ok ? to_float(v_base[s * p.ctx_v_stride[2] + col * p.ctx_v_stride[3]]) : 0.0f;
    }
    __syncthreads();

    // Lane j scores key s0 + j against the warp's rows.
    float score[kScalarRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kScalarRowsPerWarp; ++r) score[r] = 0.0f;
    const float* k_row = k_s + lane * kld;
    for (int col = 0; col < d; ++col) {
      const float kv = k_row[col];
#pragma unroll
      for (int r = 0; r < kScalarRowsPerWarp; ++r) score[r] = fmaf(q_warp[r * d + col], kv, score[r]);
    }
    const bool key_ok = s0 + lane < hi;
#pragma unroll
    for (int r = 0; r < kScalarRowsPerWarp; ++r) {
      const float x = key_ok ? score[r] * p.scale_log2 : -INFINITY;
      const OnlineStep step = online_step(m[r], warp_max(x));
      const float prob = exp2f(x - step.m_safe);
      m[r] = step.m_new;
      l[r] = l[r] * step.alpha + warp_sum(prob);
#pragma unroll
      for (int c = 0; c < kCols; ++c) acc[r][c] *= step.alpha;
      p_warp[r * kScalarKeys + lane] = prob;
    }
    __syncwarp();
    const int keys = hi - s0 < kScalarKeys ? static_cast<int>(hi - s0) : kScalarKeys;
    for (int j = 0; j < keys; ++j) {
      float v[kCols];
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        const int col = lane + 32 * c;
        v[c] = col < d ? v_s[j * d + col] : 0.0f;
      }
#pragma unroll
      for (int r = 0; r < kScalarRowsPerWarp; ++r) {
        const float pj = p_warp[r * kScalarKeys + j];
#pragma unroll
        for (int c = 0; c < kCols; ++c) acc[r][c] = fmaf(pj, v[c], acc[r][c]);
      }
    }
    __syncthreads();  // k_s / v_s / p_s are refilled by the next tile
  }

  // Own positions (split 0); row validity is warp-uniform, so the shuffles stay converged.
  if (cta.split == 0) {
    for (int64_t t = 0; t < p.own_len; ++t) {
#pragma unroll
      for (int r = 0; r < kScalarRowsPerWarp; ++r) {
        if (!rows[r].valid) continue;
        const T* ok = at<T>(p.own_k, cta.req * p.own_k_stride[0] + rows[r].beam * p.own_k_stride[1] +
                                         cta.kv_head * p.own_k_stride[2] + t * p.own_k_stride[3]);
        const T* ov = at<T>(p.own_v, cta.req * p.own_v_stride[0] + rows[r].beam * p.own_v_stride[1] +
                                         cta.kv_head * p.own_v_stride[2] + t * p.own_v_stride[3]);
        float partial = 0.0f;
#pragma unroll
        for (int c = 0; c < kCols; ++c) {
          const int col = lane + 32 * c;
          if (col < d) partial = fmaf(q_warp[r * d + col], to_float(ok[col * p.own_k_stride[4]]), partial);
        }
        const float x = warp_sum(partial) * p.scale_log2;
        const OnlineStep step = online_step(m[r], x);
        const float prob = exp2f(x - step.m_safe);
        m[r] = step.m_new;
        l[r] = l[r] * step.alpha + prob;
#pragma unroll
        for (int c = 0; c < kCols; ++c) {
          const int col = lane + 32 * c;
          const float v = col < d ? to_float(ov[col * p.own_v_stride[4]]) : 0.0f;
          acc[r][c] = fmaf(prob, v, acc[r][c] * step.alpha);
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < kScalarRowsPerWarp; ++r) {
    if (!rows[r].valid) continue;
    const int64_t out_row = (cta.req * p.beams + rows[r].beam) * p.q_heads + rows[r].head;
    if (p.num_splits == 1) {
      T* out = static_cast<T*>(p.out) + out_row * d;
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        const int col = lane + 32 * c;
        if (col < d) out[col] = from_float<T>(finish(acc[r][c], l[r]));
      }
    } else {
      const int64_t part_row = cta.split * p.total_rows + out_row;
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        const int col = lane + 32 * c;
        if (col < d) p.part_acc[part_row * d + col] = acc[r][c];
      }
      if (lane == 0) {
        p.part_m[part_row] = m[r];
        p.part_l[part_row] = l[r];
      }
    }
  }
}

// ---- split-K merge -----------------------------------------------------------------------------

// One warp per query row: out[row] = sum_i w_i acc_i / sum_i w_i l_i, w_i = 2^(m_i - max_i m_i).
template <typename T>
__global__ void __launch_bounds__(kCombineWarps * 32)
decode_attention_combine_kernel(const float* __restrict__ part_acc, const float* __restrict__ part_m,
                                const float* __restrict__ part_l, T* __restrict__ out, int64_t rows,
                                int d, int num_splits) {
  const int64_t row = int64_t{blockIdx.x} * kCombineWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;  // warp-uniform
  float m_max = -INFINITY;
  for (int i = 0; i < num_splits; ++i) m_max = fmaxf(m_max, part_m[i * rows + row]);
  float l_sum = 0.0f;
  for (int i = 0; i < num_splits; ++i) l_sum += merge_weight(part_m[i * rows + row], m_max) * part_l[i * rows + row];
  for (int col = lane; col < d; col += 32) {
    float acc = 0.0f;
    for (int i = 0; i < num_splits; ++i) {
      acc += merge_weight(part_m[i * rows + row], m_max) * part_acc[(i * rows + row) * d + col];
    }
    out[row * d + col] = from_float<T>(finish(acc, l_sum));
  }
}

// ---- the launch ---------------------------------------------------------------------------------

// One call, for the launcher (decode_attention.cu) and the CPU emulation alike: the argument
// checks, the plan and the params, then launch(kernel, name, grid, threads, dynamic_smem_bytes,
// kernel arguments...) for the main kernel of the chosen path and, when split, the merge.
template <class Launch>
void run_decode_attention(DType dtype, const DecodeAttentionShape& s, const DecodeAttentionTensors& tensors,
                          void* out, float scale, int num_sms, int64_t num_splits, void* workspace,
                          int64_t workspace_bytes, Launch&& launch) {
  constexpr const char* kOp = "decode_attention";
  EGA_CHECK_ARG(s.requests >= 0 && s.beams >= 0 && s.q_heads >= 0 && s.ctx_size >= 0 && s.own_len >= 0,
                kOp, "sizes must be >= 0");
  EGA_CHECK_ARG(s.kv_heads >= 1 && s.q_heads % s.kv_heads == 0, kOp,
                "kv_heads = " + std::to_string(s.kv_heads) + " must be >= 1 and divide q_heads = " +
                    std::to_string(s.q_heads));
  EGA_CHECK_ARG(s.head_dim >= 1 && s.head_dim <= kDecodeAttentionMaxHeadDim, kOp,
                "head_dim = " + std::to_string(s.head_dim) + "; expected 1 .. " +
                    std::to_string(kDecodeAttentionMaxHeadDim));
  EGA_CHECK_ARG(num_splits >= 0, kOp, "num_splits must be >= 0 (0 = choose)");
  EGA_CHECK_ARG(dtype == DType::kFloat32 || dtype == DType::kBFloat16 || dtype == DType::kFloat16, kOp,
                "unknown dtype code " + std::to_string(static_cast<int>(dtype)));
  const int64_t total_rows = s.requests * s.beams * s.q_heads;
  if (total_rows == 0) return;
  EGA_CHECK_ARG(tensors.q != nullptr && tensors.ctx_len != nullptr && out != nullptr, kOp,
                "q, ctx_len and out must be non-null");
  EGA_CHECK_ARG(s.ctx_size == 0 || (tensors.ctx_k != nullptr && tensors.ctx_v != nullptr), kOp,
                "ctx_k and ctx_v must be non-null when ctx_size > 0");
  EGA_CHECK_ARG(s.own_len == 0 || (tensors.own_k != nullptr && tensors.own_v != nullptr), kOp,
                "own_k and own_v must be non-null when own_len > 0");

  const DecodeAttentionPlan plan =
      plan_decode_attention(dtype, s, decode_attention_mma_ok(dtype, s, tensors), num_sms, num_splits);
  EGA_CHECK_ARG(plan.programs <= 0x7fffffff, kOp,
                "N * Hkv * row blocks = " + std::to_string(plan.programs) + " exceeds the grid limit 2^31 - 1");
  EGA_CHECK_ARG(plan.num_splits <= 65535, kOp,
                "num_splits = " + std::to_string(plan.num_splits) + " exceeds the grid limit 65535");
  EGA_CHECK_ARG(workspace_bytes >= plan.workspace_bytes, kOp,
                "workspace has " + std::to_string(workspace_bytes) + " bytes; the plan needs " +
                    std::to_string(plan.workspace_bytes));
  EGA_CHECK_ARG(plan.workspace_bytes == 0 ||
                    (workspace != nullptr && reinterpret_cast<uintptr_t>(workspace) % 16 == 0),
                kOp, "workspace must be non-null and 16-byte aligned");

  const DecodeAttentionParams params = make_decode_attention_params(plan, s, tensors, out, scale, workspace);
  const dim3 grid(static_cast<unsigned int>(plan.programs), static_cast<unsigned int>(plan.num_splits));
  const int d = params.head_dim;
  const int64_t smem = decode_attention_smem_bytes(plan.path, d);
  dispatch_dtype(dtype, kOp, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (plan.path == DecodeAttentionPath::kMma) {
      if constexpr (!std::is_same_v<T, float>) {  // the plan never picks it for float32
        constexpr const char* kName = "decode_attention_mma_kernel";
        if (d <= 64) {
          launch(decode_attention_mma_kernel<T, 4>, kName, grid, kMmaThreads, smem, params);
        } else {
          launch(decode_attention_mma_kernel<T, 8>, kName, grid, kMmaThreads, smem, params);
        }
      }
    } else {
      constexpr const char* kName = "decode_attention_scalar_kernel";
      if (d <= 64) {
        launch(decode_attention_scalar_kernel<T, 2>, kName, grid, kScalarThreads, smem, params);
      } else if (d <= 128) {
        launch(decode_attention_scalar_kernel<T, 4>, kName, grid, kScalarThreads, smem, params);
      } else {
        launch(decode_attention_scalar_kernel<T, 8>, kName, grid, kScalarThreads, smem, params);
      }
    }
    if (plan.num_splits > 1) {
      const int64_t blocks = decode_attention_cdiv(params.total_rows, kCombineWarps);
      launch(decode_attention_combine_kernel<T>, "decode_attention_combine_kernel",
             dim3(static_cast<unsigned int>(blocks)), kCombineWarps * 32, int64_t{0},
             static_cast<const float*>(params.part_acc), static_cast<const float*>(params.part_m),
             static_cast<const float*>(params.part_l), static_cast<T*>(params.out), params.total_rows,
             d, static_cast<int>(plan.num_splits));
    }
  });
}

}  // namespace dattn
}  // namespace detail
#endif  // __CUDACC__ || EGA_INFER_EMULATE_KERNELS
}  // namespace ega_infer
