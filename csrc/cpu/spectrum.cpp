// CPU kernels of the radial power spectrum (SPEC §9) and its device-generic backward.
// The spectrum Y of x [B, C, H, W] is stored as [B, C, H·W·comp] (comp = 1: DCT, 2: re/im of the
// FFT); entry hw of the power is scale·Σ_comp y², averaged over channels when channel_mean.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstring>
#include <vector>

#include "../ops.h"
#include "../spectral_math.h"

namespace sdekernels {

// Channel sums of entry_power of one (sample, channel group) at every hw into P [HW] (in T, as the
// CUDA twin); psd_power of them is the entry's power.
template <typename T>
static void group_power(const T* Y, int64_t nc, int64_t HW, int comp, T* P) {
  std::fill(P, P + HW, T(0));
  for (int64_t c = 0; c < nc; ++c) {
    const T* y = Y + c * HW * comp;
    if (comp == 1) {
      for (int64_t i = 0; i < HW; ++i) P[i] += entry_power(y + i, 1);
    } else {
      for (int64_t i = 0; i < HW; ++i) P[i] += entry_power(y + 2 * i, 2);
    }
  }
}

at::Tensor radial_bin_fwd_cpu(const at::Tensor& Y, const at::Tensor& index, const at::Tensor& inv_count,
                              int64_t comp, double scale, bool channel_mean) {
  auto t = radial_bufs(Y, index, inv_count, comp, channel_mean);
  const int64_t HW = t.HW, bins = t.bins, nc = t.nc;
  auto res = at::zeros({t.Y.size(0), channel_mean ? 1 : t.Y.size(1), bins}, t.Y.options());
  dispatch(t.Y, "radial_bin_fwd_cpu", [&]<typename T>() {
    const T *py = in<T>(t.Y), *ic = in<T>(t.ic);
    const int64_t* idx = in<int64_t>(t.index);
    T* po = out<T>(res);
    at::parallel_for(0, t.groups, 1, [&](int64_t lo, int64_t hi) {
      std::vector<T> P(HW);
      for (int64_t r = lo; r < hi; ++r) {
        group_power<T>(py + r * nc * HW * comp, nc, HW, int(comp), P.data());
        T* o = po + r * bins;
        for (int64_t i = 0; i < HW; ++i) o[idx[i]] += psd_value(psd_power(P[i], T(scale), nc), i);
        for (int64_t j = 0; j < bins; ++j) o[j] *= ic[j];
      }
    });
  });
  return channel_mean ? res.squeeze(1) : res;
}

at::Tensor radial_bin_bwd_cpu(const at::Tensor& Y, const at::Tensor& grad, const at::Tensor& index,
                              const at::Tensor& inv_count, int64_t comp, double scale, bool channel_mean) {
  auto t = radial_bin_bwd_bufs(Y, grad, index, inv_count, comp, channel_mean);
  const int64_t HW = t.HW, bins = t.bins, nc = t.nc;
  dispatch(t.Y, "radial_bin_bwd_cpu", [&]<typename T>() {
    const T *py = in<T>(t.Y), *pg = in<T>(t.g), *ic = in<T>(t.ic);
    const int64_t* idx = in<int64_t>(t.index);
    T* pd = out<T>(t.dY);
    at::parallel_for(0, t.groups, 1, [&](int64_t lo, int64_t hi) {
      std::vector<T> P(HW), F(bins);
      for (int64_t r = lo; r < hi; ++r) {
        const int64_t off = r * nc * HW * comp;
        group_power<T>(py + off, nc, HW, int(comp), P.data());
        const T* g = pg + r * bins;
        for (int64_t j = 0; j < bins; ++j) F[j] = psd_bin_factor(T(scale), nc, g[j], ic[j]);
        // P becomes the factor dL/dy ÷ y of every entry at hw (the same for each channel of the group).
        for (int64_t i = 0; i < HW; ++i) P[i] = psd_grad_factor(psd_power(P[i], T(scale), nc), i, F[idx[i]]);
        for (int64_t c = 0; c < nc; ++c) {
          const T* y = py + off + c * HW * comp;
          T* d = pd + off + c * HW * comp;
          for (int64_t i = 0; i < HW * comp; ++i) d[i] = P[i / comp] * y[i];
        }
      }
    });
  });
  return t.dY;
}

// ---- Fused 2-D DCT path (CPU): one sample's planes stay in cache from x to the bins.
// The DCT-II matrix has D[k, n−1−i] = (−1)^k D[k, i], so along each axis the even coefficients
// are a product with the folded sums x_i + x_{n−1−i} and the odd ones with the differences: half
// the multiply-adds of a dense product. Inner loops run along contiguous rows; the hot functions
// are cloned for AVX-512 / AVX2 and picked at load time.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 11
#pragma GCC optimize("fp-contract=fast")  // fused multiply-adds in the products below (SDK_CLONES, ops.h)
#endif
#define SDK_INLINE inline __attribute__((always_inline))

template <typename T>
struct Axis {  // even/odd split of one axis' DCT matrix D [n, n]
  int64_t n, m, h;    // n, ⌈n/2⌉, ⌊n/2⌋
  const T* D;         // row-major D
  std::vector<T> ET;  // [m][m]: ET[j·m + l] = D[2l, j]
  std::vector<T> OT;  // [h][h]: OT[j·h + l] = D[2l+1, j]
  std::vector<T> DT;  // Dᵀ
  Axis(const T* D_, int64_t n_) : n(n_), m((n_ + 1) / 2), h(n_ / 2), D(D_), ET(m * m), OT(h * h), DT(n * n) {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) DT[j * n + i] = D[i * n + j];
    for (int64_t j = 0; j < m; ++j)
      for (int64_t l = 0; l < m; ++l) ET[j * m + l] = D[(2 * l) * n + j];
    for (int64_t j = 0; j < h; ++j)
      for (int64_t l = 0; l < h; ++l) OT[j * h + l] = D[(2 * l + 1) * n + j];
  }
};

// One vector register of T (64 bytes) and half of one, as GCC/Clang vector types: lowered to
// AVX-512, AVX2 or SSE by the clone being compiled.
template <typename T, int B> struct Vec { typedef T type __attribute__((vector_size(B))); };
template <typename T, int B>
SDK_INLINE typename Vec<T, B>::type vload(const T* p) { typename Vec<T, B>::type v; std::memcpy(&v, p, B); return v; }
template <typename T, int B>
SDK_INLINE void vstore(T* p, typename Vec<T, B>::type v) { std::memcpy(p, &v, B); }

// out[w0 : w0 + B/sizeof(T)] = Σ_{i<cnt} coef[i·cs] · in[i·is + w0 : …], the sum held in one register.
template <typename T, int B>
SDK_INLINE void combo_chunk(T* __restrict out, const T* __restrict coef, int64_t cs, const T* __restrict in, int64_t is,
                            int64_t cnt, int64_t w0) {
  typename Vec<T, B>::type acc = {};
  for (int64_t i = 0; i < cnt; ++i) acc += coef[i * cs] * vload<T, B>(in + i * is + w0);
  vstore<T, B>(out + w0, acc);
}

// out[0:len] = Σ_{i<cnt} coef[i·cs] · in[i·is + 0:len]: the product of a row of coefficients with
// rows of `in`, one register-wide chunk of the output at a time.
template <typename T>
SDK_INLINE void combo(T* __restrict out, const T* __restrict coef, int64_t cs, const T* __restrict in, int64_t is,
                      int64_t cnt, int64_t len) {
  constexpr int64_t V = 64 / sizeof(T);
  int64_t w0 = 0;
  for (; w0 + V <= len; w0 += V) combo_chunk<T, 64>(out, coef, cs, in, is, cnt, w0);
  if (w0 + V / 2 <= len) { combo_chunk<T, 32>(out, coef, cs, in, is, cnt, w0); w0 += V / 2; }
  for (; w0 < len; ++w0) {
    T acc = 0;
    for (int64_t i = 0; i < cnt; ++i) acc += coef[i * cs] * in[i * is + w0];
    out[w0] = acc;
  }
}

// Four outputs at once, out + r·os = Σ_i coef[r·cr + i·cs] · in[i·is + …] for r < 4: each loaded
// chunk of `in` feeds four independent accumulators, so the sums are not bound by FMA latency.
template <typename T, int B>
SDK_INLINE void combo4_chunk(T* __restrict out, int64_t os, const T* __restrict coef, int64_t cs, int64_t cr,
                             const T* __restrict in, int64_t is, int64_t cnt, int64_t w0) {
  typename Vec<T, B>::type a0 = {}, a1 = {}, a2 = {}, a3 = {};
  for (int64_t i = 0; i < cnt; ++i) {
    const auto v = vload<T, B>(in + i * is + w0);
    const T* c = coef + i * cs;
    a0 += c[0] * v;
    a1 += c[cr] * v;
    a2 += c[2 * cr] * v;
    a3 += c[3 * cr] * v;
  }
  vstore<T, B>(out + w0, a0);
  vstore<T, B>(out + os + w0, a1);
  vstore<T, B>(out + 2 * os + w0, a2);
  vstore<T, B>(out + 3 * os + w0, a3);
}

// R rows of combo sharing `in`: row r has coefficients coef + r·cr and output out + r·os.
template <typename T>
SDK_INLINE void combo_rows(T* __restrict out, int64_t os, const T* __restrict coef, int64_t cs, int64_t cr,
                           const T* __restrict in, int64_t is, int64_t cnt, int64_t len, int64_t R) {
  constexpr int64_t V = 64 / sizeof(T);
  int64_t r = 0;
  for (; r + 4 <= R; r += 4) {
    T* o = out + r * os;
    const T* c = coef + r * cr;
    int64_t w0 = 0;
    for (; w0 + V <= len; w0 += V) combo4_chunk<T, 64>(o, os, c, cs, cr, in, is, cnt, w0);
    if (w0 + V / 2 <= len) { combo4_chunk<T, 32>(o, os, c, cs, cr, in, is, cnt, w0); w0 += V / 2; }
    for (; w0 < len; ++w0)
      for (int64_t q = 0; q < 4; ++q) {
        T acc = 0;
        for (int64_t i = 0; i < cnt; ++i) acc += c[q * cr + i * cs] * in[i * is + w0];
        o[q * os + w0] = acc;
      }
  }
  for (; r < R; ++r) combo(out + r * os, coef + r * cr, cs, in, is, cnt, len);
}

template <typename T>
SDK_INLINE T plane_sum(const T* __restrict x, int64_t n) {
  constexpr int64_t V = 64 / sizeof(T);
  typename Vec<T, 64>::type acc = {};
  int64_t i = 0;
  for (; i + V <= n; i += V) acc += vload<T, 64>(x + i);
  T sum = 0;
  for (; i < n; ++i) sum += x[i];
  for (int64_t v = 0; v < V; ++v) sum += acc[v];
  return sum;
}

// Y = D_H (x − mean) D_Wᵀ of one plane [H, W]. Scratch: S, A, Tm [H·W], row [2W].
template <typename T>
SDK_INLINE void dct2_plane(const T* __restrict x, T* __restrict Y, const Axis<T>& ah, const Axis<T>& aw,
                           T* __restrict S, T* __restrict A, T* __restrict Tm, T* __restrict row) {
  const int64_t H = ah.n, W = aw.n;
  const T mean = plane_sum(x, H * W) / T(H * W);
  for (int64_t i = 0; i < ah.h; ++i) {  // fold along H (the mean enters the sums only)
    const T *top = x + i * W, *bot = x + (H - 1 - i) * W;
    T *s = S + i * W, *a = A + i * W;
    for (int64_t w = 0; w < W; ++w) { s[w] = top[w] + bot[w] - T(2) * mean; a[w] = top[w] - bot[w]; }
  }
  if (H % 2)
    for (int64_t w = 0; w < W; ++w) S[ah.h * W + w] = x[ah.h * W + w] - mean;
  // Even rows of D_H act on S, odd rows on A (rows 2r and 2r + 1 of Tm, four at a time).
  combo_rows(Tm, 2 * W, ah.D, 1, 2 * H, S, W, ah.m, W, ah.m);
  combo_rows(Tm + W, 2 * W, ah.D + H, 1, 2 * H, A, W, ah.h, W, ah.h);
  // Along W: fold every row of Tm (into S: sums, A: differences), then the two half-size products
  // for all rows (into Tm's storage, reused), then interleave even and odd columns into Y.
  T *ts = S, *ta = A, *ye = Tm, *yo = Tm + H * aw.m;
  for (int64_t k = 0; k < H; ++k) {
    const T* __restrict t = Tm + k * W;
    T *s = ts + k * aw.m, *a = ta + k * aw.h;
    for (int64_t j = 0; j < aw.h; ++j) s[j] = t[j] + t[W - 1 - j];
    for (int64_t j = 0; j < aw.h; ++j) a[j] = t[j] - t[W - 1 - j];
    if (W % 2) s[aw.h] = t[aw.h];
  }
  (void)row;
  combo_rows(ye, aw.m, ts, 1, aw.m, aw.ET.data(), aw.m, aw.m, aw.m, H);
  combo_rows(yo, aw.h, ta, 1, aw.h, aw.OT.data(), aw.h, aw.h, aw.h, H);
  for (int64_t k = 0; k < H; ++k) {
    T* __restrict y = Y + k * W;
    const T *e = ye + k * aw.m, *o = yo + k * aw.h;
    for (int64_t l = 0; l < aw.h; ++l) { y[2 * l] = e[l]; y[2 * l + 1] = o[l]; }
    if (W % 2) y[W - 1] = e[aw.h];
  }
}

// dx = D_Hᵀ dY D_W of one plane (the adjoint of dct2_plane without the centring, whose adjoint
// is the identity here: the DC gradient is 0). Scratch: U, Ve, Vo [H·W], row [2W].
template <typename T>
SDK_INLINE void idct2_plane(const T* __restrict dY, T* __restrict dx, const Axis<T>& ah, const Axis<T>& aw,
                            T* __restrict U, T* __restrict Ve, T* __restrict Vo, T* __restrict row) {
  const int64_t H = ah.n, W = aw.n;
  // Along W: U[k] = dY[k] D_W from the even and odd rows of D_W (Ve, Vo hold the halves), unfolded.
  T *ue = Ve, *uo = Vo;
  (void)row;
  combo_rows(ue, aw.m, dY, 2, W, aw.D, 2 * W, aw.m, aw.m, H);
  combo_rows(uo, aw.h, dY + 1, 2, W, aw.D + W, 2 * W, aw.h, aw.h, H);
  for (int64_t k = 0; k < H; ++k) {
    T* __restrict u = U + k * W;
    const T *e = ue + k * aw.m, *o = uo + k * aw.h;
    for (int64_t j = 0; j < aw.h; ++j) u[j] = e[j] + o[j];
    for (int64_t j = 0; j < aw.h; ++j) u[W - 1 - j] = e[j] - o[j];
    if (W % 2) u[aw.h] = e[aw.h];
  }
  // Along H: Ve[i] = Σ_{k even} D_H[k, i] U[k], Vo[i] = Σ_{k odd} D_H[k, i] U[k].
  combo_rows(Ve, W, ah.D, 2 * H, 1, U, 2 * W, ah.m, W, ah.m);
  combo_rows(Vo, W, ah.D + H, 2 * H, 1, U + W, 2 * W, ah.h, W, ah.h);
  for (int64_t i = 0; i < ah.h; ++i) {  // unfold along H
    const T *e = Ve + i * W, *o = Vo + i * W;
    T *top = dx + i * W, *bot = dx + (H - 1 - i) * W;
    for (int64_t w = 0; w < W; ++w) { top[w] = e[w] + o[w]; bot[w] = e[w] - o[w]; }
  }
  if (H % 2) std::copy(Ve + ah.h * W, Ve + (ah.h + 1) * W, dx + ah.h * W);
}

// Forward of samples [lo, hi): spectra into Y (if given), binned power into out [B, G, bins].
template <typename T>
SDK_INLINE void psd_fwd_range(const T* x, T* Y, T* out, const int64_t* idx, const T* ic, const Axis<T>& ah,
                              const Axis<T>& aw, int64_t C, int64_t bins, bool channel_mean, int64_t lo, int64_t hi) {
  const int64_t H = ah.n, W = aw.n, HW = H * W;
  std::vector<T> buf(5 * HW + 4 * W);
  T *S = buf.data(), *A = S + HW, *Tm = A + HW, *P = Tm + HW, *Yl = P + HW, *row = Yl + HW;
  for (int64_t b = lo; b < hi; ++b) {
    std::fill(P, P + HW, T(0));
    for (int64_t c = 0; c < C; ++c) {
      const int64_t off = (b * C + c) * HW;
      T* y = Y ? Y + off : Yl;
      dct2_plane(x + off, y, ah, aw, S, A, Tm, row);
      if (channel_mean) {
        for (int64_t i = 0; i < HW; ++i) P[i] += entry_power(y + i, 1);
      } else {
        T* o = out + (b * C + c) * bins;
        for (int64_t i = 0; i < HW; ++i) o[idx[i]] += psd_value(entry_power(y + i, 1), i);
        for (int64_t j = 0; j < bins; ++j) o[j] *= ic[j];
      }
    }
    if (channel_mean) {
      T* o = out + b * bins;
      for (int64_t i = 0; i < HW; ++i) o[idx[i]] += psd_value(psd_power(P[i], T(1), C), i);
      for (int64_t j = 0; j < bins; ++j) o[j] *= ic[j];
    }
  }
}

// Backward of samples [lo, hi) from the saved spectra Y and the bin gradients g [B, G, bins].
template <typename T>
SDK_INLINE void psd_bwd_range(const T* Y, const T* g, T* dx, const int64_t* idx, const T* ic, const Axis<T>& ah,
                              const Axis<T>& aw, int64_t C, int64_t bins, bool channel_mean, int64_t lo, int64_t hi) {
  const int64_t H = ah.n, W = aw.n, HW = H * W;
  std::vector<T> buf(5 * HW + 2 * W + bins);
  T *U = buf.data(), *Ve = U + HW, *Vo = Ve + HW, *row = Vo + HW, *F = row + 2 * W, *dY = F + HW, *fb = dY + HW;
  for (int64_t b = lo; b < hi; ++b) {
    if (channel_mean) {  // F = dL/dy ÷ y at each (u, v), shared by the channels
      std::fill(F, F + HW, T(0));
      for (int64_t c = 0; c < C; ++c) {
        const T* y = Y + (b * C + c) * HW;
        for (int64_t i = 0; i < HW; ++i) F[i] += entry_power(y + i, 1);
      }
      const T* gb = g + b * bins;
      for (int64_t j = 0; j < bins; ++j) fb[j] = psd_bin_factor(T(1), C, gb[j], ic[j]);
      for (int64_t i = 0; i < HW; ++i) F[i] = psd_grad_factor(psd_power(F[i], T(1), C), i, fb[idx[i]]);
    }
    for (int64_t c = 0; c < C; ++c) {
      const int64_t off = (b * C + c) * HW;
      const T* y = Y + off;
      if (channel_mean) {
        for (int64_t i = 0; i < HW; ++i) dY[i] = F[i] * y[i];
      } else {
        const T* gb = g + (b * C + c) * bins;
        for (int64_t i = 0; i < HW; ++i)
          dY[i] = psd_grad_factor(entry_power(y + i, 1), i, psd_bin_factor(T(1), 1, gb[idx[i]], ic[idx[i]])) * y[i];
      }
      idct2_plane(dY, dx + off, ah, aw, U, Ve, Vo, row);
    }
  }
}

SDK_CLONES static void psd_fwd_f32(const float* x, float* Y, float* out, const int64_t* idx, const float* ic,
                                   const Axis<float>& ah, const Axis<float>& aw, int64_t C, int64_t bins, bool mean,
                                   int64_t lo, int64_t hi) {
  psd_fwd_range<float>(x, Y, out, idx, ic, ah, aw, C, bins, mean, lo, hi);
}
SDK_CLONES static void psd_fwd_f64(const double* x, double* Y, double* out, const int64_t* idx, const double* ic,
                                   const Axis<double>& ah, const Axis<double>& aw, int64_t C, int64_t bins, bool mean,
                                   int64_t lo, int64_t hi) {
  psd_fwd_range<double>(x, Y, out, idx, ic, ah, aw, C, bins, mean, lo, hi);
}
SDK_CLONES static void psd_bwd_f32(const float* Y, const float* g, float* dx, const int64_t* idx, const float* ic,
                                   const Axis<float>& ah, const Axis<float>& aw, int64_t C, int64_t bins, bool mean,
                                   int64_t lo, int64_t hi) {
  psd_bwd_range<float>(Y, g, dx, idx, ic, ah, aw, C, bins, mean, lo, hi);
}
SDK_CLONES static void psd_bwd_f64(const double* Y, const double* g, double* dx, const int64_t* idx, const double* ic,
                                   const Axis<double>& ah, const Axis<double>& aw, int64_t C, int64_t bins, bool mean,
                                   int64_t lo, int64_t hi) {
  psd_bwd_range<double>(Y, g, dx, idx, ic, ah, aw, C, bins, mean, lo, hi);
}
static void psd_fwd(const float* a, float* b, float* c, const int64_t* i, const float* d, const Axis<float>& e,
                    const Axis<float>& f, int64_t C, int64_t n, bool m, int64_t lo, int64_t hi) { psd_fwd_f32(a, b, c, i, d, e, f, C, n, m, lo, hi); }
static void psd_fwd(const double* a, double* b, double* c, const int64_t* i, const double* d, const Axis<double>& e,
                    const Axis<double>& f, int64_t C, int64_t n, bool m, int64_t lo, int64_t hi) { psd_fwd_f64(a, b, c, i, d, e, f, C, n, m, lo, hi); }
static void psd_bwd(const float* a, const float* b, float* c, const int64_t* i, const float* d, const Axis<float>& e,
                    const Axis<float>& f, int64_t C, int64_t n, bool m, int64_t lo, int64_t hi) { psd_bwd_f32(a, b, c, i, d, e, f, C, n, m, lo, hi); }
static void psd_bwd(const double* a, const double* b, double* c, const int64_t* i, const double* d, const Axis<double>& e,
                    const Axis<double>& f, int64_t C, int64_t n, bool m, int64_t lo, int64_t hi) { psd_bwd_f64(a, b, c, i, d, e, f, C, n, m, lo, hi); }

std::tuple<at::Tensor, at::Tensor> radial_psd_fwd_cpu(const at::Tensor& x_, const at::Tensor& index_,
                                                      const at::Tensor& inv_count_, const at::Tensor& DH_,
                                                      const at::Tensor& DW_, bool channel_mean, bool save_spectrum) {
  auto x = x_.contiguous(), index = index_.contiguous(), ic = inv_count_.contiguous();
  auto DH = DH_.contiguous(), DW = DW_.contiguous();
  TORCH_CHECK(x.dim() == 4, "radial_psd_fwd: x must be [B, C, H, W]");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), bins = ic.numel();
  TORCH_CHECK(index.scalar_type() == at::kLong && index.numel() == H * W, "radial_psd_fwd: bad bin index map");
  TORCH_CHECK(DH.size(0) == H && DW.size(0) == W && DH.scalar_type() == x.scalar_type() &&
                  DW.scalar_type() == x.scalar_type() && ic.scalar_type() == x.scalar_type(),
              "radial_psd_fwd: DH, DW, inv_count must match x");
  auto out = at::zeros({B, channel_mean ? 1 : C, bins}, x.options());
  auto Y = save_spectrum ? at::empty_like(x) : at::empty({0}, x.options());
  dispatch(x, "radial_psd_fwd_cpu", [&]<typename T>() {
    const Axis<T> ah(DH.const_data_ptr<T>(), H), aw(DW.const_data_ptr<T>(), W);
    const T* px = x.const_data_ptr<T>();
    T* py = save_spectrum ? Y.data_ptr<T>() : nullptr;
    T* po = out.data_ptr<T>();
    const int64_t* idx = index.const_data_ptr<int64_t>();
    const T* pic = ic.const_data_ptr<T>();
    at::parallel_for(0, B, 1, [&](int64_t lo, int64_t hi) {
      psd_fwd(px, py, po, idx, pic, ah, aw, C, bins, channel_mean, lo, hi);
    });
  });
  return {channel_mean ? out.squeeze(1) : out, Y};
}

static at::Tensor radial_psd_bwd_dct_cpu(const at::Tensor& Y_, const at::Tensor& grad_, const at::Tensor& index_,
                                         const at::Tensor& inv_count_, const at::Tensor& DH_, const at::Tensor& DW_,
                                         bool channel_mean) {
  auto Y = Y_.contiguous(), g = grad_.contiguous(), index = index_.contiguous(), ic = inv_count_.contiguous();
  auto DH = DH_.contiguous(), DW = DW_.contiguous();
  const int64_t B = Y.size(0), C = Y.size(1), H = Y.size(2), W = Y.size(3), bins = ic.numel();
  TORCH_CHECK(g.numel() == B * (channel_mean ? 1 : C) * bins, "radial_psd_bwd: grad must be [B, bins] or [B, C, bins]");
  auto dx = at::empty_like(Y);
  dispatch(Y, "radial_psd_bwd_cpu", [&]<typename T>() {
    const Axis<T> ah(DH.const_data_ptr<T>(), H), aw(DW.const_data_ptr<T>(), W);
    const T *py = Y.const_data_ptr<T>(), *pg = g.const_data_ptr<T>();
    T* pd = dx.data_ptr<T>();
    const int64_t* idx = index.const_data_ptr<int64_t>();
    const T* pic = ic.const_data_ptr<T>();
    at::parallel_for(0, B, 1, [&](int64_t lo, int64_t hi) {
      psd_bwd(py, pg, pd, idx, pic, ah, aw, C, bins, channel_mean, lo, hi);
    });
  });
  return dx;
}

// dL/dx of the binned power spectrum from the saved spectrum Y of the centred x (DCT: Y [B, C, H, W]
// with DH, DW given; FFT: the real view [B, C, H, W, 2] of fft2, DH and DW absent). The bin
// gradients are scattered onto Y by the elementwise kernel and the adjoint transform maps them back
// (D_Hᵀ dY D_W by GEMMs, or HW·Re ifft2); on CPU the DCT case runs fused per sample instead.
at::Tensor radial_psd_bwd(const at::Tensor& Y_, const at::Tensor& grad, const at::Tensor& index,
                          const at::Tensor& inv_count, const std::optional<at::Tensor>& DH,
                          const std::optional<at::Tensor>& DW, bool channel_mean) {
  TORCH_CHECK(DH.has_value() == DW.has_value(), "radial_psd_bwd: DH and DW must be given together");
  auto Y = Y_.contiguous();
  const int64_t B = Y.size(0), C = Y.size(1), H = Y.size(2), W = Y.size(3);
  if (DH.has_value()) {
    TORCH_CHECK(Y.dim() == 4, "radial_psd_bwd: Y must be [B, C, H, W] for the DCT");
    if (!Y.is_cuda()) return radial_psd_bwd_dct_cpu(Y, grad, index, inv_count, *DH, *DW, channel_mean);
    auto dY = SDK_TWIN(radial_bin_bwd, Y, Y.view({B, C, H * W}), grad, index, inv_count, 1, 1.0, channel_mean);
    return at::matmul(at::matmul(DH->mT(), dY.view({B, C, H, W})), *DW);
  }
  TORCH_CHECK(Y.dim() == 5 && Y.size(4) == 2, "radial_psd_bwd: Y must be [B, C, H, W, 2] for the FFT");
  auto dY = SDK_TWIN(radial_bin_bwd, Y, Y.view({B, C, H * W * 2}), grad, index, inv_count, 2, 1.0 / double(H * W),
                     channel_mean);
  auto dYc = at::view_as_complex(dY.view({B, C, H, W, 2}));
  return at::real(at::fft_ifft2(dYc)).mul(double(H * W)).contiguous();
}

}  // namespace sdekernels
