// The math both twins compute: every per-entry formula of the CPU (csrc/cpu) and CUDA (csrc/cuda)
// backward kernels, and their one accumulation policy. The twins differ only in how they walk a
// row (loops vs threads) and in the order of their sums. No torch headers, so that nvcc can compile
// the .cu files that include it without a CUDA build of torch.
#pragma once
#include <cmath>

#include "constants.h"  // the values Python and the Triton kernels share (sdekernels/constants.py)

// Host and device inline. Predefined by a test (with __noinline__) to see the shared functions as
// calls in the PTX of each kernel.
#ifndef SDK_HD
#ifdef __CUDACC__
#define SDK_HD __host__ __device__ __forceinline__
#else
#define SDK_HD inline
#endif
#endif

namespace sdekernels {

// T-precision overloads on the host too (unqualified ::pow would evaluate a float in double).
using std::cos;
using std::fabs;
using std::fmax;
using std::frexp;
using std::isfinite;
using std::ldexp;
using std::log2;
using std::pow;
using std::sin;
using std::sqrt;

// ---- Accumulation policy of both twins. A sum over the entries of a row (Σ S^power, the
// Bhattacharyya coefficient and the gradient sums of the Hellinger distance; Σ S², Σ_j w_j M_ij²
// and Σ gw·w of the weighted subspace distance) accumulates in acc_t<T> = double, for float rows
// too; each entry is computed in T and converted once. Why double: H = √(1 − BC) and its gradient
// g/(2H) amplify the sum's rounding where BC → 1, and a float sum of r ~ 1e3 terms leaves an
// error of ~1e-4 in H² there; the price is one conversion per entry (CPU) and double adds and
// shuffles in a memory-bound kernel (CUDA). Not sums and so not under this policy: the channel
// power of one spectrum entry (a few squares, in T like the reference) and the SVD cores, which
// evaluate every entry in double (their ε = kInvRel·σ_1² needs the double range).
template <typename T>
using acc_t = double;

// kSumFloor: max(Σ S^power, kSumFloor); kProbFloor: entries of p clamped to >= it (constants.h).

// max(x, lo) that passes NaN on (std::max would drop it), so bad input stays visible.
template <typename T>
SDK_HD T clamp_lo(T x, T lo) { return x < lo ? lo : x; }
// Is a row's sum Z under the floor? Then the floor is the constant divisor and its gradient term is 0.
SDK_HD bool floored(double Z) { return Z < kSumFloor; }
// 1/max(Z, floor) in T, the factor that normalises a row by its sum Z.
template <typename T>
SDK_HD T inv_sum(acc_t<T> Z) { return T(1.0 / clamp_lo(Z, kSumFloor)); }
// A gradient's sum term from its accumulated value v: 0 when the floor holds Z.
template <typename T>
SDK_HD T sum_term(acc_t<T> v, acc_t<T> Z) { return floored(Z) ? T(0) : T(v); }

// ---- Hellinger distance of normalised spectra (SPEC §5): s = S^power, p̃ = s·inv_sum(Σs),
// H² = 1 − BC with BC = Σ r_i, r_i = √(max(p̃_i, fl)·max(q̃_i, fl)).
// A row is taken as it is given (any scale): both twins find its largest entry and whether every
// entry is in the domain S >= 0 (a row outside it, NaN included, gives NaN), and divide it by
// hellinger_row_scale's power of two.
// That power of two c: max/c in [1, 2) where the row's largest S^power lies outside [2^-L, 2^L],
// L = kHellingerScaleLog2 (constants.h; only there can scaling change a result: the sums are in
// acc_t and p's floor is relative to them), else 1, also for a zero or non-finite max. S/c is
// exact; c and 1/c are normal numbers.
template <typename T>
SDK_HD T hellinger_row_scale(T top, T power) {
  if (!(top > T(0)) || !isfinite(top) || fabs(log2(top) * power) <= T(kHellingerScaleLog2)) return T(1);
  int e;
  frexp(top, &e);
  const int lo = sizeof(T) == 4 ? -125 : -1021, hi = sizeof(T) == 4 ? 126 : 1022;
  return ldexp(T(1), e - 1 < lo ? lo : (e - 1 > hi ? hi : e - 1));
}
// s = S^power and ds/dS; at S = 0 the derivative is taken as 0 for power != 1 (finite everywhere).
template <typename T>
SDK_HD T spow(T S, T power) { return power == T(1) ? S : (S == T(0) ? T(0) : pow(S, power)); }
template <typename T>
SDK_HD T dspow(T S, T power) { return power == T(1) ? T(1) : (S > T(0) ? power * pow(S, power - T(1)) : T(0)); }
template <typename T>
SDK_HD T hellinger_root(T pt, T qt) {
  const T fl = T(kProbFloor);
  return sqrt(clamp_lo(pt, fl) * clamp_lo(qt, fl));
}
// r_i where p̃_i is unclamped, else 0: the terms of Σ_i (dH²/dp̃_i)·p̃_i = −Σ r_i/2 over those entries.
template <typename T>
SDK_HD T hellinger_live(T pt, T r) { return pt >= T(kProbFloor) ? r : T(0); }
// dH²/dp̃_i = −r_i/(2p̃_i) for the unclamped p̃_i (0 where the clamp is active): one √ per entry.
template <typename T>
SDK_HD T dh2_dp(T pt, T r) { return pt >= T(kProbFloor) ? T(-0.5) * r / pt : T(0); }
// c = Σ (dH²/dp̃)·p̃ from the accumulated Σ live roots of a row with sum Z.
template <typename T>
SDK_HD T hellinger_c(acc_t<T> live, acc_t<T> Z) { return sum_term<T>(-0.5 * live, Z); }
// The factor that turns dH² into the output's gradient: g for H², g/(2H) for H = √max(H², 0), 0 at H = 0.
template <typename T>
SDK_HD T hellinger_scale(T g, acc_t<T> h2, bool squared) {
  return T(squared ? double(g) : (h2 > 0 ? double(g) * 0.5 / sqrt(h2) : 0.0));
}
// Gradient wrt S at one entry: scale·(dH²/dp̃ − c)·inv_sum·ds/dS.
template <typename T>
SDK_HD T hellinger_entry_grad(T scale, T dp, T c, T iz, T ds) { return scale * (dp - c) * iz * ds; }

// ---- Subspace distance (SPEC §5) from M = V_aᵀV_b [k, k] and the loss gradient g.
// Unweighted: dL/dM_ij = −2g·M_ij/k.
template <typename T>
SDK_HD T subspace_grad(T g, T m, long long k) { return T(-2) * g * m / T(k); }
// Weighted by w = S²·inv_sum(ΣS²) of each side: dL/dM_ij = −4g·wa_i·wb_j·M_ij.
template <typename T>
SDK_HD T spectrum_weight(T S, T iz) { return S * S * iz; }
template <typename T>
SDK_HD T subspace_grad_weighted(T g, T wa, T wb, T m) { return T(-4) * g * wa * wb * m; }
// One term w'_j·M_ij² of the sums below (over a row of M for w_b, a column for w_a).
template <typename T>
SDK_HD T subspace_term(T w, T m) { return w * m * m; }
// dL/dw_i = g(2w_i − 2Σ_j w'_j M_ij²) from the accumulated sum over the other side's weights w'.
template <typename T>
SDK_HD T subspace_grad_w(T g, T w, acc_t<T> wm2) { return g * (T(2) * w - T(2) * T(wm2)); }
// dL/dS_j through w = S²/ΣS²: 2S_j·inv_sum·(gw_j − c), c = sum_term(Σ gw·w).
template <typename T>
SDK_HD T weight_grad(T S, T iz, T gw, T c) { return T(2) * S * iz * (gw - c); }

// ---- Radial PSD (SPEC §9): an entry's power is clamped to >= kPowerFloor (constants.h) and the DC
// entry (hw = 0) is 0.
template <typename T>
SDK_HD T psd_value(T p, long long hw) { return hw == 0 ? T(0) : (p < T(kPowerFloor) ? T(kPowerFloor) : p); }
// d psd_value / dp: 0 at DC and below the floor (like torch's clamp_min, it passes at equality).
template <typename T>
SDK_HD T psd_pass(T p, long long hw) { return (hw == 0 || p < T(kPowerFloor)) ? T(0) : T(1); }
// |y|² of one entry of the spectrum (comp = 1: a DCT value, 2: re and im of an FFT value).
template <typename T>
SDK_HD T entry_power(const T* y, int comp) { return comp == 2 ? y[0] * y[0] + y[1] * y[1] : y[0] * y[0]; }
// Power of an entry from its channel sum of entry_power: scale/nc times it (nc channels averaged).
template <typename T>
SDK_HD T psd_power(T sum, T scale, long long nc) { return sum * (scale / T(nc)); }
// dL/dy ÷ y at the entries of bin j (gradient g_j, 1/count ic_j), where psd_pass lets it through.
template <typename T>
SDK_HD T psd_bin_factor(T scale, long long nc, T g, T ic) { return T(2) * scale / T(nc) * g * ic; }
template <typename T>
SDK_HD T psd_grad_factor(T p, long long hw, T bin_factor) { return psd_pass(p, hw) * bin_factor; }

// ---- Fourier split/merge (SPEC §8). Index helpers of the fftshifted layout and the pointwise
// gradients of the polar form; the FFT steps themselves are ATen's.
// kFourierTiny (constants.h): |X|² below it, the amplitude and phase gradients are 0.

// Position of frequency k on an fftshifted axis of length n, and the frequency at position s.
SDK_HD long long fft_shift(long long k, long long n) { return (k + n / 2) % n; }
SDK_HD long long fft_unshift(long long s, long long n) { return (s + n - n / 2) % n; }
// Im X = 0 exactly at these bins of a real image's spectrum (k = 0 or n/2 on both axes).
SDK_HD bool fft_real_bin(long long k, long long n) { return k == 0 || 2 * k == n; }

// Where the spectrum of a real [H, W] image is stored: the half k2 < Wh = W/2 + 1 when onesided
// (Wo = Wh, rows shifted when centered), else all Wo = W columns (both axes shifted when centered).
struct SpectrumLayout {
  long long H, W, Wh, Wo;
  bool onesided, centered;
  static SDK_HD SpectrumLayout make(long long H, long long W, bool onesided, bool centered) {
    const long long Wh = W / 2 + 1;
    return SpectrumLayout{H, W, Wh, onesided ? Wh : W, onesided, centered};
  }
  SDK_HD long long pos(long long k1, long long k2) const {
    const long long s1 = centered ? fft_shift(k1, H) : k1;
    return s1 * Wo + ((centered && !onesided) ? fft_shift(k2, W) : k2);
  }
  // Frequencies (k1, k2) held at stored position (s1, s2).
  SDK_HD long long freq_row(long long s1) const { return centered ? fft_unshift(s1, H) : s1; }
  SDK_HD long long freq_col(long long s2) const { return (centered && !onesided) ? fft_unshift(s2, W) : s2; }
  // Is the mirror frequency (−k1, −k2) of a half-spectrum column k2 stored as well?
  SDK_HD bool mirror_stored(long long k2) const { return !onesided || (W - k2) % W < Wh; }
};

// dL/dRe X + i dL/dIm X for L(A, P), A = |X| (log1p|X| when log_amp), P = arg X; 0 where |X|² < tiny.
template <typename T>
SDK_HD void split_point_grad(T re, T im, T gA, T gP, bool log_amp, T& gr, T& gi) {
  const T p = re * re + im * im;
  if (!(p >= T(kFourierTiny))) { gr = T(0); gi = T(0); return; }
  const T a = sqrt(p);
  if (log_amp) gA = gA / (T(1) + a);
  gr = gA * re / a - gP * im / p;
  gi = gA * im / a + gP * re / p;
}

// Split backward at half-spectrum entry (k1, k2): from x = X[k1, k2] (re, im) and the gradients
// gA, gP of one image's stored layout, z = the Hermitian part of the complex gradient (irfft2 of
// it is gx: Re F^H g = F^H Herm(g)).
template <typename T>
SDK_HD void split_entry_grad(const T* x, const T* gA, const T* gP, const SpectrumLayout& L, long long k1,
                             long long k2, bool log_amp, T* z) {
  const T re = x[0];
  const T im = fft_real_bin(k1, L.H) && fft_real_bin(k2, L.W) ? T(0) : x[1];
  T gr, gi, mr = 0, mi = 0;
  const long long o = L.pos(k1, k2);
  split_point_grad(re, im, gA[o], gP[o], log_amp, gr, gi);
  if (L.mirror_stored(k2)) {
    const long long om = L.pos((L.H - k1) % L.H, (L.W - k2) % L.W);
    split_point_grad(re, -im, gA[om], gP[om], log_amp, mr, mi);
  }
  z[0] = T(0.5) * (gr + mr);
  z[1] = T(0.5) * (gi - mi);
}

// Merge backward: g = dL/dRe X + i dL/dIm X at stored frequency (k1, k2) from G = rfft2(gx) of one
// image (half spectrum [H, Wh, 2], adjoint norm).
template <typename T>
SDK_HD void merge_entry_grad(const T* G, const SpectrumLayout& L, long long k1, long long k2, T& gr, T& gi) {
  if (k2 < L.Wh) {  // onesided: irfft2 counts the unmirrored columns twice
    const T* g = G + (k1 * L.Wh + k2) * 2;
    const T m = L.mirror_stored(k2) ? T(1) : T(2);
    gr = m * g[0];
    gi = m * g[1];
  } else {  // the gradient spectrum of a real gx is Hermitian
    const T* g = G + (((L.H - k1) % L.H) * L.Wh + (L.W - k2)) * 2;
    gr = g[0];
    gi = -g[1];
  }
}

// dL/dA, dL/dP through X = A e^{iP} (c, s = cos P, sin P) given g = dL/dRe X + i dL/dIm X.
template <typename T>
SDK_HD void polar_grad(T a, T c, T s, T gr, T gi, T& gA, T& gP) {
  gA = gr * c + gi * s;
  gP = a * (gi * c - gr * s);
}

// ---- Truncated-SVD backward (SPEC §1): 1/(σ_l² − σ_j²) -> x/(x² + ε), ε = (rel·σ_1²)² with rel the
// machine epsilon of the working dtype T (lorentz_rel<T>: the resolution of σ² next to σ_1², so the
// stabiliser acts only on gaps that are round-off and float64 meets float64's exact gradient), and
// 1/σ -> σ/(σ² + ε'), ε' = kInvRel·σ_1² (evaluated in double); 0 where the denominator is 0 (σ_1 = 0).
// Relative, never absolute (SPEC §10): the callers (sdekernels/ops/svd.py) pass the σ of each row
// divided by its power-of-two scale, so σ_1 is of order 1 and ε stays far inside the double range.
// kInvRel, kLorentzRelFloat and kLorentzRelDouble are constants.h's (Python: ops/_scaling.py).
template <typename T>
SDK_HD constexpr double lorentz_rel() { return sizeof(T) == 4 ? kLorentzRelFloat : kLorentzRelDouble; }
// σ_1 of a row: the running max |σ| (NaN dropped, like the reduction it stands in).
SDK_HD double max_abs(double m, double v) { return fmax(m, fabs(v)); }
SDK_HD double svd_damped(double x, double e) { const double d = x * x + e; return d > 0 ? x / d : 0.0; }
SDK_HD double svd_lorentz(double x, double s1, double rel) { const double e = rel * s1 * s1; return svd_damped(x, e * e); }
SDK_HD double svd_inv(double s, double s1) { return svd_damped(s, kInvRel * s1 * s1); }
// One entry (j, l) of the k×k core Kt of the backward, gF = (U·Kt + gU·diag(inv))·Vᵀ + U·diag(inv)·gVᵀ:
// Kt_jl = L_jl[(A_jl − A_lj)σ_l + σ_j(B_jl − B_lj)] + δ_jl gS_j − A_jl inv_l − inv_j B_lj,
// A = UᵀgU, B = VᵀgV.
SDK_HD double svd_core_entry(double Ajl, double Alj, double Bjl, double Blj, double sj, double sl, double gSj,
                       double invj, double invl, double s1, bool diag, double rel) {
  const double k = diag ? gSj : svd_lorentz(sl * sl - sj * sj, s1, rel) * ((Ajl - Alj) * sl + sj * (Bjl - Blj));
  return k - Ajl * invl - invj * Blj;
}
// One entry (i, j), i < r, j < k, of the r×k core σ_1·C of the exact backward on the short-side
// eigenbasis W (all r columns, the first k the short-side top-k factor; svd_topk_exact_bwd in
// bindings.cpp): C_ij = L(σ_j² − σ_i²)·(P_ij + Q_ij inv_j) (i ≠ j), C_jj = (gS_j − inv_j² Q_jj)·inv_j/2,
// P = WᵀgW_short, Q = Wᵀ(A gW_long): Daleckii–Krein for the eigenvectors of AAᵀ plus the chain
// through the long-side factor Aᵀ W_k diag(inv); no 1/σ of a value past k. C scales as 1/σ²: the
// factor σ_1 keeps it in float32 range for tiny σ (the caller divides by σ_1 after the products).
SDK_HD double svd_exact_entry(double Pij, double Qij, double Qjj, double si, double sj, double gSj, double invj,
                             double s1, bool diag, double rel) {
  if (diag) return (gSj - invj * invj * Qjj) * invj * 0.5 * s1;
  return svd_lorentz(sj * sj - si * si, s1, rel) * (Pij + Qij * invj) * s1;
}

}  // namespace sdekernels
