// C launchers of the CUDA kernels: raw pointers and a cudaStream_t passed as void*, so the .cu
// files build with plain nvcc and the torch-facing code (cuda_bridge.cpp) binds them.
#pragma once
#include <cstdint>

#define SDK_DECLARE(T, SUF)                                                                                  \
  extern "C" int sdk_hellinger_bwd_##SUF(const T* a, const T* b, const T* g, T* da, T* db, int64_t rows,     \
                                         int64_t r, double power, bool squared, void* stream);               \
  extern "C" int sdk_subspace_coef_##SUF(const T* M, const T* g, const T* Sa, const T* Sb, T* G, T* dSa,     \
                                         T* dSb, int64_t rows, int64_t k, void* stream);

#define SDK_FOURIER_DECLARE(T, SUF)                                                                         \
  extern "C" int sdk_fourier_split_grad_##SUF(const T* X, const T* gA, const T* gP, T* Z, int64_t rows,     \
                                              int64_t H, int64_t W, bool onesided, bool centered,           \
                                              bool log_amp, void* stream);                                  \
  extern "C" int sdk_fourier_merge_grad_##SUF(const T* G, const T* A, const T* P, T* gA, T* gP,             \
                                              int64_t rows, int64_t H, int64_t W, bool onesided,            \
                                              bool centered, void* stream);

SDK_FOURIER_DECLARE(float, f32)
SDK_FOURIER_DECLARE(double, f64)
#undef SDK_FOURIER_DECLARE

#define SDK_SVD_DECLARE(T, SUF)                                                                              \
  extern "C" int sdk_svd_core_##SUF(const T* A, const T* B, const T* S, const T* gS, T* Kt, T* inv, int64_t rows, \
                                    int64_t k, void* stream);                                            \
  extern "C" int sdk_svd_exact_core_##SUF(const T* P, const T* Q, const T* sigma, const T* gS, T* C, T* inv,   \
                                          int64_t rows, int64_t r, int64_t k, void* stream);

SDK_SVD_DECLARE(float, f32)
SDK_SVD_DECLARE(double, f64)
#undef SDK_SVD_DECLARE

SDK_DECLARE(float, f32)
SDK_DECLARE(double, f64)
#undef SDK_DECLARE

// Radial power spectrum backward (SPEC §9): bin gradients scattered onto the spectrum (spectrum.cu).
#define SDK_SPECTRUM_DECLARE(T, SUF)                                                                         \
  extern "C" int sdk_radial_bin_bwd_##SUF(const T* Y, const T* g, const int64_t* index, const T* inv_count,  \
                                          T* dY, int64_t groups, int64_t nc, int64_t HW, int comp,           \
                                          int64_t bins, double scale, void* stream);

SDK_SPECTRUM_DECLARE(float, f32)
SDK_SPECTRUM_DECLARE(double, f64)
#undef SDK_SPECTRUM_DECLARE
