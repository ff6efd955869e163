"""Scaling and stabilisers of the spectral core (private; SPEC §10, §1).

scaled_rows(F3) divides each matrix of a batch by the power of two of its largest entry (exact, and
skipped where it changes no result) and zeroes non-finite rows, so the solvers see entries of order
1 at any scale; unscale undoes it and fix_signs sets the sign convention. The backwards' stabilisers
are relative to σ_1, never absolute: safe_inv(σ, σ_1) = σ/(σ² + ε') and lorentz(x, σ_1, dtype) =
x/(x² + ε), with the widths INV_REL and lorentz_rel(dtype) of sdekernels/constants.py, the table
that csrc/constants.h is generated from.
"""
import torch
from torch import Tensor

from ..constants import INV_REL, LORENTZ_REL_F32, LORENTZ_REL_F64
from .._core import pow2_scale, work_dtype

# Stabilisers of the backward (SPEC §1), relative to σ_1 (never absolute, SPEC §10): 1/(σ_j² − σ_i²)
# -> x/(x² + ε) with ε = (lorentz_rel(dtype)·σ_1²)², and 1/σ -> σ/(σ² + ε') with ε' = INV_REL·σ_1²;
# both 0 when σ_1 = 0. Callers first scale each batch element by a power of two (scaled_rows), so σ_1
# is of order 1 and ε stays far inside the float64 range.


def lorentz_rel(dtype: torch.dtype) -> float:
    """The Lorentzian's width over σ_1²: the machine epsilon of the working dtype, the resolution of σ²
    next to σ_1². A fixed width would damp gaps that the working precision resolves (float64 would
    miss its exact gradient wherever a gap is below the float32-sized width)."""
    return LORENTZ_REL_F32 if work_dtype(dtype) == torch.float32 else LORENTZ_REL_F64


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
