// Backward kernels of sdekernels. Schemas live in bindings.cpp; CPU bodies in cpu/, CUDA in cuda/.
#pragma once
#include <torch/types.h>

#include <tuple>

namespace sdekernels {

// Contiguous inputs and fresh outputs of the distance backward kernels: one layout shared by the
// CPU and CUDA kernels. Optional tensors absent -> undefined inputs and empty outputs.
struct HellingerBufs {
  at::Tensor a, b, g, da, db;
  int64_t r, rows;
};
inline HellingerBufs hellinger_bufs(const at::Tensor& S_a, const at::Tensor& S_b, const at::Tensor& grad) {
  auto a = S_a.contiguous(), b = S_b.contiguous();
  const int64_t r = a.size(-1);
  return {a, b, grad.contiguous(), at::empty_like(a), at::empty_like(b), r, r ? a.numel() / r : 0};
}
struct SubspaceBufs {
  at::Tensor M, g, Sa, Sb, G, dSa, dSb;
  int64_t k, rows;
  bool weighted;
};
inline SubspaceBufs subspace_bufs(const at::Tensor& M_, const at::Tensor& grad, const std::optional<at::Tensor>& S_a,
                                  const std::optional<at::Tensor>& S_b) {
  SubspaceBufs o;
  o.M = M_.contiguous();
  o.g = grad.contiguous();
  o.weighted = S_a.has_value();
  if (o.weighted) o.Sa = S_a->contiguous(), o.Sb = S_b->contiguous();
  o.G = at::empty_like(o.M);
  o.dSa = o.weighted ? at::empty_like(o.Sa) : at::empty({0}, o.M.options());
  o.dSb = o.weighted ? at::empty_like(o.Sb) : at::empty({0}, o.M.options());
  o.k = o.M.size(-1);
  o.rows = o.k ? o.M.numel() / (o.k * o.k) : 0;
  return o;
}

// Hellinger distance of normalised spectra (SPEC §5): the CPU forward, and gradients wrt S_a and S_b.
at::Tensor hellinger_fwd_cpu(const at::Tensor& S_a, const at::Tensor& S_b, double power, bool squared);
std::tuple<at::Tensor, at::Tensor> hellinger_bwd_cpu(const at::Tensor& S_a, const at::Tensor& S_b,
                                                     const at::Tensor& grad, double power, bool squared);
// Spectral partition (SPEC §2) of rows sorted descending: counts, thresholds, energy fractions [..., 3].
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> spectral_partition_fwd_cpu(
    const at::Tensor& s_desc, double iqr_c, double sigma_den, double edge);
// Subspace distance (SPEC §5) from M = V_aᵀV_b: gradients wrt M and the weights' spectra (if given).
std::tuple<at::Tensor, at::Tensor, at::Tensor> subspace_coef_cpu(const at::Tensor& M, const at::Tensor& grad,
                                                                 const std::optional<at::Tensor>& S_a,
                                                                 const std::optional<at::Tensor>& S_b);
// Radial power spectrum (SPEC §9): fused power/channel/bin reduction of a spectrum Y [B, C, H·W·comp]
// and its adjoint; the fused CPU DCT forward (x to bins, saving Y); the backward from the saved Y.
at::Tensor radial_bin_fwd_cpu(const at::Tensor& Y, const at::Tensor& index, const at::Tensor& inv_count,
                              int64_t comp, double scale, bool channel_mean);
at::Tensor radial_bin_bwd_cpu(const at::Tensor& Y, const at::Tensor& grad, const at::Tensor& index,
                              const at::Tensor& inv_count, int64_t comp, double scale, bool channel_mean);
std::tuple<at::Tensor, at::Tensor> radial_psd_fwd_cpu(const at::Tensor& x, const at::Tensor& index,
                                                      const at::Tensor& inv_count, const at::Tensor& DH,
                                                      const at::Tensor& DW, bool channel_mean, bool save_spectrum);
at::Tensor radial_psd_bwd(const at::Tensor& Y, const at::Tensor& grad, const at::Tensor& index,
                          const at::Tensor& inv_count, const std::optional<at::Tensor>& DH,
                          const std::optional<at::Tensor>& DW, bool channel_mean);
// Fourier split/merge (SPEC §8) on [R, H, ·] rows; Xh, Z, G are real views [R, H, W/2+1, 2] of half spectra.
std::tuple<at::Tensor, at::Tensor> fourier_split_fwd_cpu(const at::Tensor& Xh, int64_t W, bool onesided,
                                                         bool centered, bool log_amplitude);
at::Tensor fourier_split_grad_cpu(const at::Tensor& Xh, const at::Tensor& gA, const at::Tensor& gP, int64_t W,
                                  bool onesided, bool centered, bool log_amplitude);
at::Tensor fourier_merge_fwd_cpu(const at::Tensor& A, const at::Tensor& P, int64_t W, bool onesided, bool centered);
std::tuple<at::Tensor, at::Tensor> fourier_merge_grad_cpu(const at::Tensor& G, const at::Tensor& A,
                                                          const at::Tensor& P, int64_t W, bool onesided, bool centered);
at::Tensor fourier_split_bwd(const at::Tensor& x, const at::Tensor& gA, const at::Tensor& gP, bool onesided,
                             c10::string_view norm, bool centered, bool log_amplitude);
std::tuple<at::Tensor, at::Tensor> fourier_merge_bwd(const at::Tensor& A, const at::Tensor& P, const at::Tensor& gx,
                                                     bool onesided, c10::string_view norm, bool centered);
// Truncated-SVD backward core (SPEC §1): from A = UᵀgU, B = VᵀgV [.., k, k], S, gS [.., k] the k×k
// matrix Kt and the stabilised 1/σ (see spectral_math.h).
std::tuple<at::Tensor, at::Tensor> svd_core_cpu(const at::Tensor& A, const at::Tensor& B, const at::Tensor& S,
                                                const at::Tensor& gS);
// Exact backward core on the Gram path: from P = WᵀgW_short, Q = Wᵀ(A gW_long) [.., r, k], σ [.., r]
// (all values) and gS [.., k] the r×k matrix C and the stabilised 1/σ_k (spectral_math.h svd_exact_core).
std::tuple<at::Tensor, at::Tensor> svd_exact_core_cpu(const at::Tensor& P, const at::Tensor& Q, const at::Tensor& sigma,
                                                      const at::Tensor& gS);
#ifdef SDEKERNELS_CUDA
std::tuple<at::Tensor, at::Tensor> svd_core_cuda(const at::Tensor& A, const at::Tensor& B, const at::Tensor& S,
                                                 const at::Tensor& gS);
std::tuple<at::Tensor, at::Tensor> svd_exact_core_cuda(const at::Tensor& P, const at::Tensor& Q,
                                                       const at::Tensor& sigma, const at::Tensor& gS);
at::Tensor fourier_split_grad_cuda(const at::Tensor& Xh, const at::Tensor& gA, const at::Tensor& gP, int64_t W,
                                   bool onesided, bool centered, bool log_amplitude);
std::tuple<at::Tensor, at::Tensor> fourier_merge_grad_cuda(const at::Tensor& G, const at::Tensor& A,
                                                           const at::Tensor& P, int64_t W, bool onesided, bool centered);
at::Tensor radial_bin_bwd_cuda(const at::Tensor& Y, const at::Tensor& grad, const at::Tensor& index,
                               const at::Tensor& inv_count, int64_t comp, double scale, bool channel_mean);
std::tuple<at::Tensor, at::Tensor> hellinger_bwd_cuda(const at::Tensor& S_a, const at::Tensor& S_b,
                                                      const at::Tensor& grad, double power, bool squared);
std::tuple<at::Tensor, at::Tensor, at::Tensor> subspace_coef_cuda(const at::Tensor& M, const at::Tensor& grad,
                                                                  const std::optional<at::Tensor>& S_a,
                                                                  const std::optional<at::Tensor>& S_b);
#endif

}  // namespace sdekernels
