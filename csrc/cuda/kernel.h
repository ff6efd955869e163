// Device-side helpers shared by csrc/cuda/*.cu: the one launch helper, block reductions and the
// block's dynamic shared memory. A host emulation of the kernels (python_tests/test_csrc.py)
// defines SDK_HOST_EMULATION and supplies its own versions of these helpers.
#pragma once
#include <cstdint>

#include "../spectral_math.h"
#include "launch.h"

#ifndef SDK_HOST_EMULATION
#include <cuda_runtime.h>

namespace sdekernels::cuda {

// kernel<<<blocks, threads, smem, stream>>>(args...); returns the launch error (0 for an empty grid).
template <typename... P, typename... A>
int launch(void (*kernel)(P...), int64_t blocks, int threads, size_t smem, void* stream, A... args) {
  if (blocks <= 0) return 0;
  kernel<<<static_cast<unsigned>(blocks), threads, smem, static_cast<cudaStream_t>(stream)>>>(args...);
  return static_cast<int>(cudaGetLastError());
}

// The block's dynamic shared memory, as T[].
template <typename T>
__device__ T* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char smem[];
  return reinterpret_cast<T*>(smem);
}

}  // namespace sdekernels::cuda
#endif

namespace sdekernels::cuda {

// op(v) over a block of `threads` threads (op associative and commutative, `init` its identity);
// every thread gets the result. `scratch` holds threads/32 values; all threads must call it.
template <typename T, typename Op>
__device__ T block_reduce(T v, T* scratch, int threads, T init, Op op) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T total = init;
  for (int w = 0; w < threads / 32; ++w) total = op(total, scratch[w]);
  return total;
}
template <typename T>
__device__ T block_sum(T v, T* scratch, int threads) {
  return block_reduce(v, scratch, threads, T(0), [](T x, T y) { return x + y; });
}
// The largest of values >= 0 (0 for none).
template <typename T>
__device__ T block_max(T v, T* scratch, int threads) {
  return block_reduce(v, scratch, threads, T(0), [](T x, T y) { return x < y ? y : x; });
}

// Blocks of `threads` threads covering n items.
inline int64_t blocks_for(int64_t n, int threads) { return (n + threads - 1) / threads; }
}  // namespace sdekernels::cuda
