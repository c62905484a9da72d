// What the CUDA kernels of ega_infer._cuda share: the dtype codes, the float loaders, the warp
// and block reductions both kernels use, and the host-side checks (raw pointers only: no torch,
// no pybind11).
//
// Three compilers read this header:
//   * nvcc, for the .cu launchers: everything;
//   * the host C++ compiler, for the pybind11 bindings (cuda_module.cu): the host API only;
//   * the host C++ compiler with EGA_INFER_EMULATE_KERNELS, for the CPU emulation of the kernels
//     (tests/cuda_emulation): the device code as host code. The emulation supplies the CUDA
//     types (__nv_bfloat16, __half, dim3, cudaStream_t), threadIdx / blockIdx / gridDim, the
//     barrier, warp and atomic intrinsics and detail::dynamic_smem(), so no CUDA header is read.
#pragma once

#if !defined(EGA_INFER_EMULATE_KERNELS)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace ega_infer {

// Element type of the floating-point inputs (logits, q / k / v). The bindings take it by name.
enum class DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

inline int64_t dtype_bytes(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

// Throws "file:line: kernel: what": std::invalid_argument for bad arguments (ValueError in
// Python), std::runtime_error for a failed CUDA call (RuntimeError).
[[noreturn]] inline void check_failed(const char* file, int line, const char* kernel,
                                      const std::string& what, bool bad_argument) {
  const std::string message = std::string(file) + ":" + std::to_string(line) + ": " + kernel + ": " + what;
  if (bad_argument) throw std::invalid_argument(message);
  throw std::runtime_error(message);
}

#define EGA_CHECK_ARG(cond, kernel, what)                                                   \
  do {                                                                                      \
    if (!(cond)) ::ega_infer::check_failed(__FILE__, __LINE__, (kernel), (what), true);     \
  } while (0)

#if !defined(EGA_INFER_EMULATE_KERNELS)
#define EGA_CHECK_CUDA(call, kernel)                                                        \
  do {                                                                                      \
    const cudaError_t err_ = (call);                                                        \
    if (err_ != cudaSuccess)                                                                \
      ::ega_infer::check_failed(__FILE__, __LINE__, (kernel),                               \
                                std::string(#call) + " failed: " + cudaGetErrorName(err_) + \
                                    ": " + cudaGetErrorString(err_),                        \
                                false);                                                     \
  } while (0)
#endif

// CUDA architectures the kernels were compiled for (nvcc's __CUDA_ARCH_LIST__), e.g. {800, 900}.
// Defined in common.cu.
std::vector<int> compiled_cuda_archs();

template <typename T>
struct TypeTag {
  using type = T;
};

// f(TypeTag<T>{}) with T the C++ type of `dtype`: float, __nv_bfloat16 or __half.
template <class F>
void dispatch_dtype(DType dtype, const char* kernel, F&& f) {
  switch (dtype) {
    case DType::kFloat32:
      f(TypeTag<float>{});
      return;
    case DType::kBFloat16:
      f(TypeTag<__nv_bfloat16>{});
      return;
    case DType::kFloat16:
      f(TypeTag<__half>{});
      return;
  }
  check_failed(__FILE__, __LINE__, kernel, "unknown dtype code " + std::to_string(static_cast<int>(dtype)), true);
}

#if defined(__CUDACC__)
// Opts `kernel` into more than the default 48 KiB of dynamic shared memory when it needs it.
template <typename Kernel>
void allow_dynamic_smem(Kernel kernel, int64_t bytes, const char* name) {
  if (bytes > 48 * 1024)
    EGA_CHECK_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)),
                   name);
}
#endif

#if defined(__CUDACC__) || defined(EGA_INFER_EMULATE_KERNELS)
namespace detail {

constexpr unsigned kFullMask = 0xffffffffu;

#if defined(__CUDACC__)
// Dynamic shared memory of the running kernel (sized at launch).
__device__ __forceinline__ unsigned char* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char ega_infer_dynamic_smem[];
  return ega_infer_dynamic_smem;
}
#else
unsigned char* dynamic_smem();  // the emulated block's buffer
#endif

// ---- float loaders -----------------------------------------------------------------------------

__host__ __device__ __forceinline__ float to_float(float x) { return x; }
__host__ __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__host__ __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <typename T>
__host__ __device__ __forceinline__ T from_float(float x) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(x);
  } else {
    return __float2half_rn(x);
  }
}

// ---- reductions --------------------------------------------------------------------------------

// Running (max, sum of exp(x - max)); merge is associative and safe when a side is empty.
struct MaxSum {
  float m;
  float s;
};

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, 0.0f};
  return {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

// Butterfly reductions over the 32 lanes of a warp (every lane gets the result).
template <typename T>
__device__ __forceinline__ T warp_sum(T x) {
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(kFullMask, x, offset);
  return x;
}

__device__ __forceinline__ float warp_max(float x) {
  for (int offset = 16; offset > 0; offset >>= 1) x = fmaxf(x, __shfl_xor_sync(kFullMask, x, offset));
  return x;
}

__device__ __forceinline__ MaxSum warp_merge(MaxSum acc) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    const MaxSum other{__shfl_xor_sync(kFullMask, acc.m, offset),
                       __shfl_xor_sync(kFullMask, acc.s, offset)};
    acc = merge(acc, other);
  }
  return acc;
}

}  // namespace detail
#endif  // __CUDACC__ || EGA_INFER_EMULATE_KERNELS
}  // namespace ega_infer
