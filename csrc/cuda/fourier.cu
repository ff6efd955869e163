// CUDA backward kernels of the Fourier split and merge (SPEC §8): one thread per spectrum entry,
// each running spectral_math.h's entry function (as cpu/fourier.cpp does). The FFTs around them
// are ATen's (cuFFT).
#include "kernel.h"

namespace sdekernels::cuda {
namespace {

constexpr int kThreads = 256;

// Z[r, k1, k2] (half spectrum) from X[r, k1, k2] and the stored gradients of image r.
template <typename T>
__global__ void split_grad_kernel(const T* __restrict__ X, const T* __restrict__ GA, const T* __restrict__ GP,
                                  T* __restrict__ Z, int64_t total, SpectrumLayout L, bool log_amp) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= total) return;
  const int64_t k2 = i % L.Wh, row = i / L.Wh, k1 = row % L.H, r = row / L.H;
  split_entry_grad(X + 2 * i, GA + r * L.H * L.Wo, GP + r * L.H * L.Wo, L, k1, k2, log_amp, Z + 2 * i);
}

// (gA, gP) at every stored entry from G = rfft2(gx) (adjoint norm) through X = A e^{iP}.
template <typename T>
__global__ void merge_grad_kernel(const T* __restrict__ G, const T* __restrict__ A, const T* __restrict__ P,
                                  T* __restrict__ GA, T* __restrict__ GP, int64_t total, SpectrumLayout L) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= total) return;
  const int64_t s2 = i % L.Wo, row = i / L.Wo, s1 = row % L.H, r = row / L.H;
  T gr, gi;
  merge_entry_grad(G + r * L.H * L.Wh * 2, L, L.freq_row(s1), L.freq_col(s2), gr, gi);
  polar_grad(A[i], cos(P[i]), sin(P[i]), gr, gi, GA[i], GP[i]);
}

}  // namespace

template <typename T>
int fourier_split_grad(const T* X, const T* gA, const T* gP, T* Z, int64_t rows, int64_t H, int64_t W, bool onesided,
                       bool centered, bool log_amp, void* stream) {
  const auto L = SpectrumLayout::make(H, W, onesided, centered);
  const int64_t total = rows * H * L.Wh;
  return launch(split_grad_kernel<T>, blocks_for(total, kThreads), kThreads, 0, stream, X, gA, gP, Z, total, L,
                log_amp);
}

template <typename T>
int fourier_merge_grad(const T* G, const T* A, const T* P, T* gA, T* gP, int64_t rows, int64_t H, int64_t W,
                       bool onesided, bool centered, void* stream) {
  const auto L = SpectrumLayout::make(H, W, onesided, centered);
  const int64_t total = rows * H * L.Wo;
  return launch(merge_grad_kernel<T>, blocks_for(total, kThreads), kThreads, 0, stream, G, A, P, gA, gP, total, L);
}

}  // namespace sdekernels::cuda

SDK_INSTANTIATE(sdekernels::cuda::fourier_split_grad)
SDK_INSTANTIATE(sdekernels::cuda::fourier_merge_grad)
