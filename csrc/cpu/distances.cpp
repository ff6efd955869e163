// CPU backward kernels of the spectral distances (SPEC §5): one batch row per task.
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>

#include <vector>

#include "../ops.h"
#include "../spectral_math.h"

namespace sdekernels {

// Wide-vector copies of the hot row loops, picked at load time by the CPU's features.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SDK_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SDK_CLONES
#endif

// Sums of one Hellinger row. With s = S^power (sa, sb: S itself when power = 1, else the scratch
// the powers are written to), p̃ = s / max(Σs, floor) and r_i = √(max(p̃_i, fl) max(q̃_i, fl)) (to rpq):
// bc = Σ r_i, and ca, cb the same sum over the unclamped p̃ / q̃ entries. Float entries, double
// sums (√ amplifies error where H² is small); the loops vectorise (omp simd, no errno on sqrt) and
// keep NaN (the clamps pass it on, unlike max()).
template <typename T>
struct HellingerSums {
  const T *sa, *sb;
  T ia, ib;
  double Za, Zb, bc, ca, cb;
};

template <typename T>
SDK_CLONES static HellingerSums<T> hellinger_sums(const T* a, const T* b, T power, int64_t r, T* pa, T* pb, T* rpq) {
  HellingerSums<T> h{a, b};
  if (power != T(1)) {
    for (int64_t i = 0; i < r; ++i) {
      pa[i] = spow(a[i], power);
      pb[i] = spow(b[i], power);
    }
    h.sa = pa;
    h.sb = pb;
  }
  const T *sa = h.sa, *sb = h.sb;
  double Za = 0, Zb = 0;
#pragma omp simd reduction(+ : Za, Zb)
  for (int64_t i = 0; i < r; ++i) {
    Za += sa[i];
    Zb += sb[i];
  }
  const T ia = T(1.0 / (Za < kSumFloor ? kSumFloor : Za)), ib = T(1.0 / (Zb < kSumFloor ? kSumFloor : Zb));
  const T fl = T(kProbFloor);
  double bc = 0, ca = 0, cb = 0;
#pragma omp simd reduction(+ : bc, ca, cb)
  for (int64_t i = 0; i < r; ++i) {
    const T pt = sa[i] * ia, qt = sb[i] * ib;
    const T v = std::sqrt((pt < fl ? fl : pt) * (qt < fl ? fl : qt));
    rpq[i] = v;
    bc += v;
    ca += pt >= fl ? v : T(0);
    cb += qt >= fl ? v : T(0);
  }
  h.ia = ia, h.ib = ib, h.Za = Za, h.Zb = Zb, h.bc = bc, h.ca = ca, h.cb = cb;
  return h;
}

// One row of the Hellinger backward: each entry needs one √ (r_i from the sums): with
// dH²/dp̃_i = −r_i / (2 p̃_i), Σ_i (dH²/dp̃_i) p̃_i = −Σ r_i / 2 over the unclamped entries.
template <typename T>
SDK_CLONES static void hellinger_row(const T* a, const T* b, T g, T power, bool squared, int64_t r, T* da, T* db, T* pa,
                          T* pb, T* rpq) {
  const auto h = hellinger_sums(a, b, power, r, pa, pb, rpq);
  const T CA = h.Za < kSumFloor ? T(0) : T(-0.5 * h.ca), CB = h.Zb < kSumFloor ? T(0) : T(-0.5 * h.cb);
  const double h2 = 1.0 - h.bc;
  const T scale = T(squared ? double(g) : (h2 > 0 ? double(g) * 0.5 / std::sqrt(h2) : 0.0));
  const T fl = T(kProbFloor), ia = h.ia, ib = h.ib;
  const T *sa = h.sa, *sb = h.sb;
  if (power == T(1)) {
#pragma omp simd
    for (int64_t i = 0; i < r; ++i) {
      const T pt = sa[i] * ia, qt = sb[i] * ib;
      const T ga = pt >= fl ? T(-0.5) * rpq[i] / pt : T(0), gb = qt >= fl ? T(-0.5) * rpq[i] / qt : T(0);
      da[i] = scale * (ga - CA) * ia;
      db[i] = scale * (gb - CB) * ib;
    }
    return;
  }
  for (int64_t i = 0; i < r; ++i) {
    const T pt = sa[i] * ia, qt = sb[i] * ib;
    const T ga = pt >= fl ? T(-0.5) * rpq[i] / pt : T(0), gb = qt >= fl ? T(-0.5) * rpq[i] / qt : T(0);
    da[i] = scale * (ga - CA) * ia * dspow(a[i], power);
    db[i] = scale * (gb - CB) * ib * dspow(b[i], power);
  }
}

// H² = 1 − bc (or H = √max(H², 0)) per row of S_a, S_b [..., r].
at::Tensor hellinger_fwd_cpu(const at::Tensor& S_a, const at::Tensor& S_b, double power, bool squared) {
  auto a = S_a.contiguous(), b = S_b.contiguous();
  const int64_t r = a.size(-1), rows = r ? a.numel() / r : 0;
  auto out = at::empty(a.sizes().slice(0, a.dim() - 1), a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "hellinger_fwd_cpu", [&] {
    const scalar_t *pa = a.const_data_ptr<scalar_t>(), *pb = b.const_data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 64, [&](int64_t lo, int64_t hi) {
      std::vector<scalar_t> scratch(3 * r);
      for (int64_t i = lo; i < hi; ++i) {
        const double h2 = 1.0 - hellinger_sums<scalar_t>(pa + i * r, pb + i * r, scalar_t(power), r, scratch.data(),
                                                          scratch.data() + r, scratch.data() + 2 * r).bc;
        po[i] = scalar_t(squared ? h2 : std::sqrt(h2 < 0 ? 0.0 : h2));
      }
    });
  });
  return out;
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
