// Operator schemas of the extension (namespace sdekernels_C) and their kernels. A kernel twin
// (ops.h) registers as itself under its dispatch key (CPU: op_cpu, CUDA: op_cuda); a composite of
// GEMMs / FFTs around a twin registers one device-generic function under both keys, which picks
// the twin with SDK_TWIN. Python wraps each op in a torch.library custom op (sdekernels/ops/), which
// owns fake tensors, dtype policy and argument checks; the kernels see float32/float64 only.
#include <torch/library.h>

#include "ops.h"

namespace sdekernels {

// Subspace distance backward: the k×k coefficient kernel between two pairs of GEMMs
// (M = V_aᵀV_b, then dV_a = V_b Gᵀ, dV_b = V_a G): never an n×n matrix.
static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> subspace_bwd(
    const at::Tensor& V_a, const at::Tensor& V_b, const at::Tensor& grad, const std::optional<at::Tensor>& S_a,
    const std::optional<at::Tensor>& S_b) {
  TORCH_CHECK(S_a.has_value() == S_b.has_value(), "S_a and S_b must be given together");
  auto M = at::matmul(V_a.mT(), V_b);
  auto [G, dSa, dSb] = SDK_TWIN(subspace_coef, M, M, grad, S_a, S_b);
  return {at::matmul(V_b, G.mT()), at::matmul(V_a, G), dSa, dSb};
}

// Truncated-SVD backward (SPEC §1): gF = (U·Kt + gU·diag(inv))·Vᵀ + U·diag(inv)·gVᵀ as one GEMM of
// inner size 2k; only k×k intermediates besides the inputs' shapes.
static at::Tensor svd_topk_bwd(const at::Tensor& U, const at::Tensor& S, const at::Tensor& V, const at::Tensor& gU,
                               const at::Tensor& gS, const at::Tensor& gV) {
  auto A = at::matmul(U.mT(), gU), B = at::matmul(V.mT(), gV);
  auto [Kt, inv] = SDK_TWIN(svd_core, U, A, B, S, gS);
  auto iv = inv.unsqueeze(-2);
  auto left = at::cat({at::matmul(U, Kt) + gU * iv, U * iv}, -1);
  return at::matmul(left, at::cat({V, gV}, -1).mT());
}

// Exact backward on the Gram path, in the short-side frame A [.., r, N] (r <= N): W [.., r, r] the full
// eigenbasis of AAᵀ whose first k columns are the short factor Ws, Wl = Aᵀ Ws diag(1/σ) the long one,
// sigma [.., r] all singular values. With P = WᵀgWs, Q = Wᵀ(A gWl), C the r×k core and T = W C:
// gA = Ws diag(inv) gWlᵀ + T diag(σ_k) Wlᵀ + Ws (Tᵀ A). Only r×k, k×N and r×r-by-r×k products. The
// core comes scaled by σ_1 (float32 range), undone on the k-column products (0 where σ_1 = 0).
static at::Tensor svd_topk_exact_bwd(const at::Tensor& A, const at::Tensor& Ws, const at::Tensor& Wl,
                                     const at::Tensor& W, const at::Tensor& sigma, const at::Tensor& gWs,
                                     const at::Tensor& gS, const at::Tensor& gWl) {
  const int64_t k = Ws.size(-1);
  auto Wt = W.mT();
  auto P = at::matmul(Wt, gWs), Q = at::matmul(Wt, at::matmul(A, gWl));
  auto [C, inv] = SDK_TWIN(svd_exact_core, A, P, Q, sigma, gS);
  auto s1 = sigma.abs().amax(-1, true);
  auto rs = at::where(s1 > 0, s1.reciprocal(), at::zeros_like(s1));
  auto T = at::matmul(W, C);  // σ_1·W C
  auto left = at::cat({Ws * inv.unsqueeze(-2), T * (sigma.narrow(-1, 0, k) * rs).unsqueeze(-2)}, -1);
  return at::matmul(left, at::cat({gWl, Wl}, -1).mT()) + at::matmul(Ws, at::matmul(T.mT(), A) * rs.unsqueeze(-1));
}

static bool cuda_built() {
#ifdef SDEKERNELS_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace sdekernels

TORCH_LIBRARY(sdekernels_C, m) {
  m.def("hellinger_fwd(Tensor S_a, Tensor S_b, float power, bool squared) -> Tensor");
  m.def("spectral_partition_fwd(Tensor s_desc, float iqr_c, float sigma_den, float edge) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("hellinger_bwd(Tensor S_a, Tensor S_b, Tensor grad, float power, bool squared) -> (Tensor, Tensor)");
  m.def("subspace_bwd(Tensor V_a, Tensor V_b, Tensor grad, Tensor? S_a, Tensor? S_b) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("radial_bin_fwd(Tensor Y, Tensor index, Tensor inv_count, int comp, float scale, bool channel_mean) -> Tensor");
  m.def("radial_psd_fwd(Tensor x, Tensor index, Tensor inv_count, Tensor DH, Tensor DW, bool channel_mean, bool save_spectrum) -> (Tensor, Tensor)");
  m.def("radial_psd_bwd(Tensor Y, Tensor grad, Tensor index, Tensor inv_count, Tensor? DH, Tensor? DW, bool channel_mean) -> Tensor");
  m.def("fourier_split_fwd(Tensor Xh, Tensor tol, int W, bool onesided, bool centered, bool log_amplitude) -> (Tensor, Tensor)");
  m.def("fourier_merge_fwd(Tensor A, Tensor P, int W, bool onesided, bool centered, str norm) -> Tensor");
  m.def("fourier_split_bwd(Tensor x, Tensor gA, Tensor gP, bool onesided, str norm, bool centered, bool log_amplitude) -> Tensor");
  m.def("fourier_merge_bwd(Tensor A, Tensor P, Tensor gx, bool onesided, str norm, bool centered) -> (Tensor, Tensor)");
  m.def("svd_topk_bwd(Tensor U, Tensor S, Tensor V, Tensor gU, Tensor gS, Tensor gV) -> Tensor");
  m.def("svd_topk_exact_bwd(Tensor A, Tensor Ws, Tensor Wl, Tensor W, Tensor sigma, Tensor gWs, Tensor gS, Tensor gWl) -> Tensor");
  // The kernel twins themselves (ops.h), for tests that hold the CPU and CUDA twins to each other.
  m.def("subspace_coef(Tensor M, Tensor grad, Tensor? S_a, Tensor? S_b) -> (Tensor, Tensor, Tensor)");
  m.def("radial_bin_bwd(Tensor Y, Tensor grad, Tensor index, Tensor inv_count, int comp, float scale, bool channel_mean) -> Tensor");
  m.def("fourier_split_grad(Tensor Xh, Tensor gA, Tensor gP, int W, bool onesided, bool centered, bool log_amplitude) -> Tensor");
  m.def("fourier_merge_grad(Tensor G, Tensor A, Tensor P, int W, bool onesided, bool centered) -> (Tensor, Tensor)");
  m.def("svd_core(Tensor A, Tensor B, Tensor S, Tensor gS) -> (Tensor, Tensor)");
  m.def("svd_exact_core(Tensor P, Tensor Q, Tensor sigma, Tensor gS) -> (Tensor, Tensor)");
  m.def("cuda_built() -> bool", &sdekernels::cuda_built);
}

TORCH_LIBRARY_IMPL(sdekernels_C, CPU, m) {
  m.impl("hellinger_fwd", &sdekernels::hellinger_fwd_cpu);
  m.impl("spectral_partition_fwd", &sdekernels::spectral_partition_fwd_cpu);
  m.impl("hellinger_bwd", &sdekernels::hellinger_bwd_cpu);
  m.impl("subspace_bwd", &sdekernels::subspace_bwd);
  m.impl("svd_topk_bwd", &sdekernels::svd_topk_bwd);
  m.impl("svd_topk_exact_bwd", &sdekernels::svd_topk_exact_bwd);
  m.impl("fourier_split_fwd", &sdekernels::fourier_split_fwd_cpu);
  m.impl("fourier_merge_fwd", &sdekernels::fourier_merge_fwd_cpu);
  m.impl("fourier_split_bwd", &sdekernels::fourier_split_bwd);
  m.impl("fourier_merge_bwd", &sdekernels::fourier_merge_bwd);
  m.impl("radial_bin_fwd", &sdekernels::radial_bin_fwd_cpu);
  m.impl("radial_psd_fwd", &sdekernels::radial_psd_fwd_cpu);
  m.impl("radial_psd_bwd", &sdekernels::radial_psd_bwd);
  m.impl("subspace_coef", &sdekernels::subspace_coef_cpu);
  m.impl("radial_bin_bwd", &sdekernels::radial_bin_bwd_cpu);
  m.impl("fourier_split_grad", &sdekernels::fourier_split_grad_cpu);
  m.impl("fourier_merge_grad", &sdekernels::fourier_merge_grad_cpu);
  m.impl("svd_core", &sdekernels::svd_core_cpu);
  m.impl("svd_exact_core", &sdekernels::svd_exact_core_cpu);
}

#ifdef SDEKERNELS_CUDA
TORCH_LIBRARY_IMPL(sdekernels_C, CUDA, m) {
  m.impl("hellinger_bwd", &sdekernels::hellinger_bwd_cuda);
  m.impl("subspace_bwd", &sdekernels::subspace_bwd);
  m.impl("svd_topk_bwd", &sdekernels::svd_topk_bwd);
  m.impl("svd_topk_exact_bwd", &sdekernels::svd_topk_exact_bwd);
  m.impl("fourier_split_bwd", &sdekernels::fourier_split_bwd);
  m.impl("fourier_merge_bwd", &sdekernels::fourier_merge_bwd);
  m.impl("radial_psd_bwd", &sdekernels::radial_psd_bwd);
  m.impl("subspace_coef", &sdekernels::subspace_coef_cuda);
  m.impl("radial_bin_bwd", &sdekernels::radial_bin_bwd_cuda);
  m.impl("fourier_split_grad", &sdekernels::fourier_split_grad_cuda);
  m.impl("fourier_merge_grad", &sdekernels::fourier_merge_grad_cuda);
  m.impl("svd_core", &sdekernels::svd_core_cuda);
  m.impl("svd_exact_core", &sdekernels::svd_exact_core_cuda);
}
#endif
