// CPU backward kernels of the spectral distances (SPEC §5): one batch row per task. The per-entry
// math and the accumulation policy are spectral_math.h's, shared with cuda/distances.cu.
#include <ATen/Parallel.h>

#include <vector>

#include "../ops.h"
#include "../spectral_math.h"

namespace sdekernels {

// Sums of one Hellinger row. With s = S^power (sa, sb: S itself when power = 1, else the scratch
// the powers are written to), p̃ = s·inv_sum(Σs) and r_i = hellinger_root(p̃_i, q̃_i) (kept in rpq):
// bc = Σ r_i, and la, lb the sums of the live roots (spectral_math.h), accumulated in acc_t. The
// loops vectorise (omp simd, no errno on sqrt) and keep NaN (the clamps pass it on).
template <typename T>
struct HellingerSums {
  const T *sa, *sb;
  T ia, ib;
  acc_t<T> Za, Zb, bc, la, lb;
};

template <typename T>
SDK_CLONES static HellingerSums<T> hellinger_sums(const T* a, const T* b, T power, int64_t r, T* pa, T* pb, T* rpq) {
  using Acc = acc_t<T>;
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
  Acc Za = 0, Zb = 0;
#pragma omp simd reduction(+ : Za, Zb)
  for (int64_t i = 0; i < r; ++i) {
    Za += sa[i];
    Zb += sb[i];
  }
  const T ia = inv_sum<T>(Za), ib = inv_sum<T>(Zb);
  Acc bc = 0, la = 0, lb = 0;
#pragma omp simd reduction(+ : bc, la, lb)
  for (int64_t i = 0; i < r; ++i) {
    const T pt = sa[i] * ia, qt = sb[i] * ib;
    const T v = hellinger_root(pt, qt);
    rpq[i] = v;
    bc += v;
    la += hellinger_live(pt, v);
    lb += hellinger_live(qt, v);
  }
  h.ia = ia, h.ib = ib, h.Za = Za, h.Zb = Zb, h.bc = bc, h.la = la, h.lb = lb;
  return h;
}

// One row of the Hellinger backward: each entry needs one √ (r_i from the sums).
template <typename T>
SDK_CLONES static void hellinger_row(const T* a, const T* b, T g, T power, bool squared, int64_t r, T* da, T* db, T* pa,
                                     T* pb, T* rpq) {
  const auto h = hellinger_sums(a, b, power, r, pa, pb, rpq);
  const T CA = hellinger_c<T>(h.la, h.Za), CB = hellinger_c<T>(h.lb, h.Zb);
  const T scale = hellinger_scale<T>(g, 1.0 - h.bc, squared);
  const T ia = h.ia, ib = h.ib;
  const T *sa = h.sa, *sb = h.sb;
  if (power == T(1)) {  // ds/dS = 1: the loop vectorises
#pragma omp simd
    for (int64_t i = 0; i < r; ++i) {
      const T pt = sa[i] * ia, qt = sb[i] * ib;
      da[i] = hellinger_entry_grad(scale, dh2_dp(pt, rpq[i]), CA, ia, T(1));
      db[i] = hellinger_entry_grad(scale, dh2_dp(qt, rpq[i]), CB, ib, T(1));
    }
    return;
  }
  for (int64_t i = 0; i < r; ++i) {
    const T pt = sa[i] * ia, qt = sb[i] * ib;
    da[i] = hellinger_entry_grad(scale, dh2_dp(pt, rpq[i]), CA, ia, dspow(a[i], power));
    db[i] = hellinger_entry_grad(scale, dh2_dp(qt, rpq[i]), CB, ib, dspow(b[i], power));
  }
}

// H² = 1 − bc (or H = √max(H², 0)) per row of S_a, S_b [..., r].
at::Tensor hellinger_fwd_cpu(const at::Tensor& S_a, const at::Tensor& S_b, double power, bool squared) {
  auto a = S_a.contiguous(), b = S_b.contiguous();
  const int64_t r = a.size(-1), rows = r ? a.numel() / r : 0;
  auto out_ = at::empty(a.sizes().slice(0, a.dim() - 1), a.options());
  dispatch(a, "hellinger_fwd_cpu", [&]<typename T>() {
    const T *pa = in<T>(a), *pb = in<T>(b);
    T* po = out<T>(out_);
    at::parallel_for(0, rows, 64, [&](int64_t lo, int64_t hi) {
      std::vector<T> scratch(3 * r);
      for (int64_t i = lo; i < hi; ++i) {
        const acc_t<T> h2 = 1.0 - hellinger_sums<T>(pa + i * r, pb + i * r, T(power), r, scratch.data(),
                                                    scratch.data() + r, scratch.data() + 2 * r).bc;
        po[i] = T(squared ? h2 : std::sqrt(h2 < 0 ? 0.0 : h2));
      }
    });
  });
  return out_;
}

std::tuple<at::Tensor, at::Tensor> hellinger_bwd_cpu(const at::Tensor& S_a, const at::Tensor& S_b,
                                                     const at::Tensor& grad, double power, bool squared) {
  auto t = hellinger_bufs(S_a, S_b, grad);
  const int64_t r = t.r;
  dispatch(t.a, "hellinger_bwd_cpu", [&]<typename T>() {
    const T *pa = in<T>(t.a), *pb = in<T>(t.b), *pg = in<T>(t.g);
    T *qa = out<T>(t.da), *qb = out<T>(t.db);
    at::parallel_for(0, t.rows, 64, [&](int64_t lo, int64_t hi) {
      std::vector<T> scratch(3 * r);
      for (int64_t i = lo; i < hi; ++i)
        hellinger_row<T>(pa + i * r, pb + i * r, pg[i], T(power), squared, r, qa + i * r, qb + i * r, scratch.data(),
                         scratch.data() + r, scratch.data() + 2 * r);
    });
  });
  return {t.da, t.db};
}

// Weights w = spectrum_weight(S, inv_sum(ΣS²)) of one row; returns ΣS² and 1/max(ΣS², floor) in iz.
template <typename T>
static acc_t<T> weights(const T* S, int64_t k, T* w, T& iz) {
  acc_t<T> Z = 0;
  for (int64_t i = 0; i < k; ++i) Z += S[i] * S[i];
  iz = inv_sum<T>(Z);
  for (int64_t i = 0; i < k; ++i) w[i] = spectrum_weight(S[i], iz);
  return Z;
}

// dL/dS from dL/dw through w = S²/ΣS².
template <typename T>
static void weights_bwd(const T* S, const T* w, const T* gw, acc_t<T> Z, T iz, int64_t k, T* dS) {
  acc_t<T> c = 0;
  if (!floored(Z))
    for (int64_t i = 0; i < k; ++i) c += gw[i] * w[i];
  const T C = sum_term<T>(c, Z);
  for (int64_t j = 0; j < k; ++j) dS[j] = weight_grad(S[j], iz, gw[j], C);
}

template <typename T>
static void subspace_row(const T* M, T g, const T* Sa, const T* Sb, int64_t k, T* G, T* dSa, T* dSb) {
  if (!Sa) {
    for (int64_t i = 0; i < k * k; ++i) G[i] = subspace_grad(g, M[i], k);
    return;
  }
  std::vector<T> wa(k), wb(k), ga(k), gb(k);
  std::vector<acc_t<T>> col(k, 0.0);  // Σ_i wa_i M_ij², per column j
  T ia, ib;
  const acc_t<T> Za = weights(Sa, k, wa.data(), ia), Zb = weights(Sb, k, wb.data(), ib);
  for (int64_t i = 0; i < k; ++i) {
    acc_t<T> acc = 0;
    for (int64_t j = 0; j < k; ++j) {
      const T m = M[i * k + j];
      G[i * k + j] = subspace_grad_weighted(g, wa[i], wb[j], m);
      acc += subspace_term(wb[j], m);
      col[j] += subspace_term(wa[i], m);
    }
    ga[i] = subspace_grad_w(g, wa[i], acc);
  }
  for (int64_t j = 0; j < k; ++j) gb[j] = subspace_grad_w(g, wb[j], col[j]);
  weights_bwd(Sa, wa.data(), ga.data(), Za, ia, k, dSa);
  weights_bwd(Sb, wb.data(), gb.data(), Zb, ib, k, dSb);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> subspace_coef_cpu(const at::Tensor& M, const at::Tensor& grad,
                                                                 const std::optional<at::Tensor>& S_a,
                                                                 const std::optional<at::Tensor>& S_b) {
  auto t = subspace_bufs(M, grad, S_a, S_b);
  const int64_t k = t.k;
  dispatch(t.M, "subspace_coef_cpu", [&]<typename T>() {
    const T *pm = in<T>(t.M), *pg = in<T>(t.g), *pa = in<T>(t.Sa), *pb = in<T>(t.Sb);
    T *pG = out<T>(t.G), *qa = out<T>(t.dSa), *qb = out<T>(t.dSb);
    // Row i's slice of a per-row buffer of n values (null for the absent weights).
    auto at_row = [](auto* p, int64_t i, int64_t n) { return p ? p + i * n : p; };
    at::parallel_for(0, t.rows, 16, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i)
        subspace_row<T>(pm + i * k * k, pg[i], at_row(pa, i, k), at_row(pb, i, k), k, pG + i * k * k, at_row(qa, i, k),
                        at_row(qb, i, k));
    });
  });
  return {t.G, t.dSa, t.dSb};
}

}  // namespace sdekernels
