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

}  // namespace sdekernels
