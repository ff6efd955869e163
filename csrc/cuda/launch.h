// The launchers of the CUDA kernels, declared once for both sides: csrc/cuda/*.cu define them and
// instantiate them for float and double with SDK_INSTANTIATE, which takes each instance's type from
// the declaration here (a definition that drifts from it leaves that type ambiguous or undefined: a
// compile error, not a silent mismatch); cuda_bridge.cpp calls them as cuda::name<T>. Raw pointers
// and the cudaStream_t as void*, so the .cu files build with plain nvcc and no torch header. Each
// returns the launch's cudaError_t (0: success).
#pragma once
#include <cstdint>

namespace sdekernels::cuda {

// Hellinger and subspace distance backwards (SPEC §5, distances.cu): one block per batch row.
template <typename T>
int hellinger_bwd(const T* a, const T* b, const T* g, T* da, T* db, int64_t rows, int64_t r, double power,
                  bool squared, void* stream);
// Sa, Sb, dSa, dSb null: the unweighted distance.
template <typename T>
int subspace_coef(const T* M, const T* g, const T* Sa, const T* Sb, T* G, T* dSa, T* dSb, int64_t rows, int64_t k,
                  void* stream);

// Fourier split/merge backwards (SPEC §8, fourier.cu) on rows of [H, ·] spectra.
template <typename T>
int fourier_split_grad(const T* X, const T* gA, const T* gP, T* Z, int64_t rows, int64_t H, int64_t W, bool onesided,
                       bool centered, bool log_amp, void* stream);
template <typename T>
int fourier_merge_grad(const T* G, const T* A, const T* P, T* gA, T* gP, int64_t rows, int64_t H, int64_t W,
                       bool onesided, bool centered, void* stream);

// Radial power spectrum backward (SPEC §9, spectrum.cu): bin gradients scattered onto the spectrum.
template <typename T>
int radial_bin_bwd(const T* Y, const T* g, const int64_t* index, const T* inv_count, T* dY, int64_t groups,
                   int64_t nc, int64_t HW, int comp, int64_t bins, double scale, void* stream);

// Truncated-SVD backward cores (SPEC §1, svd.cu): one block per batch row.
template <typename T>
int svd_core(const T* A, const T* B, const T* S, const T* gS, T* Kt, T* inv, int64_t rows, int64_t k, void* stream);
template <typename T>
int svd_exact_core(const T* P, const T* Q, const T* sigma, const T* gS, T* C, T* inv, int64_t rows, int64_t r,
                   int64_t k, void* stream);

}  // namespace sdekernels::cuda

// The float and double instances of launcher `fn` (its type taken from the declaration above).
#define SDK_INSTANTIATE(fn)                     \
  template decltype(fn<float>) fn<float>;       \
  template decltype(fn<double>) fn<double>;
