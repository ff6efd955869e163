// Backward kernels of sdekernels. Schemas live in bindings.cpp; CPU bodies in cpu/, CUDA in cuda/
// (launchers in cuda/launch.h, bound to tensors by cuda_bridge.cpp). Every kernel twin is named
// <op>_cpu / <op>_cuda with one signature, dispatched on dtype by `dispatch` and on device by SDK_TWIN.
#pragma once
#include <torch/types.h>

#include <tuple>

namespace sdekernels {

// The one dtype dispatch of csrc: f.operator()<T>() with T = float or double, the dtype of t (the
// Python side casts other dtypes first). Call as dispatch(t, "name", [&]<typename T>() { ... }).
template <typename F>
void dispatch(const at::Tensor& t, const char* name, F&& f) {
  switch (t.scalar_type()) {
    case at::kFloat: return f.template operator()<float>();
    case at::kDouble: return f.template operator()<double>();
    default: TORCH_CHECK(false, name, ": expected float32 or float64, got ", t.scalar_type());
  }
}

// Typed data of an input / output tensor; null for an undefined or empty one (absent optional inputs).
template <typename T>
const T* in(const at::Tensor& t) { return t.defined() && t.numel() ? t.const_data_ptr<T>() : nullptr; }
template <typename T>
T* out(const at::Tensor& t) { return t.defined() && t.numel() ? t.data_ptr<T>() : nullptr; }

// The twin of kernel `op` for the device of tensor x: op_cuda in a CUDA build on a CUDA tensor, else op_cpu.
// CPU hot loops cloned for AVX-512 and AVX2 machines, the copy picked at load time by the CPU's
// features: the build itself targets baseline x86-64, whose narrow vectors would bind them.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11  // x86-64-v3/v4 names
#define SDK_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SDK_CLONES
#endif

#ifdef SDEKERNELS_CUDA
#define SDK_TWIN(op, x, ...) ((x).is_cuda() ? op##_cuda(__VA_ARGS__) : op##_cpu(__VA_ARGS__))
#else
#define SDK_TWIN(op, x, ...) op##_cpu(__VA_ARGS__)
#endif

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

struct SvdCoreBufs {  // svd_core: A, B [.., k, k] -> Kt; S, gS [.., k] -> inv
  at::Tensor A, B, S, gS, Kt, inv;
  int64_t k, rows;
};
inline SvdCoreBufs svd_core_bufs(const at::Tensor& A, const at::Tensor& B, const at::Tensor& S, const at::Tensor& gS) {
  SvdCoreBufs o{A.contiguous(), B.contiguous(), S.contiguous(), gS.contiguous()};
  o.Kt = at::empty_like(o.A), o.inv = at::empty_like(o.S);
  o.k = o.S.size(-1), o.rows = o.k ? o.S.numel() / o.k : 0;
  return o;
}
struct SvdExactBufs {  // svd_exact_core: P, Q [.., r, k] -> C; sigma [.., r]; gS [.., k] -> inv
  at::Tensor P, Q, sigma, gS, C, inv;
  int64_t r, k, rows;
};
inline SvdExactBufs svd_exact_bufs(const at::Tensor& P, const at::Tensor& Q, const at::Tensor& sigma,
                                   const at::Tensor& gS) {
  SvdExactBufs o{P.contiguous(), Q.contiguous(), sigma.contiguous(), gS.contiguous()};
  o.C = at::empty_like(o.P), o.inv = at::empty_like(o.gS);
  o.r = o.P.size(-2), o.k = o.P.size(-1), o.rows = o.r * o.k != 0 ? o.P.numel() / (o.r * o.k) : 0;
  return o;
}
// Radial bins of a spectrum Y [B, C, HW·comp]: `groups` rows (samples, or sample-channels) of nc
// channels each; for the backward also grad [B, (C,) bins] and the output dY.
struct RadialBufs {
  at::Tensor Y, index, ic, g, dY;
  int64_t HW, bins, groups, nc;
};
inline RadialBufs radial_bufs(const at::Tensor& Y, const at::Tensor& index, const at::Tensor& inv_count, int64_t comp,
                              bool channel_mean) {
  RadialBufs o{Y.contiguous(), index.contiguous(), inv_count.contiguous()};
  TORCH_CHECK(o.Y.dim() == 3, "radial_psd: Y must be a [B, C, H*W*comp] tensor");
  TORCH_CHECK(comp == 1 || comp == 2, "radial_psd: comp must be 1 or 2");
  TORCH_CHECK(o.index.scalar_type() == at::kLong && o.index.numel() * comp == o.Y.size(2),
              "radial_psd: bad bin index map");
  TORCH_CHECK(o.ic.scalar_type() == o.Y.scalar_type(), "radial_psd: inv_count dtype must match Y");
  const int64_t B = o.Y.size(0), C = o.Y.size(1);
  o.HW = o.Y.size(2) / comp, o.bins = o.ic.numel();
  o.groups = channel_mean ? B : B * C, o.nc = channel_mean ? C : 1;
  return o;
}
inline RadialBufs radial_bin_bwd_bufs(const at::Tensor& Y, const at::Tensor& grad, const at::Tensor& index,
                                      const at::Tensor& inv_count, int64_t comp, bool channel_mean) {
  auto o = radial_bufs(Y, index, inv_count, comp, channel_mean);
  o.g = grad.contiguous();
  TORCH_CHECK(o.g.numel() == o.groups * o.bins, "radial_bin_bwd: grad must be [B, bins] or [B, C, bins]");
  o.dY = at::empty_like(o.Y);
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
std::tuple<at::Tensor, at::Tensor> fourier_split_fwd_cpu(const at::Tensor& Xh, const at::Tensor& tol, int64_t W,
                                                         bool onesided, bool centered, bool log_amplitude);
at::Tensor fourier_split_grad_cpu(const at::Tensor& Xh, const at::Tensor& gA, const at::Tensor& gP, int64_t W,
                                  bool onesided, bool centered, bool log_amplitude);
at::Tensor fourier_merge_fwd_cpu(const at::Tensor& A, const at::Tensor& P, int64_t W, bool onesided, bool centered,
                                 c10::string_view norm);
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
// (all values) and gS [.., k] the r×k matrix C and the stabilised 1/σ_k (spectral_math.h svd_exact_entry).
std::tuple<at::Tensor, at::Tensor> svd_exact_core_cpu(const at::Tensor& P, const at::Tensor& Q, const at::Tensor& sigma,
                                                      const at::Tensor& gS);
// The CUDA twins (cuda_bridge.cpp), declared like the CPU ones above.
#ifdef SDEKERNELS_CUDA
std::tuple<at::Tensor, at::Tensor> hellinger_bwd_cuda(const at::Tensor& S_a, const at::Tensor& S_b,
                                                      const at::Tensor& grad, double power, bool squared);
std::tuple<at::Tensor, at::Tensor, at::Tensor> subspace_coef_cuda(const at::Tensor& M, const at::Tensor& grad,
                                                                  const std::optional<at::Tensor>& S_a,
                                                                  const std::optional<at::Tensor>& S_b);
at::Tensor radial_bin_bwd_cuda(const at::Tensor& Y, const at::Tensor& grad, const at::Tensor& index,
                               const at::Tensor& inv_count, int64_t comp, double scale, bool channel_mean);
at::Tensor fourier_split_grad_cuda(const at::Tensor& Xh, const at::Tensor& gA, const at::Tensor& gP, int64_t W,
                                   bool onesided, bool centered, bool log_amplitude);
std::tuple<at::Tensor, at::Tensor> fourier_merge_grad_cuda(const at::Tensor& G, const at::Tensor& A,
                                                           const at::Tensor& P, int64_t W, bool onesided, bool centered);
std::tuple<at::Tensor, at::Tensor> svd_core_cuda(const at::Tensor& A, const at::Tensor& B, const at::Tensor& S,
                                                 const at::Tensor& gS);
std::tuple<at::Tensor, at::Tensor> svd_exact_core_cuda(const at::Tensor& P, const at::Tensor& Q,
                                                       const at::Tensor& sigma, const at::Tensor& gS);
#endif

}  // namespace sdekernels
