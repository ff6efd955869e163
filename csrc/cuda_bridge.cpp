// The CUDA twins of ops.h: each binds a launcher of cuda/launch.h (declared once, for the .cu file
// that defines it and for this file) to tensors, through `launch`. Compiled only into a CUDA build
// of the extension (SDEKERNELS_CUDA). Buffers and checks come from the same *_bufs as the CPU twin.
#ifdef SDEKERNELS_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/launch.h"
#include "ops.h"

namespace sdekernels {

namespace {

// The one way a launcher is called: f.operator()<T>(stream) with T the dtype of `like`, on the
// current stream of like's device (made current for the launch), its error code checked.
template <typename F>
void launch(const at::Tensor& like, const char* what, F&& f) {
  const c10::cuda::CUDAGuard guard(like.device());
  void* stream = c10::cuda::getCurrentCUDAStream().stream();
  dispatch(like, what, [&]<typename T>() {
    const int err = f.template operator()<T>(stream);
    TORCH_CHECK(err == 0, what, ": CUDA error ", err);
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> hellinger_bwd_cuda(const at::Tensor& S_a, const at::Tensor& S_b,
                                                      const at::Tensor& grad, double power, bool squared) {
  auto t = hellinger_bufs(S_a, S_b, grad);
  launch(t.a, "hellinger_bwd", [&]<typename T>(void* s) {
    return cuda::hellinger_bwd<T>(in<T>(t.a), in<T>(t.b), in<T>(t.g), out<T>(t.da), out<T>(t.db), t.rows, t.r, power,
                                  squared, s);
  });
  return {t.da, t.db};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> subspace_coef_cuda(const at::Tensor& M, const at::Tensor& grad,
                                                                  const std::optional<at::Tensor>& S_a,
                                                                  const std::optional<at::Tensor>& S_b) {
  auto t = subspace_bufs(M, grad, S_a, S_b);
  launch(t.M, "subspace_coef", [&]<typename T>(void* s) {
    return cuda::subspace_coef<T>(in<T>(t.M), in<T>(t.g), in<T>(t.Sa), in<T>(t.Sb), out<T>(t.G), out<T>(t.dSa),
                                  out<T>(t.dSb), t.rows, t.k, s);
  });
  return {t.G, t.dSa, t.dSb};
}

at::Tensor radial_bin_bwd_cuda(const at::Tensor& Y, const at::Tensor& grad, const at::Tensor& index,
                               const at::Tensor& inv_count, int64_t comp, double scale, bool channel_mean) {
  auto t = radial_bin_bwd_bufs(Y, grad, index, inv_count, comp, channel_mean);
  launch(t.Y, "radial_bin_bwd", [&]<typename T>(void* s) {
    return cuda::radial_bin_bwd<T>(in<T>(t.Y), in<T>(t.g), in<int64_t>(t.index), in<T>(t.ic), out<T>(t.dY), t.groups,
                                   t.nc, t.HW, int(comp), t.bins, scale, s);
  });
  return t.dY;
}

at::Tensor fourier_split_grad_cuda(const at::Tensor& Xh, const at::Tensor& gA, const at::Tensor& gP, int64_t W,
                                   bool onesided, bool centered, bool log_amplitude) {
  auto Z = at::empty_like(Xh);
  launch(Xh, "fourier_split_grad", [&]<typename T>(void* s) {
    return cuda::fourier_split_grad<T>(in<T>(Xh), in<T>(gA), in<T>(gP), out<T>(Z), Xh.size(0), Xh.size(1), W, onesided,
                                       centered, log_amplitude, s);
  });
  return Z;
}

std::tuple<at::Tensor, at::Tensor> fourier_merge_grad_cuda(const at::Tensor& G, const at::Tensor& A,
                                                           const at::Tensor& P, int64_t W, bool onesided,
                                                           bool centered) {
  auto gA = at::empty_like(A), gP = at::empty_like(P);
  launch(A, "fourier_merge_grad", [&]<typename T>(void* s) {
    return cuda::fourier_merge_grad<T>(in<T>(G), in<T>(A), in<T>(P), out<T>(gA), out<T>(gP), A.size(0), A.size(1), W,
                                       onesided, centered, s);
  });
  return {gA, gP};
}

std::tuple<at::Tensor, at::Tensor> svd_core_cuda(const at::Tensor& A, const at::Tensor& B, const at::Tensor& S,
                                                 const at::Tensor& gS) {
  auto t = svd_core_bufs(A, B, S, gS);
  launch(t.A, "svd_core", [&]<typename T>(void* s) {
    return cuda::svd_core<T>(in<T>(t.A), in<T>(t.B), in<T>(t.S), in<T>(t.gS), out<T>(t.Kt), out<T>(t.inv), t.rows, t.k,
                             s);
  });
  return {t.Kt, t.inv};
}

std::tuple<at::Tensor, at::Tensor> svd_exact_core_cuda(const at::Tensor& P, const at::Tensor& Q,
                                                       const at::Tensor& sigma, const at::Tensor& gS) {
  auto t = svd_exact_bufs(P, Q, sigma, gS);
  launch(t.P, "svd_exact_core", [&]<typename T>(void* s) {
    return cuda::svd_exact_core<T>(in<T>(t.P), in<T>(t.Q), in<T>(t.sigma), in<T>(t.gS), out<T>(t.C), out<T>(t.inv),
                                   t.rows, t.r, t.k, s);
  });
  return {t.C, t.inv};
}

}  // namespace sdekernels
#endif
