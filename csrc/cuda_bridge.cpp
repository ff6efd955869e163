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
};
template <> struct Launch<double> {
  static constexpr auto hellinger = sdk_hellinger_bwd_f64;
  static constexpr auto subspace = sdk_subspace_coef_f64;
};

static void* stream() { return at::cuda::getCurrentCUDAStream().stream(); }
static void ok(int err, const char* what) { TORCH_CHECK(err == 0, what, ": CUDA error ", err); }

std::tuple<at::Tensor, at::Tensor> hellinger_bwd_cuda(const at::Tensor& S_a, const at::Tensor& S_b,
                                                      const at::Tensor& grad, double power, bool squared) {
  auto a = S_a.contiguous(), b = S_b.contiguous(), g = grad.contiguous();
  auto da = at::empty_like(a), db = at::empty_like(b);
  const int64_t r = a.size(-1), rows = r ? a.numel() / r : 0;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "hellinger_bwd_cuda", [&] {
    ok(Launch<scalar_t>::hellinger(a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(),
                                   da.data_ptr<scalar_t>(), db.data_ptr<scalar_t>(), rows, r, power, squared, stream()),
       "hellinger_bwd");
  });
  return {da, db};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> subspace_coef_cuda(const at::Tensor& M_, const at::Tensor& grad,
                                                                  const std::optional<at::Tensor>& S_a,
                                                                  const std::optional<at::Tensor>& S_b) {
  auto M = M_.contiguous(), g = grad.contiguous();
  const bool weighted = S_a.has_value();
  auto Sa = weighted ? S_a->contiguous() : at::Tensor(), Sb = weighted ? S_b->contiguous() : at::Tensor();
  auto G = at::empty_like(M);
  auto dSa = weighted ? at::empty_like(Sa) : at::empty({0}, M.options());
  auto dSb = weighted ? at::empty_like(Sb) : at::empty({0}, M.options());
  const int64_t k = M.size(-1), rows = k ? M.numel() / (k * k) : 0;
  AT_DISPATCH_FLOATING_TYPES(M.scalar_type(), "subspace_coef_cuda", [&] {
    auto ptr = [&](const at::Tensor& t) { return weighted ? t.data_ptr<scalar_t>() : nullptr; };
    ok(Launch<scalar_t>::subspace(M.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(), ptr(Sa), ptr(Sb),
                                  G.data_ptr<scalar_t>(), ptr(dSa), ptr(dSb), rows, k, stream()),
       "subspace_coef");
  });
  return {G, dSa, dSb};
}

}  // namespace sdekernels
#endif
