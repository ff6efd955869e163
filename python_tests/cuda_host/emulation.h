// Host emulation of the CUDA kernels of csrc/cuda, for test_csrc.py: g++ compiles the .cu files with
// this header force-included, so the kernels' own code runs on the CPU, in a way that shows races.
// A block's threads are fibers (ucontext) on one OS thread, run one at a time: a thread runs until
// it waits (__syncthreads for the block, a shuffle for its warp only, as on the device), then the
// first ready thread of the schedule's order runs. So a shared-memory read that lacks its barrier
// reads a stale value in one of the orders, deterministically. Blocks run one after another in the
// schedule's block order, __shared__ variables are function statics, and the dynamic shared memory
// is poisoned (all bits set: NaN) before every block. sdk_set_order picks the schedule:
//   0 forward: blocks 0, 1, 2, ...; the lowest ready thread first
//   1 reversed: blocks n-1, ..., 0; the highest ready thread first
//   2 interleaved: even blocks, then odd ones; threads lane by lane across the warps
// A launch whose threads deadlock (a barrier not every thread reaches) returns -1.
#pragma once
#define SDK_HOST_EMULATION 1

#include <ucontext.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static

struct dim3 {
  unsigned x = 0, y = 0, z = 0;
};
inline dim3 threadIdx, blockIdx, blockDim;  // the running thread's, set at every switch

namespace sdk_host {

inline int order = 0;  // the schedule (see above), set by sdk_set_order
enum Wait { kReady, kBlock, kWarp, kDone };

struct Thread {
  ucontext_t ctx;
  std::vector<char> stack = std::vector<char>(1 << 17);
  Wait wait = kReady;
  unsigned shuffles = 0;  // shuffles done: their parity picks the exchange buffer
};

struct Block {
  std::vector<Thread> threads;
  std::vector<int> sequence;  // thread indices, in the order the scheduler prefers them
  std::function<void()> body;
  ucontext_t scheduler;
  int current = 0;
};
inline Block* block = nullptr;
inline std::vector<double> smem;  // the block's dynamic shared memory (double: aligned for any T)

inline void entry() {
  block->body();
  block->threads[block->current].wait = kDone;  // uc_link returns to the scheduler
}

// Releases the waiters of a barrier once every live thread it concerns has arrived.
inline void release(int first, int count, Wait at) {
  for (int t = first; t < first + count; ++t)
    if (block->threads[t].wait != at && block->threads[t].wait != kDone) return;
  for (int t = first; t < first + count; ++t)
    if (block->threads[t].wait == at) block->threads[t].wait = kReady;
}

// The running thread waits at `at` (the block's barrier or its warp's) and yields.
inline void wait(Wait at) {
  Thread& self = block->threads[block->current];
  self.wait = at;
  const int n = int(block->threads.size());
  if (at == kBlock) release(0, n, kBlock);
  else release(block->current & ~31, std::min(32, n - (block->current & ~31)), kWarp);
  swapcontext(&self.ctx, &block->scheduler);
}

// Runs one block to the end; false if its threads deadlock.
inline bool run_block() {
  const int n = int(block->threads.size());
  for (auto& t : block->threads) {
    getcontext(&t.ctx);
    t.ctx.uc_stack.ss_sp = t.stack.data();
    t.ctx.uc_stack.ss_size = t.stack.size();
    t.ctx.uc_link = &block->scheduler;
    t.wait = kReady;
    t.shuffles = 0;
    makecontext(&t.ctx, entry, 0);
  }
  for (;;) {
    int next = -1;
    for (int t : block->sequence)
      if (block->threads[t].wait == kReady) { next = t; break; }
    if (next < 0) {
      for (int t = 0; t < n; ++t)
        if (block->threads[t].wait != kDone) return false;  // waiting for a thread that never arrives
      return true;
    }
    block->current = next;
    threadIdx = {unsigned(next), 0, 0};
    swapcontext(&block->scheduler, &block->threads[next].ctx);
    if (block->threads[next].wait == kDone) {  // a finished thread no longer holds a barrier back
      release(0, n, kBlock);
      release(next & ~31, std::min(32, n - (next & ~31)), kWarp);
    }
  }
}

inline std::vector<int64_t> ordered(int64_t n, bool lanes_first_for_threads) {
  std::vector<int64_t> v;
  if (order == 1) {
    for (int64_t i = n - 1; i >= 0; --i) v.push_back(i);
  } else if (order == 2 && lanes_first_for_threads) {  // lane 0 of every warp, then lane 1, ...
    for (int64_t l = 0; l < 32; ++l)
      for (int64_t i = l; i < n; i += 32) v.push_back(i);
  } else if (order == 2) {  // even blocks, then odd ones
    for (int64_t i = 0; i < n; i += 2) v.push_back(i);
    for (int64_t i = 1; i < n; i += 2) v.push_back(i);
  } else {
    for (int64_t i = 0; i < n; ++i) v.push_back(i);
  }
  return v;
}

}  // namespace sdk_host

inline void __syncthreads() { sdk_host::wait(sdk_host::kBlock); }

// Lane l gets v of lane l + o of its warp (its own v past the warp's end), as on the device: the
// lanes of one warp wait for each other, no other warp waits.
template <typename T>
T __shfl_down_sync(unsigned, T v, int o) {
  static T lanes[2][1024];
  auto& self = sdk_host::block->threads[threadIdx.x];
  const unsigned buf = self.shuffles++ & 1;  // a lane is at most one shuffle ahead of its warp
  lanes[buf][threadIdx.x] = v;
  sdk_host::wait(sdk_host::kWarp);
  return (threadIdx.x & 31) + o < 32 ? lanes[buf][threadIdx.x + o] : v;
}

namespace sdekernels::cuda {

template <typename... P, typename... A>
int launch(void (*kernel)(P...), int64_t blocks, int threads, size_t smem, void*, A... args) {
  sdk_host::Block block;
  block.threads.resize(threads);
  for (int64_t t : sdk_host::ordered(threads, true)) block.sequence.push_back(int(t));
  block.body = [&] { kernel(args...); };
  sdk_host::block = &block;
  blockDim = {unsigned(threads), 1, 1};
  for (int64_t b : sdk_host::ordered(blocks, false)) {
    sdk_host::smem.assign(smem / sizeof(double) + 1, 0.0);
    std::memset(sdk_host::smem.data(), 0xff, sdk_host::smem.size() * sizeof(double));
    blockIdx = {unsigned(b), 0, 0};
    if (!sdk_host::run_block()) {
      sdk_host::block = nullptr;
      return -1;
    }
  }
  sdk_host::block = nullptr;
  return 0;
}

template <typename T>
T* dynamic_smem() { return reinterpret_cast<T*>(sdk_host::smem.data()); }

}  // namespace sdekernels::cuda
