// CUDA kernel of the radial power spectrum backward (SPEC §9): the bin gradients scattered onto
// the spectrum Y [B, C, H·W·comp]. One thread per (sample, channel group, hw), with the per-entry
// math of spectral_math.h (as cpu/spectrum.cpp); ATen GEMMs / FFTs around it (radial_psd_bwd)
// recompute Y and map dY back to x.
#include "kernel.h"

namespace sdekernels::cuda {
namespace {

constexpr int kThreads = 256;

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
  T sum = 0;
  for (int64_t c = 0; c < nc; ++c) sum += entry_power(y + c * HW * comp, comp);
  const int64_t j = index[hw];
  const T f = psd_grad_factor(psd_power(sum, scale, nc), hw, psd_bin_factor(scale, nc, grad[r * bins + j], inv_count[j]));
  for (int64_t c = 0; c < nc; ++c)
    for (int k = 0; k < comp; ++k) d[c * HW * comp + k] = f * y[c * HW * comp + k];
}

}  // namespace

template <typename T>
int radial_bin_bwd(const T* Y, const T* g, const int64_t* index, const T* inv_count, T* dY, int64_t groups,
                   int64_t nc, int64_t HW, int comp, int64_t bins, double scale, void* stream) {
  return launch(radial_bin_bwd_kernel<T>, blocks_for(groups * HW, kThreads), kThreads, 0, stream, Y, g, index,
                inv_count, dY, groups, nc, HW, comp, bins, T(scale));
}

}  // namespace sdekernels::cuda

SDK_INSTANTIATE(sdekernels::cuda::radial_bin_bwd)
