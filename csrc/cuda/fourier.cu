// CUDA backward kernels of the Fourier split and merge (SPEC §8): one thread per spectrum entry.
// The FFTs around them are ATen's (cuFFT); see csrc/cpu/fourier.cpp for the math.
#include <cuda_runtime.h>

#include "../spectral_math.h"
#include "launch.h"

namespace sdekernels {

constexpr int kFourierThreads = 256;

static SpectrumLayout make_layout(int64_t H, int64_t W, bool onesided, bool centered) {
  const int64_t Wh = W / 2 + 1;
  return SpectrumLayout{H, W, Wh, onesided ? Wh : W, onesided, centered};
}

// Z[r, k1, k2] (half spectrum) = Hermitian part of the complex gradient of (A, P) at X[r, k1, k2].
template <typename T>
__global__ void split_grad_kernel(const T* __restrict__ X, const T* __restrict__ GA, const T* __restrict__ GP,
                                  T* __restrict__ Z, int64_t total, SpectrumLayout L, bool log_amp) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int64_t k2 = i % L.Wh, row = i / L.Wh, k1 = row % L.H, r = row / L.H;
  const T *gA = GA + r * L.H * L.Wo, *gP = GP + r * L.H * L.Wo;
  const T re = X[2 * i];
  const T im = fft_real_bin(k1, L.H) && fft_real_bin(k2, L.W) ? T(0) : X[2 * i + 1];
  T gr, gi, mr = 0, mi = 0;
  const int64_t o = L.pos(k1, k2);
  split_point_grad(re, im, gA[o], gP[o], log_amp, gr, gi);
  if (L.mirror_stored(k2)) {
    const int64_t om = L.pos((L.H - k1) % L.H, (L.W - k2) % L.W);
    split_point_grad(re, -im, gA[om], gP[om], log_amp, mr, mi);
  }
  Z[2 * i] = T(0.5) * (gr + mr);
  Z[2 * i + 1] = T(0.5) * (gi - mi);
}

// (gA, gP) at every stored entry from G = rfft2(gx) (adjoint norm) through X = A e^{iP}.
template <typename T>
__global__ void merge_grad_kernel(const T* __restrict__ G, const T* __restrict__ A, const T* __restrict__ P,
                                  T* __restrict__ GA, T* __restrict__ GP, int64_t total, SpectrumLayout L) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int64_t s2 = i % L.Wo, row = i / L.Wo, s1 = row % L.H, r = row / L.H;
  const int64_t k1 = L.freq_row(s1), k2 = L.freq_col(s2);
  T gr, gi;
  if (k2 < L.Wh) {
    const T* g = G + ((r * L.H + k1) * L.Wh + k2) * 2;
    const T m = L.mirror_stored(k2) ? T(1) : T(2);
    gr = m * g[0];
    gi = m * g[1];
  } else {
    const T* g = G + ((r * L.H + (L.H - k1) % L.H) * L.Wh + (L.W - k2)) * 2;
    gr = g[0];
    gi = -g[1];
  }
  polar_grad(A[i], P[i], gr, gi, GA[i], GP[i]);
}

template <typename T>
static int split_grad(const T* X, const T* gA, const T* gP, T* Z, int64_t rows, int64_t H, int64_t W, bool onesided,
                      bool centered, bool log_amp, void* stream) {
  const auto L = make_layout(H, W, onesided, centered);
  const int64_t total = rows * H * L.Wh;
  if (total == 0) return 0;
  const int64_t blocks = (total + kFourierThreads - 1) / kFourierThreads;
  split_grad_kernel<T><<<(unsigned)blocks, kFourierThreads, 0, (cudaStream_t)stream>>>(X, gA, gP, Z, total, L, log_amp);
  return (int)cudaGetLastError();
}

template <typename T>
static int merge_grad(const T* G, const T* A, const T* P, T* gA, T* gP, int64_t rows, int64_t H, int64_t W,
                      bool onesided, bool centered, void* stream) {
  const auto L = make_layout(H, W, onesided, centered);
  const int64_t total = rows * H * L.Wo;
  if (total == 0) return 0;
  const int64_t blocks = (total + kFourierThreads - 1) / kFourierThreads;
  merge_grad_kernel<T><<<(unsigned)blocks, kFourierThreads, 0, (cudaStream_t)stream>>>(G, A, P, gA, gP, total, L);
  return (int)cudaGetLastError();
}

}  // namespace sdekernels

#define SDK_FOURIER_DEFINE(T, SUF)                                                                               \
  extern "C" int sdk_fourier_split_grad_##SUF(const T* X, const T* gA, const T* gP, T* Z, int64_t rows,          \
                                              int64_t H, int64_t W, bool onesided, bool centered, bool log_amp,  \
                                              void* stream) {                                                    \
    return sdekernels::split_grad<T>(X, gA, gP, Z, rows, H, W, onesided, centered, log_amp, stream);             \
  }                                                                                                              \
  extern "C" int sdk_fourier_merge_grad_##SUF(const T* G, const T* A, const T* P, T* gA, T* gP, int64_t rows,    \
                                              int64_t H, int64_t W, bool onesided, bool centered, void* stream) { \
    return sdekernels::merge_grad<T>(G, A, P, gA, gP, rows, H, W, onesided, centered, stream);                   \
  }

SDK_FOURIER_DEFINE(float, f32)
SDK_FOURIER_DEFINE(double, f64)
