"""The SDE loss (SPEC §7): a drop-in replacement for open_clip's ``ClipLoss``.

The whole loss is here: curriculum, partition, enhancement, the two terms, statistics, ξ,
gathering and the state a resumed run needs. It calls a small backend through a visible handle:
each feature matrix X is decomposed once (``d = backend.decompose(X)``), and the partition, the
enhancement and both spectral terms read that one decomposition. Backends: "fused" (one
eigendecomposition of the float64 Gram of the short side, with the exact SVD gradient; custom ops,
so the loss traces under torch.compile with fullgraph=True) and "linalg" (plain
``torch.linalg.svd`` and autograd). The pure-PyTorch statement of SPEC §7 is reference.SDELoss,
written separately; python_tests/test_sde_loss.py compares the two.

    # open_clip: loss = ClipLoss(local_loss=..., gather_with_grad=..., rank=..., world_size=...)  ->
    loss = sdekernels.nn.SDELoss(total_steps, local_loss=..., gather_with_grad=..., rank=..., world_size=...)
    total = loss(image_features, text_features, logit_scale.exp(), step=step)
"""
import types
from typing import Optional

import torch
from torch import Tensor

from ._core import check, check_int, check_real, without_autocast, work_dtype
from .dist import batch_sizes, check_gather, world
from .ops._partition import draw_xi, seeded_xi
from .ops._scaling import safe_inv
from .ops._solvers import eigh_desc
from .ops.contrastive import gather_batch, info_nce, local_info_nce, rank_offset
from .ops.distances import hellinger, subspace_distance
from .ops.enhance import enhance_decomposed
from .ops.svd import Decomposition, decompose, spectral_partition
from .schedules import alpha as _alpha
from .schedules import lam as _lam

__all__ = ["SDELoss", "BACKENDS"]


def _linalg_decompose(X: Tensor) -> Decomposition:
    Xw = X.to(work_dtype(X.dtype))
    U, S, Vh = torch.linalg.svd(Xw, full_matrices=False)
    return Decomposition(U, S, Vh.mT)


# The operations SDELoss needs, by name; each backend decomposes, every other op reads its factors.
BACKENDS = {
    "fused": types.SimpleNamespace(name="fused", decompose=decompose, partition=spectral_partition,
                                   enhance=enhance_decomposed),
    "linalg": types.SimpleNamespace(name="linalg", decompose=_linalg_decompose, partition=spectral_partition,
                                    enhance=enhance_decomposed),
}


class _AllReduce(torch.autograd.Function):
    """The sum of x over the ranks. Backward: every rank's loss reads the sum, so a rank's share
    receives the sum of the ranks' gradients (live=True: gather_with_grad's convention), or only
    its own rank's (live=False: the other ranks' shares are constants there)."""

    @staticmethod
    def forward(ctx, x: Tensor, live: bool) -> Tensor:
        ctx.live = live
        y = x.clone(memory_format=torch.contiguous_format)
        torch.distributed.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, g: Tensor):
        if ctx.live:
            g = g.clone(memory_format=torch.contiguous_format)
            torch.distributed.all_reduce(g)
        return g, None


def _all_reduced(parts: list, live: bool) -> list:
    """Each tensor of `parts` summed over the ranks, in one all-reduce (one collective, so its backward
    cannot be reordered against another's on some rank)."""
    flat = _AllReduce.apply(torch.cat([t.reshape(-1) for t in parts]), live)
    return [v.reshape(t.shape) for v, t in zip(flat.split([t.numel() for t in parts]), parts)]


def _global_spectra(X: dict, live: bool):
    """({key: Decomposition}, {key: ‖X‖²}, the all-reduced sums) of the rows of each X [..., b, d] of
    every rank stacked, without gathering them: σ and V from the eigendecomposition of the all-reduced
    float64 Gram Σ_r X_rᵀX_r [..., d, d], this rank's rows of U = X V diag(1/σ). Needs at least d rows
    over all ranks (else σ has fewer than d values)."""
    Xd = {key: x.double() for key, x in X.items()}
    sums = _all_reduced([x.mT @ x for x in Xd.values()] + [x.square().sum((-2, -1)) for x in Xd.values()], live)
    d, energy = {}, {}
    for (key, x), G, e in zip(Xd.items(), sums, sums[len(X):]):
        lam, V = eigh_desc(G)
        S = lam.sqrt()
        U = (x @ V) * safe_inv(S, S[..., :1]).unsqueeze(-2)
        w = work_dtype(X[key].dtype)
        d[key], energy[key] = Decomposition(U.to(w), S.to(w), V.to(w)), e
    return d, energy, sums


def _local_info_nce(z_a, z_b, all_a, all_b, offset, temperature, logit_scale):
    """This rank's rows against the gathered columns (open_clip's ClipLoss(local_loss=True))."""
    scale = logit_scale if logit_scale is not None else 1.0 / temperature
    if not isinstance(scale, Tensor):
        scale = torch.full((), float(scale), dtype=work_dtype(z_a.dtype), device=z_a.device)
    return local_info_nce(z_a, z_b, all_a, all_b, scale, offset)


class SDELoss(torch.nn.Module):
    """SDE loss (SPEC §7), a drop-in for open_clip's ``ClipLoss``:
    L = (1 − λ(t))·info_nce(F'_a, F'_b) + λ(t)·[hellinger(σ_a, σ_b) + subspace_distance(V_a,k, V_b,k)],
    F'_* = spectral_enhance(F_*, t) (rows = the batch), k = k_sub or min(n_strong_a + n_weak_a,
    n_strong_b + n_weak_b) (the minimum over any leading batch dims; clipped to min(B, d)).

    ``SDELoss(total_steps=None, *, temperature=0.07, lambda_start=0.5, lambda_end=0.05, k_sub=None,
    power=1, weighted_subspace=False, direction="random", mode="full", gather=False,
    eps_strong=0.1, gamma_weak=0.3, gamma_noise=0.9, rho=0.5, generator=None,
    local_loss=False, gather_with_grad=False, cache_labels=False, rank=0, world_size=1,
    use_horovod=False, center=False, spectral_terms=("hellinger", "subspace"), backend="fused")``,
    called as ``loss(image_features, text_features, logit_scale=None, logit_bias=None,
    output_dict=False, *, step=None)``: ClipLoss's constructor arguments and call, positional order
    included; extra keywords (a model's other outputs) are ignored, so ``loss(**model_out)`` works.
    ``logit_scale`` is the already exponentiated scale (a tensor gets its gradient); without one the
    logits use 1/temperature. logit_bias shifts every logit alike (gradient 0, as in ClipLoss).

    Progress t: ``set_progress(t)`` fixes it (until ``set_progress(None)``); else t =
    min(step / total_steps, 1) with ``step`` given or counted over earlier calls made with gradients
    enabled (under open_clip's accum_freq pass ``step=``). The counter, the progress and the agreed
    seed are in ``state_dict()``. A call that can resolve no t is a ValueError. ``last_stats`` holds
    floats: t, alpha, lam, loss_inst, loss_spec and per modality (_a, _b) n_strong, n_weak,
    energy_strong, energy_weak, energy_noise.

    direction="random": ξ ~ uniform(−1, 1) from ``generator``, or without one from a seed agreed once
    across ranks (broadcast from rank 0 at first use) combined with the step, so every rank draws the
    same ξ. direction="adversarial": ξ = sign(∂L/∂σ'_i) of the previous step (σ' = σ + δ, the singular
    values of F'; ∂L/∂σ'_i = u_iᵀ(∂L/∂F')v_i, read by a gradient hook on F'); random until a backward
    has run or when the batch shape changed.

    Gathering (gather=True, or world_size > 1, under torch.distributed): features are all-gathered
    first, so the spectrum, the partition and both terms are those of the global batch; with gradient
    when gather=True or gather_with_grad=True (the local features' gradient is then world_size × the
    one-process gradient, which DDP's averaging turns into that of one process on the whole batch),
    else only this rank's slot is live. local_loss=True: the instance term takes this rank's rows
    against the gathered columns. cache_labels and rank are accepted for ClipLoss compatibility.
    With more than one rank and a global batch B >= d (direction="random"), the features are not
    gathered for the spectrum: σ and V come from the all-reduced d×d Gram (and row sums, center=True),
    each rank enhances its own rows, and only the enhanced rows are gathered for the instance term
    (SPEC §7); with B < d, or direction="adversarial", the features are gathered first.
    gather="ring": as gather=True, but the instance term is info_nce's ring, so with B >= d nothing
    of the batch is gathered: a rank holds its own rows and one other rank's block at a time.

    center=True: the partition, the enhancement and both spectral terms act on the row-centred
    features X = F − 1μᵀ (μ the batch mean), and F' = 1μᵀ + X'. spectral_terms: the terms summed in
    L_spec (both by default; fewer for ablations). backend: "fused" (default) or "linalg" (see the
    module docstring). Under torch.autocast the loss runs in float32 with autocast off.
    """

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
        backend: str = "fused",
    ):
        super().__init__()
        if total_steps is not None:
            total_steps = check_int(total_steps, "total_steps", 1)
        self.temperature = check_real(temperature, "temperature", 0.0, open_lo=True)
        self.power = check_real(power, "power", 0.0, open_lo=True)
        self.lambda_start, self.lambda_end = (check_real(v, name, 0.0, 1.0) for v, name in
                                              ((lambda_start, "lambda_start"), (lambda_end, "lambda_end")))
        self.eps_strong, self.gamma_weak, self.gamma_noise, self.rho = (check_real(v, name, 0.0) for v, name in (
            (eps_strong, "eps_strong"), (gamma_weak, "gamma_weak"), (gamma_noise, "gamma_noise"), (rho, "rho")))
        if direction not in ("random", "adversarial"):
            raise ValueError(f"direction must be 'random' or 'adversarial', got {direction!r}")
        if mode not in ("full", "augment"):
            raise ValueError(f"mode must be 'full' or 'augment', got {mode!r}")
        if use_horovod:
            raise ValueError("use_horovod=True is not supported: SDELoss gathers with torch.distributed")
        if int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
            raise ValueError(f"rank must be in [0, world_size) and world_size >= 1, got rank={rank}, "
                             f"world_size={world_size}")
        if not isinstance(center, bool):
            raise TypeError(f"center must be a bool, got {type(center).__name__}")
        spectral_terms = tuple(spectral_terms)
        if not set(spectral_terms) <= {"hellinger", "subspace"}:
            raise ValueError(f"spectral_terms must be a subset of ('hellinger', 'subspace'), got {spectral_terms!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {tuple(BACKENDS)}, got {backend!r}")
        self.total_steps = total_steps
        self.k_sub = None if k_sub is None else check_int(k_sub, "k_sub", 1)
        self.weighted_subspace = weighted_subspace
        self.direction = direction
        self.mode = mode
        self.ring = check_gather(gather) == "ring"
        self.gather = bool(gather) or int(world_size) > 1
        self.gather_with_grad = bool(gather) or bool(gather_with_grad)
        self.local_loss = bool(local_loss)
        self.cache_labels, self.rank, self.world_size = cache_labels, int(rank), int(world_size)
        self.generator = generator
        self.center = center
        self.spectral_terms = spectral_terms
        self.backend = BACKENDS[backend]
        self.num_calls = 0
        self.fixed_progress: Optional[float] = None
        self.seed: Optional[int] = None  # of ξ without a generator, agreed across ranks at first use
        self._stats = {}
        self._grad_sigma = {"a": None, "b": None}  # ∂L/∂σ' of the previous step (adversarial)

    @property
    def last_stats(self) -> dict:
        """The statistics of the last call, as floats (SPEC §7)."""
        return {key: float(v) for key, v in self._stats.items()}

    # -- curriculum state ---------------------------------------------------------------------
    def set_progress(self, t: Optional[float]) -> None:
        """Fix the training progress t ∈ [0, 1] of the following calls (None: back to steps)."""
        if t is not None and not (isinstance(t, (int, float)) and not isinstance(t, bool) and 0.0 <= t <= 1.0):
            raise ValueError(f"t must be a number in [0, 1] or None, got {t!r}")
        self.fixed_progress = None if t is None else float(t)

    def get_extra_state(self):
        return {"num_calls": self.num_calls, "fixed_progress": self.fixed_progress, "seed": self.seed}

    def set_extra_state(self, state):
        self.num_calls = int(state["num_calls"])
        self.fixed_progress = state.get("fixed_progress")
        self.seed = state.get("seed")

    def progress(self, step: Optional[int]) -> tuple[float, int]:
        """(t, step) of this call; advances the call counter when gradients are enabled."""
        if step is None:
            step = self.num_calls
        elif isinstance(step, bool) or int(step) != step or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        step = int(step)
        if torch.is_grad_enabled():
            self.num_calls = step + 1
        if self.fixed_progress is not None:
            return self.fixed_progress, step
        if self.total_steps is None:
            raise ValueError("SDELoss has no total_steps: construct it with total_steps=..., "
                             "or set the progress with set_progress(t) before the call")
        return min(step / self.total_steps, 1.0), step

    # -- ξ --------------------------------------------------------------------------------------
    def _agreed_seed(self, device) -> int:
        """The seed of ξ without a generator: drawn once (global RNG), broadcast from rank 0 under a process group."""
        if self.seed is None:
            seed = torch.randint(0, 2**62, (1,), dtype=torch.int64).to(device)
            if torch.distributed.is_available() and torch.distributed.is_initialized() and \
                    torch.distributed.get_world_size() > 1:
                torch.distributed.broadcast(seed, src=0)
            self.seed = int(seed)
        return self.seed

    def _xi(self, spectra: dict, step: int) -> dict:
        """ξ [..., r] per modality: the previous step's sign(∂L/∂σ') (adversarial, where it fits), else random,
        from the user's generator or, without one, from the agreed seed and the step (the same on every rank)."""
        xi, rand = {}, []
        for key, S in spectra.items():
            g = self._grad_sigma[key] if self.direction == "adversarial" else None
            if g is not None and g.shape == S.shape and g.device == S.device:
                xi[key] = draw_xi(S.shape, S.dtype, S.device, direction=g)
            else:
                rand.append(key)
        if self.generator is not None:
            xi.update({key: draw_xi(spectra[key].shape, spectra[key].dtype, spectra[key].device,
                                    generator=self.generator) for key in rand})
        elif rand:
            device = spectra[rand[0]].device
            seed = (self._agreed_seed(device) + 0x9E3779B97F4A7C15 * (step + 1)) % 2**63
            xi.update(zip(rand, seeded_xi([spectra[key] for key in rand], seed)))
        return xi

    def _record_gradient(self, key: str, d: Decomposition, E: Tensor) -> None:
        """Hook on F' storing ∂L/∂σ'_i = u_iᵀ (∂L/∂F') v_i for the next step's ξ (adversarial)."""
        if self.direction != "adversarial" or not E.requires_grad:
            return
        U, V = d.U.detach().to(E.dtype), d.V.detach().to(E.dtype)

        def hook(grad):
            with torch.no_grad():
                g = (U.to(grad.dtype) * (grad @ V.to(grad.dtype))).sum(-2)
            self._grad_sigma[key] = g.detach()

        E.register_hook(hook)

    def _gram_rows(self, F: Tensor) -> Optional[int]:
        """The global batch size B when this call gathers across more than one rank and B >= d: the
        spectrum then comes from the all-reduced d×d Gram (SPEC §7), not from gathered features.
        None otherwise, and with direction="adversarial" (its ξ reads the gradient of the gathered F')."""
        if not self.gather or world() == 1 or self.direction == "adversarial":
            return None
        rows = sum(batch_sizes(F))
        return rows if rows >= F.shape[-1] else None

    # -- the loss -------------------------------------------------------------------------------
    def forward(self, image_features, text_features, logit_scale=None, logit_bias=None, output_dict=False, *,
                step=None, **model_outputs):
        own = 1 if self.gather and world() > 1 and image_features.dim() >= 2 else 2  # a rank may hold no rows
        check(image_features, "image_features", min_dim=own)
        check(text_features, "text_features", min_dim=own, like=image_features)
        no_autocast, (image_features, text_features, logit_scale, logit_bias) = without_autocast(
            image_features.device.type, image_features, text_features, logit_scale, logit_bias)
        with no_autocast:
            loss = self._loss(image_features, text_features, logit_scale, logit_bias, step)
        return {"contrastive_loss": loss} if output_dict else loss

    def _loss(self, image_features, text_features, logit_scale, logit_bias, step):
        be = self.backend
        t, step = self.progress(step)
        lam_t = _lam(t, self.lambda_start, self.lambda_end)
        F_a, F_b = image_features, text_features
        rows = self._gram_rows(F_a)  # the global batch when the spectrum comes from the all-reduced Gram
        if self.gather and rows is None:
            F_a, F_b = gather_batch(F_a, self.gather_with_grad), gather_batch(F_b, self.gather_with_grad)
        m, n = (rows, F_a.shape[-1]) if rows else F_a.shape[-2:]
        enhance = dict(eps_strong=self.eps_strong, gamma_weak=self.gamma_weak, gamma_noise=self.gamma_noise,
                       rho=self.rho, mode=self.mode)

        # 1. one decomposition per feature matrix (of X = F − 1μᵀ with center=True) and its partition
        if rows:  # this rank's rows: the global mean, σ and V from all-reduced sums, this rank's rows of U
            live = self.gather_with_grad
            X = {"a": F_a, "b": F_b}
            if self.center:
                mean = _all_reduced([F.sum(-2, keepdim=True) for F in X.values()], live)
                X = {key: F - mu / rows for (key, F), mu in zip(X.items(), mean)}
            d, energy, sums = _global_spectra(X, live)
        else:
            X = {key: F - F.mean(-2, keepdim=True) if self.center else F for key, F in (("a", F_a), ("b", F_b))}
            d = {key: be.decompose(X[key]) for key in X}
            energy, sums = {}, []
        part = {key: be.partition(d[key].S, m, n, center=self.center) for key in X}
        # 2. the enhanced features F' from them
        xi = self._xi({key: d[key].S for key in X}, step)
        E = {}
        for key, F in (("a", F_a), ("b", F_b)):
            if F.shape[-2] == 0:  # a rank without rows (under a process group) has nothing to enhance
                E[key] = F.to(work_dtype(F.dtype))
                continue
            E[key] = be.enhance(F, d[key], part[key], xi[key], t, centred=X[key] if self.center else None,
                                energy=energy.get(key), **enhance)
            self._record_gradient(key, d[key], E[key])
        (d_a, d_b), (part_a, part_b), (E_a, E_b) = (d["a"], d["b"]), (part["a"], part["b"]), (E["a"], E["b"])

        # 3. instance term (local: this rank's rows against the gathered columns)
        if self.ring and world() > 1:  # this rank's rows; the other ranks' pass by the ring
            if not rows:  # E holds every rank's rows
                b, off = image_features.shape[-2], rank_offset(image_features)
                E_a, E_b = E_a[..., off:off + b, :], E_b[..., off:off + b, :]
            loss_inst = info_nce(E_a, E_b, self.temperature, logit_scale=logit_scale, gather="ring",
                                 local_loss=self.local_loss)
        elif rows:  # E holds this rank's rows only: gather them as the other path gathers F
            # open_clip's columns: without gather_with_grad this rank's are live, or with local_loss none are
            live = self.gather_with_grad
            cols_a, cols_b = (gather_batch(E.detach() if self.local_loss and not live else E, live) for E in (E_a, E_b))
            if self.local_loss:
                loss_inst = _local_info_nce(E_a, E_b, cols_a, cols_b, rank_offset(image_features), self.temperature,
                                            logit_scale)
            else:
                loss_inst = info_nce(cols_a, cols_b, self.temperature, logit_scale=logit_scale)
        elif self.local_loss:  # without a process group: offset 0, every row (the global loss)
            b, off = image_features.shape[-2], rank_offset(image_features)
            # open_clip: a process group without gather_with_grad makes every column a constant
            cols_a, cols_b = (E_a, E_b) if self.gather_with_grad or world() == 1 else (E_a.detach(), E_b.detach())
            loss_inst = _local_info_nce(E_a[..., off:off + b, :], E_b[..., off:off + b, :], cols_a, cols_b, off,
                                        self.temperature, logit_scale)
        else:
            loss_inst = info_nce(E_a, E_b, self.temperature, logit_scale=logit_scale)
        if isinstance(logit_bias, Tensor) and logit_bias.requires_grad:
            loss_inst = loss_inst + 0.0 * logit_bias.sum()  # a constant shift: gradient 0, as in ClipLoss

        # 4. spectral term, from the same decompositions
        if self.k_sub is not None:
            k = min(self.k_sub, min(m, n))
        else:
            k = int(torch.minimum((part_a.n_strong + part_a.n_weak).min(), (part_b.n_strong + part_b.n_weak).min()))
            torch._check(k >= 1)  # the partition's counts: k in [1, min(m, n)] (torch.compile sees an unbacked int)
            torch._check(k <= min(m, n))
        dtype = F_a.dtype
        loss_spec = F_a.new_zeros(())
        if "hellinger" in self.spectral_terms:
            loss_spec = loss_spec + hellinger(d_a.S.to(dtype), d_b.S.to(dtype), power=self.power).mean()
        if "subspace" in self.spectral_terms:
            V_a, V_b = d_a.V[..., :k].to(dtype), d_b.V[..., :k].to(dtype)
            weights = dict(S_a=d_a.S[..., :k].to(dtype), S_b=d_b.S[..., :k].to(dtype)) if self.weighted_subspace \
                else {}
            loss_spec = loss_spec + subspace_distance(V_a, V_b, **weights).mean()

        # 5. curriculum mix; across ranks every rank's loss reads the all-reduced sums (a zero term), so that
        # their backward collective runs on every rank, also on one without rows or spectral terms
        loss = (1.0 - lam_t) * loss_inst + lam_t * loss_spec
        if sums:
            loss = loss + 0.0 * sums[-1].sum().to(loss.dtype)

        # statistics, kept as tensors (no host sync in the graph) and read as floats through last_stats
        scalars = (("t", t), ("alpha", _alpha(t)), ("lam", lam_t))
        stats = {key: torch.tensor(v, dtype=torch.float64) for key, v in scalars}
        stats |= {"loss_inst": loss_inst.detach(), "loss_spec": loss_spec.detach()}
        for key, p in (("a", part_a), ("b", part_b)):
            stats[f"n_strong_{key}"] = p.n_strong.double().mean()
            stats[f"n_weak_{key}"] = p.n_weak.double().mean()
            for name, e in zip(("strong", "weak", "noise"), p.energy):
                stats[f"energy_{name}_{key}"] = e.double().mean()
        self._stats = stats
        return loss
