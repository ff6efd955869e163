// CPU kernels of the radial power spectrum (SPEC §9) and its device-generic backward.
// The spectrum Y of x [B, C, H, W] is stored as [B, C, H·W·comp] (comp = 1: DCT, 2: re/im of the
// FFT); entry hw of the power is scale·Σ_comp y², averaged over channels when channel_mean.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <vector>

#include "../ops.h"
#include "../spectral_math.h"

namespace sdekernels {

// Power of one (sample, channel group) at every hw into P [HW]: Σ over `nc` channels of scale·Σ_comp y² / nc.
template <typename T>
static void group_power(const T* Y, int64_t nc, int64_t HW, int64_t comp, T scale, T* P) {
  std::fill(P, P + HW, T(0));
  const T w = scale / T(nc);
  for (int64_t c = 0; c < nc; ++c) {
    const T* y = Y + c * HW * comp;
    if (comp == 1) {
      for (int64_t i = 0; i < HW; ++i) P[i] += w * y[i] * y[i];
    } else {
      for (int64_t i = 0; i < HW; ++i) P[i] += w * (y[2 * i] * y[2 * i] + y[2 * i + 1] * y[2 * i + 1]);
    }
  }
}

template <typename T>
static void check_args(const at::Tensor& Y, const at::Tensor& index, const at::Tensor& inv_count, int64_t comp) {
  TORCH_CHECK(Y.dim() == 3 && Y.is_contiguous(), "radial_psd: Y must be a contiguous [B, C, H*W*comp] tensor");
  TORCH_CHECK(comp == 1 || comp == 2, "radial_psd: comp must be 1 or 2");
  TORCH_CHECK(index.scalar_type() == at::kLong && index.numel() * comp == Y.size(2), "radial_psd: bad bin index map");
  TORCH_CHECK(inv_count.scalar_type() == Y.scalar_type(), "radial_psd: inv_count dtype must match Y");
}

at::Tensor radial_bin_fwd_cpu(const at::Tensor& Y_, const at::Tensor& index_, const at::Tensor& inv_count_,
                              int64_t comp, double scale, bool channel_mean) {
  auto Y = Y_.contiguous(), index = index_.contiguous(), inv_count = inv_count_.contiguous();
  const int64_t B = Y.size(0), C = Y.size(1), HW = Y.size(2) / comp, bins = inv_count.numel();
  const int64_t G = channel_mean ? 1 : C, nc = channel_mean ? C : 1;  // groups per sample, channels per group
  auto out = at::zeros({B, G, bins}, Y.options());
  AT_DISPATCH_FLOATING_TYPES(Y.scalar_type(), "radial_bin_fwd_cpu", [&] {
    check_args<scalar_t>(Y, index, inv_count, comp);
    const scalar_t* py = Y.const_data_ptr<scalar_t>();
    const int64_t* idx = index.const_data_ptr<int64_t>();
    const scalar_t* ic = inv_count.const_data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    at::parallel_for(0, B * G, 1, [&](int64_t lo, int64_t hi) {
      std::vector<scalar_t> P(HW);
      for (int64_t r = lo; r < hi; ++r) {
        group_power<scalar_t>(py + r * nc * HW * comp, nc, HW, comp, scalar_t(scale), P.data());
        scalar_t* o = po + r * bins;
        for (int64_t i = 0; i < HW; ++i) o[idx[i]] += psd_value(P[i], i);
        for (int64_t j = 0; j < bins; ++j) o[j] *= ic[j];
      }
    });
  });
  return channel_mean ? out.squeeze(1) : out;
}

at::Tensor radial_bin_bwd_cpu(const at::Tensor& Y_, const at::Tensor& grad_, const at::Tensor& index_,
                              const at::Tensor& inv_count_, int64_t comp, double scale, bool channel_mean) {
  auto Y = Y_.contiguous(), grad = grad_.contiguous(), index = index_.contiguous(), inv_count = inv_count_.contiguous();
  const int64_t B = Y.size(0), C = Y.size(1), HW = Y.size(2) / comp, bins = inv_count.numel();
  const int64_t G = channel_mean ? 1 : C, nc = channel_mean ? C : 1;
  TORCH_CHECK(grad.numel() == B * G * bins, "radial_bin_bwd: grad must be [B, bins] or [B, C, bins]");
  auto dY = at::empty_like(Y);
  AT_DISPATCH_FLOATING_TYPES(Y.scalar_type(), "radial_bin_bwd_cpu", [&] {
    check_args<scalar_t>(Y, index, inv_count, comp);
    const scalar_t *py = Y.const_data_ptr<scalar_t>(), *pg = grad.const_data_ptr<scalar_t>();
    const int64_t* idx = index.const_data_ptr<int64_t>();
    const scalar_t* ic = inv_count.const_data_ptr<scalar_t>();
    scalar_t* pd = dY.data_ptr<scalar_t>();
    at::parallel_for(0, B * G, 1, [&](int64_t lo, int64_t hi) {
      std::vector<scalar_t> P(HW);
      for (int64_t r = lo; r < hi; ++r) {
        const int64_t off = r * nc * HW * comp;
        group_power<scalar_t>(py + off, nc, HW, comp, scalar_t(scale), P.data());
        // P becomes the factor dL/dy / y of every entry at hw (the same for each channel of the group).
        const scalar_t* g = pg + r * bins;
        const scalar_t w = scalar_t(2) * scalar_t(scale) / scalar_t(nc);
        for (int64_t i = 0; i < HW; ++i) P[i] = psd_pass(P[i], i) * w * g[idx[i]] * ic[idx[i]];
        for (int64_t c = 0; c < nc; ++c) {
          const scalar_t* y = py + off + c * HW * comp;
          scalar_t* d = pd + off + c * HW * comp;
          for (int64_t i = 0; i < HW * comp; ++i) d[i] = P[i / comp] * y[i];
        }
      }
    });
  });
  return dY;
}

static at::Tensor radial_bin_bwd(const at::Tensor& Y, const at::Tensor& grad, const at::Tensor& index,
                                 const at::Tensor& inv_count, int64_t comp, double scale, bool channel_mean) {
#ifdef SDEKERNELS_CUDA
  if (Y.is_cuda()) return radial_bin_bwd_cuda(Y, grad, index, inv_count, comp, scale, channel_mean);
#endif
  return radial_bin_bwd_cpu(Y, grad, index, inv_count, comp, scale, channel_mean);
}

// dL/dx of the binned power spectrum of x [B, C, H, W]: the spectrum is recomputed by GEMMs
// (DCT: Y = D_H x D_Wᵀ) or the FFT (DH, DW absent), the bin gradients are scattered onto it by the
// elementwise kernel, and the adjoint transform maps them back (D_Hᵀ dY D_W, or HW·Re ifft2).
at::Tensor radial_psd_bwd(const at::Tensor& x_, const at::Tensor& grad, const at::Tensor& index,
                          const at::Tensor& inv_count, const std::optional<at::Tensor>& DH,
                          const std::optional<at::Tensor>& DW, bool channel_mean) {
  TORCH_CHECK(x_.dim() == 4, "radial_psd_bwd: x must be [B, C, H, W]");
  // Centring changes only the (0, 0) coefficient (whose gradient is 0), but keeps Y accurate.
  auto x = x_ - x_.mean({2, 3}, true);
  TORCH_CHECK(x.dim() == 4, "radial_psd_bwd: x must be [B, C, H, W]");
  TORCH_CHECK(DH.has_value() == DW.has_value(), "radial_psd_bwd: DH and DW must be given together");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  if (DH.has_value()) {
    auto Y = at::matmul(at::matmul(*DH, x), DW->mT()).contiguous();
    auto dY = radial_bin_bwd(Y.view({B, C, H * W}), grad, index, inv_count, 1, 1.0, channel_mean);
    return at::matmul(at::matmul(DH->mT(), dY.view({B, C, H, W})), *DW);
  }
  auto Y = at::view_as_real(at::fft_fft2(x)).contiguous();
  auto dY = radial_bin_bwd(Y.view({B, C, H * W * 2}), grad, index, inv_count, 2, 1.0 / double(H * W), channel_mean);
  auto dYc = at::view_as_complex(dY.view({B, C, H, W, 2}));
  return at::real(at::fft_ifft2(dYc)).mul(double(H * W)).contiguous();
}

}  // namespace sdekernels
