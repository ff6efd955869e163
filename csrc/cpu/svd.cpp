// Truncated-SVD backward (SPEC §1). The heavy parts are GEMMs (UᵀgU, VᵀgV, and one final product of
// inner size 2k); the k×k core with the stabilised 1/(σ_l² − σ_j²) and 1/σ factors is a per-row
// kernel (here, CPU; csrc/cuda/svd.cu on CUDA). Never an m×m or n×n matrix.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "../ops.h"
#include "../spectral_math.h"

namespace sdekernels {

template <typename T>
static void svd_core_row(const T* A, const T* B, const T* S, const T* gS, int64_t k, T* Kt, T* inv) {
  double s1 = 0;
  for (int64_t j = 0; j < k; ++j) s1 = std::max(s1, std::abs(double(S[j])));
  for (int64_t j = 0; j < k; ++j) inv[j] = T(svd_inv(S[j], s1));
  for (int64_t j = 0; j < k; ++j)
    for (int64_t l = 0; l < k; ++l)
      Kt[j * k + l] = T(svd_core(A[j * k + l], A[l * k + j], B[j * k + l], B[l * k + j], S[j], S[l], gS[j],
                                 svd_inv(S[j], s1), svd_inv(S[l], s1), s1, j == l));
}

std::tuple<at::Tensor, at::Tensor> svd_core_cpu(const at::Tensor& A_, const at::Tensor& B_, const at::Tensor& S_,
                                                const at::Tensor& gS_) {
  auto A = A_.contiguous(), B = B_.contiguous(), S = S_.contiguous(), gS = gS_.contiguous();
  auto Kt = at::empty_like(A), inv = at::empty_like(S);
  const int64_t k = S.size(-1), rows = k ? S.numel() / k : 0;
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "svd_core_cpu", [&] {
    const scalar_t *pa = A.const_data_ptr<scalar_t>(), *pb = B.const_data_ptr<scalar_t>();
    const scalar_t *ps = S.const_data_ptr<scalar_t>(), *pg = gS.const_data_ptr<scalar_t>();
    scalar_t *pk = Kt.data_ptr<scalar_t>(), *pi = inv.data_ptr<scalar_t>();
    at::parallel_for(0, rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(k * k, 1)), [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i)
        svd_core_row<scalar_t>(pa + i * k * k, pb + i * k * k, ps + i * k, pg + i * k, k, pk + i * k * k, pi + i * k);
    });
  });
  return {Kt, inv};
}

}  // namespace sdekernels
