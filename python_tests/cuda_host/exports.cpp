// The emulated launchers (emulation.h) as C symbols for ctypes: <name>_f32, <name>_f64 hold pointers
// to the float and double instances.
#include "../../csrc/cuda/launch.h"

#define SDK_EXPORT(fn)                                                        \
  extern "C" {                                                                \
  extern void* const fn##_f32;                                                \
  void* const fn##_f32 = reinterpret_cast<void*>(&sdekernels::cuda::fn<float>);  \
  extern void* const fn##_f64;                                                \
  void* const fn##_f64 = reinterpret_cast<void*>(&sdekernels::cuda::fn<double>); \
  }

SDK_EXPORT(hellinger_bwd)
SDK_EXPORT(subspace_coef)
SDK_EXPORT(fourier_split_grad)
SDK_EXPORT(fourier_merge_grad)
SDK_EXPORT(radial_bin_bwd)
SDK_EXPORT(svd_core)
SDK_EXPORT(svd_exact_core)
