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

namespace sdekernels {

// Exact backward core on the Gram path (spectral_math.h svd_exact_core): P, Q [.., r, k], sigma [.., r]
// (all r values, the first k the outputs'), gS [.., k] -> C [.., r, k] and the stabilised 1/σ_k.
std::tuple<at::Tensor, at::Tensor> svd_exact_core_cpu(const at::Tensor& P_, const at::Tensor& Q_,
                                                      const at::Tensor& sigma_, const at::Tensor& gS_) {
  auto P = P_.contiguous(), Q = Q_.contiguous(), sigma = sigma_.contiguous(), gS = gS_.contiguous();
  auto C = at::empty_like(P), inv = at::empty_like(gS);
  const int64_t r = P.size(-2), k = P.size(-1), rows = r * k ? P.numel() / (r * k) : 0;
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "svd_exact_core_cpu", [&] {
    at::parallel_for(0, rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(r * k, 1)), [&](int64_t lo, int64_t hi) {
      for (int64_t b = lo; b < hi; ++b) {
        const scalar_t *p = P.const_data_ptr<scalar_t>() + b * r * k, *q = Q.const_data_ptr<scalar_t>() + b * r * k;
        const scalar_t *s = sigma.const_data_ptr<scalar_t>() + b * r, *g = gS.const_data_ptr<scalar_t>() + b * k;
        scalar_t *c = C.data_ptr<scalar_t>() + b * r * k, *iv = inv.data_ptr<scalar_t>() + b * k;
        double s1 = 0;
        for (int64_t i = 0; i < r; ++i) s1 = std::max(s1, std::abs(double(s[i])));
        for (int64_t j = 0; j < k; ++j) iv[j] = scalar_t(svd_inv(s[j], s1));
        for (int64_t i = 0; i < r; ++i)
          for (int64_t j = 0; j < k; ++j)
            c[i * k + j] = scalar_t(svd_exact_core(p[i * k + j], q[i * k + j], q[j * k + j], s[i], s[j], g[j],
                                                   svd_inv(s[j], s1), s1, i == j));
      }
    });
  });
  return {C, inv};
}

}  // namespace sdekernels
