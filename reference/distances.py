"""Spectral distances (SPEC §5), in plain PyTorch."""
import torch


def _work(x: torch.Tensor) -> torch.Tensor:
    """Low precision is computed in float32 (SPEC §10)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _unit_max(S: torch.Tensor) -> torch.Tensor:
    """S / max S per row (0 for a zero row): normalised quantities then never overflow or underflow,
    and their floors are relative, not absolute (SPEC §10)."""
    top = S.amax(-1, keepdim=True)
    return S / torch.where(top > 0, top, torch.ones_like(top))


def _dist(S: torch.Tensor, power: float) -> torch.Tensor:
    """p = S^power / Σ S^power (p = 0 for S = 0), entries clamped ≥ 1e-12. SPEC §5's floor of the sum,
    max(Σ, 1e-30), is absolute; SPEC §10 wins: S is first divided by its largest entry (p is
    unchanged), so the sum is ≥ 1 and no floor is needed except at S = 0."""
    s = _unit_max(torch.where(S >= 0, S, float("nan"))) ** power  # no S^power of a negative value: NaN
    return (s / s.sum(-1, keepdim=True).clamp_min(torch.finfo(s.dtype).tiny)).clamp_min(1e-12)


def hellinger(S_a, S_b, *, power=1, squared=True):
    """Squared Hellinger distance 1 − Σ√(p q) of the normalised spectra (or its root)."""
    dtype = S_a.dtype
    S_a, S_b = _work(S_a), _work(S_b)
    h2 = 1.0 - torch.sqrt(_dist(S_a, power) * _dist(S_b, power)).sum(-1)
    out = h2 if squared else torch.sqrt(h2.clamp_min(0.0))
    return out.to(dtype)


def _weights(S):
    """w = S² / ΣS² (0 for S = 0), from S / max S (same w, no overflow or absolute floor)."""
    s2 = _unit_max(S) ** 2
    return s2 / s2.sum(-1, keepdim=True).clamp_min(torch.finfo(s2.dtype).tiny)


def subspace_distance(V_a, V_b, *, S_a=None, S_b=None):
    """Distance of the projectors V_a V_aᵀ and V_b V_bᵀ, optionally weighted by S²/ΣS²."""
    dtype = V_a.dtype
    V_a, V_b = _work(V_a), _work(V_b)
    k = V_a.shape[-1]
    if S_a is None:
        P = V_a @ V_a.mT - V_b @ V_b.mT
        return ((P * P).sum((-2, -1)) / (2 * k)).to(dtype)
    w_a, w_b = _weights(_work(S_a)), _weights(_work(S_b))
    P = (V_a * w_a.unsqueeze(-2)) @ V_a.mT - (V_b * w_b.unsqueeze(-2)) @ V_b.mT
    return (P * P).sum((-2, -1)).to(dtype)
