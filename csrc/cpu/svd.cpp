// Truncated-SVD backward (SPEC §1). The heavy parts are GEMMs (UᵀgU, VᵀgV, and one final product of
// inner size 2k); the k×k core with the stabilised 1/(σ_l² − σ_j²) and 1/σ factors is a per-row
// kernel (here, CPU; csrc/cuda/svd.cu on CUDA), each entry spectral_math.h's. Never an m×m or n×n matrix.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "../ops.h"
#include "../spectral_math.h"

namespace sdekernels {

// σ_1 = max |σ_i| of a row of n values.
template <typename T>
static double row_max_abs(const T* s, int64_t n) {
  double s1 = 0;
  for (int64_t i = 0; i < n; ++i) s1 = max_abs(s1, s[i]);
  return s1;
}

// Rows per parallel task: about 4096 core entries of `per_row` each.
static int64_t grain(int64_t per_row) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(per_row, 1)); }

// Each batch row of a backward core, in parallel tasks of about 4096 entries: the stabilised 1/σ_j
// of the row's first k values (of n in s) into inv, then its ni×k entries out[i, j] = entry(row, i, j, σ_1).
template <typename T, typename Entry>
static void core_rows(int64_t rows, int64_t n, int64_t k, int64_t ni, const T* s, T* inv, T* out, Entry entry) {
  at::parallel_for(0, rows, grain(ni * k), [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
      const T* sb = s + b * n;
      const double s1 = row_max_abs(sb, n);
      for (int64_t j = 0; j < k; ++j) inv[b * k + j] = T(svd_inv(sb[j], s1));
      T* o = out + b * ni * k;
      for (int64_t i = 0; i < ni; ++i)
        for (int64_t j = 0; j < k; ++j) o[i * k + j] = T(entry(b, i, j, s1));
    }
  });
}

std::tuple<at::Tensor, at::Tensor> svd_core_cpu(const at::Tensor& A, const at::Tensor& B, const at::Tensor& S,
                                                const at::Tensor& gS) {
  auto t = svd_core_bufs(A, B, S, gS);
  const int64_t k = t.k;
  dispatch(t.A, "svd_core_cpu", [&]<typename T>() {
    const T *pa = in<T>(t.A), *pb = in<T>(t.B), *ps = in<T>(t.S), *pg = in<T>(t.gS);
    core_rows(t.rows, k, k, k, ps, out<T>(t.inv), out<T>(t.Kt), [&](int64_t b, int64_t j, int64_t l, double s1) {
      const T *a = pa + b * k * k, *bb = pb + b * k * k, *s = ps + b * k;
      return svd_core_entry(a[j * k + l], a[l * k + j], bb[j * k + l], bb[l * k + j], s[j], s[l], pg[b * k + j],
                            svd_inv(s[j], s1), svd_inv(s[l], s1), s1, j == l, lorentz_rel<T>());
    });
  });
  return {t.Kt, t.inv};
}

// Exact backward core on the Gram path (spectral_math.h svd_exact_entry): P, Q [.., r, k], sigma [.., r]
// (all r values, the first k the outputs'), gS [.., k] -> C [.., r, k] and the stabilised 1/σ_k.
std::tuple<at::Tensor, at::Tensor> svd_exact_core_cpu(const at::Tensor& P, const at::Tensor& Q,
                                                      const at::Tensor& sigma, const at::Tensor& gS) {
  auto t = svd_exact_bufs(P, Q, sigma, gS);
  const int64_t r = t.r, k = t.k;
  dispatch(t.P, "svd_exact_core_cpu", [&]<typename T>() {
    const T *pp = in<T>(t.P), *pq = in<T>(t.Q), *ps = in<T>(t.sigma), *pg = in<T>(t.gS);
    core_rows(t.rows, r, k, r, ps, out<T>(t.inv), out<T>(t.C), [&](int64_t b, int64_t i, int64_t j, double s1) {
      const T *p = pp + b * r * k, *q = pq + b * r * k, *s = ps + b * r;
      return svd_exact_entry(p[i * k + j], q[i * k + j], q[j * k + j], s[i], s[j], pg[b * k + j], svd_inv(s[j], s1),
                             s1, i == j, lorentz_rel<T>());
    });
  });
  return {t.C, t.inv};
}

}  // namespace sdekernels
