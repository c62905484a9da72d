// Host emulation of the CUDA execution model, for running the kernels of csrc/*.cuh on the CPU
// (EGA_INFER_EMULATE_KERNELS). Include this first, then the csrc headers.
//
// It stands in for what the kernels take from the CUDA headers and the hardware:
//   * the keywords (__global__, __device__, __shared__ -> a static shared by the block's threads);
//   * threadIdx / blockIdx / blockDim / gridDim, set per thread by the scheduler (emu_runtime.cpp);
//   * __syncthreads and the warp-synchronous intrinsics (__syncwarp, __shfl*_sync, __ballot_sync,
//     __match_any_sync) with their real semantics: every CUDA thread is a fiber, and a fiber that
//     reaches a barrier or a warp intrinsic waits until every thread of the block (every lane of
//     the mask) has reached it; only then does any of them get the result. Stricter than the
//     hardware: a barrier must be reached by every thread of the block (none exited), the same
//     number of times, and a warp operation by every lane of its mask, in the same order;
//   * atomics (fibers never preempt each other, so a read-modify-write is atomic), __threadfence
//     and __ldcg (memory is sequentially consistent here), __ffs, __popc, bit casts;
//   * __nv_bfloat16 / __half as 16-bit storage with the CUDA headers' conversions (round to
//     nearest even, NaN -> 0x7fff).
// The PTX-level primitives of decode_attention (cp.async, ldmatrix, mma.sync) are emulated in
// emu_runtime.cpp from the PTX ISA's fragment layouts; the entry files bind them to the names the
// kernel header declares.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) alignas(n)

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct CUstream_st;
using cudaStream_t = CUstream_st*;

extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;

namespace ega_emu {

// What a warp-wide operation is; every lane of one operation must name the same one.
enum class Op : int {
  kSyncWarp,
  kShfl,
  kShflUp,
  kShflDown,
  kShflXor,
  kBallot,
  kMatchAny,
  kLdmatrix,
  kLdmatrixTrans,
  kMmaBf16,
  kMmaF16,
};

constexpr size_t kSlotBytes = 48;  // the largest per-lane input: one mma's a[4], b0, b1, c[4]

// Lane's part of a warp-wide operation over the lanes of `mask`: copies `in` (in_bytes) into the
// warp's slot, waits until every lane of the mask has arrived at the same operation, computes
// every lane's result once, and copies this lane's into `out` (out_bytes). Errors (a lane outside
// the mask, lanes at different operations, a lane that exited) stop the launch with a message.
void warp_op(Op op, unsigned mask, const void* in, size_t in_bytes, void* out, size_t out_bytes);

void syncthreads();

// Stops the running launch with `what` (thrown in the calling fiber, reported by the launch).
[[noreturn]] void fail(const std::string& what);

// Runs body() as every thread of every block of the grid: blocks one after another (a legal CUDA
// schedule, so cross-block ticket patterns work), threads of a block as fibers. `smem_bytes` of
// dynamic shared memory, filled with the schedule's garbage (fill_garbage) at every block start
// and checked for writes past its end after every block. Throws std::runtime_error naming the
// kernel on any emulation error.
void launch(const char* kernel, dim3 grid, dim3 block, size_t smem_bytes, const std::function<void()>& body);

// Which ready fiber runs next and in which order the blocks run: 0 = in thread / block order,
// 1 = reversed (last ready first), 2 = pseudo-random from `seed`; and what memory the kernels
// must not rely on holds (dynamic shared memory at block start, workspace and outputs at launch):
// 0xff bytes (NaN as floats), zero bytes, pseudo-random bytes. Correct kernels give the same
// result under every schedule; a race within a block, or a read of memory the kernel did not
// write, shows up as a difference.
void set_schedule(int schedule, unsigned seed);

// Fills [p, p + n) with the current schedule's garbage.
void fill_garbage(unsigned char* p, size_t n);

// Dynamic shared memory of the running block.
unsigned char* block_smem();
size_t block_smem_bytes();

// The PTX primitives (semantics: see decode_attention.cuh and the PTX ISA).
void cp_async_16(void* smem, const void* gmem, int src_bytes);
void cp_async_commit();
void cp_async_wait(int pending_groups);
void ldmatrix_x4(uint32_t (&r)[4], const void* smem, bool trans);
void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bool bf16);

// Counters of the last launches since reset (for the tests' report).
struct Stats {
  uint64_t blocks, threads, switches, barriers, warp_ops;
};
Stats stats();
void reset_stats();

template <typename T>
inline T bit_cast_to(const void* p) {
  T t;
  std::memcpy(&t, p, sizeof(T));
  return t;
}

}  // namespace ega_emu

// ---- intrinsics --------------------------------------------------------------------------------

inline void __syncthreads() { ega_emu::syncthreads(); }
inline void __threadfence() {}

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ega_emu::warp_op(ega_emu::Op::kSyncWarp, mask, nullptr, 0, nullptr, 0);
}

namespace ega_emu {
struct ShflIn {
  unsigned char value[8];
  int arg;    // source lane, delta or lane mask
  int width;  // segment width, a power of two <= 32
};

template <typename T>
inline T shfl(Op op, unsigned mask, T var, int arg, int width) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a value up to 8 bytes");
  ShflIn in{};
  std::memcpy(in.value, &var, sizeof(T));
  in.arg = arg;
  in.width = width;
  unsigned char out[8];
  warp_op(op, mask, &in, sizeof in, out, sizeof out);
  return bit_cast_to<T>(out);
}
}  // namespace ega_emu

template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
  return ega_emu::shfl(ega_emu::Op::kShfl, mask, var, src_lane, width);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return ega_emu::shfl(ega_emu::Op::kShflUp, mask, var, static_cast<int>(delta), width);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return ega_emu::shfl(ega_emu::Op::kShflDown, mask, var, static_cast<int>(delta), width);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  return ega_emu::shfl(ega_emu::Op::kShflXor, mask, var, lane_mask, width);
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
  const int in = predicate != 0;
  unsigned out;
  ega_emu::warp_op(ega_emu::Op::kBallot, mask, &in, sizeof in, &out, sizeof out);
  return out;
}

template <typename T>
inline unsigned __match_any_sync(unsigned mask, T value) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "match of a value up to 8 bytes");
  unsigned char in[8] = {};
  std::memcpy(in, &value, sizeof(T));
  unsigned out;
  ega_emu::warp_op(ega_emu::Op::kMatchAny, mask, in, sizeof in, &out, sizeof out);
  return out;
}

inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }

template <typename T>
inline T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}

template <typename T>
inline T __ldcg(const T* p) {
  return *p;
}

inline unsigned __float_as_uint(float x) { return ega_emu::bit_cast_to<unsigned>(&x); }
inline float __uint_as_float(unsigned x) { return ega_emu::bit_cast_to<float>(&x); }

// ---- 16-bit floats -----------------------------------------------------------------------------

struct __nv_bfloat16 {
  uint16_t bits;
};
struct __half {
  uint16_t bits;
};

inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 x) { return x.bits; }
inline unsigned short __half_as_ushort(__half x) { return x.bits; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short x) { return {x}; }
inline __half __ushort_as_half(unsigned short x) { return {x}; }

inline float __bfloat162float(__nv_bfloat16 x) {
  const uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  return ega_emu::bit_cast_to<float>(&u);
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u = ega_emu::bit_cast_to<uint32_t>(&f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {0x7fff};  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);                       // round to nearest, ties to even
  return {static_cast<uint16_t>(u >> 16)};
}

inline float __half2float(__half x) {
  const uint32_t sign = static_cast<uint32_t>(x.bits & 0x8000u) << 16;
  const uint32_t exponent = (x.bits >> 10) & 0x1fu;
  const uint32_t mantissa = x.bits & 0x3ffu;
  uint32_t u;
  if (exponent == 0) {
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);  // zero or subnormal, exact
    u = sign | ega_emu::bit_cast_to<uint32_t>(&magnitude);
  } else if (exponent == 31) {
    u = sign | 0x7f800000u | (mantissa << 13);
  } else {
    u = sign | ((exponent + 112) << 23) | (mantissa << 13);
  }
  return ega_emu::bit_cast_to<float>(&u);
}

inline __half __float2half_rn(float f) {
  const uint32_t u = ega_emu::bit_cast_to<uint32_t>(&f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return {0x7fff};                           // NaN
  if (a >= 0x477ff000u) return {static_cast<uint16_t>(sign | 0x7c00u)};  // >= 65520: inf
  const auto round = [](uint32_t kept, uint32_t rest, uint32_t half) {
    return kept + (rest > half || (rest == half && (kept & 1u)));
  };
  if (a < 0x38800000u) {  // below 2^-14: a subnormal half (or zero), in units of 2^-24
    const int shift = 126 - static_cast<int>(a >> 23);  // >= 14
    if (shift > 30) return {sign};
    const uint32_t mantissa = (a & 0x7fffffu) | 0x800000u;
    const uint32_t kept = mantissa >> shift;
    const uint32_t rest = mantissa & ((1u << shift) - 1u);
    return {static_cast<uint16_t>(sign | round(kept, rest, 1u << (shift - 1)))};
  }
  const uint32_t kept = ((((a >> 23) - 112) << 10) | ((a & 0x7fffffu) >> 13));
  return {static_cast<uint16_t>(sign | round(kept, a & 0x1fffu, 0x1000u))};
}
