// Scalar formulas shared by the CPU (C++) and CUDA backward kernels. No torch headers, so that
// nvcc can compile the .cu files that include it without a CUDA build of torch.
#pragma once
#include <cmath>

#ifdef __CUDACC__
#define SDK_HD __host__ __device__ __forceinline__
#else
#define SDK_HD inline
#endif

namespace sdekernels {

constexpr double kSumFloor = 1e-30;   // max(Σ S^power, 1e-30)
constexpr double kProbFloor = 1e-12;  // entries of p clamped to >= 1e-12

// s = S^power and ds/dS; at S = 0 the derivative is taken as 0 for power != 1 (finite everywhere).
template <typename T>
SDK_HD T spow(T S, T power) { return power == T(1) ? S : (S == T(0) ? T(0) : pow(S, power)); }
template <typename T>
SDK_HD T dspow(T S, T power) { return power == T(1) ? T(1) : (S > T(0) ? power * pow(S, power - T(1)) : T(0)); }

// dH²/dp̃_i for the unclamped p̃ (0 where the clamp is active).
template <typename T>
SDK_HD T dh2_dp(T pt, T qt) {
  if (pt < T(kProbFloor)) return T(0);
  T q = qt < T(kProbFloor) ? T(kProbFloor) : qt;
  return T(-0.5) * sqrt(q / pt);
}

// Gradient of H² at one entry given dH²/dp̃ (g), c = Σ g p̃ (0 when the sum floor is active), Z.
template <typename T>
SDK_HD T hellinger_entry_grad(T g, T c, T Zc, T S, T power) { return (g - c) / Zc * dspow(S, power); }

// Radial PSD (SPEC §9): an entry's power is clamped to >= 1e-12 and the DC entry (hw = 0) is 0.
constexpr double kPowerFloor = 1e-12;
template <typename T>
SDK_HD T psd_value(T p, long long hw) { return hw == 0 ? T(0) : (p < T(kPowerFloor) ? T(kPowerFloor) : p); }
// d psd_value / dp: 0 at DC and below the floor (like torch's clamp_min, it passes at equality).
template <typename T>
SDK_HD T psd_pass(T p, long long hw) { return (hw == 0 || p < T(kPowerFloor)) ? T(0) : T(1); }

// ---- Fourier split/merge (SPEC §8). Index helpers of the fftshifted layout and the pointwise
// gradients of the polar form; the FFT steps themselves are ATen's.
constexpr double kFourierTiny = 1e-30;  // |X|² below this: amplitude and phase gradients are 0

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

// dL/dA, dL/dP through X = A e^{iP} given g = dL/dRe X + i dL/dIm X.
template <typename T>
SDK_HD void polar_grad(T a, T ph, T gr, T gi, T& gA, T& gP) {
  const T c = cos(ph), s = sin(ph);
  gA = gr * c + gi * s;
  gP = a * (gi * c - gr * s);
}

// Truncated-SVD backward (SPEC §1): 1/(σ_l² − σ_j²) -> x/(x² + ε), ε = (kLorRel·σ_1²)², and
// 1/σ -> σ/(σ² + ε'), ε' = kInvRel·σ_1² (evaluated in double); 0 where the denominator is 0 (σ_1 = 0).
// Relative, never absolute (SPEC §10): the callers (sdekernels/ops/svd.py) pass the σ of each row
// divided by its power-of-two scale, so σ_1 is of order 1 and ε stays far inside the double range.
// Same constants as sdekernels/ops/svd.py.
constexpr double kLorRel = 1e-7, kInvRel = 1e-20;
SDK_HD double svd_damped(double x, double e) { const double d = x * x + e; return d > 0 ? x / d : 0.0; }
SDK_HD double svd_lorentz(double x, double s1) { const double e = kLorRel * s1 * s1; return svd_damped(x, e * e); }
SDK_HD double svd_inv(double s, double s1) { return svd_damped(s, kInvRel * s1 * s1); }
// One entry (j, l) of the k×k core Kt of the backward, gF = (U·Kt + gU·diag(inv))·Vᵀ + U·diag(inv)·gVᵀ:
// Kt_jl = L_jl[(A_jl − A_lj)σ_l + σ_j(B_jl − B_lj)] + δ_jl gS_j − A_jl inv_l − inv_j B_lj,
// A = UᵀgU, B = VᵀgV.
SDK_HD double svd_core(double Ajl, double Alj, double Bjl, double Blj, double sj, double sl, double gSj,
                       double invj, double invl, double s1, bool diag) {
  const double k = diag ? gSj : svd_lorentz(sl * sl - sj * sj, s1) * ((Ajl - Alj) * sl + sj * (Bjl - Blj));
  return k - Ajl * invl - invj * Blj;
}
// One entry (i, j), i < r, j < k, of the r×k core σ_1·C of the exact backward on the short-side
// eigenbasis W (all r columns, the first k the short-side top-k factor; svd_topk_exact_bwd in
// bindings.cpp): C_ij = L(σ_j² − σ_i²)·(P_ij + Q_ij inv_j) (i ≠ j), C_jj = (gS_j − inv_j² Q_jj)·inv_j/2,
// P = WᵀgW_short, Q = Wᵀ(A gW_long): Daleckii–Krein for the eigenvectors of AAᵀ plus the chain
// through the long-side factor Aᵀ W_k diag(inv); no 1/σ of a value past k. C scales as 1/σ²: the
// factor σ_1 keeps it in float32 range for tiny σ (the caller divides by σ_1 after the products).
SDK_HD double svd_exact_core(double Pij, double Qij, double Qjj, double si, double sj, double gSj, double invj,
                             double s1, bool diag) {
  if (diag) return (gSj - invj * invj * Qjj) * invj * 0.5 * s1;
  return svd_lorentz(sj * sj - si * si, s1) * (Pij + Qij * invj) * s1;
}

}  // namespace sdekernels
