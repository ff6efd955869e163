// CUDA kernels of the truncated-SVD backward cores (SPEC §1): one thread block per batch row,
// threads over the entries of the core, each spectral_math.h's svd_core_entry / svd_exact_entry (as
// cpu/svd.cpp); the GEMMs around them run in cuBLAS (bindings.cpp). Evaluated in double.
#include "kernel.h"

namespace sdekernels::cuda {
namespace {

constexpr int kThreads = 256;

// σ_1 = max |σ| over the block's row of n values, seen by every thread, and the stabilised 1/σ_j of
// its first k values into inv (`red` holds kThreads/32 doubles).
template <typename T>
__device__ double row_inverses(const T* s, int64_t n, int64_t k, T* inv, double* red) {
  double m = 0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) m = max_abs(m, s[i]);
  const double s1 = block_max(m, red, kThreads);
  for (int64_t j = threadIdx.x; j < k; j += kThreads) inv[j] = T(svd_inv(s[j], s1));
  return s1;
}

template <typename T>
__global__ void svd_core_kernel(const T* __restrict__ As, const T* __restrict__ Bs, const T* __restrict__ Ss,
                                const T* __restrict__ gSs, T* __restrict__ Kts, T* __restrict__ invs, int64_t k) {
  __shared__ double red[kThreads / 32];
  const int64_t row = blockIdx.x, kk = k * k;
  const T *A = As + row * kk, *B = Bs + row * kk, *S = Ss + row * k, *gS = gSs + row * k;
  const double s1 = row_inverses(S, k, k, invs + row * k, red);
  for (int64_t e = threadIdx.x; e < kk; e += kThreads) {
    const int64_t j = e / k, l = e % k;
    Kts[row * kk + e] = T(svd_core_entry(A[e], A[l * k + j], B[e], B[l * k + j], S[j], S[l], gS[j], svd_inv(S[j], s1),
                                   svd_inv(S[l], s1), s1, j == l, lorentz_rel<T>()));
  }
}

// Exact backward core on the Gram path: threads over the r×k entries of C; σ_1 = max |σ| over all r values.
template <typename T>
__global__ void svd_exact_core_kernel(const T* __restrict__ Ps, const T* __restrict__ Qs, const T* __restrict__ sigmas,
                                      const T* __restrict__ gSs, T* __restrict__ Cs, T* __restrict__ invs, int64_t r,
                                      int64_t k) {
  __shared__ double red[kThreads / 32];
  const int64_t row = blockIdx.x, rk = r * k;
  const T *P = Ps + row * rk, *Q = Qs + row * rk, *s = sigmas + row * r, *gS = gSs + row * k;
  const double s1 = row_inverses(s, r, k, invs + row * k, red);
  for (int64_t e = threadIdx.x; e < rk; e += kThreads) {
    const int64_t i = e / k, j = e % k;
    Cs[row * rk + e] = T(svd_exact_entry(P[e], Q[e], Q[j * k + j], s[i], s[j], gS[j], svd_inv(s[j], s1), s1, i == j,
                                         lorentz_rel<T>()));
  }
}

}  // namespace

template <typename T>
int svd_core(const T* A, const T* B, const T* S, const T* gS, T* Kt, T* inv, int64_t rows, int64_t k, void* stream) {
  return launch(svd_core_kernel<T>, k ? rows : 0, kThreads, 0, stream, A, B, S, gS, Kt, inv, k);
}

template <typename T>
int svd_exact_core(const T* P, const T* Q, const T* sigma, const T* gS, T* C, T* inv, int64_t rows, int64_t r,
                   int64_t k, void* stream) {
  return launch(svd_exact_core_kernel<T>, r * k ? rows : 0, kThreads, 0, stream, P, Q, sigma, gS, C, inv, r, k);
}

}  // namespace sdekernels::cuda

SDK_INSTANTIATE(sdekernels::cuda::svd_core)
SDK_INSTANTIATE(sdekernels::cuda::svd_exact_core)
