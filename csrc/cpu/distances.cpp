// CPU backward kernels of the spectral distances (SPEC §5): one batch row per task.
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>

#include <vector>

#include "../ops.h"
#include "../spectral_math.h"

namespace sdekernels {

// One row of the Hellinger backward. s = S^power is formed once; each entry then needs one √:
// with r_i = √(p_i q_i), dH²/dp̃_i = −r_i / (2 p̃_i) and Σ_i (dH²/dp̃_i) p̃_i = −Σ r_i / 2 over the
// unclamped entries. Sums are accumulated in double (√ amplifies error where H² is small).
template <typename T>
static void hellinger_row(const T* a, const T* b, T g, T power, bool squared, int64_t r, T* da, T* db, T* sa,
                          T* sb, T* rpq) {
  double Za = 0, Zb = 0;
  for (int64_t i = 0; i < r; ++i) {
    sa[i] = spow(a[i], power);
    sb[i] = spow(b[i], power);
    Za += sa[i];
    Zb += sb[i];
  }
  const T ia = T(1.0 / (Za > kSumFloor ? Za : kSumFloor)), ib = T(1.0 / (Zb > kSumFloor ? Zb : kSumFloor));
  const T fl = T(kProbFloor);
  double bc = 0, ca = 0, cb = 0;
  for (int64_t i = 0; i < r; ++i) {
    const T pt = sa[i] * ia, qt = sb[i] * ib;
    const T v = std::sqrt((pt > fl ? pt : fl) * (qt > fl ? qt : fl));
    rpq[i] = v;
    bc += v;
    ca += pt >= fl ? v : T(0);
    cb += qt >= fl ? v : T(0);
  }
  const T CA = Za < kSumFloor ? T(0) : T(-0.5 * ca), CB = Zb < kSumFloor ? T(0) : T(-0.5 * cb);
  const double h2 = 1.0 - bc;
  const T scale = T(squared ? double(g) : (h2 > 0 ? double(g) * 0.5 / std::sqrt(h2) : 0.0));
  for (int64_t i = 0; i < r; ++i) {
    const T pt = sa[i] * ia, qt = sb[i] * ib;
    const T ga = pt >= fl ? T(-0.5) * rpq[i] / pt : T(0), gb = qt >= fl ? T(-0.5) * rpq[i] / qt : T(0);
    da[i] = scale * (ga - CA) * ia * dspow(a[i], power);
    db[i] = scale * (gb - CB) * ib * dspow(b[i], power);
  }
}

std::tuple<at::Tensor, at::Tensor> hellinger_bwd_cpu(const at::Tensor& S_a, const at::Tensor& S_b,
                                                     const at::Tensor& grad, double power, bool squared) {
  auto t = hellinger_bufs(S_a, S_b, grad);
  const int64_t r = t.r;
  AT_DISPATCH_FLOATING_TYPES(t.a.scalar_type(), "hellinger_bwd_cpu", [&] {
    const scalar_t *pa = t.a.const_data_ptr<scalar_t>(), *pb = t.b.const_data_ptr<scalar_t>(), *pg = t.g.const_data_ptr<scalar_t>();
    scalar_t *qa = t.da.data_ptr<scalar_t>(), *qb = t.db.data_ptr<scalar_t>();
    at::parallel_for(0, t.rows, 64, [&](int64_t lo, int64_t hi) {
      std::vector<scalar_t> scratch(3 * r);
      for (int64_t i = lo; i < hi; ++i)
        hellinger_row<scalar_t>(pa + i * r, pb + i * r, pg[i], scalar_t(power), squared, r, qa + i * r, qb + i * r,
                                scratch.data(), scratch.data() + r, scratch.data() + 2 * r);
    });
  });
  return {t.da, t.db};
}

// Normalised weights w = S² / max(ΣS², floor) of one row; returns Z = ΣS².
template <typename T>
static T weights(const T* S, int64_t k, T* w) {
  T Z = 0;
  for (int64_t i = 0; i < k; ++i) Z += S[i] * S[i];
  const T Zc = Z > T(kSumFloor) ? Z : T(kSumFloor);
  for (int64_t i = 0; i < k; ++i) w[i] = S[i] * S[i] / Zc;
  return Z;
}

// dL/dS from dL/dw through w = S²/ΣS².
template <typename T>
static void weights_bwd(const T* S, const T* w, const T* gw, T Z, int64_t k, T* dS) {
  const T Zc = Z > T(kSumFloor) ? Z : T(kSumFloor);
  T c = 0;
  if (Z >= T(kSumFloor))
    for (int64_t i = 0; i < k; ++i) c += gw[i] * w[i];
  for (int64_t j = 0; j < k; ++j) dS[j] = T(2) * S[j] / Zc * (gw[j] - c);
}

template <typename T>
static void subspace_row(const T* M, T g, const T* Sa, const T* Sb, int64_t k, T* G, T* dSa, T* dSb) {
  if (!Sa) {
    for (int64_t i = 0; i < k * k; ++i) G[i] = T(-2) * g * M[i] / T(k);
    return;
  }
  std::vector<T> wa(k), wb(k), ga(k), gb(k, T(0));
  const T Za = weights(Sa, k, wa.data()), Zb = weights(Sb, k, wb.data());
  for (int64_t i = 0; i < k; ++i) {
    T acc = 0;
    for (int64_t j = 0; j < k; ++j) {
      const T m = M[i * k + j];
      G[i * k + j] = T(-4) * g * wa[i] * wb[j] * m;
      acc += wb[j] * m * m;
      gb[j] += wa[i] * m * m;
    }
    ga[i] = g * (T(2) * wa[i] - T(2) * acc);
  }
  for (int64_t j = 0; j < k; ++j) gb[j] = g * (T(2) * wb[j] - T(2) * gb[j]);
  weights_bwd(Sa, wa.data(), ga.data(), Za, k, dSa);
  weights_bwd(Sb, wb.data(), gb.data(), Zb, k, dSb);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> subspace_coef_cpu(const at::Tensor& M_, const at::Tensor& grad,
                                                                 const std::optional<at::Tensor>& S_a,
                                                                 const std::optional<at::Tensor>& S_b) {
  auto t = subspace_bufs(M_, grad, S_a, S_b);
  const bool weighted = t.weighted;
  const int64_t k = t.k;
  AT_DISPATCH_FLOATING_TYPES(t.M.scalar_type(), "subspace_coef_cpu", [&] {
    const scalar_t *pm = t.M.const_data_ptr<scalar_t>(), *pg = t.g.const_data_ptr<scalar_t>();
    const scalar_t *pa = weighted ? t.Sa.const_data_ptr<scalar_t>() : nullptr, *pb = weighted ? t.Sb.const_data_ptr<scalar_t>() : nullptr;
    scalar_t *pG = t.G.data_ptr<scalar_t>(), *qa = weighted ? t.dSa.data_ptr<scalar_t>() : nullptr, *qb = weighted ? t.dSb.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, t.rows, 16, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i)
        subspace_row<scalar_t>(pm + i * k * k, pg[i], weighted ? pa + i * k : nullptr, weighted ? pb + i * k : nullptr, k,
                               pG + i * k * k, weighted ? qa + i * k : nullptr, weighted ? qb + i * k : nullptr);
    });
  });
  return {t.G, t.dSa, t.dSb};
}

}  // namespace sdekernels
