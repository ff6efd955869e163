"""Curriculum schedules of SDE (SPEC §3). t is training progress in [0, 1]."""
import math

import torch

from ._core import check_real


def _check(t: float) -> float:
    if torch.compiler.is_compiling():  # traced by torch.compile, t may be symbolic (from a step): checked by the caller
        return t
    return check_real(t, "t", 0.0, 1.0)


def alpha(t: float) -> float:
    """Enhancement strength α(t) = (1 − cos πt) / 2, rising from 0 to 1."""
    return (1.0 - math.cos(math.pi * _check(t))) / 2.0


def lam(t: float, start: float = 0.5, end: float = 0.05) -> float:
    """Spectral-loss weight λ(t) = end + (start − end)(1 + cos πt) / 2, falling from start to end."""
    start, end = check_real(start, "start", 0.0, 1.0), check_real(end, "end", 0.0, 1.0)
    return end + (start - end) * (1.0 + math.cos(math.pi * _check(t))) / 2.0
