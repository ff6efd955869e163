"""Spectral distances (SPEC §5), in plain PyTorch."""
import torch


def _work(x: torch.Tensor) -> torch.Tensor:
    """Low precision is computed in float32 (SPEC §10)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _dist(S: torch.Tensor, power: float) -> torch.Tensor:
    s = torch.where(S >= 0, S, float("nan")) ** power  # no S^power of a negative value: NaN
    return (s / s.sum(-1, keepdim=True).clamp_min(1e-30)).clamp_min(1e-12)


def hellinger(S_a, S_b, *, power=1, squared=True):
    """Squared Hellinger distance 1 − Σ√(p q) of the normalised spectra (or its root)."""
    dtype = S_a.dtype
    S_a, S_b = _work(S_a), _work(S_b)
    h2 = 1.0 - torch.sqrt(_dist(S_a, power) * _dist(S_b, power)).sum(-1)
    out = h2 if squared else torch.sqrt(h2.clamp_min(0.0))
    return out.to(dtype)


def _weights(S):
    s2 = S * S
    return s2 / s2.sum(-1, keepdim=True).clamp_min(1e-30)


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
