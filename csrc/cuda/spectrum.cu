// CUDA kernel of the radial power spectrum backward (SPEC §9): the bin gradients scattered onto
// the spectrum Y [B, C, H·W·comp]. One thread per (sample, channel group, hw); ATen GEMMs / FFTs
// around it (cpu/spectrum.cpp, radial_psd_bwd) recompute Y and map dY back to x.
#include <cuda_runtime.h>

#include "../spectral_math.h"
#include "launch.h"

namespace sdekernels {

template <typename T>
__global__ void radial_bin_bwd_kernel(const T* __restrict__ Y, const T* __restrict__ grad,
                                      const int64_t* __restrict__ index, const T* __restrict__ inv_count,
                                      T* __restrict__ dY, int64_t groups, int64_t nc, int64_t HW, int comp,
                                      int64_t bins, T scale) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= groups * HW) return;
  const int64_t r = t / HW, hw = t % HW;
  const T* y = Y + r * nc * HW * comp + hw * comp;
  T* d = dY + r * nc * HW * comp + hw * comp;
  T p = 0;
  for (int64_t c = 0; c < nc; ++c)
    for (int k = 0; k < comp; ++k) p += y[c * HW * comp + k] * y[c * HW * comp + k];
  p *= scale / T(nc);
  const int64_t j = index[hw];
  const T f = psd_pass(p, (long long)hw) * T(2) * scale / T(nc) * grad[r * bins + j] * inv_count[j];
  for (int64_t c = 0; c < nc; ++c)
    for (int k = 0; k < comp; ++k) d[c * HW * comp + k] = f * y[c * HW * comp + k];
}

template <typename T>
static int launch_radial_bin_bwd(const T* Y, const T* g, const int64_t* index, const T* inv_count, T* dY,
                                 int64_t groups, int64_t nc, int64_t HW, int comp, int64_t bins, double scale,
                                 void* stream) {
  const int64_t n = groups * HW;
  if (n == 0) return 0;
  const int threads = 256;
  radial_bin_bwd_kernel<T><<<(unsigned)((n + threads - 1) / threads), threads, 0, (cudaStream_t)stream>>>(
      Y, g, index, inv_count, dY, groups, nc, HW, comp, bins, T(scale));
  return (int)cudaGetLastError();
}

}  // namespace sdekernels

#define SDK_DEFINE(T, SUF)                                                                                   \
  extern "C" int sdk_radial_bin_bwd_##SUF(const T* Y, const T* g, const int64_t* index, const T* inv_count,  \
                                          T* dY, int64_t groups, int64_t nc, int64_t HW, int comp,           \
                                          int64_t bins, double scale, void* stream) {                        \
    return sdekernels::launch_radial_bin_bwd<T>(Y, g, index, inv_count, dY, groups, nc, HW, comp, bins,     \
                                                scale, stream);                                              \
  }

SDK_DEFINE(float, f32)
SDK_DEFINE(double, f64)
#undef SDK_DEFINE
