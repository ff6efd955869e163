"""Decomposition and spectral partition (SPEC §1, §2): `svd_topk`, `singular_values`, `spectral_partition`.

The custom ops and registry entries; the solvers (ops/_solvers.py), stabilisers (ops/_scaling.py),
backwards (ops/_svd_backward.py), partition arithmetic (ops/_partition.py) and thin SVD
(ops/_decompose.py) are the spectral core's. svd_topk: up to r = min(m, n) = GRAM_MAX_R with a
gradient, the Gram eigen-solver (short-side Gram in float64 for r <= 256 and fp32 above, its top
k + oversample eigenvectors as the basis of a float64 Rayleigh–Ritz step): exact whatever the tail
of the spectrum. Otherwise the adaptive randomized block subspace iteration with the same
Rayleigh–Ritz step, stopping on a-posteriori bounds from the Ritz residuals, continuing in a block
Krylov space when its observed rate predicts many iterations, or switching to the Gram solver when
that is predicted cheaper. The big products run in a Triton batched GEMM on CUDA and in ATen (MKL)
on CPU; the random test matrix comes from a seeded generator (a fixed seed when none is
given), shared by the batch, so results are reproducible and a batch element never depends on its
neighbours.
Backward (csrc/cpu/svd.cpp, csrc/cuda/svd.cu, with an ATen fallback), named by the forward
("exact" | "truncated"): on the Gram path the exact gradient, from the full short-side eigenbasis
the forward saves (Daleckii–Krein over all r values, stabilised as in SPEC §1); on the randomized
path the truncated-SVD gradient of SPEC §1 (exact only as σ_{k+1..r} → 0).
Reference: reference/svd.py. Tests: python_tests/test_svd.py and the generic test_ops.py.
"""
import math
from typing import NamedTuple

import torch
from torch import Tensor

from .. import _ext
from .._fallback import ref
from .._core import check, check_int, check_real, cuda_like, grad_like, pow2_scale, work_dtype
from ..registry import F64, OpInfo, Sample, Tuned, register
from ._decompose import thin_svd, thin_svd_grad
from ._gemm import mm_for
from ._matrices import SPECTRA, planted, spectrum, spiked
from ._partition import energy_fractions, partition_counts, sigma_den
from ._scaling import fix_signs, safe_inv, scaled_rows, unscale
from ._solvers import DEFAULT_SEED, gram_eigh, topk, use_gram
from ._svd_backward import exact_grad_short, truncated_grad

__all__ = ["svd_topk", "singular_values", "spectral_partition", "SpectralPartition", "decompose", "Decomposition"]


class SpectralPartition(NamedTuple):
    """spectral_partition's result (SPEC §2), per batch element: the counts (int64) and thresholds of
    the strong / weak / noise sets and their energy fractions (E_strong, E_weak, E_noise)."""

    n_strong: Tensor
    n_weak: Tensor
    tau_noise: Tensor
    tau_strong: Tensor
    sigma_hat: Tensor
    energy: tuple[Tensor, Tensor, Tensor]


DEFAULT_NITER = 8   # typical subspace iterations, for cost estimates (each: one F·X and one Fᵀ·Y product)


def _svd_topk_impl(F: Tensor, k: int, niter: int, oversample: int, seed: int, backward: str, tol: float):
    m, n = F.shape[-2:]
    batch = F.shape[:-2]
    F3 = F.reshape(-1, m, n)
    if F3.shape[0] == 0:
        e = F.new_empty
        return e((*batch, m, k)), e((*batch, k)), e((*batch, n, k)), *_basis_empty(F, m, n, backward)
    finite, F3, c = scaled_rows(F3)
    # W and all σ are saved in the scaled frame (the backward recomputes c from F).
    res = topk(F3, k, niter=None if niter < 0 else niter, oversample=oversample, seed=seed,
               tol=None if tol < 0 else tol, backward=backward)
    S = res.S * c[:, None]
    U, V = fix_signs(res.U, res.V)
    if not bool(finite.all()):
        nan = torch.tensor(float("nan"), dtype=U.dtype, device=U.device)
        U = torch.where(finite[:, None, None], U, nan)
        S = torch.where(finite[:, None], S, nan)
        V = torch.where(finite[:, None, None], V, nan)
    # Contiguous, as the fake kernel declares (eigh returns column-major eigenvectors).
    return (U.reshape(*batch, m, k).to(F.dtype), S.reshape(*batch, k).to(F.dtype), V.reshape(*batch, n, k).to(F.dtype),
            res.W.contiguous(), res.S_all.contiguous())


def _basis_empty(F: Tensor, m: int, n: int, backward: str):
    """Empty saved basis (W [R, r|0, r|0], all σ [R, r|0]) of the shapes the forward returns."""
    R, r, w = math.prod(F.shape[:-2]), min(m, n), work_dtype(F.dtype)
    rb = r if backward == "exact" else 0
    return F.new_empty((R, rb, rb), dtype=w), F.new_empty((R, rb), dtype=w)


@torch.library.custom_op("sdekernels::svd_topk", mutates_args=())
def _svd_topk(F: Tensor, k: int, niter: int, oversample: int, seed: int, backward: str,
              tol: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(U, S, V) and what `backward` needs: for "exact" the short-side eigenbasis W and all σ (the
    Gram path), for "truncated" empty tensors. niter < 0: until converged; tol < 0: default_tol."""
    return _svd_topk_impl(F, k, niter, oversample, seed, backward, tol)


@_svd_topk.register_fake
def _(F, k, niter, oversample, seed, backward, tol):
    b, (m, n) = F.shape[:-2], F.shape[-2:]
    return F.new_empty((*b, m, k)), F.new_empty((*b, k)), F.new_empty((*b, n, k)), *_basis_empty(F, m, n, backward)


@torch.library.custom_op("sdekernels::svd_topk_backward", mutates_args=())
def _svd_topk_backward(U: Tensor, S: Tensor, V: Tensor, gU: Tensor, gS: Tensor, gV: Tensor) -> Tensor:
    return truncated_grad(U, S, V, gU, gS, gV)


@_svd_topk_backward.register_fake
def _(U, S, V, gU, gS, gV):
    b = U.shape[:-2]
    return U.new_empty((*b, U.shape[-2], V.shape[-2]), dtype=work_dtype(U.dtype))


@torch.library.custom_op("sdekernels::svd_topk_exact_backward", mutates_args=())
def _svd_topk_exact_backward(F: Tensor, U: Tensor, S: Tensor, V: Tensor, W: Tensor, S_all: Tensor, gU: Tensor,
                             gS: Tensor, gV: Tensor) -> Tensor:
    w = work_dtype(F.dtype)
    (m, n), k, R = F.shape[-2:], U.shape[-1], W.shape[0]
    U3, V3, gU3, gV3 = (t.reshape(R, *t.shape[-2:]).to(w) for t in (U, V, gU, gV))
    S2, gS2 = S.reshape(R, k).to(w), gS.reshape(R, k).to(w)
    # In the forward's scaled frame F/c: the gradient is that of (U, σ/c, V) with gU/c, gS, gV/c.
    _, F3, c = scaled_rows(F.reshape(R, m, n))
    S2, gU3, gV3 = unscale(c, S2, gU3, gV3)
    # The short side (W's frame): Fᵀ for tall F, as in _solvers.topk; a non-finite row of F (its U, V
    # are NaN) gives a NaN gradient in that row only.
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
    ctx.backward = inputs[5]  # named by the caller; "exact" saved W and all σ
    ctx.save_for_backward(inputs[0] if ctx.backward == "exact" else None, *output)


def _svd_topk_grad(ctx, gU, gS, gV, *_):
    F, U, S, V, W, S_all = ctx.saved_tensors
    gU, gS, gV = (torch.zeros_like(t) if g is None else g for t, g in ((U, gU), (S, gS), (V, gV)))
    if ctx.backward == "exact":
        gF = _svd_topk_exact_backward(F, U, S, V, W, S_all, gU, gS, gV)
    else:
        gF = _svd_topk_backward(U, S, V, gU, gS, gV).to(ctx.dtype)
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

    niter: None (default) iterates until SPEC §1's bounds hold; an int caps the subspace iterations
    (niter=0: the sketch alone; no Krylov space, no switch to the Gram solver), still stopping
    earlier once the bounds hold, and selects the truncated backward. oversample: extra columns of
    the randomized basis (k + oversample in all).
    tol: the target of the bound on the relative error of σ_1..k; sin∠ of the top-k subspaces is
    held to 10·tol where σ_k/σ_{k+1} >= 1.1. Default: 1e-4 for float32 and below (SPEC §1's bars: σ
    within 1e-4, sin∠ within 1e-3), 1e-10 for float64. generator seeds the sketch (default: a fixed
    seed, so results are reproducible); a batch element never depends on its neighbours.

    Differentiable, finite for every finite F. With niter=None, min(m, n) <= GRAM_MAX_R (2048) and
    F requiring grad, the gradient is the exact one of the top-k triplets of the full SVD,
    stabilised as in SPEC §1; otherwise it is SPEC §1's truncated-SVD gradient, exact only when
    σ_{k+1..r} = 0. The solvers: ops/_solvers.py, benchmarks/NOTES.md ("svd_topk's solvers").
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
    return _svd_topk(F, k, -1 if niter is None else niter, oversample, _seed(generator),
                     "exact" if exact else "truncated", -1.0 if tol is None else float(tol))[:3]


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

    Differentiable (dσ_i/dF = u_i v_iᵀ), finite for every finite F.
    """
    _check_matrix(F)
    return _singular_values(F)


# ---------------------------------------------------------------- spectral_partition


@torch.library.custom_op("sdekernels::spectral_partition", mutates_args=())
def _spectral_partition(S: Tensor, m: int, n: int, iqr_c: float, center: bool = False) -> tuple[
        Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(n_strong, n_weak, tau_noise, tau_strong, sigma_hat, energy fractions [..., 3])."""
    if not cuda_like(S) and _ext.available() and S.shape[-1] and not center:
        # one C++ pass per sorted row, which also divides the row by its power of two (SPEC §10)
        s = S.to(work_dtype(S.dtype)).sort(-1, descending=True).values
        out = torch.ops.sdekernels_C.spectral_partition_fwd(s, iqr_c, sigma_den(m, n), math.sqrt(m) + math.sqrt(n))
        return (*out[:2], *(x.to(S.dtype) for x in out[2:]))
    # σ / c with c each row's power of two (exact): no overflow of σ² at any scale (SPEC §10)
    c = pow2_scale(S, (-1,))
    n_strong, n_weak, tau_noise, tau_strong, sigma_hat, s = partition_counts(S.to(c.dtype) / c, m, n, iqr_c, center)
    out = n_strong, n_weak, tau_noise, tau_strong, sigma_hat, energy_fractions(s, n_strong, n_weak)
    c = c.squeeze(-1)
    return (*out[:2], *(x.to(S.dtype) for x in (out[2] * c, out[3] * c, out[4] * c, out[5])))


@_spectral_partition.register_fake
def _(S, m, n, iqr_c, center=False):
    b = S.shape[:-1]
    return (S.new_empty(b, dtype=torch.long), S.new_empty(b, dtype=torch.long), *(S.new_empty(b) for _ in range(3)),
            S.new_empty(b + (3,)))


def spectral_partition(S: Tensor, m: int, n: int, *, iqr_c: float = 1.5, center: bool = False) -> SpectralPartition:
    """Strong / weak / noise partition of the r = min(m, n) singular values S [..., r] (SPEC §2).

    σ̂ = median(σ)/√(max(m, n)·μ_β) (μ_β the Marchenko–Pastur median), τ_noise = σ̂(√m + √n),
    τ_strong = max(τ_noise, q3 + iqr_c(q3 − q1)).
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


# ---------------------------------------------------------------- decompose


class Decomposition(NamedTuple):
    """The thin SVD F = U diag(S) Vᵀ of F [..., m, n]: U [..., m, r], S [..., r], V [..., n, r], all
    r = min(m, n) values descending, in the work dtype."""

    U: Tensor
    S: Tensor
    V: Tensor


@torch.library.custom_op("sdekernels::decompose", mutates_args=())
def _decompose(F: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    (m, n), batch = F.shape[-2:], F.shape[:-2]
    U, S, V = thin_svd(F.reshape(-1, m, n).to(work_dtype(F.dtype)))
    r = S.shape[-1]
    # contiguous, as the fake kernel declares (the Gram's eigenvectors come column-major)
    return (U.reshape(*batch, m, r).contiguous(), S.reshape(*batch, r).contiguous(),
            V.reshape(*batch, n, r).contiguous())


@_decompose.register_fake
def _(F):
    (m, n), batch, w = F.shape[-2:], F.shape[:-2], work_dtype(F.dtype)
    r = min(m, n)
    return F.new_empty((*batch, m, r), dtype=w), F.new_empty((*batch, r), dtype=w), F.new_empty((*batch, n, r), dtype=w)


@torch.library.custom_op("sdekernels::decompose_backward", mutates_args=())
def _decompose_backward(F: Tensor, U: Tensor, S: Tensor, V: Tensor, gU: Tensor | None, gS: Tensor | None,
                        gV: Tensor | None) -> Tensor:
    (m, n), r = F.shape[-2:], S.shape[-1]
    flat = lambda t, *s: None if t is None else t.reshape(-1, *s)  # noqa: E731
    gF = thin_svd_grad(F.reshape(-1, m, n).to(U.dtype), flat(U, m, r), flat(S, r), flat(V, n, r), flat(gU, m, r),
                       flat(gS, r), flat(gV, n, r))
    return grad_like(gF.reshape(F.shape), F)


@_decompose_backward.register_fake
def _(F, U, S, V, gU, gS, gV):
    return torch.empty_like(F)


def _decompose_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], *output)


def _decompose_grad(ctx, gU, gS, gV):
    return _decompose_backward(*ctx.saved_tensors, gU, gS, gV)


_decompose.register_autograd(_decompose_grad, setup_context=_decompose_setup)


def decompose(F: Tensor) -> Decomposition:
    """The thin SVD of F [..., m, n] (SPEC §1, all r = min(m, n) triplets); differentiable, with the
    exact SVD gradient whatever the tail of the spectrum (stabilised as in SPEC §1). Signs of the
    singular pairs are unspecified."""
    check(F, "F", min_dim=2)
    if min(F.shape[-2:]) == 0:
        raise ValueError(f"F must have m, n >= 1, got shape {tuple(F.shape)}")
    return Decomposition(*_decompose(F))


# ---------------------------------------------------------------- registry entries


def _make_topk(shape, device, dtype, gen):
    b, m, n, k = shape.get("batch", 0), shape["m"], shape["n"], shape["k"]
    F = spectrum(b, m, n, k, shape["spectrum"], gen) if "spectrum" in shape else planted(b, m, n, k, gen)
    return Sample((F.to(device=device, dtype=dtype), shape["k"]), {"niter": shape.get("niter")})


def _ref_topk(F, k, **kw):
    """The reference with svd_topk's sign convention (a constant ±1 per column: gradients unchanged)."""
    U, S, V = ref.svd_topk(F, k, **kw)
    U, V = fix_signs(U, V)
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


def _lowrank(niter):
    def lowrank(F, k, **kw):
        U, S, V = torch.svd_lowrank(F.float() if F.dtype in (torch.float16, torch.bfloat16) else F, q=k + 8,
                                    niter=niter)
        return U[..., :k], S[..., :k], V[..., :k]
    return lowrank


def meets_spec_bar(sample, out, sigma_tol=1e-4, sin_tol=1e-3) -> bool:
    """SPEC §1's accuracy bar on a sample: σ_1..k within sigma_tol relative of the float64 truth of the
    (rounded) input, and sin∠ of the top-k right singular subspaces within sin_tol wherever
    σ_k/σ_{k+1} >= 1.1. Every batch element must meet it."""
    F, k = sample.prepared()[0][:2]
    _, s, Vh = torch.linalg.svd(F.double().cpu(), full_matrices=False)
    S, V = out[1].double().cpu(), torch.linalg.qr(out[2].double().cpu())[0]
    if ((S - s[..., :k]).abs() > sigma_tol * s[..., :k]).any():
        return False
    Vt = Vh[..., :k, :].mT
    sin = torch.linalg.matrix_norm(Vt - V @ (V.mT @ Vt), ord=2)
    gap = s[..., k - 1] >= 1.1 * s[..., k] if k < s.shape[-1] else torch.ones_like(sin, dtype=torch.bool)
    return bool((sin[gap] <= sin_tol).all())


def _full_svd(F, k, **kw):
    U, S, Vh = torch.linalg.svd(F.float() if F.dtype in (torch.float16, torch.bfloat16) else F, full_matrices=False)
    return U[..., :k], S[..., :k], Vh[..., :k, :].mT


def _topk_cost(s):
    F, k = s.args[0], s.args[1]
    m, n = F.shape[-2:]
    R, r, q = F.numel() // max(m * n, 1), min(m, n), k + 8
    passes = 3 if use_gram(r) else 2 * DEFAULT_NITER + 2
    flops = R * (2 * m * n * (r + q) + 9 * r ** 3) if use_gram(r) else R * 2 * m * n * q * passes
    return F.numel() * F.element_size() * passes, flops


_FIELD = [{"batch": 0, "m": B, "n": D, "k": k}
          for B in (256, 1024, 4096) for D in (512, 768, 1024, 4096) for k in (16, 64)]

register(OpInfo(
    name="svd_topk", op=svd_topk, ref=_ref_topk, make=_make_topk,
    gpu_shape={"batch": 2, "m": 80, "n": 70, "k": 5},
    cond=(16, 64),  # the backward's 1/(σ_i² − σ_j²) is damped at small gaps (SPEC §1): bounded amplification
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
    regimes=tuple({"spectrum": s} for s in SPECTRA),  # the Gram solver, the subspace iteration, Krylov
    # svd_lowrank at equal accuracy: the smallest niter that meets SPEC §1's bar on the bench input
    baselines={"torch.linalg.svd": _full_svd,
               "torch.svd_lowrank": Tuned(_lowrank, (0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64, 128), meets_spec_bar,
                                          "niter")},
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
    gpu_shape={"batch": 2, "m": 80, "n": 70},
    cond=(16, 64),  # the gradient U Vᵀ of separated singular values: well conditioned
    cond_by_dtype={F64: (16, 4096)},  # float64 backward: 744 eps between the paths at gpu_shape (measured)
    scaling=lambda sh: ((0,), (1,)),
    shapes=[{"batch": 0, "m": 1, "n": 1}, {"batch": 3, "m": 12, "n": 9}, {"batch": 2, "m": 5, "n": 17},
            {"batch": 0, "m": 70, "n": 70}],
    space={"batch": (0, 3), "m": (1, 40), "n": (1, 40)},
    bad=_bad_sv, tol=_SVD_TOL, grad_tol=(1e-8, 1e-6),
    bench=[{"batch": 0, "m": 1024, "n": 768, "quick": True}, {"batch": 0, "m": 4096, "n": 1024},
           {"batch": 64, "m": 256, "n": 256}],
    cost=_sv_cost,
    baselines={"torch.linalg.svdvals": lambda F: torch.linalg.svdvals(
        F.float() if F.dtype in (torch.float16, torch.bfloat16) else F)},
))


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
    gpu_shape={"batch": 2, "m": 90, "n": 40, "s": 4},
    cond=(16, 64),  # counts and thresholds of a sorted spectrum; not differentiable
    scaling=lambda sh: ((0,), (0, 0, 1, 1, 1, 0, 0, 0)),  # counts and energies invariant, thresholds ∝ S
    shapes=[{"batch": 0, "m": 1, "n": 1, "s": 1}, {"batch": 3, "m": 30, "n": 50},
            {"batch": 2, "m": 64, "n": 64, "s": 3}, {"batch": 0, "m": 90, "n": 40, "s": 4, "iqr_c": 3.0},
            {"batch": 2, "m": 30, "n": 50, "s": 3, "center": True},
            {"batch": 0, "m": 70, "n": 40, "s": 2, "center": True}],
    space={"batch": (0, 3), "m": (4, 60), "n": (4, 60), "s": (1, 3)},
    bad=_bad_partition, differentiable=False,
    tol={F64: (1e-10, 1e-9), torch.float32: (1e-5, 1e-5), torch.bfloat16: (1e-2, 1e-2), torch.float16: (2e-3, 2e-3)},
    bench=[{"batch": 1, "m": 1024, "n": 768, "quick": True}, {"batch": 256, "m": 1024, "n": 1024}],
    cost=lambda s: (s.args[0].numel() * s.args[0].element_size(), 10 * s.args[0].numel()),
))
