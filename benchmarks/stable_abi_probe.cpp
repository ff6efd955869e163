// Stable-ABI probe: one op in the style of csrc (empty_like + parallel_for over rows + matmul),
// built against torch 2.13 with TORCH_TARGET_VERSION = 2.13, loaded under other torch releases.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <cmath>

using torch::stable::Tensor;

static Tensor hellinger_rows(Tensor a, Tensor b) {
  STD_TORCH_CHECK(a.scalar_type() == torch::headeronly::ScalarType::Double, "float64 only");
  a = torch::stable::contiguous(a);
  b = torch::stable::contiguous(b);
  const int64_t r = a.size(-1), rows = a.numel() / r;
  Tensor out = torch::stable::new_empty(a, {rows});
  const double *pa = static_cast<const double*>(a.data_ptr()), *pb = static_cast<const double*>(b.data_ptr());
  double* po = static_cast<double*>(out.mutable_data_ptr());
  torch::stable::parallel_for(0, rows, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      double s = 0;
      for (int64_t j = 0; j < r; ++j) { double d = std::sqrt(pa[i * r + j]) - std::sqrt(pb[i * r + j]); s += d * d; }
      po[i] = s;
    }
  });
  return out;
}

static Tensor gram(Tensor a) { return torch::stable::matmul(torch::stable::transpose(a, -2, -1), a); }

STABLE_TORCH_LIBRARY(sdk_stable_probe, m) {
  m.def("hellinger_rows(Tensor a, Tensor b) -> Tensor");
  m.def("gram(Tensor a) -> Tensor");
}
STABLE_TORCH_LIBRARY_IMPL(sdk_stable_probe, CPU, m) {
  m.impl("hellinger_rows", TORCH_BOX(&hellinger_rows));
  m.impl("gram", TORCH_BOX(&gram));
}
