// Host emulation of the CUDA kernels of csrc/cuda, for test_csrc.py: g++ compiles the .cu files with
// this header force-included, so the kernels' own code runs on the CPU. A block's threads are
// std::threads, __syncthreads a barrier, a warp shuffle goes through block memory, and __shared__
// variables are function statics (one block runs at a time). Each launcher keeps its declared
// signature (csrc/cuda/launch.h) and is exported for ctypes as a function pointer <name>_f32/_f64.
#pragma once
#define SDK_HOST_EMULATION 1

#include <barrier>
#include <cstddef>
#include <cstdint>
#include <thread>
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
inline thread_local dim3 threadIdx, blockIdx, blockDim;

namespace sdk_host {
inline std::barrier<>* block_barrier = nullptr;
inline std::vector<double> smem;  // the block's dynamic shared memory (double: aligned for any T)
}  // namespace sdk_host

inline void __syncthreads() { sdk_host::block_barrier->arrive_and_wait(); }

// Lane l gets v of lane l + o of its warp (its own v past the warp's end), as on the device.
template <typename T>
T __shfl_down_sync(unsigned, T v, int o) {
  static T lanes[1024];
  lanes[threadIdx.x] = v;
  __syncthreads();
  const T got = (threadIdx.x & 31) + o < 32 ? lanes[threadIdx.x + o] : v;
  __syncthreads();
  return got;
}

namespace sdekernels::cuda {

template <typename... P, typename... A>
int launch(void (*kernel)(P...), int64_t blocks, int threads, size_t smem, void*, A... args) {
  sdk_host::smem.assign(smem / sizeof(double) + 1, 0.0);
  for (int64_t b = 0; b < blocks; ++b) {
    std::barrier<> bar(threads);
    sdk_host::block_barrier = &bar;
    std::vector<std::thread> team;
    for (int t = 0; t < threads; ++t)
      team.emplace_back([&, t] {
        threadIdx = {unsigned(t), 0, 0};
        blockIdx = {unsigned(b), 0, 0};
        blockDim = {unsigned(threads), 1, 1};
        kernel(args...);
      });
    for (auto& th : team) th.join();
  }
  return 0;
}

template <typename T>
T* dynamic_smem() { return reinterpret_cast<T*>(sdk_host::smem.data()); }

}  // namespace sdekernels::cuda
