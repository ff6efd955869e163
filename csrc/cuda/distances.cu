// CUDA backward kernels of the spectral distances (SPEC §5): one thread block per batch row. The
// per-entry math and the accumulation policy are spectral_math.h's, shared with cpu/distances.cpp.
#include "kernel.h"

namespace sdekernels::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void hellinger_bwd_kernel(const T* __restrict__ A, const T* __restrict__ B, const T* __restrict__ grad,
                                     T* __restrict__ dA, T* __restrict__ dB, int64_t r, T power, bool squared) {
  using Acc = acc_t<T>;
  __shared__ Acc scratch[kThreads / 32];
  const int64_t row = blockIdx.x;
  const T *a = A + row * r, *b = B + row * r;
  Acc ta = 0, tb = 0, bad = 0;
  for (int64_t i = threadIdx.x; i < r; i += kThreads) {
    ta = fmax(ta, Acc(a[i]));  // fmax drops a NaN, which `bad` counts
    tb = fmax(tb, Acc(b[i]));
    bad += !(a[i] >= T(0)) + !(b[i] >= T(0));
  }
  if (block_sum(bad, scratch, kThreads) > 0) {  // outside the domain: NaN (as the reference)
    for (int64_t i = threadIdx.x; i < r; i += kThreads) dA[row * r + i] = dB[row * r + i] = T(NAN);
    return;
  }
  // S/c with c = hellinger_row_scale; the gradient wrt S is that wrt S/c times 1/c
  const T ua = T(1) / hellinger_row_scale(T(block_max(ta, scratch, kThreads)), power);
  const T ub = T(1) / hellinger_row_scale(T(block_max(tb, scratch, kThreads)), power);
  Acc za = 0, zb = 0;
  for (int64_t i = threadIdx.x; i < r; i += kThreads) { za += spow(a[i] * ua, power); zb += spow(b[i] * ub, power); }
  const Acc Za = block_sum(za, scratch, kThreads), Zb = block_sum(zb, scratch, kThreads);
  const T ia = inv_sum<T>(Za), ib = inv_sum<T>(Zb);
  Acc bc = 0, la = 0, lb = 0;
  for (int64_t i = threadIdx.x; i < r; i += kThreads) {
    const T pt = spow(a[i] * ua, power) * ia, qt = spow(b[i] * ub, power) * ib, rt = hellinger_root(pt, qt);
    bc += rt;
    la += hellinger_live(pt, rt);
    lb += hellinger_live(qt, rt);
  }
  const Acc BC = block_sum(bc, scratch, kThreads);
  const T CA = hellinger_c<T>(floored(Za) ? 0.0 : block_sum(la, scratch, kThreads), Za);
  const T CB = hellinger_c<T>(floored(Zb) ? 0.0 : block_sum(lb, scratch, kThreads), Zb);
  const T scale = hellinger_scale<T>(grad[row], 1.0 - BC, squared);
  for (int64_t i = threadIdx.x; i < r; i += kThreads) {
    const T sa = a[i] * ua, sb = b[i] * ub;
    const T pt = spow(sa, power) * ia, qt = spow(sb, power) * ib, rt = hellinger_root(pt, qt);
    dA[row * r + i] = hellinger_entry_grad(scale, dh2_dp(pt, rt), CA, ia, dspow(sa, power) * ua);
    dB[row * r + i] = hellinger_entry_grad(scale, dh2_dp(qt, rt), CB, ib, dspow(sb, power) * ub);
  }
}

// G = dL/dM and, when weighted, dL/dS_a, dL/dS_b. Dynamic shared memory: w_a, w_b, gw_a, gw_b (4k values).
template <typename T>
__global__ void subspace_coef_kernel(const T* __restrict__ Ms, const T* __restrict__ grad, const T* __restrict__ SA,
                                     const T* __restrict__ SB, T* __restrict__ Gs, T* __restrict__ dSA,
                                     T* __restrict__ dSB, int64_t k) {
  using Acc = acc_t<T>;
  __shared__ Acc scratch[kThreads / 32];
  const int64_t row = blockIdx.x, kk = k * k;
  const T *M = Ms + row * kk, g = grad[row];
  T* G = Gs + row * kk;
  if (SA == nullptr) {
    for (int64_t i = threadIdx.x; i < kk; i += kThreads) G[i] = subspace_grad(g, M[i], k);
    return;
  }
  const T *Sa = SA + row * k, *Sb = SB + row * k;
  T *wa = dynamic_smem<T>(), *wb = wa + k, *ga = wb + k, *gb = ga + k;
  Acc za = 0, zb = 0;
  for (int64_t i = threadIdx.x; i < k; i += kThreads) { za += Sa[i] * Sa[i]; zb += Sb[i] * Sb[i]; }
  const Acc Za = block_sum(za, scratch, kThreads), Zb = block_sum(zb, scratch, kThreads);
  const T ia = inv_sum<T>(Za), ib = inv_sum<T>(Zb);
  for (int64_t i = threadIdx.x; i < k; i += kThreads) { wa[i] = spectrum_weight(Sa[i], ia); wb[i] = spectrum_weight(Sb[i], ib); }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < kk; e += kThreads) G[e] = subspace_grad_weighted(g, wa[e / k], wb[e % k], M[e]);
  for (int64_t i = threadIdx.x; i < k; i += kThreads) {
    Acc row_acc = 0, col_acc = 0;
    for (int64_t j = 0; j < k; ++j) {
      row_acc += subspace_term(wb[j], M[i * k + j]);
      col_acc += subspace_term(wa[j], M[j * k + i]);
    }
    ga[i] = subspace_grad_w(g, wa[i], row_acc);
    gb[i] = subspace_grad_w(g, wb[i], col_acc);
  }
  __syncthreads();
  Acc ca = 0, cb = 0;
  for (int64_t i = threadIdx.x; i < k; i += kThreads) { ca += ga[i] * wa[i]; cb += gb[i] * wb[i]; }
  const T CA = sum_term<T>(floored(Za) ? 0.0 : block_sum(ca, scratch, kThreads), Za);
  const T CB = sum_term<T>(floored(Zb) ? 0.0 : block_sum(cb, scratch, kThreads), Zb);
  for (int64_t j = threadIdx.x; j < k; j += kThreads) {
    dSA[row * k + j] = weight_grad(Sa[j], ia, ga[j], CA);
    dSB[row * k + j] = weight_grad(Sb[j], ib, gb[j], CB);
  }
}

}  // namespace

template <typename T>
int hellinger_bwd(const T* a, const T* b, const T* g, T* da, T* db, int64_t rows, int64_t r, double power,
                  bool squared, void* stream) {
  return launch(hellinger_bwd_kernel<T>, rows, kThreads, 0, stream, a, b, g, da, db, r, T(power), squared);
}

template <typename T>
int subspace_coef(const T* M, const T* g, const T* Sa, const T* Sb, T* G, T* dSa, T* dSb, int64_t rows, int64_t k,
                  void* stream) {
  const size_t smem = Sa ? 4 * k * sizeof(T) : 0;
  return launch(subspace_coef_kernel<T>, rows, kThreads, smem, stream, M, g, Sa, Sb, G, dSa, dSb, k);
}

}  // namespace sdekernels::cuda

SDK_INSTANTIATE(sdekernels::cuda::hellinger_bwd)
SDK_INSTANTIATE(sdekernels::cuda::subspace_coef)
