// Fourier amplitude/phase split and merge (SPEC §8).
// CPU forward of split: ATen's rfft2 of the real image, then one fused pass that writes amplitude
// and phase of the half spectrum and mirrors them (Hermitian symmetry) into the full, optionally
// shifted, layout. CPU forward of merge: one fused pass from A, P to the spectrum of the image
// packed into complex numbers (merge_packed), then one complex ifft2 of half the width. Backward (CPU and CUDA): a pointwise kernel maps (gA, gP) to the Hermitian part of the
// complex gradient on the half spectrum, then one irfft2 (merge: one rfft2, then pointwise).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <c10/util/bit_cast.h>

#include <algorithm>
#include <cstdint>
#include <vector>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "../ops.h"
#include "../spectral_math.h"

namespace sdekernels {

namespace {

template <typename T>
constexpr T kPi = T(3.14159265358979323846);

// Branch-free float helpers. Float compares and selects are not if-converted by GCC under the
// default -ftrapping-math, and random phases make every branch a coin flip (~45 ns per entry);
// integer masks keep the row loop branch-free and vectorised (~2 ns per entry).
inline int32_t fbits(float v) { return c10::bit_cast<int32_t>(v); }
inline float fsel(int32_t mask, float a, float b) { return c10::bit_cast<float>((fbits(a) & mask) | (fbits(b) & ~mask)); }

// atan2 in float: reduction to |u| <= tan(π/8) and Cephes' atanf polynomial (absolute error
// < 3e-7; its coefficients are constants.h's, as the Triton kernel's; each double rounds to the
// float of its decimal literal). atan2(±0, x < 0) = ±π; the callers map −π to π.
inline float atan2_fast(float y, float x) {
  const int32_t bx = fbits(x) & 0x7fffffff, by = fbits(y) & 0x7fffffff;  // |x|, |y|: ordered as integers
  const int32_t steep = -int32_t(by > bx);
  const float num = c10::bit_cast<float>(steep ? bx : by), den = c10::bit_cast<float>(steep ? by : bx);
  const float t = num / fsel(-int32_t(fbits(den) > 0), den, 1.f);
  const int32_t big = -int32_t(fbits(t) > fbits(float(kAtanTanPi8)));
  const float u = fsel(big, (t - 1.f) / (t + 1.f), t);
  const float z = u * u;
  float r = (((float(kAtanC9) * z - float(kAtanC7)) * z + float(kAtanC5)) * z - float(kAtanC3)) * z * u + u;
  r += fsel(big, 0.78539816339f, 0.f);
  r = fsel(steep, 1.57079632679f - r, r);
  r = fsel(fbits(x) >> 31, 3.14159265359f - r, r);
  return c10::bit_cast<float>(fbits(r) ^ (fbits(y) & int32_t(0x80000000)));
}
inline float pi_not_minus_pi(float p) { return fsel(-int32_t(fbits(p) == fbits(-kPi<float>)), kPi<float>, p); }
inline double pi_not_minus_pi(double p) { return p == -kPi<double> ? kPi<double> : p; }

// The phase of re + i·im with SPEC §8's branch cut: π where re < 0 and |im| <= tol (the negative real
// axis up to round-off: the sign of a round-off im never picks −π), else atan2 ∈ (−π, π].
inline float cut_phase(float re, float im, float tol) {  // as integers: re < 0 (NaN excluded), |im| <= tol (>= 0)
  const int32_t rb = fbits(re), ra = rb & 0x7fffffff;
  const int32_t cut = -int32_t((rb < 0) & (ra != 0) & (ra <= 0x7f800000) & ((fbits(im) & 0x7fffffff) <= fbits(tol)));
  return fsel(cut, kPi<float>, pi_not_minus_pi(atan2_fast(im, re)));
}
inline double cut_phase(double re, double im, double tol) {
  return re < 0 && std::abs(im) <= tol ? kPi<double> : pi_not_minus_pi(std::atan2(im, re));
}

// In-place square root of a row (std::sqrt sets errno, which keeps GCC from vectorising it).
inline void sqrt_row(float* a, int64_t n) {
  int64_t k = 0;
#if defined(__SSE2__)
  for (; k + 4 <= n; k += 4) _mm_storeu_ps(a + k, _mm_sqrt_ps(_mm_loadu_ps(a + k)));
#endif
  for (; k < n; ++k) a[k] = std::sqrt(a[k]);
}
inline void sqrt_row(double* a, int64_t n) {
  for (int64_t k = 0; k < n; ++k) a[k] = std::sqrt(a[k]);
}

std::string flipped(c10::string_view norm) {
  // The adjoint of the forward transform with `norm` is the inverse transform with this one.
  if (norm == "backward") return "forward";
  if (norm == "forward") return "backward";
  return "ortho";
}

// tol [R]: each image's cut_width (reference/fourier.py) in X's units.
template <typename T>
void split_rows(const T* X, const T* tol, T* A, T* P, int64_t R, const SpectrumLayout& L, bool log_amp) {
  const int64_t H = L.H, W = L.W, Wh = L.Wh, Wo = L.Wo;
  at::parallel_for(0, R * H, 8, [&](int64_t lo, int64_t hi) {
    std::vector<T> a(Wh), p(Wh);
    for (int64_t row = lo; row < hi; ++row) {
      const int64_t r = row / H, k1 = row % H;
      const T* x = X + row * Wh * 2;
      const T t = tol[r];
      T* __restrict ar = a.data();
      T* __restrict pr = p.data();
      for (int64_t k2 = 0; k2 < Wh; ++k2) {
        const T re = x[2 * k2], im = x[2 * k2 + 1];
        ar[k2] = re * re + im * im;
        pr[k2] = cut_phase(re, im, t);
      }
      sqrt_row(ar, Wh);
      if (fft_real_bin(k1, H)) {  // exactly real: no round-off decides between +π and −π
        for (int64_t k2 : {int64_t(0), W / 2}) {
          if (!fft_real_bin(k2, W)) continue;
          const T re = x[2 * k2];
          a[k2] = std::abs(re);
          p[k2] = re < T(0) ? kPi<T> : (re == re ? T(0) : re);
        }
      }
      if (log_amp)
        for (int64_t k2 = 0; k2 < Wh; ++k2) a[k2] = std::log1p(a[k2]);
      T* Ao = A + r * H * Wo;
      T* Po = P + r * H * Wo;
      if (!L.centered || L.onesided) {  // the half spectrum is one contiguous run
        std::copy(a.begin(), a.end(), Ao + L.pos(k1, 0));
        std::copy(p.begin(), p.end(), Po + L.pos(k1, 0));
      } else {
        for (int64_t k2 = 0; k2 < Wh; ++k2) {
          const int64_t o = L.pos(k1, k2);
          Ao[o] = a[k2];
          Po[o] = p[k2];
        }
      }
      if (!L.onesided) {  // X[−k1, −k2] = conj X[k1, k2] fills the columns beyond W/2
        const int64_t m1 = (H - k1) % H;
        for (int64_t k2 = 1; k2 <= (W - 1) / 2; ++k2) {
          const int64_t o = L.pos(m1, W - k2);
          Ao[o] = a[k2];
          Po[o] = p[k2] == kPi<T> ? kPi<T> : -p[k2];
        }
      }
    }
  });
}

template <typename T>
void split_grad_rows(const T* X, const T* GA, const T* GP, T* Z, int64_t R, const SpectrumLayout& L, bool log_amp) {
  const int64_t H = L.H, Wh = L.Wh, Wo = L.Wo;
  at::parallel_for(0, R * H, 8, [&](int64_t lo, int64_t hi) {
    for (int64_t row = lo; row < hi; ++row) {
      const int64_t r = row / H, k1 = row % H;
      const T *x = X + row * Wh * 2, *gA = GA + r * H * Wo, *gP = GP + r * H * Wo;
      T* z = Z + row * Wh * 2;
      for (int64_t k2 = 0; k2 < Wh; ++k2) split_entry_grad(x + 2 * k2, gA, gP, L, k1, k2, log_amp, z + 2 * k2);
    }
  });
}

// sin and cos in float, branch-free so the row loops vectorise: reduction by the nearest multiple
// q of π/2 (three-part Cody–Waite, exact products for |q| < 2^15) and Cephes' sinf/cosf
// polynomials on [−π/4, π/4] (absolute error < 2e-7 for |x| <= kSinCosMax).
constexpr float kSinCosMax = 8192.f;
inline void sincos_fast(float x, float& s, float& c) {
  const float q = (x * 0.636619772f + 12582912.f) - 12582912.f;  // round to nearest (|x·2/π| < 2^22)
  const int32_t n = int32_t(q);
  const float r = ((x - q * 1.5703125f) - q * 4.837512969970703125e-4f) - q * 7.54978995489188216e-8f;
  const float z = r * r;
  const float ps = ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f) * z * r + r;
  const float pc = ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z + 4.166664568298827e-2f) * z * z -
                   0.5f * z + 1.f;
  const int32_t swap = -(n & 1);  // odd quadrants swap sin and cos
  const int32_t sneg = (n & 2) << 30, cneg = ((n + 1) & 2) << 30;
  s = c10::bit_cast<float>(fbits(fsel(swap, pc, ps)) ^ sneg);
  c = c10::bit_cast<float>(fbits(fsel(swap, ps, pc)) ^ cneg);
}

// The same in double: Cephes' sin/cos polynomials (relative error ~1e-16 for |x| <= kSinCosMax).
inline int64_t dbits(double v) { return c10::bit_cast<int64_t>(v); }
inline double dsel(int64_t mask, double a, double b) {
  return c10::bit_cast<double>((dbits(a) & mask) | (dbits(b) & ~mask));
}
inline void sincos_fast(double x, double& s, double& c) {
  const double q = (x * 0.63661977236758134308 + 6755399441055744.0) - 6755399441055744.0;
  const int32_t n = int32_t(q);
  const double r = ((x - q * 1.57079625129699707031) - q * 7.54978941586159635336e-8) - q * 5.39030285815811905290e-15;
  const double z = r * r;
  const double ps = r + r * z * (((((1.58962301576546568060e-10 * z - 2.50507477628578072866e-8) * z +
                                    2.75573136213857245213e-6) * z - 1.98412698295895385996e-4) * z +
                                  8.33333333332211858878e-3) * z - 1.66666666666666307295e-1);
  const double pc = 1.0 - 0.5 * z + z * z * (((((-1.13585365213876817300e-11 * z + 2.08757008419747316778e-9) * z -
                                                2.75573141792967388112e-7) * z + 2.48015872888517045348e-5) * z -
                                              1.38888888888730564116e-3) * z + 4.16666666666665929218e-2);
  const int64_t swap = -int64_t(n & 1);
  const int64_t sneg = int64_t(n & 2) << 62, cneg = int64_t((n + 1) & 2) << 62;
  s = c10::bit_cast<double>(dbits(dsel(swap, pc, ps)) ^ sneg);
  c = c10::bit_cast<double>(dbits(dsel(swap, ps, pc)) ^ cneg);
}
inline int32_t abs_bits(float v) { return fbits(v) & 0x7fffffff; }
inline int64_t abs_bits(double v) { return dbits(v) & 0x7fffffffffffffff; }

// re + i·im = a·e^{ip} over a run of n entries. Cloned for AVX-512 and AVX2 (chosen at load
// time): the build targets baseline x86-64, whose narrow vectors make this the op's slowest step.
template <typename T>
inline void polar_run_impl(const T* __restrict a, const T* __restrict p, int64_t n, T* __restrict re,
                           T* __restrict im) {
  auto big = abs_bits(T(0));  // max |p| as bits: ordered as integers, and above inf's for a NaN
  for (int64_t k = 0; k < n; ++k) big = std::max(big, abs_bits(p[k]));
  if (big <= abs_bits(T(kSinCosMax))) {  // else (huge or non-finite phases) the library's functions
    for (int64_t k = 0; k < n; ++k) {
      T s, c;
      sincos_fast(p[k], s, c);
      re[k] = a[k] * c;
      im[k] = a[k] * s;
    }
    return;
  }
  for (int64_t k = 0; k < n; ++k) {
    re[k] = a[k] * std::cos(p[k]);
    im[k] = a[k] * std::sin(p[k]);
  }
}
SDK_CLONES void polar_run(const float* a, const float* p, int64_t n, float* re, float* im) {
  polar_run_impl(a, p, n, re, im);
}
SDK_CLONES void polar_run(const double* a, const double* p, int64_t n, double* re, double* im) {
  polar_run_impl(a, p, n, re, im);
}

// Forward of merge: Re IFFT2(X) = IFFT2(E) with E the Hermitian spectrum irfft2/ifft2 read from
// the stored X (E[k] = (X[k] + conj X[−k]) / 2 where both are stored, else the stored one). For
// even W, the image is packed as z[n1, m] = x[n1, 2m] + i·x[n1, 2m + 1], the complex IFFT2 of the
// H × W/2 spectrum Y[k1, k] = s·(E[k] + E[k + W/2] + i·ω^k (E[k] − E[k + W/2])) (ω = e^{2πi/W},
// s the norm's ratio of the two transforms' scales): it costs about half of MKL's irfft2. Odd W:
// Y = E, a full complex IFFT2. Rows k1 and −k1 are built together from the same polar values.
template <typename T>
void merge_packed(const T* A, const T* P, T* Y, int64_t R, const SpectrumLayout& L, double scale) {
  const int64_t H = L.H, W = L.W, Wo = L.Wo, S = L.onesided ? L.Wh : W, half = W / 2;
  const bool shift_cols = L.centered && !L.onesided, packed = W % 2 == 0;
  const int64_t Wy = packed ? half : W;
  std::vector<T> cN(W), cR(W), tr(half), ti(half);  // weights of X[k] and conj X[−k] in s·E[k]; ω^k
  for (int64_t k2 = 0; k2 < W; ++k2) {
    const int has = k2 < S, hasm = (W - k2) % W < S;
    cN[k2] = T(scale * has / (has + hasm));
    cR[k2] = T(scale * hasm / (has + hasm));
  }
  for (int64_t k = 0; k < half; ++k) {
    tr[k] = T(std::cos(2 * kPi<double> * k / W));
    ti[k] = T(std::sin(2 * kPi<double> * k / W));
  }
  const int64_t rows = H / 2 + 1;
  at::parallel_for(0, R * rows, 4, [&, W, half](int64_t lo, int64_t hi) {  // sizes by value: loops vectorise
    // Row j (0: k1, 1: −k1) in frequency order, zero beyond the stored columns: nat[j]; nat[j]
    // at −k2 mod W: rev[j]. Each holds re then im.
    std::vector<T> buf(8 * W, T(0));
    auto nat = [&](int j, int c) { return buf.data() + (j * 2 + c) * W; };
    auto rev = [&](int j, int c) { return buf.data() + (4 + j * 2 + c) * W; };
    for (int64_t item = lo; item < hi; ++item) {
      const int64_t r = item / rows, k1 = item % rows, m1 = (H - k1) % H;  // k1 <= m1
      const int64_t row[2] = {k1, m1};
      const int nj = k1 == m1 ? 1 : 2;
      for (int j = 0; j < nj; ++j) {
        T *nr = nat(j, 0), *ni = nat(j, 1);
        const int64_t o = (r * H + (L.centered ? fft_shift(row[j], H) : row[j])) * Wo;
        if (shift_cols) {  // stored column s holds frequency s − W/2 (mod W)
          polar_run(A + o + half, P + o + half, W - half, nr, ni);
          polar_run(A + o, P + o, half, nr + W - half, ni + W - half);
        } else {
          polar_run(A + o, P + o, S, nr, ni);
        }
        for (int c = 0; c < 2; ++c) {
          const T* n = nat(j, c);
          T* v = rev(j, c);
          v[0] = n[0];
          for (int64_t k2 = 1; k2 < W; ++k2) v[k2] = n[W - k2];
        }
      }
      for (int j = 0; j < nj; ++j) {
        const int jm = nj - 1 - j;  // the mirror row
        const T *__restrict n_r = nat(j, 0), *__restrict n_i = nat(j, 1);
        const T *__restrict v_r = rev(jm, 0), *__restrict v_i = rev(jm, 1);
        const T *__restrict wn = cN.data(), *__restrict wr = cR.data();
        T* __restrict y = Y + (r * H + row[j]) * Wy * 2;
        if (!packed) {
          for (int64_t k2 = 0; k2 < W; ++k2) {
            y[2 * k2] = wn[k2] * n_r[k2] + wr[k2] * v_r[k2];
            y[2 * k2 + 1] = wn[k2] * n_i[k2] - wr[k2] * v_i[k2];
          }
          continue;
        }
        const T *__restrict cr = tr.data(), *__restrict ci = ti.data();
#pragma GCC ivdep  // y does not overlap the row buffers
        for (int64_t k = 0; k < half; ++k) {  // s·E at k and k + W/2, then Y[k]
          const int64_t h = k + half;
          const T ar = wn[k] * n_r[k] + wr[k] * v_r[k], ai = wn[k] * n_i[k] - wr[k] * v_i[k];
          const T br = wn[h] * n_r[h] + wr[h] * v_r[h], bi = wn[h] * n_i[h] - wr[h] * v_i[h];
          const T dr = ar - br, di = ai - bi;
          y[2 * k] = ar + br - (cr[k] * di + ci[k] * dr);
          y[2 * k + 1] = ai + bi + (cr[k] * dr - ci[k] * di);
        }
      }
    }
  });
}

// polar_grad with the cos and sin of P computed beforehand by ATen's vectorised kernels.
template <typename T>
void merge_grad_rows(const T* G, const T* A, const T* C, const T* S, T* GA, T* GP, int64_t R, const SpectrumLayout& L) {
  const int64_t H = L.H, Wh = L.Wh, Wo = L.Wo;
  at::parallel_for(0, R * H, 8, [&](int64_t lo, int64_t hi) {
    for (int64_t row = lo; row < hi; ++row) {
      const int64_t r = row / H, k1 = L.freq_row(row % H);
      const T* g = G + r * H * Wh * 2;
      for (int64_t o = row * Wo; o < (row + 1) * Wo; ++o) {
        T gr, gi;
        merge_entry_grad(g, L, k1, L.freq_col(o - row * Wo), gr, gi);
        polar_grad(A[o], C[o], S[o], gr, gi, GA[o], GP[o]);
      }
    }
  });
}

void check_rows(const at::Tensor& t, int64_t dim, const char* name) {
  TORCH_CHECK(t.dim() == dim && t.is_contiguous(), name, " must be a contiguous ", dim, "-d tensor");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> fourier_split_fwd_cpu(const at::Tensor& Xh, const at::Tensor& tol, int64_t W,
                                                         bool onesided, bool centered, bool log_amplitude) {
  check_rows(Xh, 4, "Xh");
  check_rows(tol, 1, "tol");
  const int64_t R = Xh.size(0), H = Xh.size(1);
  const auto L = SpectrumLayout::make(H, W, onesided, centered);
  TORCH_CHECK(Xh.size(2) == L.Wh && Xh.size(3) == 2, "Xh must be the real view of a half spectrum");
  TORCH_CHECK(tol.size(0) == R && tol.scalar_type() == Xh.scalar_type(), "tol must hold one value per image");
  auto A = at::empty({R, H, L.Wo}, Xh.options()), P = at::empty_like(A);
  dispatch(Xh, "fourier_split_fwd_cpu", [&]<typename T>() {
    split_rows<T>(in<T>(Xh), in<T>(tol), out<T>(A), out<T>(P), R, L, log_amplitude);
  });
  return {A, P};
}

at::Tensor fourier_split_grad_cpu(const at::Tensor& Xh, const at::Tensor& gA, const at::Tensor& gP, int64_t W,
                                  bool onesided, bool centered, bool log_amplitude) {
  const int64_t R = Xh.size(0), H = Xh.size(1);
  const auto L = SpectrumLayout::make(H, W, onesided, centered);
  auto Z = at::empty_like(Xh);
  dispatch(Xh, "fourier_split_grad_cpu", [&]<typename T>() {
    split_grad_rows<T>(in<T>(Xh), in<T>(gA), in<T>(gP), out<T>(Z), R, L, log_amplitude);
  });
  return Z;
}

// x [R, H, W] = Re IFFT2(A e^{iP}) for A, P [R, H, Wo]: merge_packed, then one complex IFFT2.
at::Tensor fourier_merge_fwd_cpu(const at::Tensor& A, const at::Tensor& P, int64_t W, bool onesided, bool centered,
                                 c10::string_view norm) {
  check_rows(A, 3, "A");
  check_rows(P, 3, "P");
  const int64_t R = A.size(0), H = A.size(1);
  const auto L = SpectrumLayout::make(H, W, onesided, centered);
  TORCH_CHECK(A.size(2) == L.Wo && P.sizes() == A.sizes(), "A and P must hold the stored spectrum");
  const bool packed = W % 2 == 0;
  // The W-point inverse's scale over the W/2-point one's.
  const double scale = !packed || norm == "forward" ? 1.0 : norm == "ortho" ? std::sqrt(0.5) : 0.5;
  auto Y = at::empty({R, H, packed ? W / 2 : W, 2}, A.options());
  dispatch(A, "fourier_merge_fwd_cpu", [&]<typename T>() {
    merge_packed<T>(in<T>(A), in<T>(P), out<T>(Y), R, L, scale);
  });
  auto y = at::fft_ifft2(at::view_as_complex(Y), c10::nullopt, {-2, -1}, norm);
  return packed ? at::view_as_real(y).reshape({R, H, W}) : at::real(y).contiguous();
}

std::tuple<at::Tensor, at::Tensor> fourier_merge_grad_cpu(const at::Tensor& G, const at::Tensor& A,
                                                          const at::Tensor& P, int64_t W, bool onesided,
                                                          bool centered) {
  const int64_t R = A.size(0), H = A.size(1);
  const auto L = SpectrumLayout::make(H, W, onesided, centered);
  auto gA = at::empty_like(A), gP = at::empty_like(P);
  const auto C = at::cos(P), S = at::sin(P);
  dispatch(A, "fourier_merge_grad_cpu", [&]<typename T>() {
    merge_grad_rows<T>(in<T>(G), in<T>(A), in<T>(C), in<T>(S), out<T>(gA), out<T>(gP), R, L);
  });
  return {gA, gP};
}

// Backward of fourier_split for x [R, H, W]: X = rfft2(x) is recomputed (cheaper than saving it),
// the pointwise kernel gives the half-spectrum gradient Z, and gx = irfft2(Z) with the adjoint norm.
at::Tensor fourier_split_bwd(const at::Tensor& x, const at::Tensor& gA, const at::Tensor& gP, bool onesided,
                             c10::string_view norm, bool centered, bool log_amplitude) {
  check_rows(x, 3, "x");
  const int64_t H = x.size(1), W = x.size(2);
  auto Xh = at::view_as_real(at::fft_rfft2(x, c10::nullopt, {-2, -1}, norm)).contiguous();
  auto ga = gA.contiguous(), gp = gP.contiguous();
  auto Z = SDK_TWIN(fourier_split_grad, x, Xh, ga, gp, W, onesided, centered, log_amplitude);
  return at::fft_irfft2(at::view_as_complex(Z), c10::IntArrayRef{H, W}, {-2, -1}, flipped(norm));
}

// Backward of fourier_merge for A, P [R, H, Wo] and gx [R, H, W]: G = rfft2(gx) with the adjoint
// norm, then the pointwise chain rule through A e^{iP}.
std::tuple<at::Tensor, at::Tensor> fourier_merge_bwd(const at::Tensor& A, const at::Tensor& P, const at::Tensor& gx,
                                                     bool onesided, c10::string_view norm, bool centered) {
  check_rows(A, 3, "A");
  check_rows(P, 3, "P");
  const int64_t W = gx.size(-1);
  auto G = at::view_as_real(at::fft_rfft2(gx.contiguous(), c10::nullopt, {-2, -1}, flipped(norm))).contiguous();
  return SDK_TWIN(fourier_merge_grad, A, G, A, P, W, onesided, centered);
}

}  // namespace sdekernels
