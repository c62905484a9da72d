// Small kernels that check the emulator itself: the intrinsics give their documented results, and
// the kernel bugs it claims to stop (a divergent barrier or warp operation, a lane that exits while
// its warp waits for it, a write past the dynamic shared memory) do stop the launch.
#include "cuda_emu.h"


#include "emu_entry.h"

namespace {

// Every lane checks the results of the warp intrinsics against their definitions; *failures counts
// the failures.
void intrinsics_kernel(int* failures) {
  const int lane = threadIdx.x % 32;
  const auto expect = [&](bool cond) {
    if (!cond) atomicAdd(failures, 1);
  };
  expect(__shfl_sync(0xffffffffu, lane * 3, 5) == 15);
  expect(__shfl_sync(0xffffffffu, lane, lane + 1, 8) == (lane & ~7) + ((lane + 1) & 7));
  expect(__shfl_up_sync(0xffffffffu, lane, 3) == (lane >= 3 ? lane - 3 : lane));
  expect(__shfl_down_sync(0xffffffffu, lane, 3) == (lane + 3 < 32 ? lane + 3 : lane));
  expect(__shfl_xor_sync(0xffffffffu, 1.5f * lane, 6) == 1.5f * (lane ^ 6));
  expect(__shfl_xor_sync(0xffffffffu, static_cast<unsigned long long>(lane) << 40, 1) ==
         static_cast<unsigned long long>(lane ^ 1) << 40);
  expect(__ballot_sync(0xffffffffu, lane % 3 == 0) == 0x49249249u);
  expect(__match_any_sync(0xffffffffu, lane / 8) == (0xffu << (lane / 8 * 8)));
  __syncwarp();
  // Partial masks: the even lanes exchange among themselves.
  if (lane % 2 == 0) expect(__shfl_xor_sync(0x55555555u, lane, 2) == (lane ^ 2));
  __syncthreads();
}

void divergent_barrier_kernel() {
  if (threadIdx.x < 32) __syncthreads();
  __syncthreads();
}

void divergent_warp_kernel() {
  if (threadIdx.x % 2 == 0) {
    (void)__shfl_xor_sync(0xffffffffu, 1, 1);
  } else {
    (void)__ballot_sync(0xffffffffu, 1);
  }
}

void exited_lane_kernel() {
  if (threadIdx.x == 7) return;
  (void)__shfl_xor_sync(0xffffffffu, 1, 1);
}

void smem_overflow_kernel() {
  unsigned char* smem = ega_emu::block_smem();
  if (threadIdx.x == 0) smem[ega_emu::block_smem_bytes()] = 1;  // one byte past the end
  __syncthreads();
}

}  // namespace

extern "C" {

// which: 0 intrinsics, 1 divergent barrier, 2 divergent warp, 3 exited lane, 4 shared memory
// overflow. Returns ega_emu_* codes (0 ok, 2 emulation error with the message in log); for 0 also
// fails with a message when an intrinsic gave a wrong result.
int ega_emu_selftest(int which, char* log, int64_t log_len) {
  return ega_emu::guarded_call(log, log_len, [&](std::string&) {
    int failures = 0;
    switch (which) {
      case 0:
        ega_emu::launch("intrinsics_kernel", dim3(2), dim3(64), 0, [&] { intrinsics_kernel(&failures); });
        if (failures != 0) throw std::runtime_error(std::to_string(failures) + " intrinsic results were wrong");
        return;
      case 1:
        ega_emu::launch("divergent_barrier_kernel", dim3(1), dim3(64), 0, [] { divergent_barrier_kernel(); });
        return;
      case 2:
        ega_emu::launch("divergent_warp_kernel", dim3(1), dim3(32), 0, [] { divergent_warp_kernel(); });
        return;
      case 3:
        ega_emu::launch("exited_lane_kernel", dim3(1), dim3(32), 0, [] { exited_lane_kernel(); });
        return;
      case 4:
        ega_emu::launch("smem_overflow_kernel", dim3(1), dim3(32), 64, [] { smem_overflow_kernel(); });
        return;
    }
    throw std::invalid_argument("unknown self-test " + std::to_string(which));
  });
}

}  // extern "C"
