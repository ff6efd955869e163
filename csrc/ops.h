// Backward kernels of sdekernels. Schemas live in bindings.cpp; CPU bodies in cpu/, CUDA in cuda/.
#pragma once
#include <torch/types.h>

#include <tuple>

namespace sdekernels {

// Hellinger distance of normalised spectra (SPEC §5): gradients wrt S_a and S_b.
std::tuple<at::Tensor, at::Tensor> hellinger_bwd_cpu(const at::Tensor& S_a, const at::Tensor& S_b,
                                                     const at::Tensor& grad, double power, bool squared);
// Subspace distance (SPEC §5) from M = V_aᵀV_b: gradients wrt M and the weights' spectra (if given).
std::tuple<at::Tensor, at::Tensor, at::Tensor> subspace_coef_cpu(const at::Tensor& M, const at::Tensor& grad,
                                                                 const std::optional<at::Tensor>& S_a,
                                                                 const std::optional<at::Tensor>& S_b);
#ifdef SDEKERNELS_CUDA
std::tuple<at::Tensor, at::Tensor> hellinger_bwd_cuda(const at::Tensor& S_a, const at::Tensor& S_b,
                                                      const at::Tensor& grad, double power, bool squared);
std::tuple<at::Tensor, at::Tensor, at::Tensor> subspace_coef_cuda(const at::Tensor& M, const at::Tensor& grad,
                                                                  const std::optional<at::Tensor>& S_a,
                                                                  const std::optional<at::Tensor>& S_b);
#endif

}  // namespace sdekernels
