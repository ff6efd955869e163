"""Partition and enhancement arithmetic of the spectral core (private; SPEC §2, §4).

partition_counts splits a spectrum into strong, weak and noise sets (the Marchenko–Pastur median
mp_median, the noise level sigma_den, the IQR fence IQR_C) and energies / energy_fractions give each
set's share of Σσ². draw_xi and seeded_xi draw SPEC §4's ξ (seeded_xi as a custom op that
torch.compile can trace), enhance_coefs forms the enhancement's coefficients δ_k and s_n under the
Frobenius bound, and full_delta spreads δ over all r values.
"""
import functools
import math

import torch
from torch import Tensor

from .._core import pow2_scale, work_dtype

IQR_C = 1.5         # SPEC §2's IQR fence factor (τ_strong = max(τ_noise, q3 + IQR_C·(q3 − q1))), the default


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
