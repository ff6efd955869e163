// CPU spectral partition (SPEC §2) of rows of singular values already sorted descending: one pass
// per row for the quartiles, thresholds, counts and energy fractions, where the same formula in
// ATen costs some 40 small dispatches for r ~ 1000. Roundings follow the ATen formula in
// sdekernels/ops/_partition.py (partition_counts, energies): T arithmetic, Σσ² accumulated in double,
// on each row divided by its power of two c (_core.pow2_scale: max|σ|/c in [1, 2), exact), so that
// σ² never overflows (SPEC §10); the thresholds come back multiplied by c.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../ops.h"

namespace sdekernels {

// _core.pow2_scale of one row: the power of two c with max|x| / c in [1, 2), 1 for a zero or
// non-finite row; c and 1/c both normal numbers.
template <typename T>
static T row_scale(const T* x, int64_t r) {
  T a = 0;
  for (int64_t i = 0; i < r; ++i) {
    const T v = std::abs(x[i]);
    if (std::isnan(v)) return T(1);
    a = v > a ? v : a;
  }
  if (!std::isfinite(a) || a == T(0)) return T(1);
  using L = std::numeric_limits<T>;
  const int e = std::clamp(std::ilogb(a), L::min_exponent, L::max_exponent - 2);  // frexp's exponent − 1
  return std::ldexp(T(1), e);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> spectral_partition_fwd_cpu(
    const at::Tensor& s_desc, double iqr_c, double sigma_den, double edge) {
  auto s = s_desc.contiguous();
  const int64_t r = s.size(-1), rows = r ? s.numel() / r : 0;
  const auto batch = s.sizes().slice(0, s.dim() - 1);
  auto n_strong = at::empty(batch, s.options().dtype(at::kLong)), n_weak = at::empty_like(n_strong);
  auto tau_noise = at::empty(batch, s.options()), tau_strong = at::empty_like(tau_noise);
  auto sigma_hat = at::empty_like(tau_noise);
  std::vector<int64_t> eshape(batch.begin(), batch.end());
  eshape.push_back(3);
  auto e = at::empty(eshape, s.options());
  // torch.quantile's linear interpolation at 1/4, 1/2, 3/4: ascending index i is descending r − 1 − i.
  int64_t lo[3], hi[3];
  double frac[3];
  for (int k = 0; k < 3; ++k) {
    const double pos = 0.25 * (k + 1) * double(r - 1);
    lo[k] = int64_t(std::floor(pos));
    hi[k] = std::min(lo[k] + 1, r - 1);
    frac[k] = pos - double(lo[k]);
  }
  dispatch(s, "spectral_partition_fwd_cpu", [&]<typename T>() {
    const T* ps = s.const_data_ptr<T>();
    int64_t *pns = n_strong.data_ptr<int64_t>(), *pnw = n_weak.data_ptr<int64_t>();
    T *ptn = tau_noise.data_ptr<T>(), *pts = tau_strong.data_ptr<T>(), *psh = sigma_hat.data_ptr<T>(),
      *pe = e.data_ptr<T>();
    at::parallel_for(0, rows, 16, [&](int64_t b0, int64_t b1) {
      std::vector<T> scaled(r);
      for (int64_t b = b0; b < b1; ++b) {
        const T c = row_scale(ps + b * r, r), inv = T(1) / c;
        for (int64_t i = 0; i < r; ++i) scaled[i] = ps[b * r + i] * inv;  // exact: c is a power of two
        const T* x = scaled.data();
        T q[3];
        for (int k = 0; k < 3; ++k) {
          const T vl = x[r - 1 - lo[k]], vh = x[r - 1 - hi[k]];
          q[k] = vl + T(frac[k]) * (vh - vl);
        }
        const T sh = q[1] / T(sigma_den), tn = sh * T(edge);
        const T spread = q[2] + T(iqr_c) * (q[2] - q[0]);
        const T ts = (std::isnan(tn) || std::isnan(spread)) ? T(NAN) : (tn > spread ? tn : spread);  // torch.maximum
        int64_t above = 0, strong = 0;
        for (int64_t i = 0; i < r; ++i) {
          above += x[i] > tn;
          strong += x[i] > ts;
        }
        strong = std::max<int64_t>(strong, 1);
        const int64_t weak = std::max<int64_t>(above - strong, 0);
        double acc = 0;  // cumsum of σ² (ATen's CPU cumsum accumulates in double, stores T)
        T c_s = 0, c_sw = 0;
        for (int64_t i = 0; i < r; ++i) {
          acc += x[i] * x[i];
          if (i == strong - 1) c_s = T(acc);
          if (i == strong + weak - 1) c_sw = T(acc);
        }
        const T total = T(acc);
        T* eb = pe + 3 * b;
        if (total == T(0)) {
          eb[0] = T(1), eb[1] = T(0), eb[2] = T(0);
        } else {
          eb[0] = c_s / total, eb[1] = (c_sw - c_s) / total, eb[2] = (total - c_sw) / total;
        }
        pns[b] = strong, pnw[b] = weak, ptn[b] = tn * c, pts[b] = ts * c, psh[b] = sh * c;
      }
    });
  });
  return {n_strong, n_weak, tau_noise, tau_strong, sigma_hat, e};
}

}  // namespace sdekernels
