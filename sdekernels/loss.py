"""The SDE loss (SPEC §7) on the fused ops: a drop-in replacement for open_clip's ``ClipLoss``.

The logic (curriculum, enhancement, the two loss terms, statistics, adversarial direction,
gathering) is the reference's (reference/contrastive.py); this module swaps the ops it calls.
One structural change: the reference decomposes each feature matrix three times per call (in
spectral_enhance, singular_values and svd_topk, each a full SVD with its own backward). Here,
during a call, those three ops read ONE decomposition per feature matrix (`_ThinSVD`: the float64
Gram of the short side and one eigh) and the enhancement is s_n·F + U_k diag(c) V_kᵀ from its
top-k triplets (SPEC §4). Its backward is the exact gradient of svd_topk's Gram path (ops/svd.py
exact_grad_short: all r eigenvectors known, so no truncation error), stabilised as in SPEC §1. Outside a call the ops are the fused public ones.
Tests: python_tests/test_sde_loss.py, python_tests/test_distributed.py.

    # open_clip: loss = ClipLoss(local_loss=..., gather_with_grad=..., rank=..., world_size=...)  ->
    loss = sdekernels.nn.SDELoss(total_steps, local_loss=..., gather_with_grad=..., rank=..., world_size=...)
    total = loss(image_features, text_features, logit_scale.exp(), step=step)
"""
import contextlib
import threading
import types

import torch
from torch import Tensor

from . import reference as ref
from ._core import check, without_autocast, work_dtype
from .ops.contrastive import info_nce, local_info_nce
from .ops.distances import hellinger, subspace_distance
from .ops.enhance import enhance_coefs, spectral_enhance
from .ops.svd import exact_grad_short, safe_inv, scaled_rows, singular_values, spectral_partition, svd_topk
from .schedules import alpha as _alpha

_state = threading.local()


class _ThinSVD(torch.autograd.Function):
    """(U [R, m, r], S [R, r], V [R, n, r]) of F3 [R, m, n] from the eigh of the float64 Gram of
    the short side; the long-side factor is F·W/σ (stabilised 1/σ). Rows with a non-finite entry
    give NaN factors (LAPACK would raise for the whole batch). `used.k`: how many leading columns
    of U and V the caller differentiates through (set before backward; the rest get no gradient)."""

    @staticmethod
    def forward(ctx, F3, used):
        m, n = F3.shape[-2:]
        tall = m >= n
        # Decomposed as Fz = F/c (c: each row's power-of-two scale, no overflow or underflow of the
        # Gram at any scale of F; non-finite rows zeroed); σ(F) = c·σ(Fz).
        finite, Fz, c = scaled_rows(F3)
        finite = finite[:, None, None]
        Fd = Fz.double()
        lam, W = torch.linalg.eigh(Fd.mT @ Fd if tall else Fd @ Fd.mT)
        S = lam.flip(-1).clamp_min(0).sqrt()
        W = W.flip(-1).to(F3.dtype)
        inv = safe_inv(S, S[:, :1]).to(F3.dtype).unsqueeze(-2)
        other = (Fz @ W if tall else Fz.mT @ W) * inv
        U, V = (other, W) if tall else (W, other)
        nan = torch.tensor(float("nan"), dtype=F3.dtype, device=F3.device)
        U, V = torch.where(finite, U, nan), torch.where(finite, V, nan)
        S = torch.where(finite[:, :, 0], S.to(F3.dtype), nan)
        ctx.used = used
        ctx.save_for_backward(Fz, U, S, V, c)
        return U, S * c[:, None], V

    @staticmethod
    def backward(ctx, gU, gS, gV):
        with torch.autocast(ctx.saved_tensors[0].device.type, enabled=False):  # as the forward ran
            return _ThinSVD._backward(ctx, gU, gS, gV)

    @staticmethod
    def _backward(ctx, gU, gS, gV):
        # Linear in (gU, gS, gV): U diag(gS) Vᵀ over all r values, plus the exact top-k gradient of
        # ops/svd.py (shared with svd_topk's Gram path) for the first k columns of gU, gV, in the
        # short-side frame where W (all r eigenvectors of the Gram) is the square factor.
        Fz, U, S, V, c = ctx.saved_tensors  # S: the σ of Fz = F/c
        R, m, r = U.shape
        n, k = V.shape[-2], ctx.used.k
        gF = (U * gS.unsqueeze(-2)) @ V.mT if gS is not None else U.new_zeros(R, m, n)
        if k == 0 or (gU is None and gV is None):
            return gF, None
        gUk = U.new_zeros(R, m, k) if gU is None else gU[..., :k]
        gVk = V.new_zeros(R, n, k) if gV is None else gV[..., :k]
        tall = m >= n  # as in forward: W = V, the long factor U
        gUk, gVk = gUk / c[:, None, None], gVk / c[:, None, None]  # the gradient in Fz's frame, over c
        A, W, L, gW, gL = (Fz.mT, V, U, gVk, gUk) if tall else (Fz, U, V, gUk, gVk)
        gA = exact_grad_short(A, W[..., :k], L[..., :k], W, S, gW, S.new_zeros(R, k), gL)
        return gF + (gA.mT if tall else gA), None


class _Spectra:
    """One decomposition per feature tensor during a call, keyed by storage, layout and version
    (so F.detach() finds F's)."""

    def __init__(self):
        self.items = {}
        self.centred = {}

    @staticmethod
    def key(F: Tensor):
        return (F.data_ptr(), F.dtype, tuple(F.shape), tuple(F.stride()), F._version)

    def center(self, F: Tensor) -> Tensor:
        """F − 1μᵀ, one tensor per F during a call (so its decomposition is shared too)."""
        key = self.key(F)
        if key not in self.centred:
            self.centred[key] = (F, F - F.mean(-2, keepdim=True))
        return self.centred[key][1]

    def get(self, F: Tensor, k: int = 0):
        """(U, S, V) of F; k: the leading columns of U and V the caller will differentiate through."""
        key = self.key(F)
        if key not in self.items:
            m, n = F.shape[-2:]
            used = types.SimpleNamespace(k=0)
            U, S, V = _ThinSVD.apply(F.reshape(-1, m, n).to(work_dtype(F.dtype)), used)
            batch, r = F.shape[:-2], S.shape[-1]
            self.items[key] = (F, used, U.reshape(*batch, m, r), S.reshape(*batch, r), V.reshape(*batch, n, r))
        _, used, U, S, V = self.items[key]
        if torch.is_grad_enabled():
            used.k = max(used.k, k)
        return U, S, V


@contextlib.contextmanager
def _shared_spectra():
    old = getattr(_state, "spectra", None)
    _state.spectra = _Spectra()
    try:
        yield
    finally:
        _state.spectra = old


def _svd(F: Tensor, k: int, **kwargs):
    sp = getattr(_state, "spectra", None)
    if sp is None:
        return svd_topk(F, k, **kwargs)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= min(F.shape[-2:]):
        return svd_topk(F, k, **kwargs)  # raises the op's ValueError
    U, S, V = sp.get(F, k)
    return U[..., :k].to(F.dtype), S[..., :k].to(F.dtype), V[..., :k].to(F.dtype)


def _singular_values(F: Tensor) -> Tensor:
    sp = getattr(_state, "spectra", None)
    return singular_values(F) if sp is None else sp.get(F)[1].to(F.dtype)


def _center_rows(F: Tensor) -> Tensor:
    sp = getattr(_state, "spectra", None)
    return F - F.mean(-2, keepdim=True) if sp is None else sp.center(F)


def _spectral_enhance(F: Tensor, t: float, *, eps_strong=0.1, gamma_weak=0.3, gamma_noise=0.9, rho=0.5,
                      direction=None, generator=None, mode="full", return_details=False, center=False):
    """spectral_enhance (SPEC §4) from the shared decomposition: F' = s_n·F + U_k diag(c) V_kᵀ
    (of the centred features with center=True, whose mean rows are added back)."""
    sp = getattr(_state, "spectra", None)
    if sp is None:
        return spectral_enhance(F, t, eps_strong=eps_strong, gamma_weak=gamma_weak, gamma_noise=gamma_noise, rho=rho,
                                direction=direction, generator=generator, mode=mode, return_details=return_details,
                                center=center)
    F0, F = F, (sp.center(F) if center else F)
    batch, (m, n) = F.shape[:-2], F.shape[-2:]
    U, S, V = sp.get(F)
    r = S.shape[-1]
    w = S.dtype
    part = spectral_partition(S.detach(), m, n, center=center)
    if direction is not None:  # ξ exactly as the reference draws it
        xi = torch.sign(direction.detach()).to(device=F.device, dtype=w).expand(*batch, r)
    else:
        xi = (2.0 * torch.rand((*batch, r), generator=generator, dtype=torch.float32, device=F.device) - 1.0).to(w)
    n_strong, n_signal = part.n_strong.reshape(-1), (part.n_strong + part.n_weak).reshape(-1)
    k = int(n_signal.max())
    with torch.set_grad_enabled(torch.is_grad_enabled() and mode == "full"):
        sp.get(F, k)  # records that the top-k triplets carry a gradient
        Fw = F.reshape(-1, m, n).to(w)
        U3, S3, V3 = U.reshape(-1, m, r)[..., :k], S.reshape(-1, r)[:, :k], V.reshape(-1, n, r)[..., :k]
        # The coefficients from σ/c and ‖F/c‖² (c: the row's power-of-two scale): no overflow of σ²
        # or ‖F‖² at any scale; c (a constant) multiplies the top-k term back.
        sc = scaled_rows(Fw.detach())[2][:, None]
        nf2 = ((Fw / sc[..., None]) ** 2).sum((-2, -1))
        c, s_n, delta_k, _ = enhance_coefs(S3 / sc, nf2, n_strong, n_signal, xi.reshape(-1, r)[:, :k],
                                           _alpha(float(t)), eps_strong, gamma_weak, gamma_noise, rho)
        c, delta_k = c * sc, delta_k * sc
        out = torch.baddbmm(Fw * s_n[:, None, None], U3 * c.unsqueeze(-2), V3.mT)
    if mode == "augment":  # dF = dF' (Fw above was taken without gradient)
        out = F0.reshape(-1, m, n).to(w) + (out - Fw).detach()
    elif center:  # the mean rows 1μᵀ
        out = out + (F0 - F).reshape(-1, m, n).to(w)
    out = out.reshape(F.shape).to(F.dtype)
    if not return_details:
        return out
    with torch.no_grad():  # δ over all r values: the top-k part, then −(1 − s_n)·σ for the noise
        delta = -(1.0 - s_n).unsqueeze(-1) * S.reshape(-1, r)
        signal = torch.arange(k, device=F.device) < n_signal.unsqueeze(-1)
        delta[:, :k] = torch.where(signal, delta_k, delta[:, :k])
    return out, part, delta.reshape(*batch, r).to(F.dtype)


def _local_info_nce(z_a, z_b, all_a, all_b, offset, temperature=0.07, *, logit_scale=None):
    """reference.local_info_nce on the fused op (this rank's rows against the gathered columns)."""
    scale = logit_scale if logit_scale is not None else 1.0 / temperature
    if not isinstance(scale, Tensor):
        scale = torch.full((), float(scale), dtype=work_dtype(z_a.dtype), device=z_a.device)
    return local_info_nce(z_a, z_b, all_a, all_b, scale, offset)


FUSED_OPS = types.SimpleNamespace(**{
    **vars(ref.SDELoss.ops),
    "info_nce": info_nce,
    "local_info_nce": _local_info_nce,
    "hellinger": hellinger,
    "subspace_distance": subspace_distance,
    "svd": _svd,
    "singular_values": _singular_values,
    "spectral_partition": spectral_partition,
    "spectral_enhance": _spectral_enhance,
    "center_rows": _center_rows,
})


class SDELoss(ref.SDELoss):
    """SDE loss (SPEC §7) on the fused ops, a drop-in for open_clip's ``ClipLoss``:
    L = (1 − λ(t))·info_nce(F'_a, F'_b) + λ(t)·[hellinger(σ_a, σ_b) + subspace_distance(V_a,k, V_b,k)].

    ``SDELoss(total_steps=None, *, temperature=0.07, lambda_start=0.5, lambda_end=0.05, k_sub=None,
    power=1, weighted_subspace=False, direction="random", mode="full", gather=False,
    eps_strong=0.1, gamma_weak=0.3, gamma_noise=0.9, rho=0.5, generator=None,
    local_loss=False, gather_with_grad=False, cache_labels=False, rank=0, world_size=1,
    use_horovod=False)``, called as ``loss(image_features, text_features, logit_scale=None,
    logit_bias=None, output_dict=False, *, step=None)``: ClipLoss's constructor arguments and
    call, positional order included; extra keywords (a model's other outputs) are ignored.
    ``logit_scale`` is the already exponentiated scale (a tensor gets its gradient).
    t = set_progress(t)'s value, else step / total_steps with ``step`` given or counted over
    calls made with gradients enabled (the counter is in ``state_dict()``; under open_clip's
    accum_freq pass ``step=``). ``last_stats`` holds floats: t, alpha, lam, loss_inst,
    loss_spec and per modality (_a, _b) n_strong, n_weak, energy_strong, energy_weak,
    energy_noise. See sdekernels.reference.SDELoss for gathering, local_loss and ξ.
    gather=True under torch.distributed: features are all-gathered with gradient, so the
    spectrum, the partition and both terms are those of the global batch (the local
    features' gradient is then world_size × the single-process one, which DDP's gradient
    averaging turns into exactly the gradient of one process on the whole batch, as with
    open_clip's ``gather_with_grad``).
    """

    ops = FUSED_OPS

    def forward(self, image_features, text_features, logit_scale=None, logit_bias=None, output_dict=False, *,
                step=None, **model_outputs):
        check(image_features, "image_features", min_dim=2)
        check(text_features, "text_features", min_dim=2, like=image_features)
        # Under torch.autocast the loss runs in float32 (as its ops do), with autocast off.
        no_autocast, (image_features, text_features, logit_scale, logit_bias) = without_autocast(
            image_features.device.type, image_features, text_features, logit_scale, logit_bias)
        with _shared_spectra(), no_autocast:  # one decomposition per feature matrix for the whole call
            return super().forward(image_features, text_features, logit_scale, logit_bias, output_dict, step=step)
