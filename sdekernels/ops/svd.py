"""Decomposition and spectral partition (SPEC §1, §2): `svd_topk`, `singular_values`, `spectral_partition`.

svd_topk: up to r = min(m, n) = GRAM_MAX_R, a Gram eigen-solver (the short-side Gram FFᵀ or FᵀF,
accumulated in float64 for r <= 256 and in fp32 above, `eigh` in float64, its top k + oversample
eigenvectors as the basis of a Rayleigh–Ritz step whose small Gram is solved in float64): exact
whatever the tail of the spectrum, and measured faster than the alternatives at the field's sizes.
Beyond, randomized subspace iteration (QR re-orthonormalisation at every half step) with the same
Rayleigh–Ritz step. The big products run in a Triton batched GEMM (strided operands, so no
transposed or up-cast copy of F; fp32/fp64 accumulation) on CUDA, and in ATen (MKL) on CPU. The
random test matrix comes from a seeded generator (a fixed seed when none is given), shared by the
batch, so results are reproducible and a batch element never depends on its neighbours.
Backward (csrc/cpu/svd.cpp, csrc/cuda/svd.cu, with an ATen fallback): on the Gram path the exact
gradient, from the full short-side eigenbasis saved by the forward (Daleckii–Krein over all r
values, stabilised as in SPEC §1, so exact whatever the tail of the spectrum); on the randomized
path the truncated-SVD gradient of SPEC §1 (exact only as σ_{k+1..r} → 0).
Reference: reference/svd.py. Tests: python_tests/test_svd.py and the generic test_ops.py.
"""
import functools
import math

import torch
from torch import Tensor

from .. import _ext
from .. import reference as ref
from . import _triton as kt
from .._core import HAS_TRITON, check, check_int, check_real, grad_like, pow2_scale, use_triton, work_dtype
from ..reference.svd import SpectralPartition, mp_median
from ..registry import F64, OpInfo, Sample, register

__all__ = ["svd_topk", "singular_values", "spectral_partition", "SpectralPartition", "svd_topk_backward_math",
           "svd_topk_exact_backward_math"]

DEFAULT_NITER = 8   # typical subspace iterations, for cost estimates (each: one F·X and one Fᵀ·Y product)
GRAM_MAX_R = 2048   # up to this r = min(m, n) the Gram eigen-solver (exact, measured faster here) is used
DEFAULT_SEED = 0x5DE

# Stabilisers of the backward (SPEC §1), relative to σ_1 (never absolute, SPEC §10): 1/(σ_j² − σ_i²)
# -> x/(x² + ε) with ε = (LOR_REL·σ_1²)², and 1/σ -> σ/(σ² + ε') with ε' = INV_REL·σ_1²; both 0
# when σ_1 = 0. Callers first scale each batch element by a power of two (scaled_rows), so σ_1 is
# of order 1 and ε stays far inside the float64 range. The same constants are in csrc/spectral_math.h.
LOR_REL, INV_REL = 1e-7, 1e-20

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
    return torch.matmul(a.to(out_dtype), b.to(out_dtype))


def mm_for(x: Tensor):
    return triton_bmm if use_triton(x) else _aten_bmm


def _damped(x: Tensor, eps: Tensor) -> Tensor:
    """x/(x² + ε), 0 where x² + ε = 0."""
    den = x * x + eps
    return torch.where(den > 0, x / torch.where(den > 0, den, 1.0), 0.0)


def safe_inv(s: Tensor, s1: Tensor) -> Tensor:
    """σ/(σ² + ε'): 1/σ where σ is not negligible next to σ_1, 0 at σ = 0, never Inf (s1: σ_1 per row)."""
    sd, s1 = s.double(), s1.double()
    return _damped(sd, INV_REL * s1 * s1).to(s.dtype)


def scaled_rows(F3: Tensor):
    """(finite [R], F3 / c in the work dtype with non-finite rows zeroed, c [R]) for F3 [R, m, n]: c is
    the power of two that puts max|F| of each row in [1, 2) (an exact division), so the Gram, the
    eigensolver and the stabilisers see entries of order 1 at any scale of F (SPEC §10) and each
    row is decomposed independently of its neighbours' scale. σ(F) = c·σ(F/c); U, V are unchanged."""
    c = pow2_scale(F3, (-2, -1))
    finite = torch.isfinite(F3.abs().amax((-2, -1)))  # amax propagates NaN and Inf
    Fs = torch.where(finite[:, None, None], F3.to(c.dtype) / c, 0.0)
    return finite, Fs, c[:, 0, 0]


def finite_mask(F3: Tensor) -> Tensor:
    """Per batch row of F3 [R, m, n]: is every entry finite (one float64 sum: cheaper than isfinite,
    and no overflow of finite values)."""
    return torch.isfinite(F3.sum((-2, -1), dtype=torch.float64))


def finite_rows(F3: Tensor):
    """Per batch row: is every entry finite, and F with non-finite rows zeroed (LAPACK raises on NaN)."""
    finite = finite_mask(F3)
    return finite, torch.where(finite[:, None, None], F3, torch.zeros((), dtype=F3.dtype, device=F3.device))


def _unscale(c: Tensor, *ts: Tensor):
    """Tensors [R, ...] divided by the row scales c [R]."""
    return tuple(t / c.reshape(-1, *([1] * (t.dim() - 1))).to(t.dtype) for t in ts)


def _fix_signs(U: Tensor, V: Tensor):
    """Sign convention: the largest-magnitude entry of each column of U is positive."""
    idx = U.abs().argmax(-2, keepdim=True)
    s = torch.sign(torch.gather(U, -2, idx))
    s = torch.where(s == 0, torch.ones_like(s), s)
    return U * s, V * s


def lorentz(x: Tensor, s1: Tensor) -> Tensor:
    """x/(x² + ε), ε = (LOR_REL·σ_1²)²: 1/x for gaps x of squared singular values, bounded at 0."""
    x, s1 = x.double(), s1.double()
    return _damped(x, (LOR_REL * s1 * s1) ** 2)


def _eigh_desc(G: Tensor):
    """Eigenpairs of symmetric G, eigenvalues descending and clamped at 0."""
    lam, W = torch.linalg.eigh(G)
    return lam.flip(-1).clamp_min(0), W.flip(-1)


def use_gram(r: int) -> bool:
    return r <= GRAM_MAX_R


def _omega(F3: Tensor, rows: int, cols: int, seed: int, dtype) -> Tensor:
    gen = torch.Generator(device=F3.device).manual_seed(seed)
    return torch.randn((1, rows, cols), generator=gen, device=F3.device, dtype=dtype)


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
        return _eigh_desc(G)
    return torch.linalg.eigvalsh(G).flip(-1).clamp_min(0)


def fast_gram(r: int, dtype: torch.dtype) -> bool:
    """float32 Gram and eigh for float32/bf16/fp16 input above r = 256 (fp64 below: cheap and exact)."""
    return r > 256 and work_dtype(dtype) == torch.float32


def default_tol(dtype: torch.dtype) -> float:
    """Target of the a-posteriori bound on the relative σ error (sin∠ is held to 10× it): SPEC §1's bars
    (1e-4 on σ, 1e-3 on sin∠) for float32 and below; near float64 accuracy for float64 input."""
    return 1e-10 if dtype == torch.float64 else 1e-4


def ritz_error(res: Tensor, s: Tensor, k: int) -> Tensor:
    """A-posteriori error bound per row from the Ritz residuals res [R, k] = ‖A v_i − σ_i u_i‖ (Aᵀu_i = σ_i v_i
    holds exactly after Rayleigh–Ritz) and the block's Ritz values s [R, l] (descending), in units of
    the σ tolerance (SPEC §1 allows 10× more on sin∠ than on σ): the larger of
    - the relative σ error bound min(ρ_i, ρ_i²/g_i), ρ_i = ‖r_i‖/σ_i, g_i the relative gap of σ_i to the
      nearest other Ritz value (Weyl, and the quadratic Kato–Temple bound for AAᵀ);
    - sin∠ between the computed and the true top-k subspaces, ‖(σ_i‖r_i‖)_i‖ / (σ_k² − σ_{k+1}²)
      (Davis–Kahan for AAᵀ, with σ_{k+1} from the block), where σ_k/σ_{k+1} >= 1.1 (SPEC §1 asks no
      subspace accuracy without that gap), divided by 10."""
    s = s.double()
    sk = s[:, :k]
    rho = torch.where(sk > 0, res / torch.where(sk > 0, sk, 1.0), 0.0)
    diff = (sk[:, :, None] - s[:, None, :]).abs()
    diff[:, torch.arange(k), torch.arange(k)] = float("inf")
    g = diff.amin(-1) / torch.where(sk > 0, sk, 1.0) if s.shape[-1] > 1 else torch.full_like(sk, float("inf"))
    err = torch.minimum(rho, rho * rho / g.clamp_min(1e-300)).amax(-1)
    if s.shape[-1] > k:
        top, nxt = s[:, k - 1], s[:, k]
        sep = top * top - nxt * nxt
        sin = torch.linalg.vector_norm(sk * res, dim=-1) / torch.where(sep > 0, sep, 1.0)
        err = torch.maximum(err, torch.where((top >= 1.1 * nxt) & (sep > 0), sin / 10, 0.0))
    return err


def _gram_basis(F3: Tensor, l: int, w) -> Tensor:
    """Top-l eigenvectors of the short-side Gram (the Rayleigh–Ritz step restores full accuracy)."""
    R, r = F3.shape[0], min(F3.shape[-2:])
    return gram_eigh(F3, torch.ones(R, dtype=torch.bool, device=F3.device), fast=fast_gram(r, F3.dtype))[1][:, :, :l].to(w)


def subspace_basis(F3: Tensor, k: int, l: int, niter: int | None, tol: float, seed: int):
    """(Q, AᵀQ): an orthonormal basis Q [R, r, l] of the short side of F3 [R, m, n] whose Rayleigh–Ritz triplets meet
    `tol` (ritz_error), by randomized block subspace iteration: B = AᵀQ, Rayleigh–Ritz on BᵀB (l×l, float64),
    Z = qr(B), Y = AZ, Q ← qr(Y) (re-orthonormalised at every half step). The residuals come free from
    Y: A v_i = Y R_B w_i / σ_i. A row stops (its Q frozen, so it never depends on its neighbours) as soon
    as its bound holds. niter caps the iterations; niter=None runs until converged, and a row whose
    predicted remaining iterations (from the observed rate (σ_l/σ_k)² per iteration) would cost more
    than the Gram eigen-solver takes that solver instead."""
    mm = mm_for(F3)
    w = work_dtype(F3.dtype)
    R, m, n = F3.shape
    r, N = min(m, n), max(m, n)
    A, At = (F3, F3.mT) if m <= n else (F3.mT, F3)
    Q = torch.linalg.qr(mm(A, _omega(F3, N, l, seed, w), w))[0]
    Qf, Bf = Q.clone(), None
    done = torch.zeros(R, dtype=torch.bool, device=F3.device)
    gram = torch.zeros_like(done)
    cost_it, cost_gram = 4.0 * r * N * l, 4.0 * r * r * N + 12.0 * r ** 3  # in GEMM flops (measured eigh ≈ 12 r³)
    cap = 200 if niter is None else niter
    for it in range(cap + 1):
        B = mm(At, Q, w)                                   # [R, N, l]
        Bd = B.double()
        lam, Wr = _eigh_desc(Bd.mT @ Bd)
        s = lam.sqrt()
        Z, Rb = torch.linalg.qr(B)
        Y = mm(A, Z, w)                                    # A Aᵀ Q R_B⁻¹, [R, r, l]
        Wk = Wr[:, :, :k]
        sk = s[:, :k]
        res = Y.double() @ (Rb.double() @ Wk) * safe_inv(sk, s[:, :1]).unsqueeze(-2) - Q.double() @ Wk * sk.unsqueeze(-2)
        err = ritz_error(torch.linalg.vector_norm(res, dim=-2), s, k)
        ok = (err <= tol) | ~torch.isfinite(err)
        if niter is None and it >= 1:
            rate = (s[:, l - 1] / s[:, k - 1].clamp_min(1e-300)) ** 2
            more = torch.log(torch.as_tensor(tol, dtype=err.dtype) / err.clamp_min(1e-300)) / torch.log(rate.clamp(1e-300, 1 - 1e-9))
            gram |= ~done & ~ok & (more * cost_it > cost_gram)
        new = ~done & (ok | gram | (it == cap))
        Qf = torch.where(new[:, None, None], Q, Qf)
        Bf = B if Bf is None else torch.where(new[:, None, None], B, Bf)
        done |= new
        if bool(done.all()):
            break
        Q = torch.linalg.qr(Y)[0]
    if bool(gram.any()):
        idx = gram.nonzero()[:, 0]
        Qf[idx] = _gram_basis(F3[idx], l, w)
        Bf[idx] = mm(At[idx], Qf[idx], w)
    return Qf, Bf


def topk_rows(F3: Tensor, k: int, niter: int | None, oversample: int, seed: int, basis: bool = False,
              tol: float | None = None, gram: bool = True):
    """U [R, m, k], S [R, k], V [R, n, k] in the work dtype for F3 [R, m, n] (non-finite rows zeroed).

    Works on the short side: A = F (m <= n) or Fᵀ, so the basis Q [R, r, l] is the small one.
    gram: the Gram path, else the adaptive subspace iteration (subspace_basis; the Gram basis anyway
    when k + oversample >= r or r <= 32). basis=True also returns the full short-side Gram eigenbasis
    W [R, r, r] and all r singular values [R, r] (work dtype) for the exact backward on the Gram
    path, empty [R, 0, 0] and [R, 0] otherwise.
    """
    mm = mm_for(F3)
    w = work_dtype(F3.dtype)
    R, m, n = F3.shape
    r = min(m, n)
    A, At = (F3, F3.mT) if m <= n else (F3.mT, F3)
    l = min(k + oversample, r)
    extra = (F3.new_empty((R, 0, 0), dtype=w), F3.new_empty((R, 0), dtype=w))
    B = None
    if gram or l >= r or r <= 32:
        # Top-l eigenvectors of the short-side Gram AAᵀ (float32 for large r: the Rayleigh–Ritz step
        # below restores full accuracy of σ and of the subspace).
        lam_all, W_all = gram_eigh(F3, torch.ones(R, dtype=torch.bool, device=F3.device), fast=fast_gram(r, F3.dtype))
        Q = W_all[:, :, :l].to(w)
        extra = (W_all.to(w), lam_all.sqrt().to(w)) if gram else extra
    else:
        Q, B = subspace_basis(F3, k, l, niter, default_tol(F3.dtype) if tol is None else tol, seed)
    # Rayleigh–Ritz: SVD of QᵀA through its l×l Gram in float64 (B = AᵀQ known on the iterative path).
    Bd = (B if B is not None else mm(At, Q, w)).double()             # (QᵀA)ᵀ, [R, long, l]
    lam, W = _eigh_desc(Bd.mT @ Bd)
    S = lam[:, :k].sqrt()
    W = W[:, :, :k]
    short = (Q.double() @ W).to(w)
    long_ = (Bd @ W * safe_inv(S, S[:, :1]).unsqueeze(-2)).to(w)
    U, V = (short, long_) if m <= n else (long_, short)
    return (U, S.to(w), V, *extra) if basis else (U, S.to(w), V)


def _svd_topk_impl(F: Tensor, k: int, niter: int, oversample: int, seed: int, exact: bool, tol: float):
    m, n = F.shape[-2:]
    batch = F.shape[:-2]
    F3 = F.reshape(-1, m, n)
    if F3.shape[0] == 0:
        e = F.new_empty
        return e((*batch, m, k)), e((*batch, k)), e((*batch, n, k)), *_basis_empty(F, m, n, exact)
    finite, F3, c = scaled_rows(F3)
    # W and all σ are saved in the scaled frame (the backward recomputes c from F).
    U, S, V, W, S_all = topk_rows(F3, k, None if niter < 0 else niter, oversample, seed, basis=True,
                                  tol=None if tol < 0 else tol, gram=exact)
    S = S * c[:, None]
    U, V = _fix_signs(U, V)
    nan = torch.tensor(float("nan"), dtype=U.dtype, device=U.device)
    U = torch.where(finite[:, None, None], U, nan)
    S = torch.where(finite[:, None], S, nan)
    V = torch.where(finite[:, None, None], V, nan)
    # Contiguous, as the fake kernel declares (eigh returns column-major eigenvectors).
    return (U.reshape(*batch, m, k).to(F.dtype), S.reshape(*batch, k).to(F.dtype), V.reshape(*batch, n, k).to(F.dtype),
            W.contiguous(), S_all.contiguous())


def _basis_empty(F: Tensor, m: int, n: int, exact: bool):
    """Empty saved basis (W [R, r|0, r|0], all σ [R, r|0]) of the shapes the forward returns."""
    R, r, w = math.prod(F.shape[:-2]), min(m, n), work_dtype(F.dtype)
    rb = r if exact else 0
    return F.new_empty((R, rb, rb), dtype=w), F.new_empty((R, rb), dtype=w)


@torch.library.custom_op("sdekernels::svd_topk", mutates_args=())
def _svd_topk(F: Tensor, k: int, niter: int, oversample: int, seed: int, exact: bool,
              tol: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(U, S, V) and, for the exact backward, the short-side eigenbasis W and all σ (Gram path, `exact`).
    niter < 0: until converged; tol < 0: default_tol."""
    return _svd_topk_impl(F, k, niter, oversample, seed, exact, tol)


@_svd_topk.register_fake
def _(F, k, niter, oversample, seed, exact, tol):
    b, (m, n) = F.shape[:-2], F.shape[-2:]
    return F.new_empty((*b, m, k)), F.new_empty((*b, k)), F.new_empty((*b, n, k)), *_basis_empty(F, m, n, exact)


def svd_topk_backward_math(U: Tensor, S: Tensor, V: Tensor, gU: Tensor, gS: Tensor, gV: Tensor) -> Tensor:
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
    L = lorentz(s2.unsqueeze(-2) - s2.unsqueeze(-1), s1.unsqueeze(-1))  # of E_jl = σ_l² − σ_j²
    K = L * ((A - A.mT) * Sd.unsqueeze(-2) + Sd.unsqueeze(-1) * (B - B.mT))
    K = K * (1 - torch.eye(K.shape[-1], dtype=K.dtype, device=K.device)) + torch.diag_embed(gSd)
    inv = safe_inv(Sd, s1)
    Kt = (K - A * inv.unsqueeze(-2) - inv.unsqueeze(-1) * B.mT).to(U.dtype)
    inv = inv.to(U.dtype).unsqueeze(-2)
    left = torch.cat([U @ Kt + gU * inv, U * inv], -1)
    return left @ torch.cat([V, gV], -1).mT


@torch.library.custom_op("sdekernels::svd_topk_backward", mutates_args=())
def _svd_topk_backward(U: Tensor, S: Tensor, V: Tensor, gU: Tensor, gS: Tensor, gV: Tensor) -> Tensor:
    w = work_dtype(U.dtype)
    # Scale-free (SPEC §10): with c = σ_1's power of two, the gradient is that of S/c with gU/c, gV/c.
    c = pow2_scale(S, (-1,))[..., 0]
    S, gU, gV = S / c[..., None], gU / c[..., None, None], gV / c[..., None, None]
    args = [t.to(w).contiguous() for t in (U, S, V, gU, gS, gV)]
    if _ext.available():
        return torch.ops.sdekernels_C.svd_topk_bwd(*args)
    return svd_topk_backward_math(*args)


@_svd_topk_backward.register_fake
def _(U, S, V, gU, gS, gV):
    b = U.shape[:-2]
    return U.new_empty((*b, U.shape[-2], V.shape[-2]), dtype=work_dtype(U.dtype))


def svd_topk_grad(U, S, V, gU, gS, gV, dtype) -> Tensor:
    """dL/dF from the gradients of (U, S, V) (None = 0), in `dtype`."""
    z = torch.zeros_like
    return _svd_topk_backward(U, S, V, z(U) if gU is None else gU, z(S) if gS is None else gS,
                              z(V) if gV is None else gV).to(dtype)


def svd_topk_exact_backward_math(A: Tensor, Ws: Tensor, Wl: Tensor, W: Tensor, sigma: Tensor, gWs: Tensor, gS: Tensor,
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
    C = lorentz(sd[:, None, :k] ** 2 - sd[:, :, None] ** 2, s1[:, :, None]) * (P.double() + Q.double() * inv[:, None, :])
    idx = torch.arange(k, device=C.device)
    C[:, idx, idx] = (gS.double() - inv * inv * Q.double()[:, idx, idx]) * inv / 2
    rs = torch.where(s1 > 0, 1 / s1, 0.0)
    T = W @ (C * s1[:, :, None]).to(W.dtype)  # σ_1·W C
    left = torch.cat([Ws * inv.to(W.dtype).unsqueeze(-2), T * (sd[:, :k] * rs).to(W.dtype).unsqueeze(-2)], -1)
    return left @ torch.cat([gWl, Wl], -1).mT + Ws @ ((T.mT @ A) * rs.to(W.dtype).unsqueeze(-1))


def exact_grad_short(A: Tensor, Ws: Tensor, Wl: Tensor, W: Tensor, sigma: Tensor, gWs: Tensor, gS: Tensor,
                     gWl: Tensor) -> Tensor:
    """The exact top-k SVD gradient in the short-side frame (svd_topk_exact_backward_math's
    arguments, float32/float64 rows [R, ...]): the extension's kernel, else the ATen formula."""
    args = (A, Ws.contiguous(), Wl.contiguous(), W.contiguous(), sigma.contiguous(), gWs.contiguous(), gS.contiguous(),
            gWl.contiguous())
    return torch.ops.sdekernels_C.svd_topk_exact_bwd(*args) if _ext.available() else svd_topk_exact_backward_math(*args)


@torch.library.custom_op("sdekernels::svd_topk_exact_backward", mutates_args=())
def _svd_topk_exact_backward(F: Tensor, U: Tensor, S: Tensor, V: Tensor, W: Tensor, S_all: Tensor, gU: Tensor,
                             gS: Tensor, gV: Tensor) -> Tensor:
    w = work_dtype(F.dtype)
    (m, n), k, R = F.shape[-2:], U.shape[-1], W.shape[0]
    U3, V3, gU3, gV3 = (t.reshape(R, *t.shape[-2:]).to(w) for t in (U, V, gU, gV))
    S2, gS2 = S.reshape(R, k).to(w), gS.reshape(R, k).to(w)
    # In the forward's scaled frame F/c: the gradient is that of (U, σ/c, V) with gU/c, gS, gV/c.
    _, F3, c = scaled_rows(F.reshape(R, m, n))
    S2, gU3, gV3 = _unscale(c, S2, gU3, gV3)
    # The short side (W's frame): Fᵀ for tall F, as in topk_rows; a non-finite row of F (its U, V are
    # NaN) gives a NaN gradient in that row only.
    tall = m > n
    A, Ws, Wl, gWs, gWl = (F3.mT, V3, U3, gV3, gU3) if tall else (F3, U3, V3, gU3, gV3)
    # The outputs' top-k (Rayleigh–Ritz accurate, signs fixed) replace the Gram's own.
    gA = exact_grad_short(A, Ws, Wl, torch.cat([Ws, W[:, :, k:]], -1), torch.cat([S2, S_all[:, k:]], -1), gWs, gS2, gWl)
    return grad_like((gA.mT if tall else gA).reshape(F.shape), F)


@_svd_topk_exact_backward.register_fake
def _(F, U, S, V, W, S_all, gU, gS, gV):
    return torch.empty_like(F)


def _svd_topk_setup(ctx, inputs, output):
    ctx.dtype = inputs[0].dtype
    ctx.exact = output[3].shape[-1] > 0  # the Gram path saved its full eigenbasis
    ctx.save_for_backward(inputs[0] if ctx.exact else None, *output)


def _svd_topk_grad(ctx, gU, gS, gV, *_):
    F, U, S, V, W, S_all = ctx.saved_tensors
    if ctx.exact:
        z = torch.zeros_like
        gF = _svd_topk_exact_backward(F, U, S, V, W, S_all, z(U) if gU is None else gU, z(S) if gS is None else gS,
                                      z(V) if gV is None else gV)
    else:
        gF = svd_topk_grad(U, S, V, gU, gS, gV, ctx.dtype)
    return gF, None, None, None, None, None, None


_svd_topk.register_autograd(_svd_topk_grad, setup_context=_svd_topk_setup)


def _check_matrix(F, name="F"):
    check(F, name, min_dim=2)


def _seed(generator) -> int:
    if generator is None:
        return DEFAULT_SEED
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())


def svd_topk(F: Tensor, k: int, *, niter: int | None = None, oversample: int = 8,
             generator: torch.Generator | None = None, tol: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k singular triplets of F [..., m, n] (SPEC §1): (U [..., m, k], S [..., k], V [..., n, k]),
    S descending, the largest-magnitude entry of each column of U positive.

    Solvers (all scale each batch element by a power of two first, SPEC §10):
    - adaptive randomized block subspace iteration (subspace_basis): sketch A·Ω with k + oversample
      columns, then per iteration B = AᵀQ, Rayleigh–Ritz, Y = A·qr(B), Q = qr(Y). After each
      iteration the Ritz residuals ‖A v_i − σ_i u_i‖ (free from Y) give a-posteriori bounds on the
      relative error of σ_1..k and on sin∠ of the top-k subspace (where σ_k/σ_{k+1} >= 1.1; see
      ritz_error); a batch element stops as soon as the σ bound is <= tol and the sin∠ bound <= 10·tol
      (default tol: 1e-4 for float32 and below, SPEC §1's bars; 1e-10 for float64). niter=None: until converged, and an
      element whose observed convergence rate predicts more work than the Gram eigen-solver switches
      to it; an int caps the iterations (stopping earlier once converged). Spiked spectra stop after
      a few passes over F; slow spectra (small gap, flat tail) take the Gram solver.
    - Gram eigen-solver (float64, or float32 above r = 256 for float32 input, then Rayleigh–Ritz):
      when F takes a gradient with niter=None and r <= GRAM_MAX_R (the exact backward needs the full
      short-side eigenbasis), and when k + oversample >= r or r <= 32.
    generator seeds the sketch (default: a fixed seed, so results are reproducible).

    Differentiable, finite for every finite F. Backward:
    - Gram path: the exact gradient of the top-k triplets of the full SVD. The
      forward keeps the short-side Gram eigenbasis (r×r) and all r singular values; the backward
      applies the chain rule through the long-side factor and Daleckii–Krein over all r values,
      1/(σ_j² − σ_i²) for j <= k and every i (the values past k included), stabilised as in SPEC §1.
      It agrees with autograd through torch.linalg.svd to ~1e-10 relative in float64 on full-rank
      F wherever the gaps exceed 1e-3·σ_1². Products are k×r, r×r·r×k and of F's shape only.
    - iterative path (an int niter, or r > GRAM_MAX_R): the truncated-SVD gradient of SPEC §1 with complement terms
      (I − UUᵀ)·gU·diag(1/σ)·Vᵀ and U·diag(1/σ)·gVᵀ·(I − VVᵀ), exact only when σ_{k+1..r} = 0
      (otherwise the part of the gradient coupling the top k to the rest is approximated).
    """
    _check_matrix(F)
    r = min(F.shape[-2:])
    k = check_int(k, "k", 1, r)  # in [1, min(m, n)]
    if niter is not None:
        niter = check_int(niter, "niter", 0)
    oversample = check_int(oversample, "oversample", 0)
    if tol is not None:
        tol = check_real(tol, "tol", 0.0, 1.0, open_lo=True)
        if tol == 1.0:
            raise ValueError(f"tol must be a number in (0, 1) or None, got {tol!r}")
    # The exact gradient needs the full short-side eigenbasis: the Gram path when F takes a gradient.
    exact = niter is None and use_gram(r) and torch.is_grad_enabled() and F.requires_grad
    return _svd_topk(F, k, -1 if niter is None else niter, oversample, _seed(generator), exact,
                     -1.0 if tol is None else float(tol))[:3]


# ---------------------------------------------------------------- singular_values


@torch.library.custom_op("sdekernels::singular_values", mutates_args=())
def _singular_values(F: Tensor) -> Tensor:
    batch, r = F.shape[:-2], min(F.shape[-2:])
    if F.numel() == 0:
        return F.new_zeros((*batch, r))
    finite, F3, c = scaled_rows(F.reshape(-1, *F.shape[-2:]))
    S = torch.where(finite[:, None], gram_eigh(F3, finite, vectors=False).sqrt() * c[:, None], float("nan"))
    return S.reshape(*batch, r).to(F.dtype)


@_singular_values.register_fake
def _(F):
    return F.new_empty((*F.shape[:-2], min(F.shape[-2:])))


@torch.library.custom_op("sdekernels::singular_values_backward", mutates_args=())
def _singular_values_backward(F: Tensor, grad: Tensor) -> Tensor:
    # dσ_i/dF = u_i v_iᵀ, with the short-side vectors W from the Gram and u_i v_iᵀ = F w_i w_iᵀ/σ_i
    # (or w_i w_iᵀ F/σ_i): the stabilised 1/σ keeps zero singular values finite.
    w = work_dtype(F.dtype)
    m, n = F.shape[-2:]
    finite, F3, _ = scaled_rows(F.reshape(-1, m, n))  # u_i v_iᵀ is the same for F/c
    tall = m > n  # gram_eigh works on the short side: FᵀF (W = V) when m > n, else FFᵀ (W = U)
    lam, W = gram_eigh(F3, finite)
    S = lam.sqrt()
    coef = (grad.reshape(S.shape).double() * safe_inv(S, S[:, :1])).to(w)
    W = W.to(w)
    Wc = W * coef.unsqueeze(-2)
    mm = mm_for(F3)
    F3w = F3.to(w)
    gF = mm(mm(F3w, W, w), Wc.mT, w) if tall else mm(Wc, mm(W.mT, F3w, w), w)
    gF = torch.where(finite[:, None, None], gF, float("nan"))
    return grad_like(gF.reshape(F.shape), F)


@_singular_values_backward.register_fake
def _(F, grad):
    return torch.empty_like(F)


def _sv_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _sv_grad(ctx, grad):
    (F,) = ctx.saved_tensors
    return _singular_values_backward(F, grad)


_singular_values.register_autograd(_sv_grad, setup_context=_sv_setup)


def singular_values(F: Tensor) -> Tensor:
    """All r = min(m, n) singular values of F [..., m, n], descending (SPEC §1).

    From the float64 Gram of the short side (eigvalsh); differentiable (dσ_i/dF = u_i v_iᵀ).
    """
    _check_matrix(F)
    return _singular_values(F)


# ---------------------------------------------------------------- spectral_partition


@functools.lru_cache(maxsize=64)
def _quartile_taps(r: int, dtype: torch.dtype, device: torch.device):
    """torch.quantile's linear interpolation at q = 1/4, 1/2, 3/4 of r values sorted descending:
    the positions of the (lower, upper) neighbours [6] and the fractions [3]."""
    pos = [q * (r - 1) for q in (0.25, 0.5, 0.75)]
    lo = [math.floor(p) for p in pos]
    hi = [min(i + 1, r - 1) for i in lo]
    idx = torch.tensor([r - 1 - i for i in lo + hi], device=device)  # ascending i is descending r − 1 − i
    return idx, torch.tensor([p - i for p, i in zip(pos, lo)], dtype=dtype, device=device)


def _sigma_den(m: int, n: int) -> float:
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
    sigma_hat = med / _sigma_den(m, n)
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
    return tuple(e.clone() for e in _energy_fractions(s, n_strong, n_weak).unbind(-1))


def _energy_fractions(s: Tensor, n_strong: Tensor, n_weak: Tensor) -> Tensor:
    """energies() as one [..., 3] tensor. σ is divided by its power-of-two scale first (exact): no
    overflow of σ² at any scale (SPEC §10)."""
    s = s / pow2_scale(s, (-1,))
    c = (s * s).cumsum(-1)
    ends = torch.stack([n_strong - 1, n_strong + n_weak - 1, n_strong.new_full((), s.shape[-1] - 1).expand_as(n_strong)], -1)
    cum = c.gather(-1, ends)  # Σσ² up to the strong, the weak and the last entry
    total = cum[..., 2:]
    zero = total == 0
    e = torch.diff(cum, dim=-1, prepend=torch.zeros_like(total)) / torch.where(zero, 1.0, total)
    return torch.where(zero, torch.tensor([1.0, 0.0, 0.0], dtype=e.dtype, device=e.device), e)


@torch.library.custom_op("sdekernels::spectral_partition", mutates_args=())
def _spectral_partition(S: Tensor, m: int, n: int, iqr_c: float, center: bool = False) -> tuple[
        Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(n_strong, n_weak, tau_noise, tau_strong, sigma_hat, energy fractions [..., 3])."""
    # σ / c with c each row's power of two (exact): no overflow of σ² at any scale (SPEC §10)
    c = pow2_scale(S, (-1,))
    Su = S.to(c.dtype) / c
    if S.device.type == "cpu" and _ext.available() and S.shape[-1] and not center:  # one C++ pass per sorted row
        s = Su.sort(-1, descending=True).values
        out = torch.ops.sdekernels_C.spectral_partition_fwd(s, iqr_c, _sigma_den(m, n), math.sqrt(m) + math.sqrt(n))
    else:
        n_strong, n_weak, tau_noise, tau_strong, sigma_hat, s = partition_counts(Su, m, n, iqr_c, center)
        out = n_strong, n_weak, tau_noise, tau_strong, sigma_hat, _energy_fractions(s, n_strong, n_weak)
    c = c.squeeze(-1)
    return (*out[:2], *(x.to(S.dtype) for x in (out[2] * c, out[3] * c, out[4] * c, out[5])))


@_spectral_partition.register_fake
def _(S, m, n, iqr_c, center=False):
    b = S.shape[:-1]
    return (S.new_empty(b, dtype=torch.long), S.new_empty(b, dtype=torch.long), *(S.new_empty(b) for _ in range(3)),
            S.new_empty(b + (3,)))


def spectral_partition(S: Tensor, m: int, n: int, *, iqr_c: float = 1.5, center: bool = False) -> SpectralPartition:
    """Strong / weak / noise partition of the r = min(m, n) singular values S [..., r] (SPEC §2).

    σ̂ = median(σ)/√(max(m, n)·μ_β) (μ_β the Marchenko–Pastur median, computed numerically and
    cached), τ_noise = σ̂(√m + √n), τ_strong = max(τ_noise, q3 + iqr_c(q3 − q1)); one sort per row.
    center=True: S is the spectrum of the row-centred matrix; the fit uses m − 1 rows and the
    min(m − 1, n) largest values.
    Returns a SpectralPartition of detached tensors of the batch shape (counts int64).
    """
    check(S, "S")
    m, n = check_int(m, "m", 1), check_int(n, "n", 1)
    if S.shape[-1] != min(m, n):
        raise ValueError(f"S must hold all min(m, n) = {min(m, n)} singular values in its last dimension, "
                         f"got shape {tuple(S.shape)}")
    iqr_c = check_real(iqr_c, "iqr_c", 0.0)
    if not isinstance(center, bool):
        raise TypeError(f"center must be a bool, got {type(center).__name__}")
    if center and m < 2:
        raise ValueError(f"center=True needs m >= 2 rows, got m={m}")
    ns, nw, tn, ts, sh, e = _spectral_partition(S.detach(), m, n, iqr_c, center)
    return SpectralPartition(ns, nw, tn, ts, sh, e.unbind(-1))


# ---------------------------------------------------------------- registry entries


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


def _make_topk(shape, device, dtype, gen):
    F = planted(shape.get("batch", 0), shape["m"], shape["n"], shape["k"], gen)
    return Sample((F.to(device=device, dtype=dtype), shape["k"]), {"niter": shape.get("niter")})


def _ref_topk(F, k, **kw):
    """The reference with svd_topk's sign convention (a constant ±1 per column: gradients unchanged)."""
    U, S, V = ref.svd_topk(F, k, **kw)
    U, V = _fix_signs(U, V)
    return U, S, V


def canon_triplets(out):
    """Sign-free view of (U, S, V): S and the rank-one terms u_i v_iᵀ."""
    U, S, V = out
    return S, U.unsqueeze(-3).mT.unsqueeze(-1) * V.unsqueeze(-3).mT.unsqueeze(-2)


def _bad_topk(device):
    F = torch.randn(3, 10, 6, device=device)
    return [((F[0, 0], 2), {}, "F"), ((F.long(), 2), {}, "F"), ((F.numpy() if device.type == "cpu" else 1, 2), {}, "F"),
            ((F, 0), {}, "k"), ((F, 7), {}, "k"), ((F, 2.0), {}, "k", TypeError), ((F, 2), {"niter": -1}, "niter"),
            ((F, 2), {"niter": 2.5}, "niter", TypeError), ((F, 2), {"oversample": -2}, "oversample"),
            ((F, 2), {"oversample": 4.0}, "oversample", TypeError), ((F, 2), {"generator": 3}, "generator")]


_SVD_TOL = {F64: (1e-9, 1e-8), torch.float32: (2e-5, 2e-4), torch.bfloat16: (3e-2, 3e-2), torch.float16: (5e-3, 5e-3)}


def _lowrank(F, k, **kw):
    U, S, Vh = torch.svd_lowrank(F.float() if F.dtype in (torch.float16, torch.bfloat16) else F, q=k + 8, niter=4)
    return U[..., :k], S[..., :k], Vh[..., :k]


def _full_svd(F, k, **kw):
    U, S, Vh = torch.linalg.svd(F.float() if F.dtype in (torch.float16, torch.bfloat16) else F, full_matrices=False)
    return U[..., :k], S[..., :k], Vh[..., :k, :].mT


def _topk_cost(s):
    F, k = s.args[0], s.args[1]
    m, n = F.shape[-2:]
    R, r, l = F.numel() // max(m * n, 1), min(m, n), k + 8
    passes = 3 if use_gram(r) else 2 * DEFAULT_NITER + 2
    flops = R * (2 * m * n * (r + l) + 9 * r ** 3) if use_gram(r) else R * 2 * m * n * l * passes
    return F.numel() * F.element_size() * passes, flops


_FIELD = [{"batch": 0, "m": B, "n": D, "k": k} for B in (256, 1024, 4096) for D in (512, 768, 1024, 4096) for k in (16, 64)]

register(OpInfo(
    name="svd_topk", op=svd_topk, ref=_ref_topk, make=_make_topk,
    scaling=lambda sh: ((0,), (0, 1, 0)),
    shapes=[{"batch": 0, "m": 1, "n": 1, "k": 1}, {"batch": 3, "m": 8, "n": 6, "k": 3},
            {"batch": 2, "m": 5, "n": 12, "k": 4}, {"batch": 0, "m": 80, "n": 72, "k": 5},
            {"batch": 2, "m": 40, "n": 100, "k": 6, "niter": 3}],
    space={"batch": (0, 3), "m": (1, 40), "n": (1, 40), "k": (1, 6)},
    valid=lambda sh: sh["k"] <= min(sh["m"], sh["n"]),
    bad=_bad_topk, canon=canon_triplets, tol=_SVD_TOL, grad_tol=(1e-8, 1e-6),
    bench=[{"batch": 0, "m": 1024, "n": 768, "k": 16, "quick": True}, *_FIELD,
           {"batch": 64, "m": 256, "n": 256, "k": 16}, {"batch": 64, "m": 256, "n": 256, "k": 16, "backward": True},
           {"batch": 0, "m": 1024, "n": 4096, "k": 32}],
    cost=_topk_cost,
    baselines={"torch.linalg.svd": _full_svd, "torch.svd_lowrank": _lowrank},
))


def _make_sv(shape, device, dtype, gen):
    F = planted(shape.get("batch", 0), shape["m"], shape["n"], min(shape["m"], shape["n"]), gen, ratio=0.95)
    return Sample((F.to(device=device, dtype=dtype),))


def _bad_sv(device):
    F = torch.randn(3, 10, 6, device=device)
    return [((F[0, 0],), {}, "F"), ((F.int(),), {}, "F"), ((F.tolist(),), {}, "F")]


def _sv_cost(s):
    F = s.args[0]
    m, n = F.shape[-2:]
    R = F.numel() // max(m * n, 1)
    return F.numel() * F.element_size(), R * (2 * m * n * min(m, n) + 4 * min(m, n) ** 3)


register(OpInfo(
    name="singular_values", op=singular_values, ref=ref.singular_values, make=_make_sv,
    scaling=lambda sh: ((0,), (1,)),
    shapes=[{"batch": 0, "m": 1, "n": 1}, {"batch": 3, "m": 12, "n": 9}, {"batch": 2, "m": 5, "n": 17},
            {"batch": 0, "m": 70, "n": 70}],
    space={"batch": (0, 3), "m": (1, 40), "n": (1, 40)},
    bad=_bad_sv, tol=_SVD_TOL, grad_tol=(1e-8, 1e-6),
    bench=[{"batch": 0, "m": 1024, "n": 768, "quick": True}, {"batch": 0, "m": 4096, "n": 1024},
           {"batch": 64, "m": 256, "n": 256}],
    cost=_sv_cost,
    baselines={"torch.linalg.svdvals": lambda F: torch.linalg.svdvals(F.float() if F.dtype in (torch.float16, torch.bfloat16) else F)},
))


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


def _make_partition(shape, device, dtype, gen):
    m, n = shape["m"], shape["n"]
    F = spiked(shape.get("batch", 0), m, n, shape.get("s", 2), 2.0, gen)
    center = shape.get("center", False)
    S = torch.linalg.svdvals(F - F.mean(-2, keepdim=True) if center else F)
    return Sample((S.to(device=device, dtype=dtype), m, n), {"iqr_c": shape.get("iqr_c", 1.5), "center": center})


def _bad_partition(device):
    S = torch.rand(3, 8, device=device)
    return [((S.tolist(), 8, 20), {}, "S"), ((S, 8, 7), {}, "S"), ((S.long(), 8, 20), {}, "S"),
            ((S, 0, 20), {}, "m"), ((S, 8, 2.5), {}, "n", TypeError), ((S, 8, 20), {"iqr_c": -1.0}, "iqr_c"),
            ((S, 8, 20), {"iqr_c": float("inf")}, "iqr_c"), ((S[:, :1], 1, 20), {"center": True}, "center"),
            ((S, 8, 20), {"center": 1}, "center", TypeError)]


register(OpInfo(
    name="spectral_partition", op=spectral_partition, ref=ref.spectral_partition, make=_make_partition,
    scaling=lambda sh: ((0,), (0, 0, 1, 1, 1, 0, 0, 0)),  # counts and energies invariant, thresholds ∝ S
    shapes=[{"batch": 0, "m": 1, "n": 1, "s": 1}, {"batch": 3, "m": 30, "n": 50}, {"batch": 2, "m": 64, "n": 64, "s": 3},
            {"batch": 0, "m": 90, "n": 40, "s": 4, "iqr_c": 3.0}, {"batch": 2, "m": 30, "n": 50, "s": 3, "center": True},
            {"batch": 0, "m": 70, "n": 40, "s": 2, "center": True}],
    space={"batch": (0, 3), "m": (4, 60), "n": (4, 60), "s": (1, 3)},
    bad=_bad_partition, differentiable=False,
    tol={F64: (1e-10, 1e-9), torch.float32: (1e-5, 1e-5), torch.bfloat16: (1e-2, 1e-2), torch.float16: (2e-3, 2e-3)},
    bench=[{"batch": 1, "m": 1024, "n": 768, "quick": True}, {"batch": 256, "m": 1024, "n": 1024}],
    cost=lambda s: (s.args[0].numel() * s.args[0].element_size(), 10 * s.args[0].numel()),
))
