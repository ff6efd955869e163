"""Decomposition, spectral partition and enhancement (SPEC §1, §2, §4), in plain PyTorch.

Everything here goes through the full ``torch.linalg.svd``: this is the ground truth the
fused paths are tested against, not a fast path.
"""
import functools
import math
from typing import NamedTuple, Optional, Tuple

import numpy as np
import torch

from .schedules import alpha as _alpha

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _work(x: torch.Tensor) -> torch.Tensor:
    """Low precision is computed in float32 (SPEC §10)."""
    return x.float() if x.dtype in _LOW_PRECISION else x


def _check_matrix(F: torch.Tensor, name: str = "F") -> None:
    if not isinstance(F, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(F).__name__}")
    if F.dim() < 2:
        raise ValueError(f"{name} must have shape [..., m, n], got {tuple(F.shape)}")
    if not F.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {F.dtype}")


# --------------------------------------------------------------------------- §1
def _svd(F: torch.Tensor):
    """Thin SVD (U, S, Vh) of F [..., m, n] in which a non-finite batch element gives NaN
    outputs for that element only (SPEC §10; LAPACK would raise for the whole batch)."""
    finite = torch.isfinite(F).all(dim=-1).all(dim=-1)
    if bool(finite.all()):
        return torch.linalg.svd(F, full_matrices=False)
    keep = finite[..., None, None]
    U, S, Vh = torch.linalg.svd(torch.where(keep, F, torch.zeros_like(F)), full_matrices=False)
    nan = float("nan")
    return (torch.where(keep, U, torch.full_like(U, nan)), torch.where(finite[..., None], S, torch.full_like(S, nan)),
            torch.where(keep, Vh, torch.full_like(Vh, nan)))


def svd_topk(F: torch.Tensor, k: int, *, niter=None, oversample: int = 8, generator=None):
    """Top-k singular triplets of F [..., m, n] (SPEC §1), sorted descending.

    Returns (U [..., m, k], S [..., k], V [..., n, k]). The reference takes the full SVD and
    truncates it, so ``niter``, ``oversample`` and ``generator`` are accepted and ignored.
    Gradients are those of ``torch.linalg.svd``.
    """
    _check_matrix(F)
    r = min(F.shape[-2], F.shape[-1])
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= r:
        raise ValueError(f"k must be an int in [1, min(m, n)] = [1, {r}], got {k!r}")
    U, S, Vh = _svd(_work(F))
    U, S, V = U[..., :k], S[..., :k], Vh[..., :k, :].mT
    return U.to(F.dtype), S.to(F.dtype), V.to(F.dtype)


def singular_values(F: torch.Tensor) -> torch.Tensor:
    """All r = min(m, n) singular values of F [..., m, n], descending (SPEC §1)."""
    _check_matrix(F)
    Fw = _work(F)
    finite = torch.isfinite(Fw).all(dim=-1).all(dim=-1)
    if bool(finite.all()):
        return torch.linalg.svdvals(Fw).to(F.dtype)
    S = torch.linalg.svdvals(torch.where(finite[..., None, None], Fw, torch.zeros_like(Fw)))
    return torch.where(finite[..., None], S, torch.full_like(S, float("nan"))).to(F.dtype)


# --------------------------------------------------------------------------- §2
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(12)
# Panels in the angle φ ∈ [0, π]; geometric near 0 to resolve the near-singular dip of the
# integrand when β is close to 1 (the lower edge (1 − √β)² is then close to 0).
_PANELS = np.unique(np.concatenate([[0.0], np.geomspace(1e-12, 0.1, 50), np.linspace(0.1, math.pi, 120)]))


@functools.lru_cache(maxsize=None)
def mp_median(beta: float) -> float:
    """Median μ_β of the Marchenko–Pastur law of ratio β ∈ (0, 1] (SPEC §2).

    The law is that of the eigenvalues of X Xᵀ / n for an m×n matrix X (β = m/n) with i.i.d.
    unit-variance entries: density √((b − x)(x − a)) / (2πβx) on [a, b] = [(1 − √β)², (1 + √β)²].
    With x = a + (b − a)(1 − cos φ)/2 the density in φ ∈ [0, π] is
    ((b − a)/2)² sin²φ / (2πβ x(φ)), smooth even at β = 1 where the density in x has a
    1/√x singularity at 0. The CDF is integrated by composite 12-point Gauss–Legendre in
    float64 and the median found by bisection in φ (error far below 1e-10 relative;
    μ_1 = 0.6527759416…, which solves φ + sin φ = π/2, x = 2(1 − cos φ)).
    """
    beta = float(beta)
    if not 0.0 < beta <= 1.0:
        raise ValueError(f"beta must lie in (0, 1], got {beta}")
    a = (1.0 - math.sqrt(beta)) ** 2
    h = ((1.0 + math.sqrt(beta)) ** 2 - a) / 2.0  # (b − a) / 2

    def x_of(phi):
        return a + 2.0 * h * np.sin(phi / 2.0) ** 2  # = a + h (1 − cos φ), accurate near 0

    def cdf(phi: float) -> float:
        pts = np.concatenate([_PANELS[_PANELS < phi], [phi]])
        lo, hi = pts[:-1, None], pts[1:, None]
        theta = lo + (hi - lo) * (_GL_NODES + 1.0) / 2.0
        weight = (hi - lo) / 2.0 * _GL_WEIGHTS
        density = h * h * np.sin(theta) ** 2 / (2.0 * math.pi * beta * x_of(theta))
        return float((weight * density).sum())

    lo, hi = 0.0, math.pi
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if cdf(mid) < 0.5:
            lo = mid
        else:
            hi = mid
    return float(x_of(0.5 * (lo + hi)))


class SpectralPartition(NamedTuple):
    """Per batch element (each field has the batch shape [...]; counts are int64)."""

    n_strong: torch.Tensor
    n_weak: torch.Tensor
    tau_noise: torch.Tensor
    tau_strong: torch.Tensor
    sigma_hat: torch.Tensor
    energy: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (E_strong, E_weak, E_noise)


def spectral_partition(S: torch.Tensor, m: int, n: int, *, iqr_c: float = 1.5,
                       center: bool = False) -> SpectralPartition:
    """Strong / weak / noise partition of the singular values S [..., r] of an m×n matrix (SPEC §2).

    S must hold all r = min(m, n) singular values (any order; the sets refer to sorted order).
    σ̂ = median(σ) / √(max(m, n) μ_β), β = r / max(m, n); τ_noise = σ̂ (√m + √n);
    τ_strong = max(τ_noise, q3 + iqr_c (q3 − q1)) (quantiles by linear interpolation).
    n_strong = #{σ > τ_strong}, or 1 when that set is empty (σ_1 is then strong whatever its
    size); n_weak = #{σ > τ_noise} − n_strong, at least 0. Noise is the rest, so the three
    sets are contiguous in sorted order and the counts describe them.
    Energies are Σσ² over each set / Σσ²; when Σσ² = 0 (S all zero) they are defined as
    (1, 0, 0), consistent with n_strong = 1, n_weak = 0. The partition is piecewise constant
    in S; the returned tensors are detached from the graph.
    center=True: S are the singular values of the row-centred matrix F − 1·mean(F), which has
    m − 1 degrees of freedom: the fit (quantiles, σ̂, τ_noise) uses m' = m − 1 rows and the
    r' = min(m', n) largest values (the structural zero, when m ≤ n, is left to the noise set).
    """
    if not isinstance(S, torch.Tensor) or S.dim() < 1:
        raise ValueError("S must be a tensor of shape [..., r]")
    m, n = int(m), int(n)
    if m < 1 or n < 1:
        raise ValueError(f"m and n must be positive, got m={m}, n={n}")
    if center and m < 2:
        raise ValueError(f"center=True needs m >= 2 rows, got m={m}")
    r = min(m, n)
    if S.shape[-1] != r:
        raise ValueError(f"S must hold all min(m, n) = {r} singular values, got {S.shape[-1]}")
    dtype = S.dtype
    s = _work(S.detach())
    s = torch.sort(s, dim=-1, descending=True).values

    mf = m - 1 if center else m  # rows of the fit
    rf = min(mf, n)
    beta = rf / max(mf, n)
    q = torch.tensor([0.25, 0.5, 0.75], dtype=s.dtype, device=s.device)
    q1, med, q3 = torch.quantile(s[..., :rf], q, dim=-1)  # each [...]
    sigma_hat = med / math.sqrt(max(mf, n) * mp_median(beta))
    tau_noise = sigma_hat * (math.sqrt(mf) + math.sqrt(n))
    tau_strong = torch.maximum(tau_noise, q3 + iqr_c * (q3 - q1))

    n_above_noise = (s > tau_noise.unsqueeze(-1)).sum(-1)
    n_strong = (s > tau_strong.unsqueeze(-1)).sum(-1).clamp_min(1)
    n_weak = (n_above_noise - n_strong).clamp_min(0)

    idx = torch.arange(r, device=s.device)
    strong = idx < n_strong.unsqueeze(-1)
    weak = (~strong) & (idx < (n_strong + n_weak).unsqueeze(-1))
    noise = ~(strong | weak)
    s2 = s * s
    total = s2.sum(-1)
    zero = total == 0  # (a NaN spectrum keeps NaN energies)
    safe_total = torch.where(zero, torch.ones_like(total), total)
    e_strong = torch.where(zero, torch.ones_like(total), (s2 * strong).sum(-1) / safe_total)
    e_weak = torch.where(zero, torch.zeros_like(total), (s2 * weak).sum(-1) / safe_total)
    e_noise = torch.where(zero, torch.zeros_like(total), (s2 * noise).sum(-1) / safe_total)

    return SpectralPartition(
        n_strong=n_strong.long(),
        n_weak=n_weak.long(),
        tau_noise=tau_noise.to(dtype),
        tau_strong=tau_strong.to(dtype),
        sigma_hat=sigma_hat.to(dtype),
        energy=(e_strong.to(dtype), e_weak.to(dtype), e_noise.to(dtype)),
    )


# --------------------------------------------------------------------------- §4
def spectral_enhance(
    F: torch.Tensor,
    t: float,
    *,
    eps_strong: float = 0.1,
    gamma_weak: float = 0.3,
    gamma_noise: float = 0.9,
    rho: float = 0.5,
    direction: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    mode: str = "full",
    return_details: bool = False,
    center: bool = False,
):
    """Spectral enhancement F' = U diag(σ + δ) Vᵀ of F [..., m, n] at progress t (SPEC §4).

    δ_i = eps_strong α(t) (σ_i/σ_1) σ_i ξ_i on strong indices (σ_i/σ_1 := 0 when σ_1 = 0),
    −gamma_weak α(t) σ_i on weak ones, −gamma_noise (1 − α(t)) σ_i on noise; then, if
    ‖δ‖₂ > rho ‖σ‖₂, δ ← δ · rho‖σ‖₂/‖δ‖₂ (per batch element). ξ = sign(direction) when
    ``direction`` (shaped like S, [..., r]) is given, else uniform(−1, 1) drawn as
    ``2 * torch.rand([..., r], generator=generator, dtype=float32, device=F.device) − 1``.

    mode="full": gradients flow through U, σ, V and δ(σ) (the partition itself is piecewise
    constant). mode="augment": F' = F + (U diag(δ) Vᵀ).detach(), so dF = dF'.
    center=True: the SVD, partition (``spectral_partition(..., center=True)``) and δ are those of
    the row-centred F_c = F − 1μᵀ (μ = mean over the m rows), and F' = 1μᵀ + U diag(σ + δ) Vᵀ: the
    shared mean direction is kept as it is and the enhancement acts on the spread around it.
    Returns F', or (F', SpectralPartition, δ [..., r]) with return_details=True.
    """
    _check_matrix(F)
    if mode not in ("full", "augment"):
        raise ValueError(f"mode must be 'full' or 'augment', got {mode!r}")
    a = _alpha(float(t))
    dtype = F.dtype
    m, n = F.shape[-2], F.shape[-1]
    r = min(m, n)
    if center and m < 2:
        raise ValueError(f"center=True needs F with m >= 2 rows, got shape {tuple(F.shape)}")
    Fw = _work(F)
    batch = Fw.shape[:-2]

    with torch.set_grad_enabled(torch.is_grad_enabled() and mode == "full"):
        Fc = Fw - Fw.mean(-2, keepdim=True) if center else Fw
        U, S, Vh = _svd(Fc)
        part = spectral_partition(S, m, n, center=center)

        if direction is not None:
            if direction.shape[-1] != r:
                raise ValueError(f"direction must have shape [..., {r}], got {tuple(direction.shape)}")
            xi = torch.sign(direction.detach()).to(device=Fw.device, dtype=Fw.dtype)
            xi = xi.expand(*batch, r)
        else:
            xi = torch.rand((*batch, r), generator=generator, dtype=torch.float32, device=Fw.device)
            xi = (2.0 * xi - 1.0).to(Fw.dtype)

        idx = torch.arange(r, device=Fw.device)
        n_strong = part.n_strong.unsqueeze(-1)
        n_signal = (part.n_strong + part.n_weak).unsqueeze(-1)
        strong = idx < n_strong
        weak = (~strong) & (idx < n_signal)

        s1 = S[..., :1]
        ratio = torch.where(s1 > 0, S / torch.where(s1 > 0, s1, torch.ones_like(s1)), torch.zeros_like(S))
        delta_strong = eps_strong * a * ratio * S * xi
        delta_weak = -gamma_weak * a * S
        delta_noise = -gamma_noise * (1.0 - a) * S
        delta = torch.where(strong, delta_strong, torch.where(weak, delta_weak, delta_noise))

        # Bound ‖δ‖ ≤ rho ‖σ‖. The norms are written with a safe square root so that δ = 0
        # (e.g. F = 0) gives no NaN gradient.
        d2 = (delta * delta).sum(-1, keepdim=True)
        s2 = (S * S).sum(-1, keepdim=True)
        limit2 = (rho * rho) * s2
        over = d2 > limit2
        safe_d2 = torch.where(over, d2, torch.ones_like(d2))
        safe_s2 = torch.where(over, s2, torch.ones_like(s2))
        scale = torch.where(over, rho * torch.sqrt(safe_s2) / torch.sqrt(safe_d2), torch.ones_like(d2))
        delta = delta * scale

        if mode == "full":
            out = (U * (S + delta).unsqueeze(-2)) @ Vh
            if center:
                out = out + (Fw - Fc)  # the mean rows 1μᵀ
    if mode == "augment":
        delta = delta.detach()
        out = Fw + ((U * delta.unsqueeze(-2)) @ Vh).detach()

    out = out.to(dtype)
    if return_details:
        return out, part, delta.to(dtype)
    return out
