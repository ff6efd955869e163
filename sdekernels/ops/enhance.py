"""Spectral enhancement and reconstruction (SPEC §4): `spectral_enhance`.

Only the top-k triplets are needed, k = n_strong + n_weak: every noise value is scaled by the
same s_n, so F' = s_n·F + U_k diag(c) V_kᵀ with c = σ_k + δ_k − s_n·σ_k, and the Frobenius bound
uses ‖σ‖² = ‖F‖_F² and ‖δ‖² = Σ_{i≤k} δ_i² + (1 − s_n)²(‖F‖_F² − Σ_{i≤k} σ_i²).

Forward (r = min(m, n) <= GRAM_MAX_R): one float64 eigendecomposition of the short-side Gram
gives every σ (for the partition) and the top-k basis W_k, and F' = s_n·F + W_k diag(c/σ) W_kᵀ·F
in the short-side frame. k varies per batch element: the factors are formed for k_max = max over
the batch and the coefficients of the extra triplets are exactly 0 (a mask). The reconstruction is
one Triton kernel that reads F once and writes F' once (CUDA), or one baddbmm on CPU. Beyond
GRAM_MAX_R: eigvalsh for σ and the randomized top-k_max triplets of _solvers.topk. The solvers
(ops/_solvers.py), stabilisers (ops/_scaling.py), the coefficient formula (ops/_partition.py) and
the truncated backward (ops/_svd_backward.py) are the spectral core's.

Backward, mode="full": on the Gram path the exact gradient (Daleckii–Krein on the eigenbasis of
the short-side Gram, Lorentzian-stabilised; the divided differences vanish between two noise
values, so it costs O(k·r·(long + r)) and never divides by a noise σ): equal to autograd through
the full SVD of the reference. Beyond GRAM_MAX_R the truncated-SVD backward of SPEC §1 (csrc/),
exact as the noise values go to 0. The coefficients' dependence on σ_k and ‖F‖² is a torch.func
vjp (by autograd) on k-vectors. mode="augment": dF = dF'.

torch.compile: the forward and the backward are custom ops, so the partition and k_max (a host
sync) stay inside them. On the Gram path every output has a static shape; on the randomized path
the top-k factors have a data-dependent width (an unbacked size in the fake kernel). Both trace
with fullgraph=True.
Reference: reference/svd.py. Tests: python_tests/test_enhance.py and the generic test_ops.py.
"""
import math

import torch
from torch import Tensor

from .._fallback import ref
from . import _triton as kt
from .._core import HAS_TRITON, check, check_real, grad_like, use_triton, vjp, work_dtype
from ..registry import F64, OpInfo, Sample, register
from ..schedules import alpha as _alpha
from ._gemm import mm_for
from ._matrices import planted, spectrum
from ._partition import IQR_C, draw_xi, energies, enhance_coefs, full_delta, partition_counts
from ._scaling import lorentz, safe_inv, scaled_rows
from ._solvers import DEFAULT_SEED, OVERSAMPLE, fast_gram, gram_eigh, topk, use_gram
from ._svd_backward import truncated_grad
from .svd import Decomposition, SpectralPartition

__all__ = ["spectral_enhance", "enhance_decomposed"]

if HAS_TRITON:
    import triton
    import triton.language as tl

    from ._triton import mma

    @triton.jit(do_not_specialize=["m", "n", "k"])
    def _reconstruct_kernel(F, U, V, C, SN, OUT, m, n, k, sf0, sf1, sf2,
                            ACC: tl.constexpr, PRECISION: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                            BK: tl.constexpr):
        # OUT tile = s_n·F tile + U_k diag(c) V_kᵀ tile: F is read once and OUT written once.
        b = tl.program_id(0).to(tl.int64)
        rm = tl.program_id(1) * BM + tl.arange(0, BM)
        rn = tl.program_id(2) * BN + tl.arange(0, BN)
        acc = tl.zeros([BM, BN], ACC)
        for k0 in range(0, k, BK):
            rk = k0 + tl.arange(0, BK)
            kmask = rk < k
            c = tl.load(C + b * k + rk, mask=kmask, other=0)
            u = tl.load(U + b * m * k + rm[:, None] * k + rk[None, :], mask=(rm[:, None] < m) & kmask[None, :],
                        other=0) * c[None, :]
            vt = tl.load(V + b * n * k + rn[None, :] * k + rk[:, None], mask=(rn[None, :] < n) & kmask[:, None],
                         other=0)
            acc = mma(acc, u, vt, PRECISION)
        mask = (rm[:, None] < m) & (rn[None, :] < n)
        f = tl.load(F + b * sf0 + rm[:, None] * sf1 + rn[None, :] * sf2, mask=mask, other=0).to(ACC)
        sn = tl.load(SN + b).to(ACC)
        tl.store(OUT + b * m * n + rm[:, None] * n + rn[None, :], (acc + sn * f).to(OUT.dtype.element_ty), mask=mask)


def _reconstruct_triton(F3: Tensor, U: Tensor, V: Tensor, c: Tensor, s_n: Tensor) -> Tensor:
    R, m, n = F3.shape
    k = U.shape[-1]
    out = torch.empty((R, m, n), device=F3.device, dtype=F3.dtype)
    if out.numel() == 0:
        return out
    acc = torch.float64 if U.dtype == torch.float64 else torch.float32
    U, V, c, s_n = (t.to(acc).contiguous() for t in (U, V, c, s_n))
    BM, BN, BK, warps = kt.gemm_tiles(m, n, k, acc)
    grid = (R, triton.cdiv(m, BM), triton.cdiv(n, BN))
    _reconstruct_kernel[grid](F3, U, V, c, s_n, out, m, n, k, F3.stride(0), F3.stride(1), F3.stride(2),
                              ACC=kt.acc(acc), PRECISION=kt.precision(acc), BM=BM, BN=BN, BK=BK,
                              num_warps=warps)
    return out


def _reconstruct(F3: Tensor, U: Tensor, V: Tensor, c: Tensor, s_n: Tensor) -> Tensor:
    """s_n·F + U diag(c) Vᵀ per row, in F3's dtype."""
    if use_triton(F3):
        return _reconstruct_triton(F3, U, V, c, s_n)
    w = U.dtype
    return torch.baddbmm(F3.to(w) * s_n.to(w)[:, None, None], U * c.to(w).unsqueeze(-2), V.mT).to(F3.dtype)


def _short(x: Tensor) -> Tensor:
    """The short-side frame: x [R, m, n] as A [R, r, long] (a transposed view when m > n)."""
    return x if x.shape[-2] <= x.shape[-1] else x.mT


# The partition travels out of the custom op packed in one [..., 8] tensor of the work dtype (counts
# exact below 2^24), in SpectralPartition's order: n_strong, n_weak, tau_noise, tau_strong, sigma_hat,
# then the energies (strong, weak, noise).
def _unpack_partition(p: Tensor, dtype: torch.dtype) -> SpectralPartition:
    f = p.detach().unbind(-1)
    return SpectralPartition(f[0].long(), f[1].long(), *(x.to(dtype) for x in f[2:5]),
                             tuple(x.to(dtype) for x in f[5:]))


@torch.library.custom_op("sdekernels::spectral_enhance", mutates_args=())
def _enhance(F: Tensor, xi: Tensor, alpha: float, eps_strong: float, gamma_weak: float, gamma_noise: float,
             rho: float, center: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(F', U, S, V, partition [..., 8], δ [..., r]). (U, S, V) is the decomposition the backward
    differentiates, in the scaled frame F/c: on the Gram path (use_gram(r)) the short-side Gram's
    eigenbasis U = W [R, r, r], every σ in S [R, r] and V empty (the exact backward recomputes the
    rest from F); on the randomized path the top-k_max triplets (the truncated backward)."""
    w = work_dtype(F.dtype)
    batch, (m, n) = F.shape[:-2], F.shape[-2:]
    r = min(m, n)
    # Everything is computed for Fs = F/c (c: each row's power-of-two scale, scaled_rows; the
    # non-finite rows zeroed): σ, the thresholds and δ scale back by c, F' = c·F'(Fs) = s_n·F + U diag(c·c_s) Vᵀ.
    F3 = F.reshape(-1, m, n)
    finite, Fs, sc = scaled_rows(F3)
    R = F3.shape[0]
    mm = mm_for(F3)
    xi = xi.to(w).expand(*batch, r).reshape(R, r)
    A = _short(Fs)
    if use_gram(r):
        # One eigendecomposition of the short-side Gram gives every σ (partition) and the basis.
        lam, W = gram_eigh(Fs, finite, fast=fast_gram(r, F.dtype))
        S_all = lam.sqrt()
    else:
        S_all = gram_eigh(Fs, finite, vectors=False, fast=fast_gram(r, F.dtype)).sqrt()
    S_all = torch.where(finite[:, None], S_all.to(w), float("nan"))
    n_strong, n_weak, tau_noise, tau_strong, sigma_hat, s_sorted = partition_counts(S_all, m, n, IQR_C, center)
    tau_noise, tau_strong, sigma_hat = (t * sc for t in (tau_noise, tau_strong, sigma_hat))
    e = energies(s_sorted, n_strong, n_weak)
    n_signal = n_strong + n_weak
    k = int(n_signal.max()) if R else 1
    nf2 = torch.linalg.vector_norm(Fs, dim=(-2, -1), dtype=w) ** 2
    if use_gram(r):
        S = torch.where(finite[:, None], lam[:, :k].sqrt(), 0.0).to(w)
        c, s_n, delta_k, _ = enhance_coefs(S, nf2, n_strong, n_signal, xi[:, :k], alpha, eps_strong, gamma_weak,
                                           gamma_noise, rho)
        # F' = s_n F + W_k diag(c/σ) W_kᵀ A in the short-side frame (U_k σ_k = A V_k).
        Wk = W[:, :, :k].to(w)
        L = mm(A.mT, Wk, w)
        U, V = (Wk, L) if m <= n else (L, Wk)
        out = _reconstruct(F3, U, V, c * safe_inv(S, S[:, :1]) * sc[:, None], torch.where(finite, s_n, float("nan")))
        saved = (W.to(w).contiguous(), S_all.clone(), F.new_empty(0, dtype=w))
    else:
        top = topk(Fs, k, oversample=OVERSAMPLE, seed=DEFAULT_SEED)  # the truncated backward applies
        U, S, V = top.U, top.S, top.V
        c, s_n, delta_k, _ = enhance_coefs(S, nf2, n_strong, n_signal, xi[:, :k], alpha, eps_strong, gamma_weak,
                                           gamma_noise, rho)
        out = _reconstruct(F3, U, V, c * sc[:, None], torch.where(finite, s_n, float("nan")))
        saved = tuple(t.contiguous() for t in (U, S, V))
    delta = full_delta(S_all, delta_k, s_n, n_signal) * sc[:, None]
    part = torch.stack([n_strong.to(w), n_weak.to(w), tau_noise, tau_strong, sigma_hat, *e], -1).reshape(*batch, 8)
    return (out.reshape(F.shape), *saved, part, delta.reshape(*batch, r).to(F.dtype))


@_enhance.register_fake
def _(F, xi, alpha, eps_strong, gamma_weak, gamma_noise, rho, center=False):
    w = work_dtype(F.dtype)
    batch, (m, n) = F.shape[:-2], F.shape[-2:]
    R, r = math.prod(batch), min(m, n)
    e = lambda *s: F.new_empty(s, dtype=w)  # noqa: E731
    if use_gram(r):
        saved = (e(R, r, r), e(R, r), e(0))
    else:
        k = torch.library.get_ctx().new_dynamic_size()
        saved = (e(R, m, k), e(R, k), e(R, n, k))
    return (F.new_empty(F.shape), *saved, e(*batch, 8), F.new_empty((*batch, r)))


def _gram_backward(A: Tensor, G: Tensor, W: Tensor, S_all: Tensor, ns: Tensor, nsig: Tensor, xi: Tensor, params):
    """Exact gradient in the short-side frame A [R, r, long] of A' = s_n A + P A, P = W_k diag(d) W_kᵀ,
    d = c/σ: Daleckii–Krein for the eigenvectors of M = AAᵀ, Γ_ij = (d_i − d_j)/(λ_i − λ_j)
    (Lorentzian-stabilised), which vanishes between two noise indices, so only the first k rows
    of Wᵀ(GAᵀ)W are needed: O(k·r·(long + r)) work, no 1/σ of a noise value."""
    k = max(int(nsig.max()), 1) if nsig.numel() else 1
    Wk = W[:, :, :k]
    S = S_all[:, :k]
    s1 = S_all[:, :1].double()
    Yk, Tk = Wk.mT @ A, Wk.mT @ G                              # [R, k, long]
    coefs = lambda S_, nf2_: _d_and_sn(S_, nf2_, ns, nsig, xi[:, :k], params)  # noqa: E731
    (d, s_n), pullback = vjp(coefs, S, (A * A).sum((-2, -1)))
    Xs = (Tk @ A.mT + Yk @ G.mT) @ W / 2                        # rows < k of sym(Wᵀ G Aᵀ W), [R, k, r]
    g_d = torch.diagonal(Xs[:, :, :k], dim1=-2, dim2=-1)
    gS, g_nf2 = pullback((g_d, (G * A).sum((-2, -1))))
    lam = S_all.double() ** 2
    f = torch.zeros_like(lam)
    f[:, :k] = d.double()
    Gam = (f[:, :k, None] - f[:, None, :]) * lorentz(lam[:, :k, None] - lam[:, None, :], s1[:, :, None], A.dtype)
    Z = (Gam.to(A.dtype) * Xs)
    Z[:, :, :k] = Z[:, :, :k] * (1 - torch.eye(k, dtype=A.dtype, device=A.device)) + torch.diag_embed(
        gS * safe_inv(S, S_all[:, :1]) / 2)
    gA = s_n[:, None, None] * G + Wk @ (d.unsqueeze(-1) * Tk) + 2 * (g_nf2[:, None, None] * A)
    gA = gA + 2 * (Wk @ ((Z @ W.mT) @ A) + (W[:, :, k:] @ Z[:, :, k:].mT) @ Yk)
    return gA


def _d_and_sn(S, nf2, ns, nsig, xi, params):
    c, s_n, _, _ = enhance_coefs(S, nf2, ns, nsig, xi, *params)
    return c * safe_inv(S, S[:, :1]), s_n


@torch.library.custom_op("sdekernels::spectral_enhance_backward", mutates_args=())
def _enhance_backward(F: Tensor, grad: Tensor, U: Tensor, S: Tensor, V: Tensor, xi: Tensor, n_strong: Tensor,
                      n_weak: Tensor, alpha: float, eps_strong: float, gamma_weak: float, gamma_noise: float,
                      rho: float) -> Tensor:
    w = work_dtype(F.dtype)
    m, n = F.shape[-2:]
    # F' is homogeneous of degree 1 in F, so its Jacobian at F is the one at Fs = F/c (the forward's
    # frame, whose saved σ are those of Fs). A non-finite row gives non-finite gradients in that row only.
    finite, F3, _ = scaled_rows(F.reshape(-1, m, n))
    F3 = torch.where(finite[:, None, None], F3, float("nan"))
    G = grad.reshape(-1, m, n).to(w)
    ns, nsig = n_strong.reshape(-1), (n_strong + n_weak).reshape(-1)
    params = (alpha, eps_strong, gamma_weak, gamma_noise, rho)
    if use_gram(min(m, n)):
        gA = _gram_backward(_short(F3), _short(G), U, S, ns, nsig, xi, params)  # U = W, S = every σ
        gF = gA if m <= n else gA.mT
    else:
        # Top-k triplets and the truncated-SVD backward of SPEC §1 (exact as the noise values → 0).
        k = S.shape[-1]
        coefs = lambda S_, nf2_: enhance_coefs(S_, nf2_, ns, nsig, xi[:, :k], *params)[:2]  # noqa: E731
        (c, s_n), pullback = vjp(coefs, S, (F3 * F3).sum((-2, -1)))
        GV = G @ V
        gS, g_nf2 = pullback(((GV * U).sum(-2), (G * F3).sum((-2, -1))))
        gF = truncated_grad(U, S, V, GV * c.unsqueeze(-2), gS, (G.mT @ U) * c.unsqueeze(-2)).to(w)
        gF = gF + s_n[:, None, None] * G + (2 * g_nf2)[:, None, None] * F3
    return grad_like(gF.reshape(F.shape), F)


@_enhance_backward.register_fake
def _(F, grad, U, S, V, xi, n_strong, n_weak, alpha, eps_strong, gamma_weak, gamma_noise, rho):
    return torch.empty_like(F)


def _enhance_setup(ctx, inputs, output):
    F, xi, *params = inputs
    ctx.params = params[:5]  # alpha, eps_strong, gamma_weak, gamma_noise, rho (center acts on the forward only)
    m, n = F.shape[-2:]
    R = math.prod(F.shape[:-2])
    counts = output[4].detach()[..., :2].reshape(R, 2).long()  # n_strong, n_weak
    ctx.save_for_backward(F, *output[1:4], xi.detach().expand(*F.shape[:-2], min(m, n)).reshape(R, min(m, n)), counts)
    ctx.xi_shape = xi.shape


def _enhance_grad(ctx, grad, *_):
    F, U, S, V, xi, counts = ctx.saved_tensors
    gF = _enhance_backward(F, grad, U, S, V, xi.to(U.dtype), counts[:, 0], counts[:, 1], *ctx.params)
    g_xi = F.new_zeros(ctx.xi_shape, dtype=xi.dtype) if ctx.needs_input_grad[1] else None  # ξ = sign(direction)
    return gF, g_xi, None, None, None, None, None, None


_enhance.register_autograd(_enhance_grad, setup_context=_enhance_setup)


class _Augment(torch.autograd.Function):
    """F' with dF = dF' (mode="augment": the enhancement term is a constant)."""

    @staticmethod
    def forward(ctx, F, Fp):
        return Fp.clone()

    @staticmethod
    def backward(ctx, g):
        return g, None


def _check_float(v, name, lo=0.0):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < lo:
        raise ValueError(f"{name} must be a finite number >= {lo}, got {v!r}")
    return float(v)


def spectral_enhance(F: Tensor, t: float, *, eps_strong: float = 0.1, gamma_weak: float = 0.3,
                     gamma_noise: float = 0.9, rho: float = 0.5, direction: Tensor | None = None,
                     generator: torch.Generator | None = None, mode: str = "full", return_details: bool = False,
                     center: bool = False):
    """Spectral enhancement F' = U diag(σ + δ) Vᵀ of F [..., m, n] at training progress t (SPEC §4).

    δ: strong values perturbed by eps_strong·α(t)·(σ_i/σ_1)·σ_i·ξ_i (ξ = sign(direction) if given,
    shaped [..., r] or [r], else uniform(−1, 1) drawn exactly as the reference does from
    `generator`), weak values damped by gamma_weak·α(t), noise by gamma_noise·(1 − α(t)); then
    ‖δ‖ ≤ rho‖σ‖.
    mode="full": gradients through σ, U, V, exact up to min(m, n) = GRAM_MAX_R (2048) and beyond it
    SPEC §1's truncated-SVD gradient (exact where the noise singular values are small next to the
    signal ones); mode="augment": dF = dF'.
    center=True: decomposition, partition and δ of the row-centred F_c = F − 1μᵀ, and
    F' = 1μᵀ + F_c' (the reference's definition; SPEC §4).
    Returns F' in F's dtype, or (F', SpectralPartition, δ [..., r]) with return_details=True
    (partition and δ detached).
    """
    check(F, "F", min_dim=2)
    if mode not in ("full", "augment"):
        raise ValueError(f"mode must be 'full' or 'augment', got {mode!r}")
    t = check_real(t, "t", 0.0, 1.0)
    params = [_check_float(v, name) for v, name in ((eps_strong, "eps_strong"), (gamma_weak, "gamma_weak"),
                                                    (gamma_noise, "gamma_noise"), (rho, "rho"))]
    batch, r = F.shape[:-2], min(F.shape[-2:])
    if r == 0:
        raise ValueError(f"F must have m, n >= 1, got shape {tuple(F.shape)}")
    if direction is not None:
        check(direction, "direction", like=F)
        if direction.shape[-1] != r or direction.dim() > F.dim() - 1 or \
                tuple(direction.shape[:-1]) != tuple(batch[len(batch) - direction.dim() + 1:]):
            raise ValueError(f"direction must have shape [..., {r}] broadcastable to {(*batch, r)}, "
                             f"got {tuple(direction.shape)}")
    else:
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if not isinstance(center, bool):
        raise TypeError(f"center must be a bool, got {type(center).__name__}")
    if center and F.shape[-2] < 2:
        raise ValueError(f"center=True needs F with m >= 2 rows, got shape {tuple(F.shape)}")
    xi = draw_xi((*batch, r), work_dtype(F.dtype), F.device, direction=direction, generator=generator)
    a = _alpha(float(t))
    Fc = F - F.mean(-2, keepdim=True) if center else F
    if mode == "full":
        outs = _enhance(Fc, xi, a, *params, center)
    else:
        with torch.no_grad():
            outs = _enhance(Fc.detach(), xi, a, *params, center)
    Fp, part, delta = outs[0], outs[4], outs[5]
    if center:
        Fp = Fp + (F - Fc).detach() if mode == "augment" else Fp + (F - Fc)
    if mode == "augment":
        Fp = _Augment.apply(F, Fp)
    if not return_details:
        return Fp
    return Fp, _unpack_partition(part, F.dtype), delta.detach()


# ---------------------------------------------------------------- from a given decomposition


def _torch_reconstruct(F3: Tensor, U: Tensor, V: Tensor, c: Tensor, s_n: Tensor) -> Tensor:
    return torch.baddbmm(F3 * s_n[:, None, None], U * c.unsqueeze(-2), V.mT)


def _enhance_rows(F3: Tensor, U: Tensor, S: Tensor, V: Tensor, ns: Tensor, nsig: Tensor, xi: Tensor, k: int, params,
                  reconstruct=_torch_reconstruct, energy: Tensor | None = None) -> Tensor:
    """s_n·F + U_k diag(c) V_kᵀ for rows F3 [R, m, n] and their decomposition (U [R, m, r], S [R, r],
    V [R, n, r]), all in the work dtype. The coefficients come from σ/c and ‖F/c‖² (c: the row's
    power-of-two scale): no overflow of σ² or ‖F‖² at any scale; c (a constant) multiplies them back.
    energy [R]: ‖F‖² given (F3 then holds some of the rows of the decomposed matrix)."""
    sc = scaled_rows(F3.detach())[2][:, None]
    nf2 = ((F3 / sc[..., None]) ** 2).sum((-2, -1)) if energy is None else energy / (sc * sc).reshape(-1)
    c, s_n, _, _ = enhance_coefs(S[:, :k] / sc, nf2, ns, nsig, xi[:, :k], *params)
    return reconstruct(F3, U[..., :k], V[..., :k], c * sc, s_n)


def _rows(F, U, S, V, n_strong, n_weak, xi, energy=None):
    (m, n), r = F.shape[-2:], S.shape[-1]
    w = work_dtype(F.dtype)
    ns, nsig = n_strong.reshape(-1), (n_strong + n_weak).reshape(-1)
    k = max(int(nsig.max()), 1) if nsig.numel() else 1
    rows = (F.reshape(-1, m, n).to(w), U.reshape(-1, m, r), S.reshape(-1, r), V.reshape(-1, n, r))
    rows += () if energy is None else (energy.reshape(-1).to(w),)
    return rows, (ns, nsig, xi.reshape(-1, r).to(w), k)


def _enhance_given(F3, U, S, V, *energy, ns, nsig, xi, k, params, reconstruct=_torch_reconstruct):
    """_enhance_rows with the optional energy as a trailing positional (what _rows returns)."""
    return _enhance_rows(F3, U, S, V, ns, nsig, xi, k, params, reconstruct, *energy)


@torch.library.custom_op("sdekernels::enhance_decomposed", mutates_args=())
def _enhance_decomposed(F: Tensor, U: Tensor, S: Tensor, V: Tensor, n_strong: Tensor, n_weak: Tensor, xi: Tensor,
                        alpha: float, eps_strong: float, gamma_weak: float, gamma_noise: float, rho: float,
                        energy: Tensor | None = None) -> Tensor:
    """F' [..., m, n] in the work dtype (one Triton pass over F on CUDA, a baddbmm on CPU)."""
    rows, (ns, nsig, xi, k) = _rows(F, U, S, V, n_strong, n_weak, xi, energy)
    params = (alpha, eps_strong, gamma_weak, gamma_noise, rho)
    out = _enhance_given(*rows, ns=ns, nsig=nsig, xi=xi, k=k, params=params, reconstruct=_reconstruct)
    return out.reshape(F.shape)


@_enhance_decomposed.register_fake
def _(F, U, S, V, n_strong, n_weak, xi, alpha, eps_strong, gamma_weak, gamma_noise, rho, energy=None):
    return F.new_empty(F.shape, dtype=work_dtype(F.dtype))


@torch.library.custom_op("sdekernels::enhance_decomposed_backward", mutates_args=())
def _enhance_decomposed_backward(grad: Tensor, F: Tensor, U: Tensor, S: Tensor, V: Tensor, n_strong: Tensor,
                                 n_weak: Tensor, xi: Tensor, alpha: float, eps_strong: float, gamma_weak: float,
                                 gamma_noise: float, rho: float,
                                 energy: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    # The pullback of the forward's own formula (by autograd, on k-column factors): the gradient
    # reaches U, S, V, F (and the given energy); the decomposition's backward takes it on from U, S, V.
    # Without an energy its gradient is an empty tensor.
    rows, (ns, nsig, xi, k) = _rows(F, U, S, V, n_strong, n_weak, xi, energy)
    params = (alpha, eps_strong, gamma_weak, gamma_noise, rho)
    _, pullback = vjp(lambda *t: _enhance_given(*t, ns=ns, nsig=nsig, xi=xi, k=k, params=params), *rows)
    gF, gU, gS, gV, *gE = pullback(grad.reshape(rows[0].shape).to(rows[0].dtype))
    gE = gE[0].reshape(energy.shape) if gE else F.new_empty(0)
    return grad_like(gF.reshape(F.shape), F), gU.reshape(U.shape), gS.reshape(S.shape), gV.reshape(V.shape), gE


@_enhance_decomposed_backward.register_fake
def _(grad, F, U, S, V, n_strong, n_weak, xi, alpha, eps_strong, gamma_weak, gamma_noise, rho, energy=None):
    gE = F.new_empty(0) if energy is None else torch.empty_like(energy)
    return torch.empty_like(F), torch.empty_like(U), torch.empty_like(S), torch.empty_like(V), gE


def _enhance_decomposed_setup(ctx, inputs, output):
    ctx.params, ctx.given = inputs[7:12], inputs[12] is not None
    ctx.save_for_backward(*inputs[:7], inputs[12])


def _enhance_decomposed_grad(ctx, grad):
    gF, gU, gS, gV, gE = _enhance_decomposed_backward(grad, *ctx.saved_tensors[:7], *ctx.params,
                                                      ctx.saved_tensors[7])
    return gF, gU, gS, gV, None, None, None, None, None, None, None, None, gE if ctx.given else None


_enhance_decomposed.register_autograd(_enhance_decomposed_grad, setup_context=_enhance_decomposed_setup)


def enhance_decomposed(F: Tensor, d: Decomposition, part: SpectralPartition, xi: Tensor, t: float, *,
                       eps_strong: float = 0.1, gamma_weak: float = 0.3, gamma_noise: float = 0.9, rho: float = 0.5,
                       mode: str = "full", centred: Tensor | None = None, energy: Tensor | None = None) -> Tensor:
    """spectral_enhance (SPEC §4) from a given decomposition: F' = s_n·X + U_k diag(c) V_kᵀ, where
    d = decompose(X), part = spectral_partition(d.S, m, n, center=centred is not None) and
    xi = draw_xi(...) [..., r]; X is F, or with center=True `centred` = F − 1μᵀ (and F' = 1μᵀ + X').
    Gradients flow through X and the factors of d (mode="full"), or dF = dF' (mode="augment").
    energy [...]: ‖X‖² of the decomposed matrix when F holds only some of its rows (d.U those rows'),
    as SDELoss across ranks does; by default ‖X‖² of F. Returns F' in F's dtype."""
    X = F if centred is None else centred
    params = (_alpha(t), eps_strong, gamma_weak, gamma_noise, rho)
    U, S, V = d
    if mode == "full":
        out = _enhance_decomposed(X, U, S, V, part.n_strong, part.n_weak, xi, *params, energy)
        if centred is not None:
            out = out + (F - X)  # the mean rows 1μᵀ
    else:  # dF = dF'
        with torch.no_grad():
            out = _enhance_decomposed(X, U, S, V, part.n_strong, part.n_weak, xi, *params, energy)
        w = out.dtype
        out = F.to(w) + (out - X.to(w)).detach()
    return out.to(F.dtype)


# ---------------------------------------------------------------- registry entry


def _make(shape, device, dtype, gen):
    """A planted signal (strong and weak values) over a noise tail at 1e-3 of σ_1: partition margins
    far above gradcheck's steps."""
    b, m, n, s = shape.get("batch", 0), shape["m"], shape["n"], shape.get("s", 4)
    if "rank" in shape:  # a spike of that many values over Gaussian noise: about as many signal values
        F = spectrum(b, m, n, shape["rank"], "spiked" if shape["rank"] else "zero", gen)
    else:
        F = planted(b, m, n, s, gen, ratio=shape.get("ratio", 0.6), tail=1e-3)
    F = F.to(device=device, dtype=dtype)
    kwargs = {k: shape[k] for k in ("mode", "rho", "gamma_noise", "center") if k in shape}
    t = shape.get("t", 0.6)
    if shape.get("direction", True):
        d = torch.randn((*([b] if b else []), min(m, n)), generator=gen, dtype=torch.float64).to(device, dtype)
        return Sample((F, t), kwargs, prep=lambda a, kw: (a, {**kw, "direction": d}))
    return Sample((F, t), kwargs)  # random ξ (drawn from the default generator); t = 0 makes it irrelevant


def _bad(device):
    F = torch.randn(2, 12, 8, device=device)
    return [((F[0, 0], 0.5), {}, "F"), ((F.long(), 0.5), {}, "F"), ((F, 1.5), {}, "t"), ((F, "a"), {}, "t"),
            ((F, 0.5), {"mode": "x"}, "mode"), ((F, 0.5), {"rho": -1.0}, "rho"), ((F, float("nan")), {}, "t"),
            ((F, 0.5), {"gamma_noise": float("inf")}, "gamma_noise"),
            ((F, 0.5), {"eps_strong": float("nan")}, "eps_strong"),
            ((F, 0.5), {"direction": torch.ones(2, 7)}, "direction"),
            ((F, 0.5), {"direction": torch.ones(2, 8).double()}, "direction"),
            ((F, 0.5), {"generator": 1}, "generator")]


def _cost(s):
    F = s.args[0]
    m, n = F.shape[-2:]
    R = F.numel() // (m * n)
    r = min(m, n)
    return 2 * F.numel() * F.element_size(), R * (2 * m * n * r + 10 * r ** 3)


register(OpInfo(
    name="spectral_enhance", op=spectral_enhance, ref=ref.spectral_enhance, make=_make,
    gpu_shape={"batch": 2, "m": 80, "n": 70, "s": 5},
    cond=(16, 256),  # the backward divides by the gaps σ_i² − σ_j² of the Gram eigenvalues
    # float64: the Triton and CPU paths' eigenbases differ by far more (at gpu_shape: 432 eps forward,
    # 8.4e5 eps backward, measured); bounded at 4x that until it is understood
    cond_by_dtype={F64: (2048, 2 ** 22)},
    scaling=lambda sh: ((0,), (1,)),
    shapes=[{"batch": 0, "m": 1, "n": 1, "s": 1}, {"batch": 3, "m": 8, "n": 6, "s": 3},
            {"batch": 2, "m": 5, "n": 9, "s": 2, "t": 0.0, "direction": False},
            {"batch": 0, "m": 30, "n": 24, "s": 6, "mode": "augment", "rho": 0.1},  # > 600 values: no gradcheck
            {"batch": 2, "m": 16, "n": 20, "s": 5, "t": 1.0, "gamma_noise": 0.5},
            {"batch": 2, "m": 10, "n": 7, "s": 2, "center": True}],
    space={"batch": (0, 3), "m": (2, 30), "n": (2, 30), "s": (1, 2)},
    bad=_bad, tol={F64: (1e-9, 1e-8), torch.float32: (2e-5, 2e-4), torch.bfloat16: (3e-2, 3e-2),
                   torch.float16: (5e-3, 5e-3)},
    grad_tol=(1e-8, 1e-6),
    bench=[{"batch": 0, "m": 256, "n": 512, "quick": True, "backward": True},
           *[{"batch": 0, "m": B, "n": D, "backward": True} for B in (1024, 4096) for D in (512, 768, 1024)],
           {"batch": 64, "m": 256, "n": 256, "backward": True}],
    cost=_cost,
    # ranks k = max n_signal of each class of the k-wide launches (tile 16, 32 or 64; k = 1, a multiple
    # of 16 or neither: Triton specialises both), and none
    regimes=tuple({"rank": k} for k in (0, 1, 5, 16, 24, 32, 40, 48)),
))
