"""The thin SVD of the spectral core (private): ops/svd.py's `decompose`, which SDELoss calls once per
feature matrix.

thin_svd(F3) gives all r = min(m, n) triplets of each matrix from one float64 eigh of the short-side
Gram (rows scaled by their power of two first, non-finite rows NaN), and thin_svd_grad their exact
gradient: U diag(gS) Vᵀ plus the exact top-k gradient (exact_grad_short) over the leading columns
of gU, gV that carry a gradient, so a loss on the top k costs O(k), not O(r).
"""
import torch
from torch import Tensor

from ._scaling import safe_inv, scaled_rows
from ._solvers import eigh_desc
from ._svd_backward import exact_grad_short


def _grad_width(*grads) -> int:
    """How many leading columns of the gradients [R, *, r] (None: none) reach the last nonzero one."""
    nonzero = None
    for g in grads:
        if g is not None:
            cols = (g != 0).flatten(0, -2).any(0)
            nonzero = cols if nonzero is None else nonzero | cols
    if nonzero is None or not bool(nonzero.any()):
        return 0
    return int(nonzero.nonzero().max()) + 1


def thin_svd(F3: Tensor):
    """(U [R, m, r], S [R, r], V [R, n, r]) of F3 [R, m, n] (work dtype) from the eigh of the float64
    Gram of the short side; the long-side factor is F·W/σ (stabilised 1/σ). Rows with a non-finite
    entry give NaN factors (LAPACK would raise for the whole batch)."""
    m, n = F3.shape[-2:]
    tall = m >= n
    # Decomposed as Fz = F/c (c: each row's power-of-two scale, no overflow or underflow of the
    # Gram at any scale of F; non-finite rows zeroed); σ(F) = c·σ(Fz).
    finite, Fz, c = scaled_rows(F3)
    finite = finite[:, None, None]
    Fd = Fz.double()
    lam, W = eigh_desc(Fd.mT @ Fd if tall else Fd @ Fd.mT)
    S = lam.sqrt()
    W = W.to(F3.dtype)
    inv = safe_inv(S, S[:, :1]).to(F3.dtype).unsqueeze(-2)
    other = (Fz @ W if tall else Fz.mT @ W) * inv
    U, V = (other, W) if tall else (W, other)
    nan = torch.tensor(float("nan"), dtype=F3.dtype, device=F3.device)
    U, V = torch.where(finite, U, nan), torch.where(finite, V, nan)
    S = torch.where(finite[:, :, 0], S.to(F3.dtype), nan)
    return U, S * c[:, None], V


def thin_svd_grad(F3: Tensor, U: Tensor, S: Tensor, V: Tensor, gU: Tensor | None, gS: Tensor | None,
                  gV: Tensor | None) -> Tensor:
    """dL/dF3 of thin_svd's outputs (U, S, V) from their gradients (None: zero). Linear in (gU, gS, gV):
    U diag(gS) Vᵀ over all r values, plus the exact top-k gradient (exact_grad_short, as svd_topk's
    Gram path) for the leading k columns of gU, gV that carry a gradient, in the short-side frame
    where W (all r eigenvectors of the Gram) is the square factor."""
    _, Fz, c = scaled_rows(F3)  # the forward's frame: σ(Fz) = σ/c (c a power of two: exact)
    R, m, r = U.shape
    n = V.shape[-2]
    gF = (U * gS.unsqueeze(-2)) @ V.mT if gS is not None else U.new_zeros(R, m, n)
    k = _grad_width(gU, gV)  # callers differentiate through leading columns: O(k) work, not O(r)
    if k == 0:
        return gF
    S = S / c[:, None]
    gUk = U.new_zeros(R, m, k) if gU is None else gU[..., :k]
    gVk = V.new_zeros(R, n, k) if gV is None else gV[..., :k]
    tall = m >= n  # as in thin_svd: W = V, the long factor U
    gUk, gVk = gUk / c[:, None, None], gVk / c[:, None, None]  # the gradient in Fz's frame, over c
    A, W, L, gW, gL = (Fz.mT, V, U, gVk, gUk) if tall else (Fz, U, V, gUk, gVk)
    gA = exact_grad_short(A, W[..., :k], L[..., :k], W, S, gW, S.new_zeros(R, k), gL)
    return gF + (gA.mT if tall else gA)
