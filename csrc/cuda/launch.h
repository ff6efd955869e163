// C launchers of the CUDA kernels: raw pointers and a cudaStream_t passed as void*, so the .cu
// files build with plain nvcc and the torch-facing code (cuda_bridge.cpp) binds them.
#pragma once
#include <cstdint>

#define SDK_DECLARE(T, SUF)                                                                                  \
  extern "C" int sdk_hellinger_bwd_##SUF(const T* a, const T* b, const T* g, T* da, T* db, int64_t rows,     \
                                         int64_t r, double power, bool squared, void* stream);               \
  extern "C" int sdk_subspace_coef_##SUF(const T* M, const T* g, const T* Sa, const T* Sb, T* G, T* dSa,     \
                                         T* dSb, int64_t rows, int64_t k, void* stream);

SDK_DECLARE(float, f32)
SDK_DECLARE(double, f64)
#undef SDK_DECLARE
