"""The SDE loss (SPEC §7) on the fused ops: a drop-in replacement for open_clip's ``ClipLoss``.

The logic (curriculum, enhancement, the two loss terms, statistics, adversarial direction,
gathering) is the reference's (reference/contrastive.py); this module swaps the ops it calls.
One structural change: the reference decomposes each feature matrix three times per call (in
spectral_enhance, singular_values and svd_topk, each a full SVD with its own backward). Here,
during a call, those three ops read ONE decomposition per feature matrix (the spectral core's
SharedSpectra, ops/_spectral.py: a Decomposition from the float64 Gram of the short side and one
eigh, with the exact gradient of svd_topk's Gram path) and the enhancement is
s_n·F + U_k diag(c) V_kᵀ from its top-k triplets (SPEC §4). Outside a call the ops are the fused
public ones.
Tests: python_tests/test_sde_loss.py, python_tests/test_distributed.py.

    # open_clip: loss = ClipLoss(local_loss=..., gather_with_grad=..., rank=..., world_size=...)  ->
    loss = sdekernels.nn.SDELoss(total_steps, local_loss=..., gather_with_grad=..., rank=..., world_size=...)
    total = loss(image_features, text_features, logit_scale.exp(), step=step)
"""
import types

import torch
from torch import Tensor

from . import reference as ref
from ._core import check, without_autocast, work_dtype
from .ops._spectral import current_spectra, enhance_coefs, scaled_rows, shared_spectra
from .ops.contrastive import info_nce, local_info_nce
from .ops.distances import hellinger, subspace_distance
from .ops.enhance import spectral_enhance
from .ops.svd import singular_values, spectral_partition, svd_topk
from .schedules import alpha as _alpha


def _svd(F: Tensor, k: int, **kwargs):
    sp = current_spectra()
    if sp is None:
        return svd_topk(F, k, **kwargs)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= min(F.shape[-2:]):
        return svd_topk(F, k, **kwargs)  # raises the op's ValueError
    d = sp.get(F)
    return d.U[..., :k].to(F.dtype), d.S[..., :k].to(F.dtype), d.V[..., :k].to(F.dtype)


def _singular_values(F: Tensor) -> Tensor:
    sp = current_spectra()
    return singular_values(F) if sp is None else sp.get(F).S.to(F.dtype)


def _center_rows(F: Tensor) -> Tensor:
    sp = current_spectra()
    return F - F.mean(-2, keepdim=True) if sp is None else sp.center(F)


def _spectral_enhance(F: Tensor, t: float, *, eps_strong=0.1, gamma_weak=0.3, gamma_noise=0.9, rho=0.5,
                      direction=None, generator=None, mode="full", return_details=False, center=False):
    """spectral_enhance (SPEC §4) from the shared decomposition: F' = s_n·F + U_k diag(c) V_kᵀ
    (of the centred features with center=True, whose mean rows are added back)."""
    sp = current_spectra()
    if sp is None:
        return spectral_enhance(F, t, eps_strong=eps_strong, gamma_weak=gamma_weak, gamma_noise=gamma_noise, rho=rho,
                                direction=direction, generator=generator, mode=mode, return_details=return_details,
                                center=center)
    F0, F = F, (sp.center(F) if center else F)
    batch, (m, n) = F.shape[:-2], F.shape[-2:]
    d = sp.get(F)
    U, S, V = d.U, d.S, d.V
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
        with shared_spectra(), no_autocast:  # one decomposition per feature matrix for the whole call
            return super().forward(image_features, text_features, logit_scale, logit_bias, output_dict, step=step)
