"""Contrastive loss (SPEC §6) and the SDE loss (SPEC §7), in plain PyTorch."""
import math
import types
from typing import Optional

import torch
import torch.nn.functional as Fn

from .distances import hellinger, subspace_distance
from .schedules import alpha as _alpha
from .schedules import lam as _lam
from .svd import singular_values, spectral_enhance, spectral_partition, svd_topk

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _work(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in _LOW_PRECISION else x


def check_int(v, name: str, lo: int) -> int:
    """v as an int >= lo: TypeError for a non-integer (a bool or 2.0 too), ValueError naming `name` below lo."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {v!r}")
    if v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v}")
    return v


def check_real(v, name: str, lo: float, hi: float = math.inf, *, open_lo: bool = False) -> float:
    """v as a float in [lo, hi] ((lo, hi] when open_lo); else a ValueError naming `name`."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi
    if not ok or (open_lo and v == lo):
        raise ValueError(f"{name} must be a finite number in {'(' if open_lo else '['}{lo}, {hi}], got {v!r}")
    return float(v)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _sizes(z: torch.Tensor) -> list:
    """z.shape[-2] of every rank, in rank order."""
    n = torch.tensor([z.shape[-2]], device=z.device)
    out = n.new_empty(torch.distributed.get_world_size())
    torch.distributed.all_gather_single(out, n)
    return out.tolist()


def gather_batch(z: torch.Tensor, with_grad: bool = True) -> torch.Tensor:
    """All-gather z [..., B, d] over the process group along the batch dim (the ranks' B may differ).

    Without an initialised process group, z is returned as is. with_grad: through the functional
    collectives' all_gather_single_autograd, whose backward sums the gradients of all ranks, so
    when every rank computes the same global loss the local features receive world_size times
    the single-process gradient; DDP's gradient averaging turns that into exactly the gradient of
    one process on the whole batch (the convention of open_clip's ``gather_with_grad``).
    with_grad=False: gathered without gradient except this rank's own slot, which is z itself
    (open_clip's ``gather_with_grad=False``).
    """
    if not _distributed() or torch.distributed.get_world_size() == 1:
        return z
    sizes = _sizes(z)
    top = max(sizes)
    x = z.movedim(-2, 0)
    x = torch.cat([x, x.new_zeros((top - x.shape[0], *x.shape[1:]))]).contiguous()  # equal blocks for the collective
    if with_grad:
        from torch.distributed._functional_collectives import all_gather_single_autograd

        slots = all_gather_single_autograd(x, 0, torch.distributed.group.WORLD)
    else:
        slots = x.new_empty((len(sizes) * top, *x.shape[1:]))
        torch.distributed.all_gather_single(slots, x.detach())
    parts = [slots[q * top:q * top + n].movedim(0, -2) for q, n in enumerate(sizes)]
    if not with_grad:
        parts[torch.distributed.get_rank()] = z
    return torch.cat(parts, dim=-2)


def rank_offset(z: torch.Tensor) -> int:
    """Label offset of this rank's rows z [..., B, d] in the gathered batch (0 without a process group)."""
    if not _distributed() or torch.distributed.get_world_size() == 1:
        return 0
    return sum(_sizes(z)[:torch.distributed.get_rank()])


def _pair(z_a, z_b, normalize: bool, gather: bool):
    """Checked paired features [..., B, d] in the work dtype, all-gathered and L2-normalised on request:
    z/‖z‖ (0 at z = 0); F.normalize's eps is absolute, so rows are first divided by max|z|."""
    if z_a.dim() < 2 or z_a.shape != z_b.shape:
        raise ValueError(f"z_a and z_b must have the same shape [..., B, d], "
                         f"got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    a, b = _work(z_a), _work(z_b)
    if gather:
        a, b = gather_batch(a), gather_batch(b)
    if normalize:
        a, b = _unit(a), _unit(b)
    return a, b


def _unit(z):
    """z/‖z‖ (0 at z = 0); F.normalize's eps is absolute, so rows are first divided by max|z|."""
    return Fn.normalize(z / z.abs().amax(-1, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny), dim=-1)


def _candidates(z_b, negatives):
    """The columns z_b [..., B, d] followed by the hard negatives: [..., B, K, d] (K per row) or [..., N, d]."""
    if negatives is None:
        return z_b
    neg = negatives.reshape(*z_b.shape[:-2], -1, z_b.shape[-1]) if negatives.dim() == z_b.dim() + 1 else negatives
    return torch.cat([z_b, neg], dim=-2)


def contrast_masks(n_rows, n_pair, n_cols, offset=0, row_labels=None, col_labels=None, mask_duplicates=False,
                   device=None):
    """(pos, keep) [n_rows, n_cols] booleans of SPEC §6: row i's positives and its candidates.

    Without labels pos = {j = i + offset}. With labels (row_labels [n_rows], col_labels [n_pair]
    for the paired columns; the n_cols − n_pair hard negatives have none), the paired columns of
    equal label: positives (pos = same, keep = all), or with mask_duplicates the own pair stays the
    only positive and the other equal-labelled columns leave the candidates (keep = ¬same ∨ own).
    """
    own = torch.zeros(n_rows, n_cols, dtype=torch.bool, device=device)
    own[torch.arange(n_rows, device=device), torch.arange(n_rows, device=device) + offset] = True
    if row_labels is None:
        return own, torch.ones_like(own)
    same = torch.zeros_like(own)
    same[:, :n_pair] = row_labels.reshape(-1, 1) == col_labels.reshape(1, -1)
    if mask_duplicates:
        return own, ~same | own
    return same | own, torch.ones_like(own)


def _ce(logits, pos, keep):
    """Mean over rows of lse_{keep} − lse_{pos} (the −log of the softmax mass on the positives)."""
    ninf = torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device)
    lse_keep = torch.logsumexp(torch.where(keep, logits, ninf), -1)
    lse_pos = torch.logsumexp(torch.where(pos, logits, ninf), -1)
    return (lse_keep - lse_pos).mean()


def info_nce(z_a, z_b, temperature=0.07, *, logit_scale=None, normalize=True, symmetric=True, gather=False,
             negatives=None, labels=None, mask_duplicates=False):
    """InfoNCE of paired features z_a, z_b [..., B, d] with explicit logits (SPEC §6).

    logits = s ẑ_a ẑ_cᵀ, s = logit_scale (a float, or a tensor through which the gradient
    flows; already exponentiated, as in open_clip) if given, else 1/temperature;
    ẑ = z/‖z‖ when normalize; the candidates c are z_b followed by the hard negatives
    (``negatives`` [..., B, K, d] or [..., N, d]). Row i: CE over its candidates with target
    column i; the symmetric term: z_b's row j against the B rows of z_a (the negatives are never
    queries). L = ½[CE_rows + CE_cols], or the first term alone when not symmetric; each CE is
    averaged over the B rows (and any leading batch dims). ``labels`` [..., B]: rows of equal
    label are positives of each other on both sides, CE = −log Σ_{positives} softmax; with
    mask_duplicates the own pair stays the target and the other equal-labelled columns are
    removed from the candidates instead. gather=True with an initialised process group: the
    loss of the all-gathered batch (negatives and labels gathered too).
    """
    dtype = z_a.dtype
    a, b = _pair(z_a, z_b, normalize, gather)
    cols = b
    if negatives is not None:
        neg = _candidates(_work(z_b), _work(negatives))[..., z_b.shape[-2]:, :]
        if gather:
            neg = gather_batch(neg)
        if normalize:
            neg = _unit(neg)
        cols = torch.cat([b, neg], dim=-2)
    if logit_scale is None:
        scale = 1.0 / temperature
    elif isinstance(logit_scale, torch.Tensor):
        scale = _work(logit_scale)
    else:
        scale = float(logit_scale)
    logits = scale * (a @ cols.mT)  # [..., B, B + N]
    B, n_cols = logits.shape[-2], logits.shape[-1]
    if labels is not None and gather:
        labels = gather_batch(labels.unsqueeze(-1), with_grad=False).squeeze(-1)
    lab = None if labels is None else labels.reshape(-1, B)
    rows = logits.reshape(-1, B, n_cols)
    loss_r, loss_c = 0.0, 0.0
    for r in range(rows.shape[0]):
        y = None if lab is None else lab[r if lab.shape[0] > 1 else 0]
        pos, keep = contrast_masks(B, B, n_cols, 0, y, y, mask_duplicates, logits.device)
        loss_r = loss_r + _ce(rows[r], pos, keep)
        if symmetric:
            loss_c = loss_c + _ce(rows[r, :, :B].mT, pos[:, :B].mT, keep[:, :B].mT)
    n = rows.shape[0]
    loss = 0.5 * (loss_r + loss_c) / n if symmetric else loss_r / n
    return loss.to(dtype)


def local_info_nce(z_a, z_b, all_a, all_b, offset, temperature=0.07, *, logit_scale=None, normalize=True,
                   symmetric=True):
    """open_clip's ClipLoss(local_loss=True) with explicit logits: this rank's rows z_a [..., b, d]
    against the gathered columns all_b [..., B, d] (the label of row i is column offset + i), and
    z_b against all_a; each cross-entropy a mean over the b local rows."""
    dtype = z_a.dtype
    a, b, A, Bc = (_work(t) for t in (z_a, z_b, all_a, all_b))
    if normalize:
        a, b, A, Bc = (Fn.normalize(t, dim=-1) for t in (a, b, A, Bc))
    s = 1.0 / temperature if logit_scale is None else (
        _work(logit_scale) if isinstance(logit_scale, torch.Tensor) else float(logit_scale))
    n = a.shape[-2]
    target = (torch.arange(n, device=a.device) + offset).expand(*a.shape[:-2], n).reshape(-1)

    def ce(x, y):
        logits = s * (x @ y.mT)
        return Fn.cross_entropy(logits.reshape(-1, logits.shape[-1]), target)

    loss = ce(a, Bc)
    if symmetric:
        loss = 0.5 * (loss + ce(b, A))
    return loss.to(dtype)


def siglip_loss(z_a, z_b, logit_scale, logit_bias, *, normalize=True, gather=False, negatives=None):
    """Sigmoid contrastive loss of paired features z_a, z_b [..., B, d] with explicit logits (SPEC §6).

    L = s ẑ_a ẑ_cᵀ + b over the candidates c (z_b, then the hard negatives: [..., B, K, d] or
    [..., N, d]), y = +1 at the own pair, −1 elsewhere; returns −Σ_ij log σ(y_ij L_ij) / B
    (open_clip's SigLipLoss), averaged over any leading batch dims; s and b floats or tensors
    (gradients flow through them). gather=True with an initialised process group: the loss of the
    all-gathered batch.
    """
    a, b = _pair(z_a, z_b, normalize, gather)
    if negatives is not None:
        neg = _candidates(_work(z_b), _work(negatives))[..., z_b.shape[-2]:, :]
        if gather:
            neg = gather_batch(neg)
        b = torch.cat([b, _unit(neg) if normalize else neg], dim=-2)
    dtype = z_a.dtype
    s = _work(logit_scale) if isinstance(logit_scale, torch.Tensor) else float(logit_scale)
    bias = _work(logit_bias) if isinstance(logit_bias, torch.Tensor) else float(logit_bias)
    logits = s * (a @ b.mT) + bias
    B = logits.shape[-2]
    labels = 2 * torch.eye(B, logits.shape[-1], dtype=logits.dtype, device=logits.device) - 1
    return (-Fn.logsigmoid(labels * logits).sum((-2, -1)) / B).mean().to(dtype)


class SDELoss(torch.nn.Module):
    """SDE loss (SPEC §7), a drop-in for open_clip's ``ClipLoss``.

    L = (1 − λ(t)) L_inst + λ(t) L_spec with
      L_inst = info_nce(F'_a, F'_b), F'_* = spectral_enhance(F_*, t) (rows = the batch),
      L_spec = hellinger(σ_a, σ_b) + subspace_distance(V_a,k, V_b,k),
      k = k_sub or min(n_strong_a + n_weak_a, n_strong_b + n_weak_b) (the minimum over any
      leading batch dims, so one k serves the whole call; clipped to min(B, d)).

    Call: ``loss(image_features, text_features, logit_scale=None, logit_bias=None,
    output_dict=False, *, step=None)``, ClipLoss's call and positional order; other keywords
    (the rest of a model's output dict) are ignored, so ``loss(**model_out)`` works. logit_bias
    shifts every logit alike, which leaves the cross-entropies unchanged (as in ClipLoss: its
    gradient is 0). Without a scale the logits use 1/temperature.

    Progress t: ``set_progress(t)`` fixes it (until ``set_progress(None)``); else t =
    min(step / total_steps, 1) with ``step`` given or, without it, counted: the number of earlier
    calls made with gradients enabled (evaluation under no_grad does not advance it). Under
    open_clip's ``accum_freq`` the loss is called accum_freq times per optimizer step: pass
    ``step=`` (the optimizer step), or count calls with total_steps = accum_freq × optimizer
    steps. The counter, the progress and the agreed seed are in ``state_dict()``, so a resumed
    run continues its curriculum. A call that can resolve no t (no total_steps, no progress set)
    is a ValueError.

    direction="random": ξ ~ uniform(−1, 1) from ``generator``, or without one from a seed agreed
    once across ranks (broadcast from rank 0 at first use) combined with the step, so every
    rank draws the same ξ. direction="adversarial": ξ = sign(∂L/∂σ'_i) of the previous step,
    where σ' = σ + δ are the singular values of F' and ∂L/∂σ'_i = u_iᵀ (∂L/∂F') v_i is read by a
    gradient hook on F' during that step's backward; until a backward has run (or when the
    batch shape changed) ξ is random.

    Gathering (gather=True, or ClipLoss's world_size > 1, with an initialised process group):
    features are all-gathered first, so the spectrum, the partition and both losses are those of
    the global batch; with gradient when gather=True or gather_with_grad=True, else
    open_clip's no-gradient gather (this rank's slot live). local_loss=True: the instance term
    takes this rank's rows against the gathered columns (ClipLoss(local_loss=True)); the spectral
    term stays global. cache_labels and rank are accepted for ClipLoss compatibility (no labels
    are materialised; the rank is the process group's).

    center=True: partition, enhancement and both spectral terms act on the row-centred features
    F − 1μᵀ (μ the batch mean), whose spectrum is not dominated by the shared mean direction; the
    instance term sees F' = 1μᵀ + (F − 1μᵀ)'. spectral_terms: which terms make up L_spec (both
    by default; fewer for ablations).

    The ops are reached through the class attribute ``ops`` so that a subclass can swap in
    fused implementations without copying the logic.
    """

    ops = types.SimpleNamespace(
        svd=svd_topk,
        singular_values=singular_values,
        spectral_partition=spectral_partition,
        spectral_enhance=spectral_enhance,
        info_nce=info_nce,
        local_info_nce=local_info_nce,
        hellinger=hellinger,
        subspace_distance=subspace_distance,
        gather=gather_batch,
        center_rows=lambda F: F - F.mean(-2, keepdim=True),
    )

    def __init__(
        self,
        total_steps: Optional[int] = None,
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
        local_loss: bool = False,
        gather_with_grad: bool = False,
        cache_labels: bool = False,
        rank: int = 0,
        world_size: int = 1,
        use_horovod: bool = False,
        center: bool = False,
        spectral_terms: tuple = ("hellinger", "subspace"),
    ):
        super().__init__()
        if total_steps is not None:
            total_steps = check_int(total_steps, "total_steps", 1)
        temperature = check_real(temperature, "temperature", 0.0, open_lo=True)
        power = check_real(power, "power", 0.0, open_lo=True)
        lambda_start, lambda_end = (check_real(v, name, 0.0, 1.0) for v, name in
                                    ((lambda_start, "lambda_start"), (lambda_end, "lambda_end")))
        eps_strong, gamma_weak, gamma_noise, rho = (check_real(v, name, 0.0) for v, name in (
            (eps_strong, "eps_strong"), (gamma_weak, "gamma_weak"), (gamma_noise, "gamma_noise"), (rho, "rho")))
        if direction not in ("random", "adversarial"):
            raise ValueError(f"direction must be 'random' or 'adversarial', got {direction!r}")
        if mode not in ("full", "augment"):
            raise ValueError(f"mode must be 'full' or 'augment', got {mode!r}")
        if k_sub is not None:
            k_sub = check_int(k_sub, "k_sub", 1)
        if use_horovod:
            raise ValueError("use_horovod=True is not supported: SDELoss gathers with torch.distributed")
        if int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
            raise ValueError(f"rank must be in [0, world_size) and world_size >= 1, got rank={rank}, "
                             f"world_size={world_size}")
        self.total_steps = None if total_steps is None else int(total_steps)
        self.temperature = temperature
        self.lambda_start = lambda_start
        self.lambda_end = lambda_end
        self.k_sub = None if k_sub is None else int(k_sub)
        self.power = power
        self.weighted_subspace = weighted_subspace
        self.direction = direction
        self.mode = mode
        self.gather = bool(gather) or int(world_size) > 1
        self.gather_with_grad = bool(gather) or bool(gather_with_grad)
        self.local_loss = bool(local_loss)
        self.cache_labels, self.rank, self.world_size = cache_labels, int(rank), int(world_size)
        self.eps_strong = eps_strong
        self.gamma_weak = gamma_weak
        self.gamma_noise = gamma_noise
        self.rho = rho
        self.generator = generator
        if not isinstance(center, bool):
            raise TypeError(f"center must be a bool, got {type(center).__name__}")
        self.center = center
        spectral_terms = tuple(spectral_terms)
        if not set(spectral_terms) <= {"hellinger", "subspace"}:
            raise ValueError(f"spectral_terms must be a subset of ('hellinger', 'subspace'), got {spectral_terms!r}")
        self.spectral_terms = spectral_terms
        self.num_calls = 0
        self.fixed_progress: Optional[float] = None
        self.seed: Optional[int] = None  # of ξ without a generator, agreed across ranks at first use
        self.last_stats = {}
        self._grad_sigma = {"a": None, "b": None}  # ∂L/∂σ' of the previous step (adversarial)

    # -- curriculum state ---------------------------------------------------------------------
    def set_progress(self, t: Optional[float]) -> None:
        """Fix the progress t ∈ [0, 1] (None: count steps again)."""
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 1.0):
            raise ValueError(f"t must be a number in [0, 1] or None, got {t!r}")
        self.fixed_progress = t if t is None else float(t)

    def get_extra_state(self):
        return dict(num_calls=self.num_calls, fixed_progress=self.fixed_progress, seed=self.seed)

    def set_extra_state(self, state):
        self.num_calls, self.fixed_progress, self.seed = (int(state["num_calls"]), state.get("fixed_progress"),
                                                          state.get("seed"))

    # -- pieces a subclass may override -------------------------------------------------
    def progress(self, step: Optional[int]) -> tuple[float, int]:
        """(t, step): t is the fixed progress, else min(step / total_steps, 1); step defaults to the
        number of earlier calls made with gradients, which this call then counts."""
        if step is not None and (isinstance(step, bool) or int(step) != step or step < 0):
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        step = self.num_calls if step is None else int(step)
        if torch.is_grad_enabled():
            self.num_calls = step + 1
        if self.fixed_progress is None and self.total_steps is None:
            raise ValueError("SDELoss has no total_steps: construct it with total_steps=..., "
                             "or set the progress with set_progress(t) before the call")
        t = self.fixed_progress if self.fixed_progress is not None else min(step / self.total_steps, 1.0)
        return t, step

    def _generator(self, F: torch.Tensor, step: int) -> torch.Generator:
        """The user's generator, or one seeded from the agreed seed and the step (the same ξ on every rank)."""
        if self.generator is not None:
            return self.generator
        if self.seed is None:
            seed = torch.randint(0, 2**62, (1,), dtype=torch.int64).to(F.device)
            if _distributed() and torch.distributed.get_world_size() > 1:
                torch.distributed.broadcast(seed, src=0)
            self.seed = int(seed)
        return torch.Generator(device=F.device).manual_seed((self.seed + 0x9E3779B97F4A7C15 * (step + 1)) % 2**63)

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
    def forward(self, image_features, text_features, logit_scale=None, logit_bias=None, output_dict=False, *,
                step=None, **model_outputs):
        ops = self.ops
        t, step = self.progress(step)
        a_t = _alpha(t)
        lam_t = _lam(t, self.lambda_start, self.lambda_end)

        F_a, F_b = image_features, text_features
        if self.gather:
            F_a, F_b = ops.gather(F_a, self.gather_with_grad), ops.gather(F_b, self.gather_with_grad)
        m, n = F_a.shape[-2], F_a.shape[-1]
        r = min(m, n)

        # 1–2. spectra, partitions and enhanced features
        # center=True: every spectral quantity is that of the row-centred features X = F − 1μᵀ
        X_a, X_b = (ops.center_rows(F_a), ops.center_rows(F_b)) if self.center else (F_a, F_b)
        kw = dict(eps_strong=self.eps_strong, gamma_weak=self.gamma_weak, gamma_noise=self.gamma_noise,
                  rho=self.rho, generator=self._generator(F_a, step), mode=self.mode, return_details=True)
        if self.center:
            kw["center"] = True
        E_a, part_a, _ = ops.spectral_enhance(F_a, t, direction=self._direction("a", F_a), **kw)
        E_b, part_b, _ = ops.spectral_enhance(F_b, t, direction=self._direction("b", F_b), **kw)
        self._record_gradient("a", X_a, E_a)
        self._record_gradient("b", X_b, E_b)

        # 3. instance term (local: this rank's rows against the gathered columns)
        if self.local_loss:  # without a process group: offset 0, every row (the global loss)
            b, off = image_features.shape[-2], rank_offset(image_features)
            cols_a, cols_b = E_a, E_b
            if not self.gather_with_grad and _distributed():  # open_clip: then every column is a constant
                cols_a, cols_b = E_a.detach(), E_b.detach()
            loss_inst = ops.local_info_nce(E_a[..., off:off + b, :], E_b[..., off:off + b, :], cols_a, cols_b, off,
                                           self.temperature, logit_scale=logit_scale)
        else:
            loss_inst = ops.info_nce(E_a, E_b, self.temperature, logit_scale=logit_scale)
        if isinstance(logit_bias, torch.Tensor) and logit_bias.requires_grad:
            loss_inst = loss_inst + 0.0 * logit_bias.sum()  # a constant shift: gradient 0, as in ClipLoss

        # 4. spectral term
        if self.k_sub is not None:
            k = min(self.k_sub, r)
        else:
            k_a = (part_a.n_strong + part_a.n_weak).min()
            k_b = (part_b.n_strong + part_b.n_weak).min()
            k = int(torch.minimum(k_a, k_b).item())
        loss_spec = F_a.new_zeros(())
        if "hellinger" in self.spectral_terms:
            S_a, S_b = ops.singular_values(X_a), ops.singular_values(X_b)
            loss_spec = loss_spec + ops.hellinger(S_a, S_b, power=self.power).mean()
        if "subspace" in self.spectral_terms:
            _, Sk_a, V_a = ops.svd(X_a, k)
            _, Sk_b, V_b = ops.svd(X_b, k)
            subspace = dict(S_a=Sk_a, S_b=Sk_b) if self.weighted_subspace else {}
            loss_spec = loss_spec + ops.subspace_distance(V_a, V_b, **subspace).mean()

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
