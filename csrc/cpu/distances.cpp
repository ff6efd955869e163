// CPU backward kernels of the spectral distances (SPEC §5): one batch row per task. The per-entry
// math and the accumulation policy are spectral_math.h's, shared with cuda/distances.cu.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../ops.h"
#include "../spectral_math.h"

namespace sdekernels {

// The largest entry of a row (0 for none) and whether every entry is in the domain S >= 0.
template <typename T>
SDK_CLONES static bool row_top(const T* s, int64_t r, T& top) {
  T m = 0;
  int64_t bad = 0;
#pragma omp simd reduction(max : m) reduction(+ : bad)
  for (int64_t i = 0; i < r; ++i) {
    m = s[i] > m ? s[i] : m;
    bad += !(s[i] >= T(0));  // a NaN too
  }
  top = m;
  return bad == 0;
}

// One side of a Hellinger row, as spectral_math.h takes it: s = (S/c)^power (S itself when power
// = 1 and c = 1, else the scratch it is written to), u = 1/c, and Z = Σs.
template <typename T>
struct HellingerSide {
  const T* s;
  T u;
  acc_t<T> Z;
};

template <typename T>
SDK_CLONES static HellingerSide<T> hellinger_side(const T* S, T top, T power, int64_t r, T* scratch) {
  HellingerSide<T> h{S, T(1) / hellinger_row_scale(top, power), 0};
  if (power != T(1) || h.u != T(1)) {
    for (int64_t i = 0; i < r; ++i) scratch[i] = spow(S[i] * h.u, power);
    h.s = scratch;
  }
  acc_t<T> Z = 0;
#pragma omp simd reduction(+ : Z)
  for (int64_t i = 0; i < r; ++i) Z += h.s[i];
  h.Z = Z;
  return h;
}

// Sums of one Hellinger row in the domain, with p̃ = s_a·ia, q̃ = s_b·ib and r_i =
// hellinger_root(p̃_i, q̃_i) (kept in rpq): bc = Σ r_i, and la, lb the sums of the live roots
// (spectral_math.h), accumulated in acc_t. The loops vectorise (omp simd, no errno on sqrt).
template <typename T>
struct HellingerSums {
  HellingerSide<T> A, B;
  T ia, ib;
  acc_t<T> bc, la, lb;
};

template <typename T>
SDK_CLONES static HellingerSums<T> hellinger_sums(const T* a, const T* b, T ta, T tb, T power, int64_t r, T* pa, T* pb,
                                                 T* rpq) {
  using Acc = acc_t<T>;
  HellingerSums<T> h{hellinger_side(a, ta, power, r, pa), hellinger_side(b, tb, power, r, pb)};
  const T *sa = h.A.s, *sb = h.B.s;
  const T ia = inv_sum<T>(h.A.Z), ib = inv_sum<T>(h.B.Z);
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
  h.ia = ia, h.ib = ib, h.bc = bc, h.la = la, h.lb = lb;
  return h;
}

// Whether a row is in the domain, with its two largest entries.
template <typename T>
static bool row_domain(const T* a, const T* b, int64_t r, T& ta, T& tb) {
  const bool ok_a = row_top(a, r, ta);
  return row_top(b, r, tb) && ok_a;
}

// One row of the Hellinger backward: each entry needs one √ (r_i from the sums). A row outside
// the domain gets NaN gradients.
template <typename T>
SDK_CLONES static void hellinger_row(const T* a, const T* b, T g, T power, bool squared, int64_t r, T* da, T* db, T* pa,
                                     T* pb, T* rpq) {
  T ta, tb;
  if (!row_domain(a, b, r, ta, tb)) {
    std::fill(da, da + r, T(NAN));
    std::fill(db, db + r, T(NAN));
    return;
  }
  const auto h = hellinger_sums(a, b, ta, tb, power, r, pa, pb, rpq);
  const T CA = hellinger_c<T>(h.la, h.A.Z), CB = hellinger_c<T>(h.lb, h.B.Z);
  const T scale = hellinger_scale<T>(g, 1.0 - h.bc, squared);
  const T ia = h.ia, ib = h.ib, ua = h.A.u, ub = h.B.u;
  const T *sa = h.A.s, *sb = h.B.s;
  if (power == T(1)) {  // ds/dS = 1/c: the loop vectorises
#pragma omp simd
    for (int64_t i = 0; i < r; ++i) {
      const T pt = sa[i] * ia, qt = sb[i] * ib;
      da[i] = hellinger_entry_grad(scale, dh2_dp(pt, rpq[i]), CA, ia, ua);
      db[i] = hellinger_entry_grad(scale, dh2_dp(qt, rpq[i]), CB, ib, ub);
    }
    return;
  }
  for (int64_t i = 0; i < r; ++i) {
    const T pt = sa[i] * ia, qt = sb[i] * ib;
    da[i] = hellinger_entry_grad(scale, dh2_dp(pt, rpq[i]), CA, ia, dspow(a[i] * ua, power) * ua);
    db[i] = hellinger_entry_grad(scale, dh2_dp(qt, rpq[i]), CB, ib, dspow(b[i] * ub, power) * ub);
  }
}

// H² = 1 − bc (or H = √max(H², 0)) per row of S_a, S_b [..., r], at any scale (the row scaling above).
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
        T ta, tb;
        if (!row_domain(pa + i * r, pb + i * r, r, ta, tb)) {
          po[i] = T(NAN);  // as the reference: no S^power of a negative value
          continue;
        }
        const acc_t<T> h2 = 1.0 - hellinger_sums<T>(pa + i * r, pb + i * r, ta, tb, T(power), r, scratch.data(),
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
