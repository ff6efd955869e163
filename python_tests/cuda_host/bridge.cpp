// The CUDA twins of csrc/cuda_bridge.cpp as the ops sdekernels_emulated::<twin>, on CPU tensors: the
// bridge is compiled on the host (SDEKERNELS_CUDA, with the stand-in guard and stream of c10/cuda/)
// and linked to the emulated kernels, so a test calls a CUDA twin as it calls the CPU twin and the
// bridge's own argument marshalling runs between the tensors and the kernels.
#include <torch/library.h>

#include "../../csrc/ops.h"

TORCH_LIBRARY(sdekernels_emulated, m) {
  m.def("hellinger_bwd", &sdekernels::hellinger_bwd_cuda);
  m.def("subspace_coef", &sdekernels::subspace_coef_cuda);
  m.def("radial_bin_bwd", &sdekernels::radial_bin_bwd_cuda);
  m.def("fourier_split_grad", &sdekernels::fourier_split_grad_cuda);
  m.def("fourier_merge_grad", &sdekernels::fourier_merge_grad_cuda);
  m.def("svd_core", &sdekernels::svd_core_cuda);
  m.def("svd_exact_core", &sdekernels::svd_exact_core_cuda);
}
