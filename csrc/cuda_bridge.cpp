// Binds the C launchers of csrc/cuda/*.cu to tensors on the current CUDA stream.
// Compiled only into a CUDA build of the extension (SDEKERNELS_CUDA).
#ifdef SDEKERNELS_CUDA
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>

#include "cuda/launch.h"
#include "ops.h"

namespace sdekernels {

template <typename T> struct Launch;
template <> struct Launch<float> {
  static constexpr auto hellinger = sdk_hellinger_bwd_f32;
  static constexpr auto subspace = sdk_subspace_coef_f32;
  static constexpr auto fourier_split_grad = sdk_fourier_split_grad_f32;
  static constexpr auto fourier_merge_grad = sdk_fourier_merge_grad_f32;
};
template <> struct Launch<double> {
  static constexpr auto hellinger = sdk_hellinger_bwd_f64;
  static constexpr auto subspace = sdk_subspace_coef_f64;
  static constexpr auto fourier_split_grad = sdk_fourier_split_grad_f64;
  static constexpr auto fourier_merge_grad = sdk_fourier_merge_grad_f64;
};

static void* stream() { return at::cuda::getCurrentCUDAStream().stream(); }
static void ok(int err, const char* what) { TORCH_CHECK(err == 0, what, ": CUDA error ", err); }

std::tuple<at::Tensor, at::Tensor> hellinger_bwd_cuda(const at::Tensor& S_a, const at::Tensor& S_b,
                                                      const at::Tensor& grad, double power, bool squared) {
  auto t = hellinger_bufs(S_a, S_b, grad);
  AT_DISPATCH_FLOATING_TYPES(t.a.scalar_type(), "hellinger_bwd_cuda", [&] {
    ok(Launch<scalar_t>::hellinger(t.a.const_data_ptr<scalar_t>(), t.b.const_data_ptr<scalar_t>(), t.g.const_data_ptr<scalar_t>(),
                                   t.da.data_ptr<scalar_t>(), t.db.data_ptr<scalar_t>(), t.rows, t.r, power, squared, stream()),
       "hellinger_bwd");
  });
  return {t.da, t.db};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> subspace_coef_cuda(const at::Tensor& M_, const at::Tensor& grad,
                                                                  const std::optional<at::Tensor>& S_a,
                                                                  const std::optional<at::Tensor>& S_b) {
  auto t = subspace_bufs(M_, grad, S_a, S_b);
  AT_DISPATCH_FLOATING_TYPES(t.M.scalar_type(), "subspace_coef_cuda", [&] {
    auto ptr = [&](const at::Tensor& x) { return t.weighted ? x.data_ptr<scalar_t>() : nullptr; };
    ok(Launch<scalar_t>::subspace(t.M.const_data_ptr<scalar_t>(), t.g.const_data_ptr<scalar_t>(), ptr(t.Sa), ptr(t.Sb),
                                  t.G.data_ptr<scalar_t>(), ptr(t.dSa), ptr(t.dSb), t.rows, t.k, stream()),
       "subspace_coef");
  });
  return {t.G, t.dSa, t.dSb};
}

static int radial_bin_bwd_launch(const float* Y, const float* g, const int64_t* index, const float* ic, float* dY,
                                 int64_t groups, int64_t nc, int64_t HW, int comp, int64_t bins, double scale, void* s) {
  return sdk_radial_bin_bwd_f32(Y, g, index, ic, dY, groups, nc, HW, comp, bins, scale, s);
}
static int radial_bin_bwd_launch(const double* Y, const double* g, const int64_t* index, const double* ic, double* dY,
                                 int64_t groups, int64_t nc, int64_t HW, int comp, int64_t bins, double scale, void* s) {
  return sdk_radial_bin_bwd_f64(Y, g, index, ic, dY, groups, nc, HW, comp, bins, scale, s);
}

at::Tensor radial_bin_bwd_cuda(const at::Tensor& Y_, const at::Tensor& grad_, const at::Tensor& index_,
                               const at::Tensor& inv_count_, int64_t comp, double scale, bool channel_mean) {
  auto Y = Y_.contiguous(), g = grad_.contiguous(), index = index_.contiguous(), ic = inv_count_.contiguous();
  const int64_t B = Y.size(0), C = Y.size(1), HW = Y.size(2) / comp, bins = ic.numel();
  const int64_t groups = channel_mean ? B : B * C, nc = channel_mean ? C : 1;
  TORCH_CHECK(index.scalar_type() == at::kLong && index.numel() == HW, "radial_bin_bwd: bad bin index map");
  TORCH_CHECK(g.numel() == groups * bins, "radial_bin_bwd: grad must be [B, bins] or [B, C, bins]");
  auto dY = at::empty_like(Y);
  AT_DISPATCH_FLOATING_TYPES(Y.scalar_type(), "radial_bin_bwd_cuda", [&] {
    ok(radial_bin_bwd_launch(Y.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(), index.const_data_ptr<int64_t>(),
                             ic.const_data_ptr<scalar_t>(), dY.data_ptr<scalar_t>(), groups, nc, HW, int(comp), bins,
                             scale, stream()),
       "radial_bin_bwd");
  });
  return dY;
}

at::Tensor fourier_split_grad_cuda(const at::Tensor& Xh, const at::Tensor& gA, const at::Tensor& gP, int64_t W,
                                   bool onesided, bool centered, bool log_amplitude) {
  auto Z = at::empty_like(Xh);
  const int64_t rows = Xh.size(0), H = Xh.size(1);
  AT_DISPATCH_FLOATING_TYPES(Xh.scalar_type(), "fourier_split_grad_cuda", [&] {
    ok(Launch<scalar_t>::fourier_split_grad(Xh.const_data_ptr<scalar_t>(), gA.const_data_ptr<scalar_t>(),
                                            gP.const_data_ptr<scalar_t>(), Z.data_ptr<scalar_t>(), rows, H, W,
                                            onesided, centered, log_amplitude, stream()),
       "fourier_split_grad");
  });
  return Z;
}

std::tuple<at::Tensor, at::Tensor> fourier_merge_grad_cuda(const at::Tensor& G, const at::Tensor& A,
                                                           const at::Tensor& P, int64_t W, bool onesided,
                                                           bool centered) {
  auto gA = at::empty_like(A), gP = at::empty_like(P);
  const int64_t rows = A.size(0), H = A.size(1);
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "fourier_merge_grad_cuda", [&] {
    ok(Launch<scalar_t>::fourier_merge_grad(G.const_data_ptr<scalar_t>(), A.const_data_ptr<scalar_t>(),
                                            P.const_data_ptr<scalar_t>(), gA.data_ptr<scalar_t>(),
                                            gP.data_ptr<scalar_t>(), rows, H, W, onesided, centered, stream()),
       "fourier_merge_grad");
  });
  return {gA, gP};
}

std::tuple<at::Tensor, at::Tensor> svd_core_cuda(const at::Tensor& A_, const at::Tensor& B_, const at::Tensor& S_,
                                                 const at::Tensor& gS_) {
  auto A = A_.contiguous(), B = B_.contiguous(), S = S_.contiguous(), gS = gS_.contiguous();
  auto Kt = at::empty_like(A), inv = at::empty_like(S);
  const int64_t k = S.size(-1), rows = k ? S.numel() / k : 0;
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "svd_core_cuda", [&] {
    auto launch = std::is_same_v<scalar_t, float> ? (void*)&sdk_svd_core_f32 : (void*)&sdk_svd_core_f64;
    using Fn = int (*)(const scalar_t*, const scalar_t*, const scalar_t*, const scalar_t*, scalar_t*, scalar_t*, int64_t,
                       int64_t, void*);
    ok(reinterpret_cast<Fn>(launch)(A.const_data_ptr<scalar_t>(), B.const_data_ptr<scalar_t>(), S.const_data_ptr<scalar_t>(),
                                    gS.const_data_ptr<scalar_t>(), Kt.data_ptr<scalar_t>(), inv.data_ptr<scalar_t>(), rows, k,
                                    stream()),
       "svd_core");
  });
  return {Kt, inv};
}

std::tuple<at::Tensor, at::Tensor> svd_exact_core_cuda(const at::Tensor& P_, const at::Tensor& Q_,
                                                       const at::Tensor& sigma_, const at::Tensor& gS_) {
  auto P = P_.contiguous(), Q = Q_.contiguous(), sigma = sigma_.contiguous(), gS = gS_.contiguous();
  auto C = at::empty_like(P), inv = at::empty_like(gS);
  const int64_t r = P.size(-2), k = P.size(-1), rows = r * k ? P.numel() / (r * k) : 0;
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "svd_exact_core_cuda", [&] {
    auto launch = std::is_same_v<scalar_t, float> ? (void*)&sdk_svd_exact_core_f32 : (void*)&sdk_svd_exact_core_f64;
    using Fn = int (*)(const scalar_t*, const scalar_t*, const scalar_t*, const scalar_t*, scalar_t*, scalar_t*, int64_t,
                       int64_t, int64_t, void*);
    ok(reinterpret_cast<Fn>(launch)(P.const_data_ptr<scalar_t>(), Q.const_data_ptr<scalar_t>(),
                                    sigma.const_data_ptr<scalar_t>(), gS.const_data_ptr<scalar_t>(), C.data_ptr<scalar_t>(),
                                    inv.data_ptr<scalar_t>(), rows, r, k, stream()),
       "svd_exact_core");
  });
  return {C, inv};
}

}  // namespace sdekernels
#endif
