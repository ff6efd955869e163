"""Curriculum of SDE (SPEC §3), in plain Python: progress t ∈ [0, 1]."""
import math


def _progress(t) -> float:
    t = float(t)
    if not 0.0 <= t <= 1.0:  # (NaN fails too)
        raise ValueError(f"t must be a number in [0, 1], got {t!r}")
    return t


def alpha(t) -> float:
    """α(t) = (1 − cos πt)/2: 0 at t = 0, 1 at t = 1."""
    return 0.5 * (1.0 - math.cos(math.pi * _progress(t)))


def lam(t, start: float = 0.5, end: float = 0.05) -> float:
    """λ(t) = end + (start − end)(1 + cos πt)/2: start at t = 0, end at t = 1."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * _progress(t)))
