// CUDA kernel of the truncated-SVD backward core (SPEC §1): one thread block per batch row, threads
// over the k×k entries; the GEMMs around it run in cuBLAS (bindings.cpp). Evaluated in double.
#include <cuda_runtime.h>

#include "../spectral_math.h"
#include "launch.h"

namespace sdekernels {

constexpr int kSvdThreads = 256;

// σ_1 = max |v_i| over the block's row, seen by every thread (`red` holds kSvdThreads doubles).
template <typename T>
__device__ double block_max_abs(const T* v, int64_t n, double* red) {
  double m = 0;
  for (int64_t i = threadIdx.x; i < n; i += kSvdThreads) m = fmax(m, fabs(double(v[i])));
  red[threadIdx.x] = m;
  __syncthreads();
  for (int o = kSvdThreads / 2; o > 0; o >>= 1) {
    if (threadIdx.x < o) red[threadIdx.x] = fmax(red[threadIdx.x], red[threadIdx.x + o]);
    __syncthreads();
  }
  return red[0];
}

template <typename T>
__global__ void svd_core_kernel(const T* __restrict__ As, const T* __restrict__ Bs, const T* __restrict__ Ss,
                                const T* __restrict__ gSs, T* __restrict__ Kts, T* __restrict__ invs, int64_t k) {
  __shared__ double red[kSvdThreads];
  const int64_t row = blockIdx.x, kk = k * k;
  const T *A = As + row * kk, *B = Bs + row * kk, *S = Ss + row * k, *gS = gSs + row * k;
  const double s1 = block_max_abs(S, k, red);
  for (int64_t j = threadIdx.x; j < k; j += kSvdThreads) invs[row * k + j] = T(svd_inv(S[j], s1));
  for (int64_t e = threadIdx.x; e < kk; e += kSvdThreads) {
    const int64_t j = e / k, l = e % k;
    Kts[row * kk + e] = T(svd_core(A[e], A[l * k + j], B[e], B[l * k + j], S[j], S[l], gS[j], svd_inv(S[j], s1),
                                   svd_inv(S[l], s1), s1, j == l));
  }
}

template <typename T>
static int launch_svd_core(const T* A, const T* B, const T* S, const T* gS, T* Kt, T* inv, int64_t rows, int64_t k,
                           void* stream) {
  if (rows == 0 || k == 0) return 0;
  svd_core_kernel<T><<<rows, kSvdThreads, 0, static_cast<cudaStream_t>(stream)>>>(A, B, S, gS, Kt, inv, k);
  return static_cast<int>(cudaGetLastError());
}

// Exact backward core on the Gram path (spectral_math.h svd_exact_core): one block per batch row,
// threads over the r×k entries of C; σ_1 = max |σ| over all r values.
template <typename T>
__global__ void svd_exact_core_kernel(const T* __restrict__ Ps, const T* __restrict__ Qs, const T* __restrict__ sigmas,
                                      const T* __restrict__ gSs, T* __restrict__ Cs, T* __restrict__ invs, int64_t r,
                                      int64_t k) {
  __shared__ double red[kSvdThreads];
  const int64_t row = blockIdx.x, rk = r * k;
  const T *P = Ps + row * rk, *Q = Qs + row * rk, *s = sigmas + row * r, *gS = gSs + row * k;
  const double s1 = block_max_abs(s, r, red);
  for (int64_t j = threadIdx.x; j < k; j += kSvdThreads) invs[row * k + j] = T(svd_inv(s[j], s1));
  for (int64_t e = threadIdx.x; e < rk; e += kSvdThreads) {
    const int64_t i = e / k, j = e % k;
    Cs[row * rk + e] = T(svd_exact_core(P[e], Q[e], Q[j * k + j], s[i], s[j], gS[j], svd_inv(s[j], s1), s1, i == j));
  }
}

template <typename T>
static int launch_svd_exact_core(const T* P, const T* Q, const T* sigma, const T* gS, T* C, T* inv, int64_t rows,
                                 int64_t r, int64_t k, void* stream) {
  if (rows == 0 || r == 0 || k == 0) return 0;
  svd_exact_core_kernel<T><<<rows, kSvdThreads, 0, static_cast<cudaStream_t>(stream)>>>(P, Q, sigma, gS, C, inv, r, k);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace sdekernels

extern "C" int sdk_svd_exact_core_f32(const float* P, const float* Q, const float* sigma, const float* gS, float* C,
                                      float* inv, int64_t rows, int64_t r, int64_t k, void* stream) {
  return sdekernels::launch_svd_exact_core(P, Q, sigma, gS, C, inv, rows, r, k, stream);
}
extern "C" int sdk_svd_exact_core_f64(const double* P, const double* Q, const double* sigma, const double* gS,
                                      double* C, double* inv, int64_t rows, int64_t r, int64_t k, void* stream) {
  return sdekernels::launch_svd_exact_core(P, Q, sigma, gS, C, inv, rows, r, k, stream);
}

extern "C" int sdk_svd_core_f32(const float* A, const float* B, const float* S, const float* gS, float* Kt, float* inv,
                                int64_t rows, int64_t k, void* stream) {
  return sdekernels::launch_svd_core(A, B, S, gS, Kt, inv, rows, k, stream);
}
extern "C" int sdk_svd_core_f64(const double* A, const double* B, const double* S, const double* gS, double* Kt,
                                double* inv, int64_t rows, int64_t k, void* stream) {
  return sdekernels::launch_svd_core(A, B, S, gS, Kt, inv, rows, k, stream);
}
