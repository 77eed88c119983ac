// A CPU emulator for the part of CUDA that ofa_fast's kernels use, so that their device
// code itself (csrc/*/*.cu compiled as C++, not a re-implementation) runs in the tests on
// machines without a GPU. Test-only: never built into ofa_fast._C.
//
// The .cu sources reach the runtime only through csrc/common/gpu.h (launch, stream, SM
// count, device guard, dynamic shared memory); with OFA_FAST_CUDA_EMULATION defined and
// this header included first, that surface maps here.
//
// How it runs: a launch runs its blocks one after another; a block's threads are fibers
// on the calling OS thread, switched only at __syncthreads and warp shuffles. So a
// block's shared memory is one buffer and each fiber's registers are its own stack.
// Between barriers the threads run one after another, first to last or (`reverse`)
// last to first: a missing barrier shows in one order or the other as a read of shared
// memory not yet written (NaN, below) or one that another thread has since overwritten.
//
// Strict where CUDA leaves behaviour undefined or a GPU would refuse, the launch fails
// with a c10::Error naming what went wrong:
//   - __syncthreads must be reached by every thread of the block (none exited, none
//     waiting at a shuffle);
//   - a shuffle takes the full mask and every lane of its warp at the same shuffle (a
//     partial last warp is an error);
//   - launch limits: 1..1024 threads per block (x, y <= 1024, z <= 64), grid x < 2^31,
//     grid y and z <= 65535, dynamic shared memory <= 48 KiB (no opt-in);
//   - dynamic shared memory starts as 0xFF bytes (NaN in float, -1 in integers), so a
//     read of shared memory no thread wrote shows up in the results.
// Not emulated: blocks running concurrently (races between blocks go unseen), memory
// ordering and coalescing, timing.
#pragma once

#define OFA_FAST_CUDA_EMULATOR_INCLUDED 1

#include <c10/core/Device.h>
#include <c10/util/Exception.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif

// ---- CUDA's names --------------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) alignas(n)

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using cudaStream_t = struct ofa_fast_emu_stream*;
using std::max;  // CUDA's integer max and min, callable unqualified in device code
using std::min;

namespace ofa_fast_emu {

struct uint3 {
  unsigned x, y, z;
};

// Context switches. On x86-64 a few instructions of our own (callee-saved registers,
// the stack pointer, the SSE and x87 control words; no system call), elsewhere ucontext.
#if defined(__x86_64__)
#define OFA_FAST_EMU_ASM_SWITCH 1
#if defined(__SANITIZE_ADDRESS__)
#define OFA_FAST_EMU_ASAN 1  // AddressSanitizer is told of every switch
#endif
// Saves the caller's context on its stack, stores its stack pointer in *save, resumes
// the context whose stack pointer is `to` (defined once, in module.cpp).
extern "C" void ofa_fast_emu_switch(void** save, void* to);
#endif

// One thread of the running block.
struct Fiber {
  enum State { kRunnable, kAtSync, kAtShuffle, kDone };
#if OFA_FAST_EMU_ASM_SWITCH
  void* sp = nullptr;
  void* fake_stack = nullptr;  // AddressSanitizer's
#else
  ucontext_t ctx;
#endif
  std::unique_ptr<char[]> stack;
  uint3 tid{};
  unsigned linear = 0;
  State state = kRunnable;
  // shuffle: this lane's value, the lane it reads, the value it gets
  unsigned mask = 0, size = 0, src_lane = 0;
  alignas(16) unsigned char in[16], out[16];
};

struct State {
  // configuration (set by the tests)
  int sm_count = 4;
  // run a block's threads last to first between barriers: a thread that reads shared
  // memory another wrote with no barrier between then reads it before it is written
  bool reverse = false;
  // launch log: the kernel's address (offset in its shared object is resolved by the
  // tests), grid, block, dynamic shared memory
  struct Record {
    const void* fn;
    dim3 grid, block;
    size_t smem;
  };
  std::vector<Record> log;
  // the running block
  uint3 block_idx{};
  dim3 grid_dim, block_dim;
  unsigned char* smem = nullptr;
  std::vector<Fiber> fibers;
  Fiber* current = nullptr;
#if OFA_FAST_EMU_ASM_SWITCH
  void* scheduler = nullptr;
  void* scheduler_fake_stack = nullptr;  // AddressSanitizer's view of the scheduler's stack
  const void* scheduler_stack = nullptr;
  size_t scheduler_stack_size = 0;
#else
  ucontext_t scheduler;
#endif
  const std::function<void()>* body = nullptr;
  std::string error;  // set by a fiber that found misuse
};

inline State& state() {
  static State s;
  return s;
}

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kMaxDynamicShared = 48 * 1024;

// From the running fiber back to the scheduler (`last`: the fiber has ended).
inline void yield_to_scheduler(bool last = false) {
  State& s = state();
#if OFA_FAST_EMU_ASM_SWITCH
  Fiber* f = s.current;
#if OFA_FAST_EMU_ASAN
  __sanitizer_start_switch_fiber(last ? nullptr : &f->fake_stack, s.scheduler_stack,
                                 s.scheduler_stack_size);
#endif
  ofa_fast_emu_switch(&f->sp, s.scheduler);
#if OFA_FAST_EMU_ASAN
  __sanitizer_finish_switch_fiber(f->fake_stack, &s.scheduler_stack, &s.scheduler_stack_size);
#endif
#else
  (void)last;
  if (swapcontext(&s.current->ctx, &s.scheduler) != 0) std::abort();
#endif
}

inline void run_body(State& s) {
  try {
    (*s.body)();
  } catch (const std::exception& e) {
    if (s.error.empty()) s.error = std::string("a thread threw: ") + e.what();
  }
  s.current->state = Fiber::kDone;
}

#if OFA_FAST_EMU_ASM_SWITCH
// First code of a fiber; never returns (a finished fiber is never resumed).
[[noreturn]] inline void fiber_entry() {
  State& s = state();
#if OFA_FAST_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &s.scheduler_stack, &s.scheduler_stack_size);
#endif
  run_body(s);
  yield_to_scheduler(/*last=*/true);
  std::abort();
}
// A new fiber's stack as ofa_fast_emu_switch leaves one: control words, six zeroed
// registers, fiber_entry as the return address, a null one above (entry sees the stack
// aligned as after a call).
inline void start_fiber(Fiber& f) {
  uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack.get()) + kStackBytes) & ~uintptr_t(15);
  auto* sp = reinterpret_cast<uint64_t*>(top);
  *--sp = 0;
  *--sp = reinterpret_cast<uint64_t>(&fiber_entry);
  for (int r = 0; r < 6; ++r) *--sp = 0;
  *--sp = uint64_t(0x1F80) | (uint64_t(0x037F) << 32);  // MXCSR, x87 control word
  f.sp = sp;
}
inline void resume(State& s, Fiber& f) {
#if OFA_FAST_EMU_ASAN
  __sanitizer_start_switch_fiber(&s.scheduler_fake_stack, f.stack.get(), kStackBytes);
#endif
  ofa_fast_emu_switch(&s.scheduler, f.sp);
#if OFA_FAST_EMU_ASAN
  __sanitizer_finish_switch_fiber(s.scheduler_fake_stack, nullptr, nullptr);
#endif
}
#else
inline void fiber_entry() { run_body(state()); }  // uc_link returns to the scheduler
inline void start_fiber(Fiber& f) {
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = f.stack.get();
  f.ctx.uc_stack.ss_size = kStackBytes;
  f.ctx.uc_link = &state().scheduler;
  makecontext(&f.ctx, &fiber_entry, 0);
}
inline void resume(State& s, Fiber& f) {
  if (swapcontext(&s.scheduler, &f.ctx) != 0) std::abort();
}
#endif

inline void syncthreads() {
  state().current->state = Fiber::kAtSync;
  yield_to_scheduler();
}

template <typename T>
T shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 16, "shuffle of this type");
  Fiber* f = state().current;
  TORCH_CHECK(width == 32, "emulated __shfl_down_sync: width ", width, " (only 32 is emulated)");
  const unsigned lane = f->linear & 31u;
  f->mask = mask;
  f->size = unsigned(sizeof(T));
  f->src_lane = lane + delta < 32 ? lane + delta : lane;
  std::memcpy(f->in, &v, sizeof(T));
  f->state = Fiber::kAtShuffle;
  yield_to_scheduler();
  T r;
  std::memcpy(&r, f->out, sizeof(T));
  return r;
}

// Releases every warp of the block's n threads whose 32 lanes all wait at a shuffle;
// true if any was released.
// Throws on a shuffle that cannot complete as CUDA defines it.
inline bool release_shuffles(State& s, size_t n) {
  bool released = false;
  for (size_t w0 = 0; w0 < n; w0 += 32) {
    size_t waiting = 0;
    for (size_t i = w0; i < std::min(n, w0 + 32); ++i)
      waiting += s.fibers[i].state == Fiber::kAtShuffle;
    if (waiting == 0) continue;
    TORCH_CHECK(w0 + 32 <= n, "emulated __shfl_down_sync in warp ", w0 / 32, " of a block of ", n,
                " threads: its last warp is partial, so full-mask shuffles are undefined");
    if (waiting < 32) continue;  // the rest of the warp has not arrived yet
    for (size_t i = w0; i < w0 + 32; ++i) {
      const Fiber& f = s.fibers[i];
      TORCH_CHECK(f.mask == 0xffffffffu, "emulated __shfl_down_sync: mask ", f.mask,
                  " (only the full mask 0xffffffff is emulated)");
      TORCH_CHECK(f.size == s.fibers[w0].size, "emulated __shfl_down_sync: lanes of warp ", w0 / 32,
                  " shuffle values of different sizes");
    }
    for (size_t i = w0; i < w0 + 32; ++i) {
      Fiber& f = s.fibers[i];
      std::memcpy(f.out, s.fibers[w0 + f.src_lane].in, f.size);
    }
    for (size_t i = w0; i < w0 + 32; ++i) s.fibers[i].state = Fiber::kRunnable;
    released = true;
  }
  return released;
}

// Runs one block to completion: every fiber until it yields or ends, then the barriers
// that all their threads have reached, until all are done.
inline void run_block(State& s, const std::function<void()>& body) {
  const size_t n = size_t(s.block_dim.x) * s.block_dim.y * s.block_dim.z;
  if (s.fibers.size() < n) s.fibers.resize(n);
  s.body = &body;
  for (size_t i = 0; i < n; ++i) {
    Fiber& f = s.fibers[i];
    if (!f.stack) f.stack.reset(new char[kStackBytes]);
    f.linear = unsigned(i);
    f.tid = uint3{unsigned(i % s.block_dim.x), unsigned(i / s.block_dim.x % s.block_dim.y),
                  unsigned(i / (size_t(s.block_dim.x) * s.block_dim.y))};
    f.state = Fiber::kRunnable;
    start_fiber(f);
  }
  // fibers past n (from a larger earlier block) take no part
  const auto live = [&] {
    size_t done = 0, sync = 0, shuffle = 0;
    for (size_t i = 0; i < n; ++i) {
      done += s.fibers[i].state == Fiber::kDone;
      sync += s.fibers[i].state == Fiber::kAtSync;
      shuffle += s.fibers[i].state == Fiber::kAtShuffle;
    }
    return std::make_tuple(done, sync, shuffle);
  };
  for (;;) {
    for (size_t r = 0; r < n; ++r) {
      Fiber& f = s.fibers[s.reverse ? n - 1 - r : r];
      if (f.state != Fiber::kRunnable) continue;
      s.current = &f;
      resume(s, f);
      s.current = nullptr;
      TORCH_CHECK(s.error.empty(), "emulated block (", s.block_idx.x, ", ", s.block_idx.y, ", ",
                  s.block_idx.z, "), thread ", f.linear, ": ", s.error);
    }
    const auto [done, sync, shuffle] = live();
    if (done == n) return;
    if (release_shuffles(s, n)) continue;
    TORCH_CHECK(sync == n, "emulated __syncthreads in block (", s.block_idx.x, ", ", s.block_idx.y,
                ", ", s.block_idx.z, ") is reached by ", sync, " of its ", n, " threads (", done,
                " have exited, ", shuffle,
                " wait at a warp shuffle): a barrier must be reached by every thread");
    for (size_t i = 0; i < n; ++i) s.fibers[i].state = Fiber::kRunnable;
  }
}

template <typename... P>
struct Kernel {
  void (*fn)(P...);
  dim3 grid, block;
  size_t smem;

  template <typename... A>
  void operator()(A&&... a) const {
    static_assert(sizeof...(A) == sizeof...(P), "kernel launched with the wrong number of arguments");
    const std::tuple<std::decay_t<P>...> args(std::forward<A>(a)...);
    const size_t threads = size_t(block.x) * block.y * block.z;
    TORCH_CHECK(threads >= 1 && threads <= 1024 && block.x <= 1024 && block.y <= 1024 && block.z <= 64,
                "emulated launch: block (", block.x, ", ", block.y, ", ", block.z,
                ") is not a valid CUDA block (1..1024 threads; x, y <= 1024, z <= 64)");
    TORCH_CHECK(grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.x <= 2147483647u &&
                    grid.y <= 65535 && grid.z <= 65535,
                "emulated launch: grid (", grid.x, ", ", grid.y, ", ", grid.z,
                ") is not a valid CUDA grid (x < 2^31; y, z <= 65535; none 0)");
    TORCH_CHECK(smem <= kMaxDynamicShared, "emulated launch: ", smem,
                " bytes of dynamic shared memory; at most ", kMaxDynamicShared, " without an opt-in");
    State& s = state();
    s.log.push_back(State::Record{reinterpret_cast<const void*>(fn), grid, block, smem});
    std::vector<unsigned char> shared(std::max<size_t>(smem, 1) + 16);
    unsigned char* base = shared.data();
    base += (16 - reinterpret_cast<uintptr_t>(base) % 16) % 16;
    s.smem = base;
    s.grid_dim = grid;
    s.block_dim = block;
    s.error.clear();
    const std::function<void()> body = [&] { std::apply(fn, args); };
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) {
          std::memset(base, 0xFF, smem);
          s.block_idx = uint3{x, y, z};
          run_block(s, body);
        }
    s.smem = nullptr;
  }
};

struct Launcher {
  dim3 grid, block;
  size_t smem;
  template <typename... P>
  Kernel<P...> kernel(void (*fn)(P...)) const {
    return Kernel<P...>{fn, grid, block, smem};
  }
};

}  // namespace ofa_fast_emu

#define threadIdx (::ofa_fast_emu::state().current->tid)
#define blockIdx (::ofa_fast_emu::state().block_idx)
#define blockDim (::ofa_fast_emu::state().block_dim)
#define gridDim (::ofa_fast_emu::state().grid_dim)
#define __syncthreads() ::ofa_fast_emu::syncthreads()
#define __shfl_down_sync ::ofa_fast_emu::shfl_down_sync

// ---- what csrc/common/gpu.h maps to ------------------------------------------------

namespace ofa_fast {
namespace gpu {
inline cudaStream_t current_stream() { return nullptr; }
inline int sm_count() { return ofa_fast_emu::state().sm_count; }
// the emulated "device" is the CPU
inline bool on_device(const c10::Device& d) { return d.is_cpu(); }
struct DeviceGuard {
  explicit DeviceGuard(const c10::Device&) {}
};
}  // namespace gpu
}  // namespace ofa_fast

#define OFA_CUDA_LAUNCH(grid, block, smem, stream, ...) \
  ::ofa_fast_emu::Launcher{dim3(grid), dim3(block), size_t(smem)}.kernel(__VA_ARGS__)
#define OFA_CUDA_LAUNCH_CHECK() ((void)0)
#define OFA_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(::ofa_fast_emu::state().smem)
