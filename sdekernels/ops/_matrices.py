"""Test matrices of the spectral core (private), for registry entries, tests and benchmarks.

planted gives exact low-rank triplets over a geometric tail (a clear gap after k), spectrum data
whose spectrum takes one chosen path of the top-k solvers (SPECTRA: zero, flat, spiked, slow), and
spiked Gaussian noise plus a planted spike above the Marchenko–Pastur edge. All are float64 and
drawn from the generator passed in.
"""
import math

import torch


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
