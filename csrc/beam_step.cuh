// Fused constrained beam step: raw-pointer CUDA kernels (no torch, no pybind11).
//
// N requests x P beams = N * P rows; row r is request r / P, beam r % P; V codes. For row r at trie
// node n = row_node[r] and child j of n (rank i = j - child_ptr[n], code c = child_code[j]):
//   w_j = logaddexp(a_j, log_beta),  a_j = alpha * log(bid_j)  (a_j = 0 when alpha == 0)
//   bid_j = child_max_bid[j], unless the row's request q = r / P names j in its override list
//   (override_child[q, e] == j for some e < E): then the smallest such override_bid[q, e]
//   v_j = float(logits[r, c]) + w_j
//   admissible when v_j > -inf (NaN is not) and (allowed == nullptr or allowed[r, c] != 0);
//   logp_j = v_j - logsumexp(admissible v),   score_j = beam_scores[r] + logp_j,
// computed as (v_j - m) - log(sum exp(v - m)) with m the row's max, as torch.log_softmax does: the
// log-sum (at most log V) then survives a huge m, which swamps it in m + log-sum.
// w_j is log(bid_j^alpha + beta) computed in log space (log_beta = log(beta), -inf when
// beta == 0), so a bid of 1e33 or alpha = 1e30 cannot overflow into inf - inf = NaN; it is -inf
// only when both terms are (bid 0 and beta 0), and alpha == 0 gives log(1 + beta) for every child
// (0 ** 0 == 1). Callers keep alpha <= 1e36 and the bids (overrides too) finite, so a_j is
// never +inf.
// Per request the output is the k candidates with the largest score (only scores > -inf count),
// ordered by score descending, then beam ascending, then code ascending: what a stable sort of
// the flattened [P * V] scores gives (ega_infer.decoding.topk). Entries past the last finite
// candidate are score -inf, parent 0, token 0, child -1, logp -inf. A dead row (row_node < 0 or
// beam score -inf) has no candidate.
//
// Design: two launches, logits read once, no host sync, every size handled (fast paths for the
// common ones, slower but exact fallbacks past the shared-memory limits).
//
// Keys. A candidate is one 64-bit key, larger = better:
//   key = order(score) << 32 | (0xffffffff - (beam * V + i))
// where order() maps a float to a uint32 with the same order (-0 is folded into +0) and i is the
// child's rank in its node. Children of a node are sorted by code (the trie invariant that
// _C.build_trie lays out), so i orders like the code, and the key order is
// exactly (score desc, beam asc, code asc). Keys are distinct within a request, so "the top k" is
// a set with no ties left; key 0 means "no candidate" (every real key has a nonzero high word).
// Needs P * V < 2^32; a node with more than V children (impossible in a valid trie) keeps V.
//
// Kernel 1, beam_step_rows_kernel: one block per row, 256 threads.
//   pass 1: score every child (CSR range, so a node with 3 children costs 3 loads, and a full
//           node reads its row of logits coalesced), keep v in shared memory, block max and sum;
//   pass 2: key of every child in place; block radix select of the row's top S = min(k, V) keys
//           (skipped when the row has <= S candidates, the usual case below the first levels);
//   write the row's keys (unordered), their count and the row's normaliser (max, log-sum) to the
//   workspace.
//   A row with more children than fit in shared memory (V > 16384) recomputes v on each pass.
//   With a bid override, v reads each child's bid through child_bid (a scan of the request's E
//   entries); both kernels are instantiated with and without it, and a call without an override
//   runs the plain ones (same registers and work as before the override existed).
// Kernel 2, beam_step_merge_kernel: a tree of top-k merges per request, 512 threads per block.
//   Level 0 node g merges rows [g * F0, (g + 1) * F0); level l merges F_l lists of level l - 1;
//   fan-ins are chosen so a node's input (<= 8192 keys) is staged once in shared memory. Each
//   node keeps its top-cap keys (cap = min(k, keys below it)), publishes them, fences and takes a
//   ticket on its parent; the last sibling to arrive goes on to merge the parent (threadfence-
//   reduction pattern), so the whole tree is one launch. The root selects the final top-k,
//   bitonic-sorts them in shared memory (global memory past 2048 keys) and decodes each key into
//   score, parent, token, child (child_ptr[node] + i) and logp (v recomputed with the same code,
//   normalised by the row's (max, log-sum) from kernel 1: bit-identical to the one scored, since
//   both go through child_value / child_bid, overrides included).
//   At 512 beams, k = 512: 32 level-0 blocks per request, then 2, then the root.
// Radix select (both kernels): MSD over the 64-bit key, 8 bits per pass; histogram in shared
// memory with warp-aggregated atomics (__match_any_sync: scores share their top bits), digit
// found by one warp; stops as soon as the bucket holding the k-th key is taken whole (usually
// after 3-4 passes on distinct scores; ties in the score reach the index bits, still exact).
// CUB is not used: a select touches each key ~4 times where a block sort of 64-bit keys takes 16
// passes, and plain code lets the kernels also compile as host code for the CPU emulation test
// (tests/cuda_emulation, which runs these kernels through run_beam_step below).
//
// The workspace (bytes from beam_step_workspace_bytes, allocated by the caller) holds the row
// lists, per-level lists, counts, tickets (zeroed by kernel 1) and, for k > 2048, the sort buffer.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "common.cuh"

namespace ega_infer {

// Shared-memory capacities. The defaults are what the launcher uses; the CPU emulation of the
// kernels shrinks them to reach the fallback paths with small inputs.
struct BeamStepLimits {
  int64_t row_smem_children = 16384;  // children of one row scored in shared memory (4 B each)
  int64_t merge_smem_keys = 8192;     // keys a merge node stages in shared memory (8 B each)
  int64_t sort_smem_keys = 2048;      // the final sort stays in shared memory up to this length
};

constexpr int kBeamStepMaxLevels = 40;         // merge tree depth bound (fan-in >= 2 above level 0)
constexpr int64_t kBeamStepSortSmemKeys = 2048;  // static shared sort buffer of the merge kernel

struct BeamStepLevel {
  int64_t nodes;          // merge nodes per request
  int64_t fanin;          // input lists per node: rows at level 0, nodes of level - 1 above
  int64_t cap;            // keys a node keeps: min(k, keys that can reach it)
  int64_t key_offset;     // element offset of this level's [requests, nodes, cap] key lists
  int64_t count_offset;   // element offset of this level's [requests, nodes] counts
  int64_t ticket_offset;  // element offset of this level's [requests, nodes] tickets (level >= 1)
};

// Sizes and workspace layout of one call; a pure function of (requests, beams, vocab, k, limits).
struct BeamStepPlan {
  int64_t requests, beams, vocab, k;
  int64_t row_cap;            // S = min(k, vocab): keys kept per row
  int64_t row_smem_children;  // min(vocab, limit): kernel 1's dynamic shared memory / 4
  int64_t merge_smem_keys;    // kernel 2's dynamic shared memory / 8
  int64_t sort_len;           // power of two >= the root's cap
  bool sort_in_global;        // sort_len > the shared sort buffer
  int levels;                 // level[levels - 1] is the root (one node per request)
  BeamStepLevel level[kBeamStepMaxLevels];
  int64_t level_keys, level_counts, tickets;  // element counts of the per-level regions
  // Workspace byte offsets (256-aligned) and total size.
  int64_t row_keys_at, level_keys_at, sort_at, row_count_at, row_norm_at, level_count_at, ticket_at;
  int64_t bytes;
};

// Requires requests, beams, vocab, k >= 1, beams * vocab < 2^32 and positive limits (the launcher
// checks them). Never touches a device.
inline BeamStepPlan plan_beam_step(int64_t requests, int64_t beams, int64_t vocab, int64_t k,
                                   const BeamStepLimits& limits = BeamStepLimits{}) {
  const auto clamp = [](int64_t x, int64_t lo, int64_t hi) { return x < lo ? lo : (x > hi ? hi : x); };
  const auto div_up = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  const auto align = [](int64_t bytes) { return (bytes + 255) / 256 * 256; };
  BeamStepPlan plan{};
  plan.requests = requests;
  plan.beams = beams;
  plan.vocab = vocab;
  plan.k = k;
  plan.row_cap = k < vocab ? k : vocab;
  plan.row_smem_children = vocab < limits.row_smem_children ? vocab : limits.row_smem_children;
  plan.merge_smem_keys = limits.merge_smem_keys;

  // Level 0 groups rows so that a node's input fits the staging buffer; each level above merges
  // as many lists as fit (at least two, so the tree always narrows). No node can see more than
  // the request's beams * S keys, which also keeps every cap below 2^32.
  const int64_t request_keys = beams * plan.row_cap;
  const auto keep = [&](int64_t reachable) {
    const int64_t c = reachable < request_keys ? reachable : request_keys;
    return k < c ? k : c;
  };
  int64_t fanin = clamp(limits.merge_smem_keys / plan.row_cap, 1, beams);
  int64_t nodes = div_up(beams, fanin);
  int64_t cap = keep(fanin * plan.row_cap);
  plan.levels = 0;
  for (;;) {
    BeamStepLevel& level = plan.level[plan.levels++];
    level.nodes = nodes;
    level.fanin = fanin;
    level.cap = cap;
    level.key_offset = plan.level_keys;
    level.count_offset = plan.level_counts;
    if (plan.levels > 1) {
      level.ticket_offset = plan.tickets;
      plan.tickets += requests * nodes;
    }
    if (nodes == 1) break;  // the root sorts into the output; it keeps no list
    plan.level_keys += requests * nodes * cap;
    plan.level_counts += requests * nodes;
    fanin = clamp(limits.merge_smem_keys / cap, 2, nodes);
    nodes = div_up(nodes, fanin);
    cap = keep(fanin * cap);
  }

  const int64_t root_cap = plan.level[plan.levels - 1].cap;
  plan.sort_len = 1;
  while (plan.sort_len < root_cap) plan.sort_len <<= 1;
  plan.sort_in_global = plan.sort_len > limits.sort_smem_keys;

  const int64_t rows = requests * beams;
  int64_t at = 0;
  plan.row_keys_at = at;
  at += align(rows * plan.row_cap * 8);
  plan.level_keys_at = at;
  at += align(plan.level_keys * 8);
  plan.sort_at = at;
  at += align(plan.sort_in_global ? requests * plan.sort_len * 8 : 0);
  plan.row_count_at = at;
  at += align(rows * 4);
  plan.row_norm_at = at;
  at += align(rows * 8);
  plan.level_count_at = at;
  at += align(plan.level_counts * 4);
  plan.ticket_at = at;
  at += align(plan.tickets * 4);
  plan.bytes = at;
  return plan;
}

constexpr const char* kBeamStepKernels = "beam_step_rows_kernel/beam_step_merge_kernel";

// Throws std::invalid_argument (with file:line and the kernel names) on a shape the kernels cannot
// run: any size < 1, beams * vocab >= 2^32 (the keys' index bits), rows past the grid limit.
inline void check_beam_step_shape(int64_t requests, int64_t beams, int64_t vocab, int64_t k) {
  EGA_CHECK_ARG(requests >= 1 && beams >= 1 && vocab >= 1 && k >= 1, kBeamStepKernels,
                "requests, beams, vocab and k must be >= 1; got " + std::to_string(requests) + ", " +
                    std::to_string(beams) + ", " + std::to_string(vocab) + ", " + std::to_string(k));
  EGA_CHECK_ARG(beams <= 0xffffffffLL / vocab, kBeamStepKernels,
                "beams * vocab = " + std::to_string(beams) + " * " + std::to_string(vocab) +
                    " must be < 2^32 (keys hold beam * vocab + rank)");
  EGA_CHECK_ARG(requests * beams <= 0x7fffffffLL, kBeamStepKernels,
                "requests * beams = " + std::to_string(requests * beams) +
                    " exceeds the grid limit 2^31 - 1");
}

// Workspace bytes launch_beam_step needs for this shape (the checks above first).
inline int64_t beam_step_workspace_bytes(int64_t requests, int64_t beams, int64_t vocab, int64_t k,
                                         const BeamStepLimits& limits = BeamStepLimits{}) {
  check_beam_step_shape(requests, beams, vocab, k);
  return plan_beam_step(requests, beams, vocab, k, limits).bytes;
}

// One call's inputs and outputs (device pointers).
// logits: [N * P, V], row stride `logits_row_stride` (elements), unit column stride;
// beam_scores: [N, P] contiguous float32; row_node: [N * P] int64; child_ptr: int64 CSR pointers
// into child_code (int32) and child_max_bid (float32); allowed: [N * P, V] uint8 or nullptr;
// alpha, log_beta: the token weight's exponent and log floor (above); override_child /
// override_bid: [N, override_entries] contiguous int64 CSR child ids (-1 = none) and float32 bids,
// a request's own max bids for a few children, or both nullptr; outputs [N, k] contiguous:
// score, logp float32, parent, token, child int64.
struct BeamStepArgs {
  const void* logits;
  DType logits_dtype;
  int64_t logits_row_stride;
  const float* beam_scores;
  const int64_t* row_node;
  const int64_t* child_ptr;
  const int32_t* child_code;
  const float* child_max_bid;
  const uint8_t* allowed;
  const int64_t* override_child;  // nullptr: no override
  const float* override_bid;
  int64_t override_entries;
  int64_t requests, beams, vocab, k;
  float alpha, log_beta;
  float* score;
  int64_t* parent;
  int64_t* token;
  int64_t* child;
  float* logp;
};

// Launches the two kernels on `stream` (beam_step.cu); workspace: >= beam_step_workspace_bytes
// bytes, 256-byte aligned, contents ignored. Throws std::invalid_argument on bad arguments and
// std::runtime_error if a launch fails, with file:line and the kernel name.
void launch_beam_step(const BeamStepArgs& args, void* workspace, int64_t workspace_bytes,
                      cudaStream_t stream);

// The kernels: nvcc only, or host code for the CPU emulation (EGA_INFER_EMULATE_KERNELS, see
// common.cuh), which supplies threadIdx, blockIdx, gridDim, __syncthreads, the warp intrinsics,
// atomics, __ldcg and detail::dynamic_smem().
#if defined(__CUDACC__) || defined(EGA_INFER_EMULATE_KERNELS)
namespace detail {
namespace beam {

using Key = unsigned long long;
constexpr int kRowThreads = 256;
constexpr int kMergeThreads = 512;

// log(exp(a) + exp(log_beta)) without overflow: the token weight of a child with
// a = alpha * log(bid); -inf only when both terms are -inf (never NaN from -inf - -inf).
__host__ __device__ __forceinline__ float token_weight(float a, float log_beta) {
  const float m = fmaxf(a, log_beta);
  if (m == -INFINITY) return -INFINITY;
  return m + log1pf(expf(-fabsf(a - log_beta)));
}

// What scoring a child needs; small, so device functions take it instead of the whole Params
// (whose address must not be taken: the kernel parameter would be copied to local memory).
struct Scoring {
  const int32_t* child_code;
  const float* child_max_bid;
  const int64_t* override_child;  // [N, override_entries], or nullptr
  const float* override_bid;
  int64_t override_entries;
  int64_t vocab;
  float alpha, log_beta;
  float flat_weight;  // token_weight(0, log_beta) = log(1 + beta): every child's when alpha == 0
};

// A row's log-softmax normaliser: logp = (v - m) - log_sum; m = -inf when no child is admissible.
struct RowNorm {
  float m;
  float log_sum;
};

// Kernel arguments: inputs, workspace regions, outputs and the plan.
struct Params {
  const void* logits;
  int64_t logits_row_stride;
  const float* beam_scores;
  const int64_t* row_node;
  const int64_t* child_ptr;
  const uint8_t* allowed;
  Scoring scoring;
  Key* row_keys;         // [N * P, row_cap]
  uint32_t* row_count;   // [N * P]
  RowNorm* row_norm;     // [N * P]
  Key* level_keys;       // per level [N, nodes, cap]
  uint32_t* level_count; // per level [N, nodes]
  uint32_t* tickets;     // per level >= 1 [N, nodes]
  Key* sort_keys;        // [N, sort_len] when the sort runs in global memory, else nullptr
  float* score;
  int64_t* parent;
  int64_t* token;
  int64_t* child;
  float* logp;
  BeamStepPlan plan;
};

// Host side: point the params at a workspace laid out by `plan`.
inline Params make_params(const BeamStepPlan& plan, void* workspace) {
  Params p{};
  unsigned char* base = static_cast<unsigned char*>(workspace);
  p.row_keys = reinterpret_cast<Key*>(base + plan.row_keys_at);
  p.level_keys = reinterpret_cast<Key*>(base + plan.level_keys_at);
  p.sort_keys = plan.sort_in_global ? reinterpret_cast<Key*>(base + plan.sort_at) : nullptr;
  p.row_count = reinterpret_cast<uint32_t*>(base + plan.row_count_at);
  p.row_norm = reinterpret_cast<RowNorm*>(base + plan.row_norm_at);
  p.level_count = reinterpret_cast<uint32_t*>(base + plan.level_count_at);
  p.tickets = reinterpret_cast<uint32_t*>(base + plan.ticket_at);
  p.plan = plan;
  return p;
}

// ---- keys ----------------------------------------------------------------------------------

// Order-preserving float -> uint32 (negative floats reversed); -0 is folded into +0 first so the
// two compare equal, as they do in the reference's sort.
__device__ __forceinline__ uint32_t score_order(float score) {
  const uint32_t bits = __float_as_uint(score + 0.0f);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

__device__ __forceinline__ float order_score(uint32_t order) {
  return __uint_as_float((order & 0x80000000u) ? (order & 0x7fffffffu) : ~order);
}

// flat = beam * V + rank; larger key = better candidate.
__device__ __forceinline__ Key make_key(uint32_t order, uint32_t flat) {
  return (static_cast<Key>(order) << 32) | static_cast<Key>(0xffffffffu - flat);
}

__device__ __forceinline__ uint32_t key_flat(Key key) {
  return 0xffffffffu - static_cast<uint32_t>(key);
}

// ---- scoring (shared by both kernels so the decoded logp is the scored one, bit for bit) ----

// Max bid of child j for `request`: child_max_bid[j], or the smallest of the request's override
// bids naming j. A linear scan: a request overrides a handful of children, and its E entries are
// the same addresses for every thread of the block (broadcast loads, cached after the first).
__host__ __device__ __forceinline__ float child_bid(const Scoring& sc, int64_t request, int64_t j) {
  if (sc.override_child == nullptr) return sc.child_max_bid[j];
  const int64_t* named = sc.override_child + request * sc.override_entries;
  const float* bid = sc.override_bid + request * sc.override_entries;
  bool found = false;
  float best = 0.0f;
  for (int64_t e = 0; e < sc.override_entries; ++e) {
    if (named[e] == j && (!found || bid[e] < best)) {
      best = bid[e];
      found = true;
    }
  }
  return found ? best : sc.child_max_bid[j];
}

// v of child j for a row of `request`, or -inf when the child is not admissible. OVERRIDE: the
// call has an override list; the kernels are instantiated both ways so that the scan's registers
// are not allocated for (and do not lower the occupancy of) calls without one.
template <bool OVERRIDE, typename T>
__device__ __forceinline__ float child_value(const Scoring& sc, int64_t request, const T* logits_row,
                                             const uint8_t* allowed_row, int64_t j) {
  const int32_t code = sc.child_code[j];
  if (code < 0 || code >= sc.vocab) return -INFINITY;  // malformed trie: never read outside
  if (allowed_row != nullptr && allowed_row[code] == 0) return -INFINITY;
  // alpha == 0: every bid weighs the same, so neither the bids nor the overrides are read
  float weight = sc.flat_weight;
  if (sc.alpha != 0.0f) {
    const float bid = OVERRIDE ? child_bid(sc, request, j) : sc.child_max_bid[j];
    weight = token_weight(sc.alpha * logf(bid), sc.log_beta);
  }
  const float v = to_float(logits_row[code]) + weight;
  return v > -INFINITY ? v : -INFINITY;  // NaN is not admissible, as in the reference
}

__device__ __forceinline__ float child_logp(float v, RowNorm norm) { return (v - norm.m) - norm.log_sum; }

// Order of the candidate's score, or 0 when it is not a candidate (score -inf or NaN).
__device__ __forceinline__ uint32_t candidate_order(float beam_score, float logp) {
  const float score = beam_score + logp;
  return score > -INFINITY ? score_order(score) : 0u;
}

// ---- block primitives ------------------------------------------------------------------------

template <int THREADS>
struct SelectShared {
  static constexpr int kWarps = THREADS / 32;
  uint32_t hist[256];
  uint32_t warp_u32[kWarps];
  MaxSum warp_ms[kWarps];
  uint32_t total;
  MaxSum ms_total;
  uint32_t digit, above, in_digit;
  uint32_t emitted;
};

// Inclusive prefix sum over the lanes of a warp.
__device__ __forceinline__ uint32_t warp_inclusive_sum(uint32_t x) {
  const int lane = threadIdx.x % 32;
  for (int offset = 1; offset < 32; offset <<= 1) {
    const uint32_t y = __shfl_up_sync(kFullMask, x, offset);
    if (lane >= offset) x += y;
  }
  return x;
}

template <int THREADS>
__device__ uint32_t block_sum(uint32_t x, SelectShared<THREADS>& sh) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  x = warp_sum(x);
  if (lane == 0) sh.warp_u32[warp] = x;
  __syncthreads();
  if (warp == 0) {
    x = warp_sum(lane < SelectShared<THREADS>::kWarps ? sh.warp_u32[lane] : 0u);
    if (lane == 0) sh.total = x;
  }
  __syncthreads();
  return sh.total;
}

// The normaliser of the block's admissible values (m = -inf when there is none).
template <int THREADS>
__device__ RowNorm block_norm(MaxSum acc, SelectShared<THREADS>& sh) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  acc = warp_merge(acc);
  if (lane == 0) sh.warp_ms[warp] = acc;
  __syncthreads();
  if (warp == 0) {
    acc = warp_merge(lane < SelectShared<THREADS>::kWarps ? sh.warp_ms[lane] : MaxSum{-INFINITY, 0.0f});
    if (lane == 0) sh.ms_total = acc;
  }
  __syncthreads();
  const MaxSum total = sh.ms_total;
  return {total.m, total.m == -INFINITY ? 0.0f : logf(total.s)};
}

// ---- radix select ----------------------------------------------------------------------------
// A key source `keys` offers keys.for_each(f): f(key) is called the same number of times in every
// thread of the block (key 0 = nothing), so f may use warp intrinsics.

// Threshold t such that {key >= t} is this block's top min(need, candidates) keys (keys distinct).
template <int THREADS, class Keys>
__device__ Key radix_threshold(const Keys& keys, uint32_t need, SelectShared<THREADS>& sh) {
  const int lane = threadIdx.x % 32;
  uint32_t mine = 0;
  keys.for_each([&](Key key) { mine += key != 0; });
  if (block_sum<THREADS>(mine, sh) <= need) return 1;  // take every candidate

  Key prefix = 0;
  uint32_t remaining = need;  // keys still to take at or below the current prefix
  for (int shift = 56; shift >= 0; shift -= 8) {
    const Key high_mask = shift == 56 ? 0 : ~Key{0} << (shift + 8);
    for (int b = threadIdx.x; b < 256; b += THREADS) sh.hist[b] = 0;
    __syncthreads();
    keys.for_each([&](Key key) {
      const bool in_prefix = key != 0 && (key & high_mask) == prefix;
      const uint32_t digit = in_prefix ? static_cast<uint32_t>(key >> shift) & 0xffu : 256u;
      const uint32_t peers = __match_any_sync(kFullMask, digit);
      if (in_prefix && lane == __ffs(peers) - 1) atomicAdd(&sh.hist[digit], static_cast<uint32_t>(__popc(peers)));
    });
    __syncthreads();
    if (threadIdx.x < 32) {
      // Lane l owns digits 8l .. 8l + 7; find the digit where the count from the top reaches
      // `remaining`: `above` keys have a larger digit, the digit holds `in_digit` more.
      uint32_t count[8], own = 0;
      for (int b = 0; b < 8; ++b) own += count[b] = sh.hist[lane * 8 + b];
      uint32_t from_top = own;  // keys in lanes >= this one
      for (int offset = 1; offset < 32; offset <<= 1) {
        const uint32_t y = __shfl_down_sync(kFullMask, from_top, offset);
        if (lane + offset < 32) from_top += y;
      }
      uint32_t above = from_top - own;
      if (above < remaining && remaining <= from_top) {
        for (int b = 7; b >= 0; --b) {
          if (above + count[b] >= remaining) {
            sh.digit = lane * 8 + b;
            sh.above = above;
            sh.in_digit = count[b];
            break;
          }
          above += count[b];
        }
      }
    }
    __syncthreads();
    prefix |= static_cast<Key>(sh.digit) << shift;
    remaining -= sh.above;
    if (sh.in_digit == remaining) return prefix;  // the whole bucket is taken
  }
  return prefix;  // unreachable with distinct keys
}

// Writes this block's top min(need, candidates) keys to out[0 ..) in no particular order and
// returns how many.
template <int THREADS, class Keys>
__device__ uint32_t select_top(const Keys& keys, uint32_t need, Key* out, SelectShared<THREADS>& sh) {
  const Key threshold = radix_threshold<THREADS>(keys, need, sh);
  const int lane = threadIdx.x % 32;
  if (threadIdx.x == 0) sh.emitted = 0;
  __syncthreads();
  keys.for_each([&](Key key) {
    const bool take = key >= threshold && key != 0;
    const uint32_t mask = __ballot_sync(kFullMask, take);
    if (mask != 0) {  // warp-uniform
      const int leader = __ffs(mask) - 1;
      uint32_t base = 0;
      if (lane == leader) base = atomicAdd(&sh.emitted, static_cast<uint32_t>(__popc(mask)));
      base = __shfl_sync(kFullMask, base, leader);
      const uint32_t at = base + __popc(mask & ((1u << lane) - 1u));
      if (take && at < need) out[at] = key;  // `at < need` only bites on duplicate keys
    }
  });
  __syncthreads();
  return sh.emitted < need ? sh.emitted : need;
}

// Descending bitonic sort of keys[0 .. n), n a power of two, by the whole block; shared or
// global memory (a block's own global writes are visible to it after __syncthreads).
template <int THREADS>
__device__ void bitonic_sort_descending(Key* keys, int64_t n) {
  for (int64_t size = 2; size <= n; size <<= 1) {
    for (int64_t stride = size >> 1; stride > 0; stride >>= 1) {
      for (int64_t t = threadIdx.x; t < n / 2; t += THREADS) {
        const int64_t lo = 2 * t - (t & (stride - 1));
        const int64_t hi = lo + stride;
        const bool descending = (lo & size) == 0;
        const Key x = keys[lo], y = keys[hi];
        if ((x < y) == descending) {
          keys[lo] = y;
          keys[hi] = x;
        }
      }
      __syncthreads();
    }
  }
}

// ---- kernel 1: score each row, keep its top S keys ---------------------------------------------

// The row's keys from v staged in shared memory (as float bits, replaced in place by orders).
template <int THREADS>
struct StagedRowKeys {
  const uint32_t* order;
  int64_t count;
  uint32_t flat_base;
  template <class F>
  __device__ void for_each(F&& f) const {
    for (int64_t base = 0; base < count; base += THREADS) {
      const int64_t i = base + threadIdx.x;
      const uint32_t o = i < count ? order[i] : 0u;
      f(o != 0 ? make_key(o, flat_base + static_cast<uint32_t>(i)) : Key{0});
    }
  }
};

// The row's keys recomputed from global memory on every pass (rows too long for shared memory).
template <typename T, int THREADS, bool OVERRIDE>
struct StreamedRowKeys {
  Scoring scoring;
  int64_t request;
  const T* logits_row;
  const uint8_t* allowed_row;
  int64_t begin, count;
  float beam_score;
  RowNorm norm;
  uint32_t flat_base;
  template <class F>
  __device__ void for_each(F&& f) const {
    for (int64_t base = 0; base < count; base += THREADS) {
      const int64_t i = base + threadIdx.x;
      uint32_t o = 0;
      if (i < count) {
        const float v = child_value<OVERRIDE>(scoring, request, logits_row, allowed_row, begin + i);
        o = candidate_order(beam_score, child_logp(v, norm));
      }
      f(o != 0 ? make_key(o, flat_base + static_cast<uint32_t>(i)) : Key{0});
    }
  }
};

template <typename T, int THREADS, bool OVERRIDE>
__global__ void __launch_bounds__(THREADS) beam_step_rows_kernel(const Params a) {
  __shared__ SelectShared<THREADS> sh;
  uint32_t* staged = reinterpret_cast<uint32_t*>(dynamic_smem());
  const BeamStepPlan& plan = a.plan;
  const int64_t r = blockIdx.x;
  const int64_t request = r / plan.beams;

  // Fresh tickets for kernel 2 (the workspace arrives uninitialised).
  for (int64_t t = r * THREADS + threadIdx.x; t < plan.tickets; t += static_cast<int64_t>(gridDim.x) * THREADS)
    a.tickets[t] = 0;

  const int64_t node = a.row_node[r];
  const float beam_score = a.beam_scores[r];
  int64_t begin = 0, count = 0;
  if (node >= 0 && beam_score > -INFINITY) {
    begin = a.child_ptr[node];
    count = a.child_ptr[node + 1] - begin;
    count = count < 0 ? 0 : (count > plan.vocab ? plan.vocab : count);  // ranks stay < V
  }
  const T* logits_row = static_cast<const T*>(a.logits) + r * a.logits_row_stride;
  const uint8_t* allowed_row = a.allowed == nullptr ? nullptr : a.allowed + r * plan.vocab;
  const bool in_smem = count <= plan.row_smem_children;

  // Pass 1: v of every child (kept in shared memory when it fits) and the row's normaliser.
  MaxSum acc{-INFINITY, 0.0f};
  for (int64_t i = threadIdx.x; i < count; i += THREADS) {
    const float v = child_value<OVERRIDE>(a.scoring, request, logits_row, allowed_row, begin + i);
    if (in_smem) staged[i] = __float_as_uint(v);
    acc = merge(acc, MaxSum{v, v == -INFINITY ? 0.0f : 1.0f});
  }
  const RowNorm norm = block_norm<THREADS>(acc, sh);

  // Pass 2: keys, then the row's top S. Each thread only touches its own staged entries.
  const uint32_t flat_base = static_cast<uint32_t>(r % plan.beams) * static_cast<uint32_t>(plan.vocab);
  Key* out = a.row_keys + r * plan.row_cap;
  const uint32_t need = static_cast<uint32_t>(plan.row_cap);
  uint32_t kept = 0;
  if (norm.m == -INFINITY) {
    kept = 0;  // no admissible child (or a dead row)
  } else if (in_smem) {
    for (int64_t i = threadIdx.x; i < count; i += THREADS)
      staged[i] = candidate_order(beam_score, child_logp(__uint_as_float(staged[i]), norm));
    kept = select_top<THREADS>(StagedRowKeys<THREADS>{staged, count, flat_base}, need, out, sh);
  } else {
    const StreamedRowKeys<T, THREADS, OVERRIDE> keys{a.scoring, request, logits_row, allowed_row, begin, count,
                                                     beam_score, norm, flat_base};
    kept = select_top<THREADS>(keys, need, out, sh);
  }
  if (threadIdx.x == 0) {
    a.row_count[r] = kept;
    a.row_norm[r] = norm;
  }
}

// ---- kernel 2: merge tree and output ---------------------------------------------------------------

// `lists` lists of up to `stride` keys each, list l at keys + l * stride holding counts[l] keys.
struct Lists {
  const Key* keys;
  const uint32_t* counts;
  int64_t stride;
  int64_t lists;
};

__device__ __forceinline__ uint32_t list_count(const Lists& in, int64_t l) {
  const uint32_t c = __ldcg(in.counts + l);  // written by other blocks of this launch: skip L1
  return c < in.stride ? c : static_cast<uint32_t>(in.stride);
}

template <int THREADS>
struct SmemKeys {
  const Key* keys;
  uint32_t count;
  template <class F>
  __device__ void for_each(F&& f) const {
    for (uint32_t base = 0; base < count; base += THREADS) {
      const uint32_t i = base + threadIdx.x;
      f(i < count ? keys[i] : Key{0});
    }
  }
};

// Slot s = l * stride + e of the lists, re-read from global memory on every pass (fallback for
// inputs larger than the staging buffer).
template <int THREADS>
struct StreamedListKeys {
  Lists in;
  template <class F>
  __device__ void for_each(F&& f) const {
    const int64_t slots = in.lists * in.stride;
    for (int64_t base = 0; base < slots; base += THREADS) {
      const int64_t s = base + threadIdx.x;
      Key key = 0;
      if (s < slots) {
        const int64_t l = s / in.stride;
        if (s - l * in.stride < list_count(in, l)) key = __ldcg(in.keys + s);
      }
      f(key);
    }
  }
};

template <int THREADS>
struct StageShared {
  static constexpr int kWarps = THREADS / 32;
  uint32_t offset[THREADS];
  uint32_t count[THREADS];
  uint32_t warp_prefix[kWarps];
  uint32_t chunk_total;
  int last;
};

// Exclusive prefix sum over the block; st.chunk_total gets the block total.
template <int THREADS>
__device__ uint32_t block_exclusive_sum(uint32_t x, StageShared<THREADS>& st) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const uint32_t inclusive = warp_inclusive_sum(x);
  if (lane == 31) st.warp_prefix[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    const uint32_t w = lane < StageShared<THREADS>::kWarps ? st.warp_prefix[lane] : 0u;
    const uint32_t w_inclusive = warp_inclusive_sum(w);
    if (lane < StageShared<THREADS>::kWarps) st.warp_prefix[lane] = w_inclusive - w;
    if (lane == 31) st.chunk_total = w_inclusive;
  }
  __syncthreads();
  return st.warp_prefix[warp] + inclusive - x;
}

// Top min(need, keys in `in`) of the lists into out[0 ..); returns how many.
template <int THREADS>
__device__ uint32_t select_lists(const Lists& in, uint32_t need, Key* out, Key* staged,
                                 int64_t staged_cap, SelectShared<THREADS>& sh,
                                 StageShared<THREADS>& st) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  uint32_t mine = 0;
  for (int64_t l = threadIdx.x; l < in.lists; l += THREADS) mine += list_count(in, l);
  const uint32_t total = block_sum<THREADS>(mine, sh);
  if (total > staged_cap) return select_top<THREADS>(StreamedListKeys<THREADS>{in}, need, out, sh);

  // Stage the lists back to back, THREADS lists at a time; warp w copies lists w, w + kWarps, ..
  uint32_t carry = 0;
  for (int64_t first = 0; first < in.lists; first += THREADS) {
    const int64_t l = first + threadIdx.x;
    const uint32_t c = l < in.lists ? list_count(in, l) : 0u;
    const uint32_t offset = block_exclusive_sum<THREADS>(c, st);
    st.offset[threadIdx.x] = carry + offset;
    st.count[threadIdx.x] = c;
    carry += st.chunk_total;
    __syncthreads();
    for (int q = warp; q < THREADS && first + q < in.lists; q += StageShared<THREADS>::kWarps) {
      const Key* src = in.keys + (first + q) * in.stride;
      Key* dst = staged + st.offset[q];
      for (uint32_t e = lane; e < st.count[q]; e += 32) dst[e] = __ldcg(src + e);
    }
    __syncthreads();
  }
  return select_top<THREADS>(SmemKeys<THREADS>{staged, total}, need, out, sh);
}

// Output column `at` of request n from its key (0 = a missing entry).
template <typename T, bool OVERRIDE>
__device__ __forceinline__ void write_entry(const Params& a, int64_t n, int64_t at, Key key) {
  const BeamStepPlan& plan = a.plan;
  const int64_t o = n * plan.k + at;
  if (key == 0) {
    a.score[o] = -INFINITY;
    a.parent[o] = 0;
    a.token[o] = 0;
    a.child[o] = -1;
    a.logp[o] = -INFINITY;
    return;
  }
  const uint32_t flat = key_flat(key);
  const int64_t beam = flat / static_cast<uint32_t>(plan.vocab);
  const int64_t rank = flat - beam * plan.vocab;
  const int64_t r = n * plan.beams + beam;
  const int64_t j = a.child_ptr[a.row_node[r]] + rank;
  const T* logits_row = static_cast<const T*>(a.logits) + r * a.logits_row_stride;
  const uint8_t* allowed_row = a.allowed == nullptr ? nullptr : a.allowed + r * plan.vocab;
  a.score[o] = order_score(static_cast<uint32_t>(key >> 32));
  a.parent[o] = beam;
  a.token[o] = a.scoring.child_code[j];
  a.child[o] = j;
  a.logp[o] = child_logp(child_value<OVERRIDE>(a.scoring, n, logits_row, allowed_row, j), a.row_norm[r]);
}

template <typename T, int THREADS, bool OVERRIDE>
__global__ void __launch_bounds__(THREADS) beam_step_merge_kernel(const Params a) {
  __shared__ SelectShared<THREADS> sh;
  __shared__ StageShared<THREADS> st;
  __shared__ Key sort_smem[kBeamStepSortSmemKeys];
  Key* staged = reinterpret_cast<Key*>(dynamic_smem());
  const BeamStepPlan& plan = a.plan;
  const int64_t n = blockIdx.x / plan.level[0].nodes;
  int64_t node = blockIdx.x % plan.level[0].nodes;

  for (int l = 0;; ++l) {
    const BeamStepLevel& level = plan.level[l];
    Lists in;
    if (l == 0) {
      const int64_t first = n * plan.beams + node * level.fanin;
      const int64_t rows = plan.beams - node * level.fanin;
      in = Lists{a.row_keys + first * plan.row_cap, a.row_count + first, plan.row_cap,
                 rows < level.fanin ? rows : level.fanin};
    } else {
      const BeamStepLevel& below = plan.level[l - 1];
      const int64_t first = n * below.nodes + node * level.fanin;
      const int64_t lists = below.nodes - node * level.fanin;
      in = Lists{a.level_keys + below.key_offset + first * below.cap,
                 a.level_count + below.count_offset + first, below.cap,
                 lists < level.fanin ? lists : level.fanin};
    }

    if (level.nodes == 1) {  // the root: final top-k, sorted, decoded
      Key* sorted = plan.sort_in_global ? a.sort_keys + n * plan.sort_len : sort_smem;
      const uint32_t kept = select_lists<THREADS>(in, static_cast<uint32_t>(level.cap), sorted, staged,
                                                  plan.merge_smem_keys, sh, st);
      for (int64_t i = kept + threadIdx.x; i < plan.sort_len; i += THREADS) sorted[i] = 0;
      __syncthreads();
      bitonic_sort_descending<THREADS>(sorted, plan.sort_len);
      for (int64_t i = threadIdx.x; i < plan.k; i += THREADS)
        write_entry<T, OVERRIDE>(a, n, i, i < plan.sort_len ? sorted[i] : Key{0});
      return;
    }

    const int64_t slot = n * level.nodes + node;
    const uint32_t kept = select_lists<THREADS>(in, static_cast<uint32_t>(level.cap),
                                                a.level_keys + level.key_offset + slot * level.cap,
                                                staged, plan.merge_smem_keys, sh, st);
    if (threadIdx.x == 0) a.level_count[level.count_offset + slot] = kept;
    // Publish, then take a ticket on the parent; the last sibling in merges the parent.
    __threadfence();
    __syncthreads();
    const BeamStepLevel& up = plan.level[l + 1];
    const int64_t parent = node / up.fanin;
    const int64_t siblings_left = level.nodes - parent * up.fanin;
    const uint32_t siblings = static_cast<uint32_t>(siblings_left < up.fanin ? siblings_left : up.fanin);
    if (threadIdx.x == 0)
      st.last = atomicAdd(a.tickets + up.ticket_offset + n * up.nodes + parent, 1u) == siblings - 1;
    __syncthreads();
    if (!st.last) return;
    __threadfence();  // acquire side: the siblings' lists are read below
    node = parent;
  }
}

// ---- the launch ---------------------------------------------------------------------------------

// One call, for the launcher (beam_step.cu) and the CPU emulation alike: the argument checks, the
// plan and the params, then launch(kernel, name, grid, threads, dynamic_smem_bytes, params) for
// the two kernels in order. `limits`: the shared-memory capacities (the emulation shrinks them).
template <class Launch>
void run_beam_step(const BeamStepArgs& args, const BeamStepLimits& limits, void* workspace,
                   int64_t workspace_bytes, Launch&& launch) {
  check_beam_step_shape(args.requests, args.beams, args.vocab, args.k);
  const BeamStepPlan plan = plan_beam_step(args.requests, args.beams, args.vocab, args.k, limits);
  EGA_CHECK_ARG(plan.levels <= kBeamStepMaxLevels, kBeamStepKernels,
                "merge tree deeper than kBeamStepMaxLevels");
  EGA_CHECK_ARG(workspace != nullptr && workspace_bytes >= plan.bytes, kBeamStepKernels,
                "workspace of " + std::to_string(workspace_bytes) + " bytes; need " +
                    std::to_string(plan.bytes) + " (beam_step_workspace_bytes)");
  EGA_CHECK_ARG(reinterpret_cast<uintptr_t>(workspace) % 256 == 0, kBeamStepKernels,
                "workspace must be 256-byte aligned");
  EGA_CHECK_ARG(args.logits != nullptr && args.beam_scores != nullptr && args.row_node != nullptr &&
                    args.child_ptr != nullptr && args.score != nullptr && args.parent != nullptr &&
                    args.token != nullptr && args.child != nullptr && args.logp != nullptr,
                kBeamStepKernels, "logits, beam_scores, row_node, child_ptr and the outputs must be non-null");
  EGA_CHECK_ARG(args.logits_row_stride >= 0, kBeamStepKernels, "logits_row_stride must be >= 0");
  EGA_CHECK_ARG((args.override_child == nullptr) == (args.override_bid == nullptr), kBeamStepKernels,
                "override_child and override_bid must be both null or both non-null");
  EGA_CHECK_ARG(args.override_child == nullptr || args.override_entries >= 0, kBeamStepKernels,
                "override_entries must be >= 0; got " + std::to_string(args.override_entries));
  // No entries is no override: the kernels then skip the scan altogether.
  const bool has_override = args.override_child != nullptr && args.override_entries > 0;

  Params params = make_params(plan, workspace);
  params.logits = args.logits;
  params.logits_row_stride = args.logits_row_stride;
  params.beam_scores = args.beam_scores;
  params.row_node = args.row_node;
  params.child_ptr = args.child_ptr;
  params.allowed = args.allowed;
  params.scoring = Scoring{args.child_code,
                           args.child_max_bid,
                           has_override ? args.override_child : nullptr,
                           has_override ? args.override_bid : nullptr,
                           has_override ? args.override_entries : 0,
                           args.vocab,
                           args.alpha,
                           args.log_beta,
                           token_weight(0.0f, args.log_beta)};
  params.score = args.score;
  params.parent = args.parent;
  params.token = args.token;
  params.child = args.child;
  params.logp = args.logp;

  const int64_t rows = plan.requests * plan.beams;
  const int64_t merge_blocks = plan.requests * plan.level[0].nodes;
  const auto launch_pair = [&](auto tag, auto with_override) {
    using T = typename decltype(tag)::type;
    constexpr bool kOverride = decltype(with_override)::value;
    launch(beam_step_rows_kernel<T, kRowThreads, kOverride>, "beam_step_rows_kernel",
           dim3(static_cast<unsigned int>(rows)), kRowThreads, plan.row_smem_children * 4, params);
    launch(beam_step_merge_kernel<T, kMergeThreads, kOverride>, "beam_step_merge_kernel",
           dim3(static_cast<unsigned int>(merge_blocks)), kMergeThreads, plan.merge_smem_keys * 8, params);
  };
  dispatch_dtype(args.logits_dtype, kBeamStepKernels, [&](auto tag) {
    if (has_override)
      launch_pair(tag, std::true_type{});
    else
      launch_pair(tag, std::false_type{});
  });
}

}  // namespace beam
}  // namespace detail
#endif  // __CUDACC__ || EGA_INFER_EMULATE_KERNELS
}  // namespace ega_infer
