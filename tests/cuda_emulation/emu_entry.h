// What the C entry points of the emulation share: guarded buffers, the launch functor handed to
// the kernels' run_* functions, and the mapping of C++ errors to return codes.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_emu.h"

namespace ega_emu {

// `bytes` of device memory as the kernels see it: 256-byte aligned, filled with the schedule's
// garbage (fill_garbage: 0xff, NaN for floats, in the in-order schedule), followed by a canary that
// a write past the end breaks.
class Guarded {
 public:
  explicit Guarded(size_t bytes) : bytes_(bytes), storage_(bytes + 256 + kCanary) {
    const auto base = reinterpret_cast<uintptr_t>(storage_.data());
    data_ = storage_.data() + ((256 - base % 256) % 256);
    fill_garbage(data_, bytes_);
    std::fill(data_ + bytes_, data_ + bytes_ + kCanary, 0x5a);
  }
  unsigned char* data() { return data_; }
  template <typename T>
  T* as() {
    return reinterpret_cast<T*>(data_);
  }
  // Throws when something wrote past the end.
  void check(const char* name) const {
    if (!std::all_of(data_ + bytes_, data_ + bytes_ + kCanary, [](unsigned char c) { return c == 0x5a; }))
      throw std::runtime_error(std::string("a kernel wrote past the end of ") + name);
  }
  void copy_to(void* out, const char* name) const {
    check(name);
    if (bytes_ > 0) std::memcpy(out, data_, bytes_);
  }

 private:
  static constexpr size_t kCanary = 4096;
  size_t bytes_;
  std::vector<unsigned char> storage_;
  unsigned char* data_;
};

// The `launch` argument of run_beam_step / run_decode_attention: runs the kernel in the emulator
// and records "name grid=(x,y) threads=t smem=b" per launch.
struct Launcher {
  std::string* log;
  template <class Kernel, class... Args>
  void operator()(Kernel kernel, const char* name, dim3 grid, int threads, int64_t smem, const Args&... args) const {
    *log += std::string(name) + " grid=(" + std::to_string(grid.x) + "," + std::to_string(grid.y) +
            ") threads=" + std::to_string(threads) + " smem=" + std::to_string(smem) + "\n";
    launch(name, grid, dim3(static_cast<unsigned>(threads)), static_cast<size_t>(smem), [&] { kernel(args...); });
  }
};

inline std::mutex& entry_mutex() {
  static std::mutex m;
  return m;
}

// Runs f() (one call of the emulation, serialised); returns 0, or 1 for std::invalid_argument (a
// ValueError in the real bindings) and 2 for any other error, with the message in `log`.
template <class F>
int guarded_call(char* log, int64_t log_len, F&& f) {
  std::lock_guard<std::mutex> lock(entry_mutex());
  std::string text;
  int code = 0;
  try {
    f(text);
  } catch (const std::invalid_argument& e) {
    text = e.what();
    code = 1;
  } catch (const std::exception& e) {
    text = e.what();
    code = 2;
  }
  if (log != nullptr && log_len > 0) {
    const size_t n = std::min(text.size(), static_cast<size_t>(log_len - 1));
    std::memcpy(log, text.data(), n);
    log[n] = '\0';
  }
  return code;
}

}  // namespace ega_emu
