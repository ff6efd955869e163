// CUDA backward kernels of the spectral distances (SPEC §5): one thread block per batch row.
#include <cuda_runtime.h>

#include "../spectral_math.h"
#include "launch.h"

namespace sdekernels {

constexpr int kThreads = 256;

// Sum of v over the block; every thread gets the result. `scratch` holds kThreads values.
template <typename T>
__device__ T block_sum(T v, T* scratch) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < kThreads / 32; ++w) total += scratch[w];
  return total;
}

template <typename T>
__global__ void hellinger_bwd_kernel(const T* __restrict__ A, const T* __restrict__ B, const T* __restrict__ grad,
                                     T* __restrict__ dA, T* __restrict__ dB, int64_t r, T power, bool squared) {
  __shared__ T scratch[kThreads / 32];
  const int64_t row = blockIdx.x;
  const T *a = A + row * r, *b = B + row * r;
  T za = 0, zb = 0;
  for (int64_t i = threadIdx.x; i < r; i += kThreads) { za += spow(a[i], power); zb += spow(b[i], power); }
  const T Za = block_sum(za, scratch), Zb = block_sum(zb, scratch);
  const T Zca = Za > T(kSumFloor) ? Za : T(kSumFloor), Zcb = Zb > T(kSumFloor) ? Zb : T(kSumFloor);
  T bc = 0, ca = 0, cb = 0;
  for (int64_t i = threadIdx.x; i < r; i += kThreads) {
    const T pt = spow(a[i], power) / Zca, qt = spow(b[i], power) / Zcb;
    const T p = pt > T(kProbFloor) ? pt : T(kProbFloor), q = qt > T(kProbFloor) ? qt : T(kProbFloor);
    bc += sqrt(p * q);
    ca += dh2_dp(pt, qt) * pt;
    cb += dh2_dp(qt, pt) * qt;
  }
  const T BC = block_sum(bc, scratch);
  const T CA = Za < T(kSumFloor) ? T(0) : block_sum(ca, scratch);
  const T CB = Zb < T(kSumFloor) ? T(0) : block_sum(cb, scratch);
  const T h2 = T(1) - BC, g = grad[row];
  const T scale = squared ? g : (h2 > T(0) ? g * T(0.5) / sqrt(h2) : T(0));
  for (int64_t i = threadIdx.x; i < r; i += kThreads) {
    const T pt = spow(a[i], power) / Zca, qt = spow(b[i], power) / Zcb;
    dA[row * r + i] = scale * hellinger_entry_grad(dh2_dp(pt, qt), CA, Zca, a[i], power);
    dB[row * r + i] = scale * hellinger_entry_grad(dh2_dp(qt, pt), CB, Zcb, b[i], power);
  }
}

// G = dL/dM and, when weighted, dL/dS_a, dL/dS_b. Shared memory: w_a, w_b, gw_a, gw_b (4k values).
template <typename T>
__global__ void subspace_coef_kernel(const T* __restrict__ Ms, const T* __restrict__ grad, const T* __restrict__ SA,
                                     const T* __restrict__ SB, T* __restrict__ Gs, T* __restrict__ dSA,
                                     T* __restrict__ dSB, int64_t k) {
  extern __shared__ unsigned char smem[];
  __shared__ T scratch[kThreads / 32];
  const int64_t row = blockIdx.x, kk = k * k;
  const T *M = Ms + row * kk, g = grad[row];
  T* G = Gs + row * kk;
  if (SA == nullptr) {
    for (int64_t i = threadIdx.x; i < kk; i += kThreads) G[i] = T(-2) * g * M[i] / T(k);
    return;
  }
  const T *Sa = SA + row * k, *Sb = SB + row * k;
  T *wa = reinterpret_cast<T*>(smem), *wb = wa + k, *ga = wb + k, *gb = ga + k;
  T za = 0, zb = 0;
  for (int64_t i = threadIdx.x; i < k; i += kThreads) { za += Sa[i] * Sa[i]; zb += Sb[i] * Sb[i]; }
  const T Za = block_sum(za, scratch), Zb = block_sum(zb, scratch);
  const T Zca = Za > T(kSumFloor) ? Za : T(kSumFloor), Zcb = Zb > T(kSumFloor) ? Zb : T(kSumFloor);
  for (int64_t i = threadIdx.x; i < k; i += kThreads) { wa[i] = Sa[i] * Sa[i] / Zca; wb[i] = Sb[i] * Sb[i] / Zcb; }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < kk; e += kThreads) G[e] = T(-4) * g * wa[e / k] * wb[e % k] * M[e];
  for (int64_t i = threadIdx.x; i < k; i += kThreads) {
    T row_acc = 0, col_acc = 0;
    for (int64_t j = 0; j < k; ++j) {
      row_acc += wb[j] * M[i * k + j] * M[i * k + j];
      col_acc += wa[j] * M[j * k + i] * M[j * k + i];
    }
    ga[i] = g * (T(2) * wa[i] - T(2) * row_acc);
    gb[i] = g * (T(2) * wb[i] - T(2) * col_acc);
  }
  __syncthreads();
  T ca = 0, cb = 0;
  for (int64_t i = threadIdx.x; i < k; i += kThreads) { ca += ga[i] * wa[i]; cb += gb[i] * wb[i]; }
  const T CA = Za < T(kSumFloor) ? T(0) : block_sum(ca, scratch);
  const T CB = Zb < T(kSumFloor) ? T(0) : block_sum(cb, scratch);
  for (int64_t j = threadIdx.x; j < k; j += kThreads) {
    dSA[row * k + j] = T(2) * Sa[j] / Zca * (ga[j] - CA);
    dSB[row * k + j] = T(2) * Sb[j] / Zcb * (gb[j] - CB);
  }
}

}  // namespace sdekernels

#define SDK_DEFINE(T, SUF)                                                                                   \
  extern "C" int sdk_hellinger_bwd_##SUF(const T* a, const T* b, const T* g, T* da, T* db, int64_t rows,     \
                                         int64_t r, double power, bool squared, void* stream) {              \
    if (rows == 0) return 0;                                                                                 \
    sdekernels::hellinger_bwd_kernel<T><<<rows, sdekernels::kThreads, 0, (cudaStream_t)stream>>>(            \
        a, b, g, da, db, r, T(power), squared);                                                              \
    return (int)cudaGetLastError();                                                                          \
  }                                                                                                          \
  extern "C" int sdk_subspace_coef_##SUF(const T* M, const T* g, const T* Sa, const T* Sb, T* G, T* dSa,     \
                                         T* dSb, int64_t rows, int64_t k, void* stream) {                    \
    if (rows == 0) return 0;                                                                                 \
    const size_t smem = Sa ? 4 * k * sizeof(T) : 0;                                                          \
    sdekernels::subspace_coef_kernel<T><<<rows, sdekernels::kThreads, smem, (cudaStream_t)stream>>>(         \
        M, g, Sa, Sb, G, dSa, dSb, k);                                                                       \
    return (int)cudaGetLastError();                                                                          \
  }

SDK_DEFINE(float, f32)
SDK_DEFINE(double, f64)
