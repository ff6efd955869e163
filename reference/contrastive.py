"""Contrastive loss (SPEC §6) and the SDE loss (SPEC §7), in plain PyTorch."""
import types
from typing import Optional

import torch
import torch.nn.functional as Fn

from sdekernels.schedules import alpha as _alpha
from sdekernels.schedules import lam as _lam

from .distances import hellinger, subspace_distance
from .svd import singular_values, spectral_enhance, spectral_partition, svd_topk

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _work(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in _LOW_PRECISION else x


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def gather_batch(z: torch.Tensor) -> torch.Tensor:
    """All-gather z [..., B, d] over the process group along the batch dim, with gradient.

    Without an initialised process group, z is returned as is. The backward of
    ``torch.distributed.nn.functional.all_gather`` sums the gradients of all ranks, so when
    every rank computes the same global loss the local features receive world_size times the
    single-process gradient; DDP's gradient averaging turns that into exactly the gradient of
    one process on the whole batch (the convention of open_clip's ``gather_with_grad``).
    """
    if not _distributed() or torch.distributed.get_world_size() == 1:
        return z
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(z.contiguous()), dim=-2)


def info_nce(z_a, z_b, temperature=0.07, *, logit_scale=None, normalize=True, symmetric=True, gather=False):
    """InfoNCE of paired features z_a, z_b [..., B, d] with explicit B×B logits (SPEC §6).

    logits = s ẑ_a ẑ_bᵀ, s = logit_scale (a float, or a tensor through which the gradient
    flows; already exponentiated, as in open_clip) if given, else 1/temperature;
    ẑ = z/‖z‖ when normalize. L = ½[CE(logits, diag) + CE(logitsᵀ, diag)], or the first term
    alone when not symmetric; CE is averaged over the B rows (and any leading batch dims).
    gather=True with an initialised process group: the loss of the all-gathered batch.
    """
    if z_a.dim() < 2 or z_a.shape != z_b.shape:
        raise ValueError(f"z_a and z_b must have the same shape [..., B, d], got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    dtype = z_a.dtype
    a, b = _work(z_a), _work(z_b)
    if gather:
        a, b = gather_batch(a), gather_batch(b)
    if normalize:  # z/‖z‖ (0 at z = 0); F.normalize's eps is absolute, so rows are first divided by max|z|
        unit = lambda z: Fn.normalize(z / z.abs().amax(-1, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny), dim=-1)  # noqa: E731
        a, b = unit(a), unit(b)
    if logit_scale is None:
        scale = 1.0 / temperature
    elif isinstance(logit_scale, torch.Tensor):
        scale = _work(logit_scale)
    else:
        scale = float(logit_scale)
    logits = scale * (a @ b.mT)  # [..., B, B]
    B = logits.shape[-1]
    target = torch.arange(B, device=logits.device).expand(*logits.shape[:-1]).reshape(-1)
    loss = Fn.cross_entropy(logits.reshape(-1, B), target)
    if symmetric:
        loss = 0.5 * (loss + Fn.cross_entropy(logits.mT.reshape(-1, B), target))
    return loss.to(dtype)


class SDELoss(torch.nn.Module):
    """SDE loss (SPEC §7), called like open_clip's ``ClipLoss`` (plus ``step``).

    L = (1 − λ(t)) L_inst + λ(t) L_spec with
      L_inst = info_nce(F'_a, F'_b), F'_* = spectral_enhance(F_*, t) (rows = the batch),
      L_spec = hellinger(σ_a, σ_b) + subspace_distance(V_a,k, V_b,k),
      k = k_sub or min(n_strong_a + n_weak_a, n_strong_b + n_weak_b) (the minimum over any
      leading batch dims, so one k serves the whole call; clipped to min(B, d)).
    t = min(step / total_steps, 1). Without ``step`` the module counts its calls (the first
    call is step 0); a given ``step`` also resets that counter to step + 1.

    direction="random": ξ ~ uniform(−1, 1) from ``generator``. direction="adversarial":
    ξ = sign(∂L/∂σ'_i) of the previous step, where σ' = σ + δ are the singular values of F'
    and ∂L/∂σ'_i = u_iᵀ (∂L/∂F') v_i is read by a gradient hook on F' during that step's
    backward; until a backward has run (or when the batch shape changed) ξ is random.

    gather=True with an initialised process group: features are all-gathered with gradient
    first, so the spectrum, the partition and both losses are those of the global batch.

    The ops are reached through the class attribute ``ops`` so that a subclass can swap in
    fused implementations without copying the logic.
    """

    ops = types.SimpleNamespace(
        svd=svd_topk,
        singular_values=singular_values,
        spectral_partition=spectral_partition,
        spectral_enhance=spectral_enhance,
        info_nce=info_nce,
        hellinger=hellinger,
        subspace_distance=subspace_distance,
        gather=gather_batch,
    )

    def __init__(
        self,
        total_steps: int,
        *,
        temperature: float = 0.07,
        lambda_start: float = 0.5,
        lambda_end: float = 0.05,
        k_sub: Optional[int] = None,
        power: float = 1,
        weighted_subspace: bool = False,
        direction: str = "random",
        mode: str = "full",
        gather: bool = False,
        eps_strong: float = 0.1,
        gamma_weak: float = 0.3,
        gamma_noise: float = 0.9,
        rho: float = 0.5,
        generator: Optional[torch.Generator] = None,
    ):
        super().__init__()
        if int(total_steps) < 1:
            raise ValueError(f"total_steps must be a positive int, got {total_steps}")
        if direction not in ("random", "adversarial"):
            raise ValueError(f"direction must be 'random' or 'adversarial', got {direction!r}")
        if mode not in ("full", "augment"):
            raise ValueError(f"mode must be 'full' or 'augment', got {mode!r}")
        if k_sub is not None and int(k_sub) < 1:
            raise ValueError(f"k_sub must be a positive int or None, got {k_sub}")
        self.total_steps = int(total_steps)
        self.temperature = temperature
        self.lambda_start = lambda_start
        self.lambda_end = lambda_end
        self.k_sub = None if k_sub is None else int(k_sub)
        self.power = power
        self.weighted_subspace = weighted_subspace
        self.direction = direction
        self.mode = mode
        self.gather = gather
        self.eps_strong = eps_strong
        self.gamma_weak = gamma_weak
        self.gamma_noise = gamma_noise
        self.rho = rho
        self.generator = generator
        self.num_calls = 0
        self.last_stats = {}
        self._grad_sigma = {"a": None, "b": None}  # ∂L/∂σ' of the previous step (adversarial)

    # -- pieces a subclass may override -------------------------------------------------
    def progress(self, step: Optional[int]) -> float:
        if step is None:
            step = self.num_calls
        self.num_calls = int(step) + 1
        return min(max(float(step), 0.0) / self.total_steps, 1.0)

    def _direction(self, key: str, F: torch.Tensor) -> Optional[torch.Tensor]:
        if self.direction != "adversarial":
            return None
        g = self._grad_sigma[key]
        r = min(F.shape[-2], F.shape[-1])
        if g is None or g.shape != (*F.shape[:-2], r) or g.device != F.device:
            return None
        return g

    def _record_gradient(self, key: str, F: torch.Tensor, F_enh: torch.Tensor) -> None:
        """Hook on F' storing ∂L/∂σ'_i = u_iᵀ (∂L/∂F') v_i for the next step's direction."""
        if self.direction != "adversarial" or not F_enh.requires_grad:
            return
        r = min(F.shape[-2], F.shape[-1])
        with torch.no_grad():
            U, _, V = self.ops.svd(F.detach(), r)

        def hook(grad):
            with torch.no_grad():
                g = (U.to(grad.dtype) * (grad @ V.to(grad.dtype))).sum(-2)
            self._grad_sigma[key] = g.detach()

        F_enh.register_hook(hook)

    # -- the loss -------------------------------------------------------------------------
    def forward(self, image_features, text_features, logit_scale=None, output_dict=False, step=None):
        ops = self.ops
        t = self.progress(step)
        a_t = _alpha(t)
        lam_t = _lam(t, self.lambda_start, self.lambda_end)

        F_a, F_b = image_features, text_features
        if self.gather:
            F_a, F_b = ops.gather(F_a), ops.gather(F_b)
        m, n = F_a.shape[-2], F_a.shape[-1]
        r = min(m, n)

        # 1–2. spectra, partitions and enhanced features
        kw = dict(eps_strong=self.eps_strong, gamma_weak=self.gamma_weak, gamma_noise=self.gamma_noise,
                  rho=self.rho, generator=self.generator, mode=self.mode, return_details=True)
        E_a, part_a, _ = ops.spectral_enhance(F_a, t, direction=self._direction("a", F_a), **kw)
        E_b, part_b, _ = ops.spectral_enhance(F_b, t, direction=self._direction("b", F_b), **kw)
        self._record_gradient("a", F_a, E_a)
        self._record_gradient("b", F_b, E_b)

        # 3. instance term
        loss_inst = ops.info_nce(E_a, E_b, self.temperature, logit_scale=logit_scale)

        # 4. spectral term
        if self.k_sub is not None:
            k = min(self.k_sub, r)
        else:
            k_a = (part_a.n_strong + part_a.n_weak).min()
            k_b = (part_b.n_strong + part_b.n_weak).min()
            k = int(torch.minimum(k_a, k_b).item())
        S_a, S_b = ops.singular_values(F_a), ops.singular_values(F_b)
        _, Sk_a, V_a = ops.svd(F_a, k)
        _, Sk_b, V_b = ops.svd(F_b, k)
        loss_h = ops.hellinger(S_a, S_b, power=self.power)
        if self.weighted_subspace:
            loss_sub = ops.subspace_distance(V_a, V_b, S_a=Sk_a, S_b=Sk_b)
        else:
            loss_sub = ops.subspace_distance(V_a, V_b)
        loss_spec = (loss_h + loss_sub).mean()

        # 5. curriculum mix
        loss = (1.0 - lam_t) * loss_inst + lam_t * loss_spec

        stats = {"t": t, "alpha": a_t, "lam": lam_t,
                 "loss_inst": float(loss_inst.detach()), "loss_spec": float(loss_spec.detach())}
        for key, part in (("a", part_a), ("b", part_b)):
            stats[f"n_strong_{key}"] = float(part.n_strong.double().mean())
            stats[f"n_weak_{key}"] = float(part.n_weak.double().mean())
            for name, e in zip(("strong", "weak", "noise"), part.energy):
                stats[f"energy_{name}_{key}"] = float(e.double().mean())
        self.last_stats = stats

        if output_dict:
            return {"contrastive_loss": loss}
        return loss
