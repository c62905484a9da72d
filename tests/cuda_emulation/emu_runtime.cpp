// The scheduler of the CUDA emulation (cuda_emu.h): one fiber per CUDA thread, blocks one after
// another, warp operations and barriers that release only when every participant has arrived,
// and the PTX primitives of the decode attention kernels.
#include "cuda_emu.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <deque>
#include <stdexcept>
#include <vector>

#if !defined(__x86_64__) || defined(EGA_EMU_UCONTEXT)
#define EGA_EMU_USE_UCONTEXT 1
#include <ucontext.h>
#endif

uint3 threadIdx{0, 0, 0};
uint3 blockIdx{0, 0, 0};
dim3 blockDim{1, 1, 1};
dim3 gridDim{1, 1, 1};

namespace ega_infer {
namespace detail {
unsigned char* dynamic_smem() { return ega_emu::block_smem(); }
}  // namespace detail
}  // namespace ega_infer

#if !defined(EGA_EMU_USE_UCONTEXT)
// x86-64 System V: save the callee-saved registers on the current stack, store its pointer in
// *from, switch to `to` and restore that stack's registers; `ret` resumes it (or, for a new fiber,
// enters fiber_entry). The glibc swapcontext also saves the signal mask with a system call per
// switch, several times slower than this.
extern "C" void ega_emu_switch(void** from, void* to);
asm(R"(
.pushsection .text
.p2align 4
.globl ega_emu_switch
.type ega_emu_switch,@function
ega_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size ega_emu_switch,.-ega_emu_switch
.popsection
)");
#endif

namespace ega_emu {
namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kCanaryBytes = 256;
constexpr unsigned char kCanary = 0x5a;

enum class State { kReady, kBarrier, kWarp, kDone };

struct CpAsyncCopy {
  unsigned char* dst;
  unsigned char data[16];
  uint64_t group;
};

struct Fiber {
  unsigned char* stack = nullptr;  // mmap'ed, a guard page at its low end
#if defined(EGA_EMU_USE_UCONTEXT)
  ucontext_t context;
#else
  void* sp = nullptr;
#endif
  uint3 tid{};
  int linear = 0;
  State state = State::kDone;
  uint64_t barriers = 0;
  uint64_t warp_ops = 0;
  uint64_t open_group = 0;  // cp.async: id of the group being filled
  std::vector<CpAsyncCopy> pending;
};

struct WarpState {
  Op op = Op::kSyncWarp;
  unsigned mask = 0;
  unsigned arrived = 0;
  size_t in_bytes = 0;
  uint64_t seq = 0;  // the operation's index in each lane's sequence (all lanes must agree)
  alignas(16) unsigned char in[32][kSlotBytes];
  alignas(16) unsigned char out[32][kSlotBytes];
};

struct Emulator {
  std::vector<Fiber> fibers;  // only grows (the stacks are reused); fibers[0 .. threads) run
  std::vector<WarpState> warps;
  std::deque<int> ready;
  int threads = 0;
  int done = 0;
  int at_barrier = 0;
  Fiber* current = nullptr;
  const std::function<void()>* body = nullptr;
  std::string error;
  std::vector<unsigned char> smem;  // dynamic shared memory + canary
  size_t smem_bytes = 0;
  int schedule = 0;
  uint64_t rng = 0x9e3779b97f4a7c15ull;
  Stats stats{};
#if defined(EGA_EMU_USE_UCONTEXT)
  ucontext_t scheduler;
#else
  void* scheduler_sp = nullptr;
#endif
};

Emulator& emu() {
  static Emulator e;
  return e;
}

struct FiberError {
  std::string what;
};

uint64_t next_random(Emulator& e) {
  e.rng ^= e.rng << 13;
  e.rng ^= e.rng >> 7;
  e.rng ^= e.rng << 17;
  return e.rng;
}

std::string where(const Fiber& f) {
  return "thread (" + std::to_string(f.tid.x) + ", " + std::to_string(f.tid.y) + ", " + std::to_string(f.tid.z) +
         ") of block (" + std::to_string(blockIdx.x) + ", " + std::to_string(blockIdx.y) + ", " +
         std::to_string(blockIdx.z) + ")";
}

void make_ready(Emulator& e, Fiber& f) {
  f.state = State::kReady;
  e.ready.push_back(f.linear);
}

// Back to the scheduler; returns when this fiber is resumed.
void yield() {
  Emulator& e = emu();
  Fiber& f = *e.current;
#if defined(EGA_EMU_USE_UCONTEXT)
  swapcontext(&f.context, &e.scheduler);
#else
  ega_emu_switch(&f.sp, e.scheduler_sp);
#endif
}

void finish_fiber(Emulator& e, Fiber& f) {
  f.state = State::kDone;
  ++e.done;
  if (!f.pending.empty() && e.error.empty())
    e.error = where(f) + " exited with " + std::to_string(f.pending.size()) + " cp.async copies never waited for";
  WarpState& w = e.warps[f.linear / 32];
  if (w.arrived != 0 && (w.mask >> (f.linear % 32) & 1u) && e.error.empty())
    e.error = where(f) + " exited while lanes of its warp wait for it in a warp operation";
  if (e.at_barrier > 0 && e.error.empty())
    e.error = where(f) + " exited while " + std::to_string(e.at_barrier) +
              " threads of its block wait at __syncthreads (a barrier not reached by the whole block)";
}

[[noreturn]] void fiber_entry_body() {
  Emulator& e = emu();
  Fiber& f = *e.current;
  try {
    (*e.body)();
  } catch (const FiberError& err) {
    if (e.error.empty()) e.error = err.what;
  } catch (const std::exception& err) {
    if (e.error.empty()) e.error = where(f) + ": " + err.what();
  }
  finish_fiber(e, f);
#if defined(EGA_EMU_USE_UCONTEXT)
  setcontext(&e.scheduler);
#else
  void* unused;
  ega_emu_switch(&unused, e.scheduler_sp);
#endif
  std::abort();  // a finished fiber is never resumed
}

#if defined(EGA_EMU_USE_UCONTEXT)
void fiber_entry_ucontext() { fiber_entry_body(); }
#else
extern "C" void ega_emu_fiber_entry() { fiber_entry_body(); }
#endif

void start_fiber(Emulator& e, Fiber& f) {
  if (f.stack == nullptr) {
    const long page = sysconf(_SC_PAGESIZE);
    void* p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("cuda emulation: mmap of a fiber stack failed");
    mprotect(p, page, PROT_NONE);  // overflow faults instead of corrupting a neighbour
    f.stack = static_cast<unsigned char*>(p) + page;
  }
#if defined(EGA_EMU_USE_UCONTEXT)
  getcontext(&f.context);
  f.context.uc_stack.ss_sp = f.stack;
  f.context.uc_stack.ss_size = kStackBytes;
  f.context.uc_link = nullptr;
  makecontext(&f.context, fiber_entry_ucontext, 0);
#else
  // Frame popped by the first switch: six callee-saved registers, then the "return" into
  // ega_emu_fiber_entry, which then sees the stack alignment of a function entry.
  auto top = reinterpret_cast<uintptr_t>(f.stack + kStackBytes) & ~uintptr_t{15};
  auto* slot = reinterpret_cast<uintptr_t*>(top);
  slot[-1] = 0;
  slot[-2] = reinterpret_cast<uintptr_t>(&ega_emu_fiber_entry);
  for (int i = 3; i <= 8; ++i) slot[-i] = 0;
  f.sp = slot - 8;
#endif
  (void)e;
}

void resume(Emulator& e, Fiber& f) {
  e.current = &f;
  threadIdx = f.tid;
  ++e.stats.switches;
#if defined(EGA_EMU_USE_UCONTEXT)
  swapcontext(&e.scheduler, &f.context);
#else
  ega_emu_switch(&e.scheduler_sp, f.sp);
#endif
}

int pick(Emulator& e) {
  int t;
  if (e.schedule == 0) {
    t = e.ready.front();
    e.ready.pop_front();
  } else if (e.schedule == 1) {
    t = e.ready.back();
    e.ready.pop_back();
  } else {
    const size_t i = next_random(e) % e.ready.size();
    std::swap(e.ready[i], e.ready.back());
    t = e.ready.back();
    e.ready.pop_back();
  }
  return t;
}

std::string state_summary(const Emulator& e) {
  int ready = 0, barrier = 0, warp = 0, done = 0;
  for (int t = 0; t < e.threads; ++t) {
    const Fiber& f = e.fibers[t];
    ready += f.state == State::kReady;
    barrier += f.state == State::kBarrier;
    warp += f.state == State::kWarp;
    done += f.state == State::kDone;
  }
  return std::to_string(barrier) + " threads at __syncthreads, " + std::to_string(warp) +
         " in a warp operation, " + std::to_string(done) + " exited";
}

void run_block(Emulator& e) {
  e.done = 0;
  e.at_barrier = 0;
  e.ready.clear();
  for (WarpState& w : e.warps) w.arrived = 0;
  fill_garbage(e.smem.data(), e.smem_bytes);
  std::fill(e.smem.begin() + e.smem_bytes, e.smem.end(), kCanary);
  for (int t = 0; t < e.threads; ++t) {
    Fiber& f = e.fibers[t];
    f.barriers = f.warp_ops = f.open_group = 0;
    f.pending.clear();
    start_fiber(e, f);
    make_ready(e, f);
  }
  while (!e.ready.empty() && e.error.empty()) {
    Fiber& f = e.fibers[pick(e)];
    resume(e, f);
  }
  if (e.error.empty() && e.done != e.threads)
    e.error = "deadlock in block (" + std::to_string(blockIdx.x) + ", " + std::to_string(blockIdx.y) + "): " +
              state_summary(e);
  if (e.error.empty() &&
      std::any_of(e.smem.begin() + e.smem_bytes, e.smem.end(), [](unsigned char c) { return c != kCanary; }))
    e.error = "a write past the " + std::to_string(e.smem_bytes) + " bytes of dynamic shared memory in block (" +
              std::to_string(blockIdx.x) + ", " + std::to_string(blockIdx.y) + ")";
  ++e.stats.blocks;
  e.stats.threads += e.threads;
}

void complete(WarpState& w) {
  const unsigned mask = w.mask;
  const auto lanes = [mask](auto&& f) {
    for (int lane = 0; lane < 32; ++lane)
      if (mask >> lane & 1u) f(lane);
  };
  switch (w.op) {
    case Op::kSyncWarp:
      return;
    case Op::kShfl:
    case Op::kShflUp:
    case Op::kShflDown:
    case Op::kShflXor:
      lanes([&](int lane) {
        const ShflIn in = bit_cast_to<ShflIn>(w.in[lane]);
        const int width = in.width;
        if (width < 1 || width > 32 || (width & (width - 1)) != 0) fail("shuffle width " + std::to_string(width));
        const int base = lane & ~(width - 1);
        int src = lane;
        if (w.op == Op::kShfl) {
          src = base + (in.arg & (width - 1));
        } else if (w.op == Op::kShflUp) {
          src = lane - in.arg >= base ? lane - in.arg : lane;
        } else if (w.op == Op::kShflDown) {
          src = lane + in.arg < base + width ? lane + in.arg : lane;
        } else {
          src = lane ^ in.arg;
          if (src < base || src >= base + width) src = lane;
        }
        if (!(mask >> src & 1u))
          fail("lane " + std::to_string(lane) + " shuffles from lane " + std::to_string(src) + ", outside the mask");
        std::memcpy(w.out[lane], bit_cast_to<ShflIn>(w.in[src]).value, 8);
      });
      return;
    case Op::kBallot: {
      unsigned bits = 0;
      lanes([&](int lane) { bits |= static_cast<unsigned>(bit_cast_to<int>(w.in[lane]) != 0) << lane; });
      lanes([&](int lane) { std::memcpy(w.out[lane], &bits, sizeof bits); });
      return;
    }
    case Op::kMatchAny:
      lanes([&](int lane) {
        unsigned same = 0;
        lanes([&](int other) { same |= static_cast<unsigned>(std::memcmp(w.in[lane], w.in[other], 8) == 0) << other; });
        std::memcpy(w.out[lane], &same, sizeof same);
      });
      return;
    case Op::kLdmatrix:
    case Op::kLdmatrixTrans: {
      // Lane i addresses row i % 8 of matrix i / 8 (16 bytes = 8 b16 elements). Lane t receives,
      // for matrix j, register j = two elements, the lower column in the low half:
      //   non-transposed: row t / 4, columns 2 (t % 4) and 2 (t % 4) + 1;
      //   .trans:         rows 2 (t % 4) and 2 (t % 4) + 1 of column t / 4.
      const bool trans = w.op == Op::kLdmatrixTrans;
      lanes([&](int t) {
        uint32_t r[4];
        for (int j = 0; j < 4; ++j) {
          uint16_t e[2];
          for (int i = 0; i < 2; ++i) {
            const int row = trans ? 2 * (t % 4) + i : t / 4;
            const int col = trans ? t / 4 : 2 * (t % 4) + i;
            const auto* p = bit_cast_to<const unsigned char*>(w.in[8 * j + row]);
            std::memcpy(&e[i], p + 2 * col, 2);
          }
          r[j] = static_cast<uint32_t>(e[0]) | (static_cast<uint32_t>(e[1]) << 16);
        }
        std::memcpy(w.out[t], r, sizeof r);
      });
      return;
    }
    case Op::kMmaBf16:
    case Op::kMmaF16: {
      // mma.m16n8k16 .row.col, f32 accumulators; g = lane / 4, c = lane % 4:
      //   A (16 x 16): a0 = (g, 2c..2c+1), a1 = (g + 8, 2c..), a2 = (g, 2c + 8..), a3 = (g + 8, 2c + 8..)
      //   B (16 x 8):  b0 = (k 2c..2c+1, n g), b1 = (k 2c + 8.., n g)
      //   C, D (16 x 8): c0 = (g, 2c), c1 = (g, 2c + 1), c2 = (g + 8, 2c), c3 = (g + 8, 2c + 1)
      const bool bf16 = w.op == Op::kMmaBf16;
      const auto half_float = [bf16](uint32_t r, int hi) {
        const uint16_t bits = static_cast<uint16_t>(hi ? r >> 16 : r & 0xffffu);
        return bf16 ? __bfloat162float(__ushort_as_bfloat16(bits)) : __half2float(__ushort_as_half(bits));
      };
      float A[16][16], B[16][8], C[16][8];
      for (int t = 0; t < 32; ++t) {
        const int g = t / 4, c = t % 4;
        uint32_t a[4], b[2];
        float acc[4];
        std::memcpy(a, w.in[t], 16);
        std::memcpy(b, w.in[t] + 16, 8);
        std::memcpy(acc, w.in[t] + 24, 16);
        for (int i = 0; i < 2; ++i) {
          A[g][2 * c + i] = half_float(a[0], i);
          A[g + 8][2 * c + i] = half_float(a[1], i);
          A[g][2 * c + 8 + i] = half_float(a[2], i);
          A[g + 8][2 * c + 8 + i] = half_float(a[3], i);
          B[2 * c + i][g] = half_float(b[0], i);
          B[2 * c + 8 + i][g] = half_float(b[1], i);
        }
        C[g][2 * c] = acc[0];
        C[g][2 * c + 1] = acc[1];
        C[g + 8][2 * c] = acc[2];
        C[g + 8][2 * c + 1] = acc[3];
      }
      for (int t = 0; t < 32; ++t) {
        const int g = t / 4, c = t % 4;
        float d[4];
        for (int e = 0; e < 4; ++e) {
          const int row = g + 8 * (e / 2), col = 2 * c + e % 2;
          double sum = 0.0;  // products of 16-bit floats are exact; the sum rounds once
          for (int k = 0; k < 16; ++k) sum += static_cast<double>(A[row][k]) * B[k][col];
          d[e] = static_cast<float>(sum + C[row][col]);
        }
        std::memcpy(w.out[t], d, sizeof d);
      }
      return;
    }
  }
  fail("unknown warp operation");
}

const char* op_name(Op op) {
  switch (op) {
    case Op::kSyncWarp: return "__syncwarp";
    case Op::kShfl: return "__shfl_sync";
    case Op::kShflUp: return "__shfl_up_sync";
    case Op::kShflDown: return "__shfl_down_sync";
    case Op::kShflXor: return "__shfl_xor_sync";
    case Op::kBallot: return "__ballot_sync";
    case Op::kMatchAny: return "__match_any_sync";
    case Op::kLdmatrix: return "ldmatrix.x4";
    case Op::kLdmatrixTrans: return "ldmatrix.x4.trans";
    case Op::kMmaBf16: return "mma.m16n8k16.bf16";
    case Op::kMmaF16: return "mma.m16n8k16.f16";
  }
  return "?";
}

Fiber& running() {
  Emulator& e = emu();
  if (e.current == nullptr) throw std::runtime_error("cuda emulation: a device intrinsic outside a launch");
  return *e.current;
}

void check_smem_range(const void* p, size_t bytes, const char* what) {
  const Emulator& e = emu();
  const auto* c = static_cast<const unsigned char*>(p);
  if (c < e.smem.data() || c + bytes > e.smem.data() + e.smem_bytes)
    fail(std::string(what) + ": address outside the " + std::to_string(e.smem_bytes) +
         " bytes of dynamic shared memory");
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) fail(std::string(what) + ": shared address not 16-byte aligned");
}

}  // namespace

void fail(const std::string& what) {
  Emulator& e = emu();
  throw FiberError{(e.current != nullptr ? where(*e.current) + ": " : std::string()) + what};
}

void syncthreads() {
  Emulator& e = emu();
  Fiber& f = running();
  if (e.done > 0)
    fail("__syncthreads after " + std::to_string(e.done) +
         " threads of the block exited (a barrier not reached by the whole block)");
  ++f.barriers;
  ++e.stats.barriers;
  f.state = State::kBarrier;
  ++e.at_barrier;
  if (e.at_barrier + e.done < e.threads) {
    yield();
    return;
  }
  // The last one in: every waiting thread must have passed the same number of barriers.
  for (int t = 0; t < e.threads; ++t) {
    const Fiber& g = e.fibers[t];
    if (g.state == State::kBarrier && g.barriers != f.barriers)
      fail("barrier divergence: " + where(g) + " is at its __syncthreads #" + std::to_string(g.barriers) +
           ", this thread at #" + std::to_string(f.barriers));
  }
  e.at_barrier = 0;
  for (int t = 0; t < e.threads; ++t) {
    Fiber& g = e.fibers[t];
    if (g.state == State::kBarrier && &g != &f) make_ready(e, g);
  }
  f.state = State::kReady;
}

void warp_op(Op op, unsigned mask, const void* in, size_t in_bytes, void* out, size_t out_bytes) {
  Emulator& e = emu();
  Fiber& f = running();
  const int lane = f.linear % 32;
  WarpState& w = e.warps[f.linear / 32];
  if (in_bytes > kSlotBytes || out_bytes > kSlotBytes) fail("warp operation payload too large");
  if (!(mask >> lane & 1u)) fail(std::string(op_name(op)) + " with a mask that leaves out the calling lane");
  for (int l = 0; l < 32; ++l) {
    if ((mask >> l & 1u) && e.fibers[f.linear - lane + l].state == State::kDone)
      fail(std::string(op_name(op)) + ": lane " + std::to_string(l) + " of the mask has exited");
  }
  if (w.arrived == 0) {
    w.op = op;
    w.mask = mask;
    w.in_bytes = in_bytes;
    w.seq = f.warp_ops;
  } else if (w.op != op || w.mask != mask || w.in_bytes != in_bytes || w.seq != f.warp_ops) {
    fail(std::string("divergent warp: this lane calls ") + op_name(op) + " (its warp operation #" +
         std::to_string(f.warp_ops) + ") while other lanes wait in " + op_name(w.op) + " (#" +
         std::to_string(w.seq) + ")");
  }
  ++f.warp_ops;
  ++e.stats.warp_ops;
  if (in_bytes > 0) std::memcpy(w.in[lane], in, in_bytes);
  w.arrived |= 1u << lane;
  if (w.arrived == mask) {
    complete(w);
    w.arrived = 0;
    const int first = f.linear - lane;
    for (int l = 0; l < 32; ++l) {
      Fiber& g = e.fibers[first + l];
      if (l != lane && (mask >> l & 1u)) make_ready(e, g);
    }
  } else {
    f.state = State::kWarp;
    yield();
  }
  if (out_bytes > 0) std::memcpy(out, w.out[lane], out_bytes);
}

void launch(const char* kernel, dim3 grid, dim3 block, size_t smem_bytes, const std::function<void()>& body) {
  Emulator& e = emu();
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (threads == 0 || threads > 1024 || threads % 32 != 0)
    throw std::runtime_error(std::string(kernel) + ": block of " + std::to_string(threads) +
                             " threads; the emulation takes 32 .. 1024, a multiple of 32");
  if (smem_bytes > 227 * 1024)
    throw std::runtime_error(std::string(kernel) + ": " + std::to_string(smem_bytes) +
                             " bytes of dynamic shared memory, more than an sm_90 block can have (227 KiB)");
  e.threads = static_cast<int>(threads);
  if (e.fibers.size() < threads) e.fibers.resize(threads);
  e.warps.resize(threads / 32);
  for (int t = 0; t < e.threads; ++t) {
    Fiber& f = e.fibers[t];
    f.linear = t;
    f.tid = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
  }
  e.smem.assign(smem_bytes + kCanaryBytes, 0);
  e.smem_bytes = smem_bytes;
  e.body = &body;
  e.current = nullptr;
  e.error.clear();
  blockDim = block;
  gridDim = grid;

  std::vector<uint3> order;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) order.push_back({x, y, z});
  if (e.schedule == 1) std::reverse(order.begin(), order.end());
  if (e.schedule == 2)
    for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[next_random(e) % i]);
  for (const uint3& b : order) {
    blockIdx = b;
    run_block(e);
    if (!e.error.empty()) break;
  }
  e.current = nullptr;
  e.body = nullptr;
  if (!e.error.empty()) throw std::runtime_error(std::string(kernel) + ": " + e.error);
}

void fill_garbage(unsigned char* p, size_t n) {
  Emulator& e = emu();
  if (e.schedule == 0) {
    std::memset(p, 0xff, n);
  } else if (e.schedule == 1) {
    std::memset(p, 0, n);
  } else {
    for (size_t i = 0; i < n; ++i) p[i] = static_cast<unsigned char>(next_random(e) >> 56);
  }
}

void set_schedule(int schedule, unsigned seed) {
  Emulator& e = emu();
  e.schedule = schedule;
  e.rng = 0x9e3779b97f4a7c15ull ^ (uint64_t{seed} * 0x2545f4914f6cdd1dull + 1);
}

unsigned char* block_smem() { return emu().smem.data(); }
size_t block_smem_bytes() { return emu().smem_bytes; }

void cp_async_16(void* smem, const void* gmem, int src_bytes) {
  Fiber& f = running();
  check_smem_range(smem, 16, "cp.async");
  if (reinterpret_cast<uintptr_t>(gmem) % 16 != 0) fail("cp.async: global address not 16-byte aligned");
  if (src_bytes < 0 || src_bytes > 16) fail("cp.async: src_bytes " + std::to_string(src_bytes) + " outside 0 .. 16");
  CpAsyncCopy copy{};
  copy.dst = static_cast<unsigned char*>(smem);
  std::memcpy(copy.data, gmem, static_cast<size_t>(src_bytes));  // the rest stays zero (zero fill)
  copy.group = f.open_group;
  f.pending.push_back(copy);
  // Until the wait, the destination holds garbage (NaN for 16-bit floats): a read before the
  // wait, or a refill of a stage another warp still reads, corrupts the result visibly.
  std::memset(smem, 0xff, 16);
}

void cp_async_commit() { ++running().open_group; }

void cp_async_wait(int pending_groups) {
  Fiber& f = running();
  auto& p = f.pending;
  const uint64_t keep_from = f.open_group >= static_cast<uint64_t>(pending_groups) ? f.open_group - pending_groups : 0;
  size_t kept = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i].group < keep_from) {
      std::memcpy(p[i].dst, p[i].data, 16);
    } else {
      p[kept++] = p[i];
    }
  }
  p.resize(kept);
}

void ldmatrix_x4(uint32_t (&r)[4], const void* smem, bool trans) {
  check_smem_range(smem, 16, trans ? "ldmatrix.x4.trans" : "ldmatrix.x4");
  warp_op(trans ? Op::kLdmatrixTrans : Op::kLdmatrix, 0xffffffffu, &smem, sizeof smem, r, sizeof r);
}

void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bool bf16) {
  unsigned char in[40];
  const uint32_t b[2] = {b0, b1};
  std::memcpy(in, a, 16);
  std::memcpy(in + 16, b, 8);
  std::memcpy(in + 24, d, 16);
  warp_op(bf16 ? Op::kMmaBf16 : Op::kMmaF16, 0xffffffffu, in, sizeof in, d, sizeof d);
}

Stats stats() { return emu().stats; }
void reset_stats() { emu().stats = Stats{}; }

}  // namespace ega_emu

// ---- C entry points of the emulator itself -----------------------------------------------------

extern "C" {

void ega_emu_set_schedule(int schedule, unsigned seed) { ega_emu::set_schedule(schedule, seed); }

// blocks, threads, fiber switches, __syncthreads calls, warp operations since the last reset.
void ega_emu_stats(uint64_t* out) {
  const ega_emu::Stats s = ega_emu::stats();
  out[0] = s.blocks;
  out[1] = s.threads;
  out[2] = s.switches;
  out[3] = s.barriers;
  out[4] = s.warp_ops;
}

void ega_emu_reset_stats() { ega_emu::reset_stats(); }

// The 16-bit conversions the kernels see (checked against torch's by the tests).
void ega_emu_float_to_bf16(const float* in, uint16_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = __bfloat16_as_ushort(__float2bfloat16_rn(in[i]));
}
void ega_emu_float_to_half(const float* in, uint16_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = __half_as_ushort(__float2half_rn(in[i]));
}
void ega_emu_bf16_to_float(const uint16_t* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = __bfloat162float(__ushort_as_bfloat16(in[i]));
}
void ega_emu_half_to_float(const uint16_t* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = __half2float(__ushort_as_half(in[i]));
}

}  // extern "C"
