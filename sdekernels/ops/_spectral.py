"""The spectral core (private): the decompositions, stabilisers and backwards that the SVD-based ops share.

ops/svd.py (svd_topk, singular_values, spectral_partition, decompose) and ops/enhance.py
(spectral_enhance) are thin op modules on top of it: kernels, custom ops, registry entries. Every
function works on batches of matrices F3 [R, m, n] in the work dtype, on the short side
A = F (m <= n) or Fᵀ, r = min(m, n). torch.linalg.eigh / eigvalsh are called from this module
alone (python_tests/test_layout.py holds that).

Products
- triton_bmm(a, b, out_dtype): batched GEMM on strided operands (Triton; fp32/fp64 accumulation);
  mm_for(x): it on CUDA (or inside triton_on_cpu()), ATen (MKL) otherwise.
Scaling (SPEC §10)
- scaled_rows(F3) -> (finite, F3/c, c): each element divided by its power of two c (exact; c = 1
  and no pass over F where that changes no result), the non-finite rows zeroed; unscale(c, *ts);
  fix_signs(U, V) (largest entry of each u_i positive).
Stabilisers (SPEC §1), relative to σ_1, never absolute
- safe_inv(σ, σ_1) = σ/(σ² + ε'), lorentz(x, σ_1, dtype) = x/(x² + ε); lorentz_rel, INV_REL (as csrc/spectral_math.h).
Gram eigensolver
- eigh_desc(G); gram_eigh(F3, finite, vectors, fast): eigenpairs (or values) of the short-side
  Gram, descending; use_gram(r): r <= GRAM_MAX_R; fast_gram(r, dtype): float32 Gram and eigh.
Randomized iteration and Rayleigh–Ritz
- default_tol(dtype), ritz_error(RtR, s, k, unit): a-posteriori bounds from the Ritz residuals (numpy,
  on the host), for the Ritz triplets or the lifted ones (_triplets: A V_k, one product further);
  subspace_basis(...): adaptive randomized block subspace iteration, its certified top-k triplets,
  continued in a block Krylov space (_krylov) where the iteration converges slowly;
  topk(F3, k, ...) -> TopK(U, S, V, W, S_all, backward): the top-k triplets after a float64
  Rayleigh–Ritz step, and `backward`, the gradient that applies: "exact" (W, the full short-side
  eigenbasis, and all σ kept) or "truncated" (SPEC §1's formula; W and S_all empty).
Backwards
- truncated_grad(U, S, V, gU, gS, gV): SPEC §1's truncated-SVD gradient (the extension's kernel,
  else truncated_backward_math);
- exact_grad_short(A, Ws, Wl, W, σ, gWs, gS, gWl): the exact top-k gradient in the short-side
  frame from the full eigenbasis (the extension's kernel, else exact_backward_math).
Partition and enhancement arithmetic (SPEC §2, §4)
- IQR_C; partition_counts, energies, energy_fractions, sigma_den; draw_xi, seeded_xi (ξ), enhance_coefs (c, s_n, δ_k),
  full_delta (δ over all r values).
Thin SVD (ops/svd.py's `decompose`, which SDELoss calls once per feature matrix)
- thin_svd(F3) -> (U, S, V): all r triplets from one float64 eigh; thin_svd_grad: their exact gradient.
Test matrices (registry entries, tests, benchmarks)
- planted(...): exact low-rank triplets over a tail; spiked(...): noise plus a planted spike.
"""
import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .. import _ext
from . import _triton as kt
from .._core import HAS_TRITON, pow2_scale, use_triton, work_dtype

IQR_C = 1.5         # SPEC §2's IQR fence factor (τ_strong = max(τ_noise, q3 + IQR_C·(q3 − q1))), the default
OVERSAMPLE = 8      # SPEC §1's default extra columns of the randomized basis (q = k + OVERSAMPLE)
GRAM_MAX_R = 2048   # up to this r = min(m, n) the Gram eigen-solver (exact, measured faster here) is used
DEFAULT_SEED = 0x5DE
FIRST_TEST = 2      # the iteration of subspace_basis's first test (see there)
KRYLOV_AFTER = 4    # subspace_basis turns to the Krylov space where more iterations than this are predicted
BACKWARDS = ("exact", "truncated")

# Stabilisers of the backward (SPEC §1), relative to σ_1 (never absolute, SPEC §10): 1/(σ_j² − σ_i²)
# -> x/(x² + ε) with ε = (lorentz_rel(dtype)·σ_1²)², and 1/σ -> σ/(σ² + ε') with ε' = INV_REL·σ_1²;
# both 0 when σ_1 = 0. Callers first scale each batch element by a power of two (scaled_rows), so σ_1
# is of order 1 and ε stays far inside the float64 range. The same widths are in csrc/spectral_math.h.
INV_REL = 1e-20


def lorentz_rel(dtype: torch.dtype) -> float:
    """The Lorentzian's width over σ_1²: the machine epsilon of the working dtype, the resolution of σ²
    next to σ_1². A fixed width would damp gaps that the working precision resolves (float64 would
    miss its exact gradient wherever a gap is below the float32-sized width)."""
    return torch.finfo(work_dtype(dtype)).eps

if HAS_TRITON:
    import triton
    import triton.language as tl

    from ._triton import mma

    @triton.jit(do_not_specialize=["M", "N", "K"])
    def _bmm_kernel(A, B, C, M, N, K, sa0, sa1, sa2, sb0, sb1, sb2, sc0, sc1, sc2,
                    DOT: tl.constexpr, PRECISION: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                    BK: tl.constexpr):
        # C[b] = A[b] @ B[b] for strided operands (a transpose is a stride swap, a shared operand a
        # zero batch stride); operands are loaded as DOT, accumulated in fp32 (fp64 for fp64).
        b = tl.program_id(0).to(tl.int64)
        rm = tl.program_id(1) * BM + tl.arange(0, BM)
        rn = tl.program_id(2) * BN + tl.arange(0, BN)
        a_ptr = A + b * sa0 + rm[:, None] * sa1
        b_ptr = B + b * sb0 + rn[None, :] * sb2
        acc = tl.zeros([BM, BN], tl.float64 if DOT == tl.float64 else tl.float32)
        for k0 in range(0, K, BK):
            rk = k0 + tl.arange(0, BK)
            a = tl.load(a_ptr + rk[None, :] * sa2, mask=(rm[:, None] < M) & (rk[None, :] < K), other=0).to(DOT)
            x = tl.load(b_ptr + rk[:, None] * sb1, mask=(rk[:, None] < K) & (rn[None, :] < N), other=0).to(DOT)
            acc = mma(acc, a, x, PRECISION)
        tl.store(C + b * sc0 + rm[:, None] * sc1 + rn[None, :] * sc2, acc.to(C.dtype.element_ty),
                 mask=(rm[:, None] < M) & (rn[None, :] < N))

    def _bmm_host(A, B, C, *_, **__):
        """What _bmm_kernel computes, in ATen: its result where `python -m sdekernels aot` records a
        launch on real data instead of running it, so that the host code after it (the solvers'
        data-dependent paths) sees the numbers it would see on a GPU."""
        acc = torch.float64 if C.dtype == torch.float64 else torch.float32
        C.copy_(torch.matmul(A.to(acc), B.to(acc)))

    _bmm_kernel.host = _bmm_host


def _bstride(x: Tensor, i: int) -> int:
    return x.stride(i) if x.shape[i] != 1 else 0


def triton_bmm(a: Tensor, b: Tensor, out_dtype: torch.dtype) -> Tensor:
    """a [R|1, M, K] @ b [R|1, K, N] -> [R, M, N] in out_dtype (fp64 accumulation for fp64 output)."""
    R = max(a.shape[0], b.shape[0])
    M, K = a.shape[-2:]
    N = b.shape[-1]
    c = torch.empty((R, M, N), device=a.device, dtype=out_dtype)
    if c.numel() == 0:
        return c
    if K == 0:
        return c.zero_()
    dot = kt.operand(a.dtype, b.dtype, out=out_dtype)
    if dot == torch.float64:  # Triton 3.6 fails to compile a bf16/fp16 -> fp64 dot operand (MMAv2 lowering)
        a, b = (t.float() if t.dtype in kt.LOW else t for t in (a, b))
    BM, BN, BK, warps = kt.gemm_tiles(M, N, K, dot)
    grid = (R, triton.cdiv(M, BM), triton.cdiv(N, BN))
    _bmm_kernel[grid](a, b, c, M, N, K, _bstride(a, 0), a.stride(1), a.stride(2), _bstride(b, 0), b.stride(1),
                      b.stride(2), c.stride(0), c.stride(1), c.stride(2), DOT=kt.tl_dtype(dot),
                      PRECISION=kt.precision(dot), BM=BM, BN=BN, BK=BK, num_warps=warps)
    return c


def _aten_bmm(a: Tensor, b: Tensor, out_dtype: torch.dtype) -> Tensor:
    a, b = a.to(out_dtype), b.to(out_dtype)
    if a.mT.is_contiguous() and not a.is_contiguous() and a.shape[-1] > b.shape[-1]:
        # a = Fᵀ, a transposed view of the large operand: (bᵀF)ᵀ keeps F row-major on the right,
        # measured 1.1–1.4× faster in MKL's sgemm (1 thread, F 1024×768–8192×1024, 16–136 columns);
        # the result is a column-major view, as LAPACK's QR takes it.
        return torch.matmul(b.mT, a.mT).mT
    return torch.matmul(a, b)


def mm_for(x: Tensor):
    return triton_bmm if use_triton(x) else _aten_bmm


# ---------------------------------------------------------------- scaling and stabilisers


def scaled_rows(F3: Tensor):
    """(finite [R], F3 / c in the work dtype with non-finite rows zeroed, c [R]) for F3 [R, m, n]: c is
    the power of two that puts max|F| of each row in [1, 2), so the Gram, the eigensolver and the
    stabilisers see entries of order 1 at any scale of F (SPEC §10) and each row is decomposed
    independently of its neighbours' scale. σ(F) = c·σ(F/c); U, V are unchanged.
    Dividing by a power of two commutes with rounding, so where every entry is finite and every
    max|F| lies in [2⁻²⁰, 2²⁰] (no product of the solvers can overflow or underflow), F already
    gives the results of F/c: then c = 1 and F3 itself is returned, without a pass over it."""
    x = F3.detach()
    hi, lo = x.amax((-2, -1), keepdim=True), x.amin((-2, -1), keepdim=True)  # NaN propagates
    bound = 2.0 ** 20
    if F3.dtype == work_dtype(F3.dtype) and all(  # NaN fails every comparison
            -bound <= x_lo and x_hi <= bound and max(x_hi, -x_lo) >= 1 / bound
            for x_hi, x_lo in zip(hi.flatten().tolist(), lo.flatten().tolist())):
        ones = torch.ones(F3.shape[0], dtype=torch.bool, device=F3.device)
        return ones, F3, torch.ones(F3.shape[0], dtype=F3.dtype, device=F3.device)
    a = torch.maximum(hi, -lo)
    c = pow2_scale(a, (-2, -1))
    finite = torch.isfinite(a)
    Fs = F3 * (1 / c)
    if not bool(finite.all()):
        Fs = torch.where(finite, Fs, 0.0)
    return finite[:, 0, 0], Fs, c[:, 0, 0]


def unscale(c: Tensor, *ts: Tensor):
    """Tensors [R, ...] divided by the row scales c [R]."""
    return tuple(t / c.reshape(-1, *([1] * (t.dim() - 1))).to(t.dtype) for t in ts)


def fix_signs(U: Tensor, V: Tensor):
    """Sign convention: the largest-magnitude entry of each column of U is positive."""
    idx = U.abs().argmax(-2, keepdim=True)
    s = torch.sign(torch.gather(U, -2, idx))
    s = torch.where(s == 0, torch.ones_like(s), s)
    return U * s, V * s


def _damped(x: Tensor, eps: Tensor) -> Tensor:
    """x/(x² + ε), 0 where x² + ε = 0."""
    den = x * x + eps
    return torch.where(den > 0, x / torch.where(den > 0, den, 1.0), 0.0)


def safe_inv(s: Tensor, s1: Tensor) -> Tensor:
    """σ/(σ² + ε'): 1/σ where σ is not negligible next to σ_1, 0 at σ = 0, never Inf (s1: σ_1 per row)."""
    sd, s1 = s.double(), s1.double()
    return _damped(sd, INV_REL * s1 * s1).to(s.dtype)


def lorentz(x: Tensor, s1: Tensor, dtype: torch.dtype) -> Tensor:
    """x/(x² + ε), ε = (lorentz_rel(dtype)·σ_1²)²: 1/x for gaps x of squared singular values of a
    `dtype` input, bounded at 0 (evaluated in float64)."""
    x, s1 = x.double(), s1.double()
    return _damped(x, (lorentz_rel(dtype) * s1 * s1) ** 2)


# ---------------------------------------------------------------- Gram eigensolver


def eigh_desc(G: Tensor):
    """Eigenpairs of symmetric G, eigenvalues descending and clamped at 0."""
    lam, W = torch.linalg.eigh(G)
    return lam.flip(-1).clamp_min(0), W.flip(-1)


def use_gram(r: int) -> bool:
    return r <= GRAM_MAX_R


def gram_eigh(F3: Tensor, finite: Tensor, vectors: bool = True, fast: bool = False):
    """Eigenpairs (descending) of the Gram of the short side of F3 [R, m, n] (or the eigenvalues
    alone), accumulated and decomposed in float64, or in float32 when `fast` (measured ~1.5× faster
    at r = 1024; for callers whose accuracy a Rayleigh–Ritz step or float32 outputs bound anyway).
    Rows not `finite` get the eigenpairs of 0 (LAPACK raises on NaN)."""
    m, n = F3.shape[-2:]
    A, At = (F3, F3.mT) if m <= n else (F3.mT, F3)
    acc = torch.float32 if fast else torch.float64
    if use_triton(F3):
        G = triton_bmm(A, At, acc)
    else:
        Ad = A.to(acc)  # one up-cast copy for both operands
        G = Ad @ Ad.mT
    G = torch.where(finite[:, None, None], G, 0.0)
    if vectors:
        return eigh_desc(G)
    return torch.linalg.eigvalsh(G).flip(-1).clamp_min(0)


def fast_gram(r: int, dtype: torch.dtype) -> bool:
    """float32 Gram and eigh for float32/bf16/fp16 input above r = 256 (fp64 below: cheap and exact)."""
    return r > 256 and work_dtype(dtype) == torch.float32


# ---------------------------------------------------------------- randomized iteration, Rayleigh–Ritz


def _omega(F3: Tensor, rows: int, cols: int, seed: int, dtype) -> Tensor:
    gen = torch.Generator(device=F3.device).manual_seed(seed)
    return torch.randn((1, rows, cols), generator=gen, device=F3.device, dtype=dtype)


def default_tol(dtype: torch.dtype) -> float:
    """Target of the a-posteriori bound on the relative σ error (sin∠ is held to 10× it): SPEC §1's bars
    (1e-4 on σ, 1e-3 on sin∠) for float32 and below; near float64 accuracy for float64 input."""
    return 1e-10 if dtype == torch.float64 else 1e-4


def ritz_error(RtR: np.ndarray, s: np.ndarray, k: int, unit: float):
    """(err, lift): a-posteriori error bound per row in units of the σ tolerance (SPEC §1 allows 10×
    more on sin∠ than on σ), and whether it bounds the lifted triplets (_triplets) rather than the
    Ritz triplets. Inputs: the Gram RtR [R, k1, k1] = RᵀR of the residual block
    R = AAᵀU − U diag(σ²) of the top k1 = min(k + 1, q) Ritz vectors U = QW (columns
    σ_i(A v_i − σ_i u_i); Aᵀu_i = σ_i v_i holds exactly after Rayleigh–Ritz), the block's Ritz values
    s [R, q] (descending), and `unit` ≈ √N·u (the rounding of a product over N terms). Bounds:
    - σ: the relative error min(ρ_i, η_i²/(2σ_i²δ_i)), ρ_i = ‖A v_i − σ_i u_i‖/σ_i (Weyl),
      η_i = σ_i‖A v_i − σ_i u_i‖ the residual of u_i for AAᵀ and δ_i the distance of σ_i² to the nearest
      other Ritz value (Kato–Temple for AAᵀ). The lifted σ' (σ_i(A V_k)) lie between σ_i and the
      true values (interlacing), so the bound holds for them too.
    - sin∠ (the largest principal angle) of the top-k subspaces, asked where σ_k/σ_{k+1} >= 1.1
      (SPEC §1; divided by 10). Ritz: ‖R_k‖₂/(σ_k² − σ_{k+1}²) (Davis–Kahan for AAᵀ; the long side
      Aᵀ U_k is closer). Lifted: with λ̂ = σ_{k+1}² + η_{k+1} (the (k+1)-th Ritz value raised by its
      residual: the Ritz value alone underestimates λ_{k+1}), tan∠(U_k) <= t = ‖R_k‖₂/(σ_k² − λ̂)
      (the tan θ theorem), and one more product shrinks tan∠ by the ratio of the gap's two sides:
      ≤ t·(λ̂/σ_k²)^½ for the long side V_k = AᵀU_kΣ⁻¹, ≤ t·λ̂/σ_k² for the short side AV_k (the
      larger one is taken), plus unit·σ_1/σ_k for the rounding of A V_k.
    Host arithmetic on a few numbers per row (numpy, and torch's CPU eigvalsh of R_kᵀR_k: no device
    dispatch per operation)."""
    R, q = s.shape
    t = np.sqrt(np.maximum(np.diagonal(RtR, axis1=-2, axis2=-1), 0.0))   # ‖σ_i r_i‖
    sk = s[:, :k]
    pos = sk > 0
    s2 = np.where(pos, sk * sk, 1.0)
    rho = np.where(pos, t[:, :k] / s2, 0.0)
    gaps = np.full((R, q + 1), np.inf)
    gaps[:, 1:-1] = s[:, :-1] ** 2 - s[:, 1:] ** 2
    near = np.minimum(gaps[:, :k], gaps[:, 1:k + 1])  # δ_i: the Ritz values are sorted
    lift = np.zeros(R, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        err = np.minimum(rho, np.where(pos, t[:, :k] ** 2 / (2 * s2 * np.maximum(near, 1e-300)), 0.0)).max(-1)
        if q == k:
            return err, lift
        top, nxt = s[:, k - 1] ** 2, s[:, k] ** 2
        asked = (s[:, k - 1] >= 1.1 * s[:, k]) & (top > nxt)
        # ‖R_k‖₂ by torch's eigvalsh: numpy's took 16 ms at k = 128 here (torch's < 1 ms)
        norm2 = np.sqrt(np.maximum(torch.linalg.eigvalsh(torch.from_numpy(RtR[:, :k, :k]))[:, -1].numpy(), 0.0))
        ritz = norm2 / np.where(asked, top - nxt, 1.0)
        lam = nxt + t[:, k]
        tan = np.where(top > lam, norm2 / (top - lam), np.inf)
        lifted = tan * np.sqrt(lam / top) + unit * s[:, 0] / s[:, k - 1]
        lift = asked & (lifted < ritz)
        return np.maximum(err, np.where(asked, np.minimum(ritz, lifted) / 10, 0.0)), lift


def _predicted_iterations(err: np.ndarray, s: np.ndarray, k: int, tol: float) -> np.ndarray:
    """Iterations still needed per row: the bound shrinks by the rate (σ_q/σ_k)² per iteration."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.clip((s[:, -1] / np.maximum(s[:, k - 1], 1e-300)) ** 2, 1e-300, 1 - 1e-9)
        return np.log(tol / np.maximum(err, 1e-300)) / np.log(rate)


def _gram_basis(F3: Tensor, q: int, w) -> Tensor:
    """Top-q eigenvectors of the short-side Gram (the Rayleigh–Ritz step restores full accuracy)."""
    R, r = F3.shape[0], min(F3.shape[-2:])
    ones = torch.ones(R, dtype=torch.bool, device=F3.device)
    return gram_eigh(F3, ones, fast=fast_gram(r, F3.dtype))[1][:, :, :q].to(w)


def _gram64(B: Tensor) -> Tensor:
    Bd = B.double()
    return Bd.mT @ Bd


def _rayleigh_ritz(B: Tensor):
    """Eigenpairs (descending, float64) of BᵀB, B = AᵀQ [R, long, q]: λ = σ², the Ritz values of Q."""
    return eigh_desc(_gram64(B))


def _triplets(Q: Tensor, B: Tensor, lam: Tensor, W: Tensor, k: int, lifted=None):
    """Top-k triplets (short [R, r, k], σ [R, k] float64, long [R, N, k]) from the Rayleigh–Ritz
    eigenpairs (λ, W) of Q, B = AᵀQ: the Ritz triplets u = Qw, v = Bw/σ; or, for the rows where
    lifted = (M, RtR, lift) says so, the SVD of A V_k = M Σ⁻¹ (M = ABW_k, its Gram
    Σ² + Σ⁻¹RᵀRΣ⁻¹ from the residuals, as U_kᵀR = 0): u = A V_k P/σ', v = V_k P, σ'. Its short side is
    one product further along than Q (ritz_error's bound), at no product over F."""
    w = Q.dtype
    S = lam[:, :k].sqrt()
    inv = safe_inv(S, S[:, :1])
    Wk = W[:, :, :k]
    if lifted is None or not lifted[2].any():
        return Q @ Wk.to(w), S, B @ (Wk * inv.unsqueeze(-2)).to(w)
    M, RtR, lift = lifted
    lam2, P = eigh_desc(torch.diag_embed(S * S) + inv[:, :, None] * RtR[:, :k, :k] * inv[:, None, :])
    S2 = lam2.sqrt()
    if not lift.all():  # the other rows keep their Ritz triplets (P = I)
        sel = torch.from_numpy(lift).to(Q.device)
        P = torch.where(sel[:, None, None], P, torch.eye(k, dtype=P.dtype, device=P.device))
        S2 = torch.where(sel[:, None], S2, S)
    short = M[..., :k] @ (inv[:, :, None] * P * safe_inv(S2, S2[:, :1])[:, None, :]).to(w)
    if not lift.all():
        short = torch.where(sel[:, None, None], short, Q @ Wk.to(w))
    return short, S2, B @ ((Wk * inv.unsqueeze(-2)) @ P).to(w)


def _conditioned(B: Tensor, G: Tensor):
    """(Z, R): B = Z·R with R [R, q, q] upper triangular and Z well conditioned, in B's dtype: Z = B·R⁻¹
    with R the Cholesky factor of the float64 Gram G = BᵀB (CholeskyQR: ~3× cheaper than Householder
    here), Householder QR where G is not numerically positive definite. Z needs no exact
    orthonormality: it conditions the product A·Z, and A·B = (A·Z)·R holds either way."""
    L, info = torch.linalg.cholesky_ex(G)
    if bool(info.any()):
        return torch.linalg.qr(B)
    R = L.mT.to(B.dtype)
    return torch.linalg.solve_triangular(R, B, upper=True, left=False), R


def _krylov_blocks(err: np.ndarray, s: np.ndarray, k: int, tol: float) -> np.ndarray:
    """Krylov blocks still needed per row, from the Ritz values s of a Krylov basis: a block multiplies
    the Chebyshev polynomial at λ_k over [0, λ_{k+1}] by x + √(x² − 1) = e^arccosh(x), x = 2(σ_k/σ_{k+1})² − 1
    (2.43 at the gap 1.1, where a subspace iteration gains 1.21), and the σ errors, which the bound
    follows first, by its square (measured: 6× per block at the gap 1.1)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        x = 2 * (s[:, k - 1] / np.maximum(s[:, k], 1e-300)) ** 2 - 1
        return np.log(np.maximum(err, 1e-300) / tol) / np.maximum(2 * np.arccosh(np.clip(x, 1, 1e300)), 1e-3)


def _krylov_cost(blocks: np.ndarray, n: int, b: int, r: int, cost_col: float) -> np.ndarray:
    """The cost model's price of `blocks` more Krylov blocks of b columns on a basis of n (units of
    subspace_basis): two products of b columns each (cost_col per column), the re-orthogonalisation
    (4·r·n² over a run that ends at n columns) and two tests there (KᵀAAᵀK, 2·r·n², and its float64
    eigh, ~20·n³ measured)."""
    end = n + np.ceil(blocks) * b
    return blocks * b * cost_col + 4.0 * r * (end * end - n * n) + 2 * (2.0 * r * end * end + 20.0 * end ** 3)


def _krylov(F3: Tensor, K0: Tensor, B0: Tensor, Y0: Tensor, k: int, tol: float, unit: float, cost_col: float,
            cost_gram: float):
    """Randomized block Krylov (Musco & Musco 2015) on the short side A of F3 [R, m, n], from the
    orthonormal block K0 [R, r, b] with B0 = AᵀK0 and Y0 = AAᵀK0: the basis K = [K0, K1, …], each
    block the orthonormalised AAᵀ of the previous one (projected off the basis and QR'd twice: where
    the Krylov space is exhausted, as for rank(A) < the basis, the new columns are rounding noise,
    which a single pass leaves far from orthogonal to K; orthonormal noise is harmless to Rayleigh–Ritz),
    Rayleigh–Ritz over the whole basis (H = KᵀY, Y = AAᵀK; a float64 eigh), tested by ritz_error on
    its top k + 1 Ritz vectors (residuals YW − KWΛ, no product over F) and lifted as there
    (_triplets). The first test follows the first new block (the Ritz values are then close enough
    to predict the rest: σ_k/σ_{k+1} 1.05–1.08 for the true 1.1); the next comes where _krylov_blocks
    predicts the bound to hold for the first open row (rounded down), at most 4 blocks on. A row
    stops (its triplets frozen) as soon as its bound holds. Returns (triplets, failed): rows whose
    predicted remaining Krylov cost (_krylov_cost, cost_col: a column of the two products) exceeds
    the Gram solver's (cost_gram), or whose basis would pass r/2 columns, are `failed` (their
    triplets untested) and left to the Gram solver."""
    mm = mm_for(F3)
    w = K0.dtype
    R, m, n = F3.shape
    r, b = K0.shape[-2:]
    A, At = (F3, F3.mT) if m <= n else (F3.mT, F3)
    Ks, Bs, Ys = [K0], [B0], [Y0]
    done, failed = np.zeros(R, dtype=bool), np.zeros(R, dtype=bool)
    out, test, k1 = None, 1, k + 1
    while True:
        K = torch.cat(Ks, -1)
        cols = K.shape[-1]
        if len(Ks) - 1 >= test or cols + b > r // 2:
            Y, Bk = torch.cat(Ys, -1), torch.cat(Bs, -1)
            H = (K.mT @ Y).double()
            lam, W = eigh_desc((H + H.mT) / 2)
            W1 = W[:, :, :k1]
            M = Y @ W1.to(w)                                            # AAᵀu: columns σ_i A v_i
            res = (M - K @ (W1 * lam[:, None, :k1]).to(w)).double()     # σ_i (A v_i − σ_i u_i)
            RtR = res.mT @ res
            s = lam.sqrt().cpu().numpy()
            err, lift = ritz_error(RtR.cpu().numpy(), s[:, :k1 + 1], k, unit)
            ok = (err <= tol) | ~np.isfinite(err)
            ahead = _krylov_blocks(err, s, k, tol)
            stuck = (cols + b > r // 2) | (_krylov_cost(ahead, cols, b, r, cost_col) > cost_gram)
            new = ~done & (ok | stuck)
            failed |= new & ~ok
            if new.any():
                out = _merge(out, _triplets(K, Bk, lam, W, k, (M, RtR, lift & new)), new)
            done |= new
            if done.all():
                return out, failed
            test = len(Ks) - 1 + int(min(max(math.floor(ahead[~done].min()), 1), 4))
        Kn = Ys[-1]
        for _ in range(2):  # normalised between the passes: orthogonal to K even where Ys[-1] lies in its span
            Kn = torch.linalg.qr(Kn - K @ (K.mT @ Kn))[0]
        Bn = mm(At, Kn, w)
        Ks.append(Kn)
        Bs.append(Bn)
        Ys.append(mm(A, Bn, w))


def _merge(out, step, new: np.ndarray):
    """The triplets `step` on the rows `new`, `out` elsewhere (out None: step)."""
    if out is None or new.all():
        return step
    sel = torch.from_numpy(new).to(step[0].device)
    return tuple(torch.where(sel.reshape(-1, *[1] * (a.dim() - 1)), a, b) for a, b in zip(step, out))


def _rows(F3: Tensor, rows: np.ndarray):
    """(index tensor, F3 restricted to the rows) without a copy where every row is taken."""
    idx = torch.from_numpy(np.flatnonzero(rows)).to(F3.device)
    return idx, F3 if rows.all() else F3[idx]


def subspace_basis(F3: Tensor, k: int, q: int, niter: int | None, tol: float, seed: int):
    """Top-k triplets (short [R, r, k], σ [R, k] float64, long [R, N, k]) of the short side A of
    F3 [R, m, n] whose error bounds meet `tol` (ritz_error), by randomized block subspace iteration
    from the sketch Q = qr(AΩ): B = AᵀQ, B = Z·R_B (_conditioned), Y = AZ, Q ← qr(Y).

    A test costs a q×q eigh (Rayleigh–Ritz: u_i = Q w_i, v_i = B w_i/σ_i) and the residuals, which
    come free from Y: with A B = Y R_B, σ_i(A v_i − σ_i u_i) = Y R_B w_i − σ_i² u_i; Y also lifts the
    short side one product further (_triplets). The first test follows iteration FIRST_TEST = 2 (a
    test costs about a product at r ≈ 768, and spiked spectra never meet the bar after one); the next
    comes where the rate (σ_q/σ_k)² predicts the bound to hold, at most it + 2 iterations on (a poor
    prediction costs at most about twice the iterations, with a logarithmic number of tests). A row
    stops (its triplets frozen, so they never depend on its neighbours) as soon as its bound holds.
    niter caps the iterations (the last one is not tested: Ritz triplets). niter=None runs until
    converged (at most 200); a row predicted to need more than KRYLOV_AFTER = 4 more iterations
    continues in the Krylov space of its top k + 1 Ritz vectors instead (_krylov: ~5 blocks where
    ~60 iterations are needed at the gap 1.1), where 4 blocks fit in r/2 columns; else a row whose
    predicted remaining iterations would cost more than the Gram eigen-solver takes that solver (as
    does a Krylov run predicted to cost more than it). Cost model in the flops of an iteration's two
    products (4·r·N·q; QR, Rayleigh–Ritz and tests add ~10–25%), fitted to CPU times (1 thread, r 512–
    1024, N 1024–8192): the Gram solver ≈ 1.9·r²·N plus an r×r eigh of 5.3·r³ (float32) or 11·r³
    (float64)."""
    mm = mm_for(F3)
    w = work_dtype(F3.dtype)
    R, m, n = F3.shape
    r, N = min(m, n), max(m, n)
    A, At = (F3, F3.mT) if m <= n else (F3.mT, F3)
    Q = torch.linalg.qr(mm(A, _omega(F3, N, q, seed, w), w))[0]
    cost_it = 4.0 * r * N * q
    cost_gram = 1.9 * r * r * N + (5.3 if fast_gram(r, F3.dtype) else 11.0) * r ** 3
    unit = math.sqrt(N) * torch.finfo(w).eps
    k1 = min(k + 1, q)
    cap = 200 if niter is None else niter
    done, gram, krylov = (np.zeros(R, dtype=bool) for _ in range(3))
    out, starts = None, []
    test = min(FIRST_TEST, cap)  # the next iteration whose result is tested
    for it in range(cap + 1):
        B = mm(At, Q, w)                                       # [R, N, q]
        if it < test:
            Q = torch.linalg.qr(mm(A, _conditioned(B, _gram64(B))[0], w))[0]
            continue
        G = _gram64(B)
        lam, Wr = eigh_desc(G)
        lifted = None
        if it == cap:
            new = ~done
        else:
            Z, Rb = _conditioned(B, G)
            Y = mm(A, Z, w)                                    # A B R_B⁻¹, [R, r, q]
            W1 = Wr[:, :, :k1]
            M = Y @ (Rb @ W1.to(w))                            # A B W: columns σ_i A v_i
            res = (M - Q @ (W1 * lam[:, None, :k1]).to(w)).double()   # σ_i (A v_i − σ_i u_i)
            RtR = res.mT @ res
            s = lam.sqrt().cpu().numpy()
            err, lift = ritz_error(RtR.cpu().numpy(), s, k, unit)
            ok = (err <= tol) | ~np.isfinite(err)
            more = _predicted_iterations(err, s, k, tol)
            if niter is None:
                open_ = ~done & ~ok
                to_kry = open_ & (more > KRYLOV_AFTER) & (4 * k1 <= r // 2)
                gram |= open_ & ~to_kry & (more * cost_it > cost_gram)
                if to_kry.any():  # its first block: the top k + 1 Ritz vectors, their products at hand
                    starts.append((to_kry, Q @ W1.to(w), B @ W1.to(w), M))
                krylov |= to_kry
            new = ~done & (ok | gram | krylov)
            lifted = (M, RtR, lift & new & ~gram & ~krylov)
        if new.any():  # every row is new once (at the latest at the cap)
            out = _merge(out, _triplets(Q, B, lam, Wr, k, lifted), new)
        done |= new
        if done.all():
            break
        # the next test: where the slowest row should have converged (rounded down: a test costs no
        # product, and the bound falls faster than the rate predicts while the angles are large),
        # at most it + 2 iterations on
        ahead = more[~done].min()
        test = it + int(min(max(math.floor(ahead), 1), it + 2, cap - it)) if np.isfinite(ahead) else it + 1
        Q = torch.linalg.qr(Y)[0]
    for rows, K0, B0, Y0 in starts:
        idx, Fk = _rows(F3, rows)
        res, failed = _krylov(Fk, K0[idx], B0[idx], Y0[idx], k, tol, unit, cost_it / q, cost_gram)
        for a, b in zip(out, res):
            a[idx] = b
        gram[np.flatnonzero(rows)[failed]] = True
    if gram.any():
        idx, Fg = _rows(F3, gram)
        Qg = _gram_basis(Fg, q, w)
        Bg = mm(Fg.mT if m <= n else Fg, Qg, w)
        for a, b in zip(out, _triplets(Qg, Bg, *_rayleigh_ritz(Bg), k)):
            a[idx] = b
    return out


@dataclass(frozen=True)
class TopK:
    """Top-k triplets U [R, m, k], S [R, k], V [R, n, k] (work dtype) and the backward that applies:
    "exact": W [R, r, r] (the short-side Gram eigenbasis) and S_all [R, r] (every σ) are kept for
    exact_grad_short; "truncated": they are empty ([R, 0, 0], [R, 0]) and truncated_grad applies."""
    U: Tensor
    S: Tensor
    V: Tensor
    W: Tensor
    S_all: Tensor
    backward: str


def topk(F3: Tensor, k: int, *, niter: int | None = None, oversample: int = 8, seed: int = DEFAULT_SEED,
         tol: float | None = None, backward: str = "truncated") -> TopK:
    """The top-k triplets of F3 [R, m, n] (non-finite rows zeroed) in the work dtype.

    Works on the short side: A = F (m <= n) or Fᵀ, so the basis Q [R, r, q], q = min(k + oversample, r),
    is the small one. backward="exact": the Gram path (its full eigenbasis and every σ kept for the exact
    gradient); "truncated": the adaptive subspace iteration (subspace_basis, tol: default_tol), or the
    Gram basis anyway when q >= r or r <= 32. The triplets come from Rayleigh–Ritz (the SVD of QᵀA
    through its q×q Gram in float64, _triplets), on the iteration's certified rows lifted one product on.
    """
    if backward not in BACKWARDS:
        raise ValueError(f"backward must be one of {BACKWARDS}, got {backward!r}")
    mm = mm_for(F3)
    w = work_dtype(F3.dtype)
    R, m, n = F3.shape
    r = min(m, n)
    At = F3.mT if m <= n else F3
    q = min(k + oversample, r)
    exact = backward == "exact"
    W_all, S_all = F3.new_empty((R, 0, 0), dtype=w), F3.new_empty((R, 0), dtype=w)
    if exact or q >= r or r <= 32:
        # Top-q eigenvectors of the short-side Gram AAᵀ (float32 for large r: the Rayleigh–Ritz step
        # below restores full accuracy of σ and of the subspace).
        lam, W = gram_eigh(F3, torch.ones(R, dtype=torch.bool, device=F3.device), fast=fast_gram(r, F3.dtype))
        Q = W[:, :, :q].to(w)
        if exact:
            W_all, S_all = W.to(w), lam.sqrt().to(w)
        B = mm(At, Q, w)
        short, S, long_ = _triplets(Q, B, *_rayleigh_ritz(B), k)
    else:
        short, S, long_ = subspace_basis(F3, k, q, niter, default_tol(F3.dtype) if tol is None else tol, seed)
    U, V = (short, long_) if m <= n else (long_, short)
    return TopK(U, S.to(w), V, W_all, S_all, backward)


# ---------------------------------------------------------------- backwards


def truncated_backward_math(U: Tensor, S: Tensor, V: Tensor, gU: Tensor, gS: Tensor, gV: Tensor) -> Tensor:
    """The stabilised truncated-SVD gradient (SPEC §1) in ATen; csrc/ has the same formula, this is
    the fallback when the extension is unavailable.

    gF = U [L∘skew(UᵀgU)·S + S·L∘skew(VᵀgV) + diag(gS)] Vᵀ + (I − UUᵀ)gU S⁻¹Vᵀ + U S⁻¹ gVᵀ(I − VVᵀ),
    L_jl = lorentz(σ_l² − σ_j²); the complement terms are formed through UᵀgU, VᵀgV (k×k) only,
    and the k×k core is evaluated in float64.
    """
    A, B = (U.mT @ gU).double(), (V.mT @ gV).double()
    Sd, gSd = S.double(), gS.double()
    s1 = Sd.abs().amax(-1, keepdim=True)
    s2 = Sd * Sd
    L = lorentz(s2.unsqueeze(-2) - s2.unsqueeze(-1), s1.unsqueeze(-1), U.dtype)  # of E_jl = σ_l² − σ_j²
    K = L * ((A - A.mT) * Sd.unsqueeze(-2) + Sd.unsqueeze(-1) * (B - B.mT))
    K = K * (1 - torch.eye(K.shape[-1], dtype=K.dtype, device=K.device)) + torch.diag_embed(gSd)
    inv = safe_inv(Sd, s1)
    Kt = (K - A * inv.unsqueeze(-2) - inv.unsqueeze(-1) * B.mT).to(U.dtype)
    inv = inv.to(U.dtype).unsqueeze(-2)
    left = torch.cat([U @ Kt + gU * inv, U * inv], -1)
    return left @ torch.cat([V, gV], -1).mT


def truncated_grad(U: Tensor, S: Tensor, V: Tensor, gU: Tensor, gS: Tensor, gV: Tensor) -> Tensor:
    """dL/dF [..., m, n] in the work dtype from the top-k triplets and their gradients by SPEC §1's
    truncated-SVD formula (exact only as σ_{k+1..r} → 0): the extension's kernel, else
    truncated_backward_math. Scale-free (SPEC §10): with c = σ_1's power of two, the gradient is that
    of S/c with gU/c, gV/c."""
    w = work_dtype(U.dtype)
    c = pow2_scale(S, (-1,))[..., 0]
    S, gU, gV = S / c[..., None], gU / c[..., None, None], gV / c[..., None, None]
    args = [t.to(w).contiguous() for t in (U, S, V, gU, gS, gV)]
    if _ext.available():
        return torch.ops.sdekernels_C.svd_topk_bwd(*args)
    return truncated_backward_math(*args)


def exact_backward_math(A: Tensor, Ws: Tensor, Wl: Tensor, W: Tensor, sigma: Tensor, gWs: Tensor, gS: Tensor,
                        gWl: Tensor) -> Tensor:
    """The exact gradient on the Gram path in ATen (csrc/ bindings.cpp svd_topk_exact_bwd has the same
    formula; this is the fallback when the extension is unavailable).

    Short-side frame A [R, r, N] (r <= N) = W Σ Lᵀ: Ws = W_k [R, r, k] the short top-k factor,
    Wl = Aᵀ Ws diag(1/σ_k) [R, N, k] the long one, W [R, r, r] the full eigenbasis of AAᵀ (first k
    columns = Ws), sigma [R, r] every singular value (first k = the outputs'). The chain through
    Wl gives gW_k = gWs + A gWl diag(1/σ) and gσ − diag(Wlᵀ gWl)/σ; Daleckii–Krein for the
    eigenvectors of AAᵀ gives gAAᵀ = W C Wᵀ (symmetrised) with the r×k core
    C_ij = (w_iᵀ gW_j)/(σ_j² − σ_i²), C_jj = gσ_j/(2σ_j), so with P = WᵀgWs, Q = Wᵀ(A gWl), T = W C:
    gA = Ws diag(1/σ) gWlᵀ + T diag(σ_k) Wlᵀ + Ws (Tᵀ A). Exact (no truncation): the values past k
    enter only through 1/(σ_j² − σ_i²), never through 1/σ_i; both factors are stabilised as in
    SPEC §1 (x/(x² + ε), σ/(σ² + ε')), and the core is evaluated in float64 and scaled by σ_1
    (C ~ 1/σ² would leave the float32 range for tiny σ; the k-column products undo the scale).
    """
    k = Ws.shape[-1]
    P, Q = W.mT @ gWs, W.mT @ (A @ gWl)
    sd = sigma.double()
    s1 = sd.abs().amax(-1, keepdim=True)
    inv = safe_inv(sd[:, :k], s1)
    C = lorentz(sd[:, None, :k] ** 2 - sd[:, :, None] ** 2, s1[:, :, None], W.dtype) * (
        P.double() + Q.double() * inv[:, None, :])
    idx = torch.arange(k, device=C.device)
    C[:, idx, idx] = (gS.double() - inv * inv * Q.double()[:, idx, idx]) * inv / 2
    rs = torch.where(s1 > 0, 1 / s1, 0.0)
    T = W @ (C * s1[:, :, None]).to(W.dtype)  # σ_1·W C
    left = torch.cat([Ws * inv.to(W.dtype).unsqueeze(-2), T * (sd[:, :k] * rs).to(W.dtype).unsqueeze(-2)], -1)
    return left @ torch.cat([gWl, Wl], -1).mT + Ws @ ((T.mT @ A) * rs.to(W.dtype).unsqueeze(-1))


def exact_grad_short(A: Tensor, Ws: Tensor, Wl: Tensor, W: Tensor, sigma: Tensor, gWs: Tensor, gS: Tensor,
                     gWl: Tensor) -> Tensor:
    """The exact top-k SVD gradient in the short-side frame (exact_backward_math's arguments,
    float32/float64 rows [R, ...]): the extension's kernel, else the ATen formula."""
    args = (A, Ws.contiguous(), Wl.contiguous(), W.contiguous(), sigma.contiguous(), gWs.contiguous(), gS.contiguous(),
            gWl.contiguous())
    return torch.ops.sdekernels_C.svd_topk_exact_bwd(*args) if _ext.available() else exact_backward_math(*args)


# ---------------------------------------------------------------- partition and enhancement arithmetic


@functools.lru_cache(maxsize=64)
def _quartile_taps(r: int, dtype: torch.dtype, device: torch.device):
    """torch.quantile's linear interpolation at q = 1/4, 1/2, 3/4 of r values sorted descending:
    the positions of the (lower, upper) neighbours [6] and the fractions [3]."""
    pos = [q * (r - 1) for q in (0.25, 0.5, 0.75)]
    lo = [math.floor(p) for p in pos]
    hi = [min(i + 1, r - 1) for i in lo]
    idx = torch.tensor([r - 1 - i for i in lo + hi], device=device)  # ascending i is descending r − 1 − i
    return idx, torch.tensor([p - i for p, i in zip(pos, lo)], dtype=dtype, device=device)


@functools.lru_cache(maxsize=None)
def mp_median(beta: float) -> float:
    """The median of the Marchenko–Pastur law of ratio β ∈ (0, 1] (SPEC §2), in closed form.

    With x = c + d·cos θ (c = 1 + β, d = 2√β, θ ∈ [0, π] from the upper edge to the lower one) the
    density √((b − x)(x − a))/(2πβx) dx is 2 sin²θ/(π x) dθ, whose integral from 0 is
    G(θ) = 2/(π d²)·[c·θ − d·sin θ − 2(1 − β)·atan2(κ sin(θ/2), cos(θ/2))], κ = (1 − √β)/(1 + √β);
    the median solves G(θ) = 1/2 (bisection to the last bit; G(π) = 1)."""
    beta = float(beta)
    if not 0.0 < beta <= 1.0:
        raise ValueError(f"beta must lie in (0, 1], got {beta}")
    c, d, kappa = 1.0 + beta, 2.0 * math.sqrt(beta), (1.0 - math.sqrt(beta)) / (1.0 + math.sqrt(beta))

    def upper_mass(t):
        return 2.0 / (math.pi * d * d) * (c * t - d * math.sin(t) - 2.0 * (1.0 - beta) * math.atan2(
            kappa * math.sin(t / 2), math.cos(t / 2)))

    lo, hi = 0.0, math.pi
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if upper_mass(mid) < 0.5 else (lo, mid)
    return c + d * math.cos(0.5 * (lo + hi))


def sigma_den(m: int, n: int) -> float:
    """σ̂ = median(σ) / √(max(m, n)·μ_β)."""
    return math.sqrt(max(m, n) * mp_median(min(m, n) / max(m, n)))


def partition_counts(S: Tensor, m: int, n: int, iqr_c: float, center: bool = False):
    """(n_strong, n_weak, tau_noise, tau_strong, sigma_hat, sorted-descending σ) in the work dtype.
    Few small ops (one gather for the three quartiles): at r ~ 1000 the op costs dispatch, not flops.
    center: S is the spectrum of a row-centred matrix, fitted with m − 1 rows and its top
    min(m − 1, n) values (SPEC §2)."""
    m = m - 1 if center else m
    r = min(m, n)
    s = S.detach().to(work_dtype(S.dtype)).sort(-1, descending=True).values
    idx, frac = _quartile_taps(r, s.dtype, s.device)
    v = s[..., idx]
    q1, med, q3 = (v[..., :3] + frac * (v[..., 3:] - v[..., :3])).unbind(-1)
    sigma_hat = med / sigma_den(m, n)
    tau_noise = sigma_hat * (math.sqrt(m) + math.sqrt(n))
    tau_strong = torch.maximum(tau_noise, q3 + iqr_c * (q3 - q1))
    n_above = (s > tau_noise.unsqueeze(-1)).sum(-1)
    n_strong = (s > tau_strong.unsqueeze(-1)).sum(-1).clamp_min(1)
    n_weak = (n_above - n_strong).clamp_min(0)
    return n_strong, n_weak, tau_noise, tau_strong, sigma_hat, s


def energies(s: Tensor, n_strong: Tensor, n_weak: Tensor):
    """Energy fractions (strong, weak, noise) of descending σ with n_strong >= 1 (as partition_counts
    gives); (1, 0, 0) for σ = 0, NaN for a NaN row. Three separate tensors (custom ops may not
    return views of one another)."""
    return tuple(e.clone() for e in energy_fractions(s, n_strong, n_weak).unbind(-1))


def energy_fractions(s: Tensor, n_strong: Tensor, n_weak: Tensor) -> Tensor:
    """energies() as one [..., 3] tensor. σ is divided by its power-of-two scale first (exact): no
    overflow of σ² at any scale (SPEC §10)."""
    s = s / pow2_scale(s, (-1,))
    c = (s * s).cumsum(-1)
    last = n_strong.new_full((), s.shape[-1] - 1).expand_as(n_strong)
    ends = torch.stack([n_strong - 1, n_strong + n_weak - 1, last], -1)
    cum = c.gather(-1, ends)  # Σσ² up to the strong, the weak and the last entry
    total = cum[..., 2:]
    zero = total == 0
    e = torch.diff(cum, dim=-1, prepend=torch.zeros_like(total)) / torch.where(zero, 1.0, total)
    return torch.where(zero, torch.tensor([1.0, 0.0, 0.0], dtype=e.dtype, device=e.device), e)


def draw_xi(shape: tuple, dtype: torch.dtype, device, direction: Tensor | None = None,
            generator: torch.Generator | None = None) -> Tensor:
    """ξ of SPEC §4, `shape` = [..., r] in `dtype`: sign(direction) (broadcast over the batch) when given,
    else uniform(−1, 1) drawn as 2·rand(float32) − 1 from `generator` (the draw the reference makes)."""
    if direction is not None:  # (a zero gradient for direction)
        return torch.sign(direction).to(device=device, dtype=dtype).expand(shape)
    return (2.0 * torch.rand(shape, generator=generator, dtype=torch.float32, device=device) - 1.0).to(dtype)


@torch.library.custom_op("sdekernels::seeded_xi", mutates_args=())
def _seeded_xi(likes: list[Tensor], seed: int) -> list[Tensor]:
    gen = torch.Generator(device=likes[0].device).manual_seed(seed) if likes else None
    return [draw_xi(t.shape, t.dtype, t.device, generator=gen) for t in likes]


@_seeded_xi.register_fake
def _(likes, seed):
    return [torch.empty_like(t, memory_format=torch.contiguous_format) for t in likes]


def seeded_xi(likes: list[Tensor], seed: int) -> list[Tensor]:
    """draw_xi for each tensor of `likes` (its shape, dtype and device), in order, from one generator
    seeded with `seed`: a random ξ that torch.compile can trace (a Generator cannot enter a graph)."""
    return _seeded_xi([t.detach() for t in likes], seed)


def full_delta(S: Tensor, delta_k: Tensor, s_n: Tensor, n_signal: Tensor) -> Tensor:
    """δ over all r values [R, r] (SPEC §4) from every σ [R, r], enhance_coefs' δ_k [R, k] and s_n [R]:
    δ_k on each row's signal values, −(1 − s_n)·σ on its noise values."""
    k = delta_k.shape[-1]
    delta = -(1.0 - s_n).unsqueeze(-1) * S
    signal = torch.arange(k, device=S.device) < n_signal.unsqueeze(-1)
    delta[:, :k] = torch.where(signal, delta_k, delta[:, :k])
    return delta


def enhance_coefs(S: Tensor, nf2: Tensor, n_strong: Tensor, n_signal: Tensor, xi: Tensor, alpha: float,
                  eps_strong: float, gamma_weak: float, gamma_noise: float, rho: float):
    """δ on the top-k and the noise scale from σ_k [R, k] (descending) and ‖F‖² [R] (SPEC §4).

    Returns (c [R, k], s_n [R], δ_k [R, k], bound scale [R]); c and δ_k are 0 past each row's
    n_signal = n_strong + n_weak. Differentiable in S and nf2 (the backward uses that).
    """
    idx = torch.arange(S.shape[-1], device=S.device)
    strong = idx < n_strong.unsqueeze(-1)
    signal = idx < n_signal.unsqueeze(-1)
    s1 = S[:, :1]
    ratio = torch.where(s1 > 0, S / torch.where(s1 > 0, s1, torch.ones_like(s1)), torch.zeros_like(S))
    d0 = torch.where(strong, eps_strong * alpha * ratio * S * xi, -gamma_weak * alpha * S)
    d0 = torch.where(signal, d0, torch.zeros_like(d0))
    cn = gamma_noise * (1.0 - alpha)
    s_sig2 = torch.where(signal, S * S, torch.zeros_like(S)).sum(-1)
    d2 = (d0 * d0).sum(-1) + cn * cn * (nf2 - s_sig2).clamp_min(0)
    over = d2 > rho * rho * nf2
    safe_d2 = torch.where(over, d2, torch.ones_like(d2))
    safe_n2 = torch.where(over, nf2, torch.ones_like(nf2))
    scale = torch.where(over, rho * safe_n2.sqrt() / safe_d2.sqrt(), torch.ones_like(d2))
    delta = d0 * scale.unsqueeze(-1)
    s_n = 1.0 - cn * scale
    c = torch.where(signal, S + delta - s_n.unsqueeze(-1) * S, torch.zeros_like(S))
    return c, s_n, delta, scale


# ---------------------------------------------------------------- thin SVD (all r triplets, exact gradient)


def _grad_width(*grads) -> int:
    """How many leading columns of the gradients [R, *, r] (None: none) reach the last nonzero one."""
    nonzero = None
    for g in grads:
        if g is not None:
            cols = (g != 0).flatten(0, -2).any(0)
            nonzero = cols if nonzero is None else nonzero | cols
    if nonzero is None or not bool(nonzero.any()):
        return 0
    return int(nonzero.nonzero().max()) + 1


def thin_svd(F3: Tensor):
    """(U [R, m, r], S [R, r], V [R, n, r]) of F3 [R, m, n] (work dtype) from the eigh of the float64
    Gram of the short side; the long-side factor is F·W/σ (stabilised 1/σ). Rows with a non-finite
    entry give NaN factors (LAPACK would raise for the whole batch)."""
    m, n = F3.shape[-2:]
    tall = m >= n
    # Decomposed as Fz = F/c (c: each row's power-of-two scale, no overflow or underflow of the
    # Gram at any scale of F; non-finite rows zeroed); σ(F) = c·σ(Fz).
    finite, Fz, c = scaled_rows(F3)
    finite = finite[:, None, None]
    Fd = Fz.double()
    lam, W = eigh_desc(Fd.mT @ Fd if tall else Fd @ Fd.mT)
    S = lam.sqrt()
    W = W.to(F3.dtype)
    inv = safe_inv(S, S[:, :1]).to(F3.dtype).unsqueeze(-2)
    other = (Fz @ W if tall else Fz.mT @ W) * inv
    U, V = (other, W) if tall else (W, other)
    nan = torch.tensor(float("nan"), dtype=F3.dtype, device=F3.device)
    U, V = torch.where(finite, U, nan), torch.where(finite, V, nan)
    S = torch.where(finite[:, :, 0], S.to(F3.dtype), nan)
    return U, S * c[:, None], V


def thin_svd_grad(F3: Tensor, U: Tensor, S: Tensor, V: Tensor, gU: Tensor | None, gS: Tensor | None,
                  gV: Tensor | None) -> Tensor:
    """dL/dF3 of thin_svd's outputs (U, S, V) from their gradients (None: zero). Linear in (gU, gS, gV):
    U diag(gS) Vᵀ over all r values, plus the exact top-k gradient (exact_grad_short, as svd_topk's
    Gram path) for the leading k columns of gU, gV that carry a gradient, in the short-side frame
    where W (all r eigenvectors of the Gram) is the square factor."""
    _, Fz, c = scaled_rows(F3)  # the forward's frame: σ(Fz) = σ/c (c a power of two: exact)
    R, m, r = U.shape
    n = V.shape[-2]
    gF = (U * gS.unsqueeze(-2)) @ V.mT if gS is not None else U.new_zeros(R, m, n)
    k = _grad_width(gU, gV)  # callers differentiate through leading columns: O(k) work, not O(r)
    if k == 0:
        return gF
    S = S / c[:, None]
    gUk = U.new_zeros(R, m, k) if gU is None else gU[..., :k]
    gVk = V.new_zeros(R, n, k) if gV is None else gV[..., :k]
    tall = m >= n  # as in thin_svd: W = V, the long factor U
    gUk, gVk = gUk / c[:, None, None], gVk / c[:, None, None]  # the gradient in Fz's frame, over c
    A, W, L, gW, gL = (Fz.mT, V, U, gVk, gUk) if tall else (Fz, U, V, gUk, gVk)
    gA = exact_grad_short(A, W[..., :k], L[..., :k], W, S, gW, S.new_zeros(R, k), gL)
    return gF + (gA.mT if tall else gA)


# ---------------------------------------------------------------- test matrices


def _orth(rows, cols, gen):
    return torch.linalg.qr(torch.randn((rows, cols), generator=gen, dtype=torch.float64))[0]


def planted(batch, m, n, k, gen, *, ratio=0.8, tail=1e-10, rank=None):
    """float64 [batch..., m, n] = U diag(σ) Vᵀ with σ_i = 3·ratio^i for i < rank (default k) and a
    geometric tail from `tail`·σ_1: a clear gap after k, exact triplets known."""
    r = min(m, n)
    rank = k if rank is None else rank
    out = []
    for _ in range(max(batch, 1)):
        s = torch.cat([3.0 * ratio ** torch.arange(rank, dtype=torch.float64),
                       3.0 * tail * 0.9 ** torch.arange(r - rank, dtype=torch.float64)])
        U, V = _orth(m, r, gen), _orth(n, r, gen)
        out.append((U * s) @ V.T)
    F = torch.stack(out)
    return F if batch else F[0]


SPECTRA = ("zero", "flat", "spiked", "slow")


def spectrum(batch, m, n, k, kind, gen):
    """float64 test data [batch..., m, n] whose spectrum takes one path of the top-k solvers (cheap at
    any size: no full QR): "zero"; "flat" (unit Gaussian noise: the Marchenko–Pastur bulk, no gap
    anywhere, which the subspace iteration hands to the Gram solver); "spiked" (k values 8× the
    bulk's edge: the subspace iteration's first test passes); "slow" (k values at 3.3× the edge over a
    plateau of 2k + 16 at 3×: a gap of 1.1, where the Krylov space takes over)."""
    if kind not in SPECTRA:
        raise ValueError(f"kind must be one of {SPECTRA}, got {kind!r}")
    if kind == "zero":
        return torch.zeros((*([batch] if batch else []), m, n), dtype=torch.float64)
    edge, r = math.sqrt(m) + math.sqrt(n), min(m, n)
    top = {"flat": [], "spiked": [8.0] * k, "slow": [3.3] * k + [3.0] * (2 * k + 16)}[kind][:r]
    out = []
    for _ in range(max(batch, 1)):
        X = torch.randn((m, n), generator=gen, dtype=torch.float64)
        if top:
            s = edge * torch.tensor(top, dtype=torch.float64)
            X = X + (_orth(m, len(top), gen) * s) @ _orth(n, len(top), gen).T
        out.append(X)
    F = torch.stack(out)
    return F if batch else F[0]


def spiked(batch, m, n, s, strength, gen):
    """Gaussian noise (unit entries) plus a planted rank-s spike of singular values
    strength·(√m + √n)·(1 + i/s): well above the MP edge for strength > 1."""
    out = []
    for _ in range(max(batch, 1)):
        X = torch.randn((m, n), generator=gen, dtype=torch.float64)
        sig = strength * (math.sqrt(m) + math.sqrt(n)) * (1 + torch.arange(s, 0, -1, dtype=torch.float64) / s)
        out.append(X + (_orth(m, s, gen) * sig) @ _orth(n, s, gen).T)
    F = torch.stack(out)
    return F if batch else F[0]
