"""The SDE loss (SPEC §7) on the fused ops: a drop-in replacement for open_clip's ``ClipLoss``.

The logic (curriculum, enhancement, the two loss terms, statistics, adversarial direction,
gathering) is the reference's (reference/contrastive.py); this module swaps the ops it calls
for the fused ones. Tests: python_tests/test_sde_loss.py, python_tests/test_distributed.py.

    # open_clip: loss = ClipLoss(...)  ->
    loss = sdekernels.nn.SDELoss(total_steps=len(loader) * epochs)
    total = loss(image_features, text_features, logit_scale.exp(), step=step)
"""
import types

from . import reference as ref
from .ops.contrastive import info_nce
from .ops.distances import hellinger, subspace_distance

FUSED_OPS = types.SimpleNamespace(**{
    **vars(ref.SDELoss.ops),
    "info_nce": info_nce,
    "hellinger": hellinger,
    "subspace_distance": subspace_distance,
})


class SDELoss(ref.SDELoss):
    """SDE loss (SPEC §7): L = (1 − λ(t))·info_nce(F'_a, F'_b) + λ(t)·[hellinger(σ_a, σ_b) + subspace_distance(V_a,k, V_b,k)].

    Called as ``loss(image_features, text_features, logit_scale=None, output_dict=False, step=None)``
    (open_clip's ``ClipLoss`` call plus ``step``; without ``step`` it counts calls), with
    t = step / total_steps. ``logit_scale`` is the already exponentiated scale (a tensor gets
    its gradient); without it the scale is 1/temperature. ``last_stats`` holds floats:
    t, alpha, lam, loss_inst, loss_spec and per modality (_a, _b) n_strong, n_weak,
    energy_strong, energy_weak, energy_noise.

    Constructor: ``SDELoss(total_steps, *, temperature=0.07, lambda_start=0.5, lambda_end=0.05,
    k_sub=None, power=1, weighted_subspace=False, direction="random", mode="full",
    gather=False, eps_strong=0.1, gamma_weak=0.3, gamma_noise=0.9, rho=0.5, generator=None)``.
    gather=True under torch.distributed: features are all-gathered with gradient, so the
    spectrum, the partition and both terms are those of the global batch (the local
    features' gradient is then world_size × the single-process one, which DDP's gradient
    averaging turns into exactly the gradient of one process on the whole batch, as with
    open_clip's ``gather_with_grad``).
    """

    ops = FUSED_OPS
