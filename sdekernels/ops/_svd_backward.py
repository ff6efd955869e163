"""The SVD backwards of the spectral core (private; SPEC §1).

truncated_grad(U, S, V, gU, gS, gV) is SPEC §1's truncated-SVD gradient from the top-k triplets
(exact only as σ_{k+1..r} → 0), the randomized path's; exact_grad_short(A, Ws, Wl, W, σ, gWs, gS,
gWl) is the exact top-k gradient in the short-side frame from the full Gram eigenbasis, the Gram
path's and the thin SVD's. Each calls the extension's kernel (csrc/cpu/svd.cpp, csrc/cuda/svd.cu)
and falls back to the same formula in ATen (truncated_backward_math, exact_backward_math).
"""
import torch
from torch import Tensor

from .. import _ext
from .._core import pow2_scale, work_dtype
from ._scaling import lorentz, safe_inv

def truncated_backward_math(U: Tensor, S: Tensor, V: Tensor, gU: Tensor, gS: Tensor, gV: Tensor) -> Tensor:
    """The stabilised truncated-SVD gradient (SPEC §1) in ATen; csrc/ has the same formula, this is
    the fallback when the extension is unavailable.

    gF = U [L∘skew(UᵀgU)·S + S·L∘skew(VᵀgV) + diag(gS)] Vᵀ + (I − UUᵀ)gU S⁻¹Vᵀ + U S⁻¹ gVᵀ(I − VVᵀ),
    L_jl = lorentz(σ_l² − σ_j²); the complement terms are formed through UᵀgU, VᵀgV (k×k) only,
    and the k×k core is evaluated in float64.
    """
    A, B = (U.mT @ gU).double(), (V.mT @ gV).double()
    Sd, gSd = S.double(), gS.double()
    s1 = Sd.abs().amax(-1, keepdim=True)
    s2 = Sd * Sd
    L = lorentz(s2.unsqueeze(-2) - s2.unsqueeze(-1), s1.unsqueeze(-1), U.dtype)  # of E_jl = σ_l² − σ_j²
    K = L * ((A - A.mT) * Sd.unsqueeze(-2) + Sd.unsqueeze(-1) * (B - B.mT))
    K = K * (1 - torch.eye(K.shape[-1], dtype=K.dtype, device=K.device)) + torch.diag_embed(gSd)
    inv = safe_inv(Sd, s1)
    Kt = (K - A * inv.unsqueeze(-2) - inv.unsqueeze(-1) * B.mT).to(U.dtype)
    inv = inv.to(U.dtype).unsqueeze(-2)
    left = torch.cat([U @ Kt + gU * inv, U * inv], -1)
    return left @ torch.cat([V, gV], -1).mT


def truncated_grad(U: Tensor, S: Tensor, V: Tensor, gU: Tensor, gS: Tensor, gV: Tensor) -> Tensor:
    """dL/dF [..., m, n] in the work dtype from the top-k triplets and their gradients by SPEC §1's
    truncated-SVD formula (exact only as σ_{k+1..r} → 0): the extension's kernel, else
    truncated_backward_math. Scale-free (SPEC §10): with c = σ_1's power of two, the gradient is that
    of S/c with gU/c, gV/c."""
    w = work_dtype(U.dtype)
    c = pow2_scale(S, (-1,))[..., 0]
    S, gU, gV = S / c[..., None], gU / c[..., None, None], gV / c[..., None, None]
    args = [t.to(w).contiguous() for t in (U, S, V, gU, gS, gV)]
    if _ext.available():
        return torch.ops.sdekernels_C.svd_topk_bwd(*args)
    return truncated_backward_math(*args)


def exact_backward_math(A: Tensor, Ws: Tensor, Wl: Tensor, W: Tensor, sigma: Tensor, gWs: Tensor, gS: Tensor,
                        gWl: Tensor) -> Tensor:
    """The exact gradient on the Gram path in ATen (csrc/ bindings.cpp svd_topk_exact_bwd has the same
    formula; this is the fallback when the extension is unavailable).

    Short-side frame A [R, r, N] (r <= N) = W Σ Lᵀ: Ws = W_k [R, r, k] the short top-k factor,
    Wl = Aᵀ Ws diag(1/σ_k) [R, N, k] the long one, W [R, r, r] the full eigenbasis of AAᵀ (first k
    columns = Ws), sigma [R, r] every singular value (first k = the outputs'). The chain through
    Wl gives gW_k = gWs + A gWl diag(1/σ) and gσ − diag(Wlᵀ gWl)/σ; Daleckii–Krein for the
    eigenvectors of AAᵀ gives gAAᵀ = W C Wᵀ (symmetrised) with the r×k core
    C_ij = (w_iᵀ gW_j)/(σ_j² − σ_i²), C_jj = gσ_j/(2σ_j), so with P = WᵀgWs, Q = Wᵀ(A gWl), T = W C:
    gA = Ws diag(1/σ) gWlᵀ + T diag(σ_k) Wlᵀ + Ws (Tᵀ A). Exact (no truncation): the values past k
    enter only through 1/(σ_j² − σ_i²), never through 1/σ_i; both factors are stabilised as in
    SPEC §1 (x/(x² + ε), σ/(σ² + ε')), and the core is evaluated in float64 and scaled by σ_1
    (C ~ 1/σ² would leave the float32 range for tiny σ; the k-column products undo the scale).
    """
    k = Ws.shape[-1]
    P, Q = W.mT @ gWs, W.mT @ (A @ gWl)
    sd = sigma.double()
    s1 = sd.abs().amax(-1, keepdim=True)
    inv = safe_inv(sd[:, :k], s1)
    C = lorentz(sd[:, None, :k] ** 2 - sd[:, :, None] ** 2, s1[:, :, None], W.dtype) * (
        P.double() + Q.double() * inv[:, None, :])
    idx = torch.arange(k, device=C.device)
    C[:, idx, idx] = (gS.double() - inv * inv * Q.double()[:, idx, idx]) * inv / 2
    rs = torch.where(s1 > 0, 1 / s1, 0.0)
    T = W @ (C * s1[:, :, None]).to(W.dtype)  # σ_1·W C
    left = torch.cat([Ws * inv.to(W.dtype).unsqueeze(-2), T * (sd[:, :k] * rs).to(W.dtype).unsqueeze(-2)], -1)
    return left @ torch.cat([gWl, Wl], -1).mT + Ws @ ((T.mT @ A) * rs.to(W.dtype).unsqueeze(-1))


def exact_grad_short(A: Tensor, Ws: Tensor, Wl: Tensor, W: Tensor, sigma: Tensor, gWs: Tensor, gS: Tensor,
                     gWl: Tensor) -> Tensor:
    """The exact top-k SVD gradient in the short-side frame (exact_backward_math's arguments,
    float32/float64 rows [R, ...]): the extension's kernel, else the ATen formula."""
    args = (A, Ws.contiguous(), Wl.contiguous(), W.contiguous(), sigma.contiguous(), gWs.contiguous(), gS.contiguous(),
            gWl.contiguous())
    return torch.ops.sdekernels_C.svd_topk_exact_bwd(*args) if _ext.available() else exact_backward_math(*args)
