"""SDELoss on the fused ops against the reference SDELoss: loss, gradients and statistics on random
features, the open_clip call convention, and 20 optimizer steps of a small model."""
import pytest
import torch

import sdekernels.reference as ref
from sdekernels.nn import SDELoss

CONFIGS = [
    {},
    {"learnable_scale": True},
    {"direction": "adversarial"},
    {"mode": "augment", "weighted_subspace": True},
    {"k_sub": 3, "power": 2, "lambda_start": 0.9},
]


def _features(m=48, n=20, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    # a few strong directions over noise, so that the partition has strong, weak and noise parts
    basis = torch.randn(4, n, generator=g, dtype=torch.float64)
    F_a = torch.randn(m, 4, generator=g, dtype=torch.float64) * torch.tensor([2.0, 0.6, 0.4, 0.3]) @ basis
    F_b = F_a + 0.5 * torch.randn(m, 4, generator=g, dtype=torch.float64) @ basis
    F_a = F_a + torch.randn(m, n, generator=g, dtype=torch.float64)
    F_b = F_b + torch.randn(m, n, generator=g, dtype=torch.float64)
    return F_a.to(dtype), F_b.to(dtype)


def _steps(cls, config, F_a, F_b, steps=(0, 3, 7)):
    """Loss, gradients (features, logit_scale) and stats of a few consecutive calls."""
    config = dict(config)
    use_scale = config.pop("learnable_scale", False)
    loss_fn = cls(10, generator=torch.Generator().manual_seed(5), **config)
    out = []
    for step in steps:
        a, b = F_a.clone().requires_grad_(), F_b.clone().requires_grad_()
        s = torch.tensor(12.0, dtype=F_a.dtype, requires_grad=True) if use_scale else None
        loss = loss_fn(a, b, s, step=step)
        leaves = [a, b] + ([s] if use_scale else [])
        out.append((loss.detach(), torch.autograd.grad(loss, leaves), dict(loss_fn.last_stats)))
    return out


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_matches_reference(config):
    F_a, F_b = _features()
    for (loss, grads, stats), (r_loss, r_grads, r_stats) in zip(_steps(SDELoss, config, F_a, F_b),
                                                                _steps(ref.SDELoss, config, F_a, F_b)):
        torch.testing.assert_close(loss, r_loss, atol=1e-10, rtol=1e-9)
        torch.testing.assert_close(grads, r_grads, atol=1e-9, rtol=1e-7)
        assert stats.keys() == r_stats.keys()
        for key in stats:
            assert stats[key] == pytest.approx(r_stats[key], rel=1e-9, abs=1e-12), key


def test_float32_matches_reference():
    F_a, F_b = _features(dtype=torch.float32)
    for (loss, grads, _), (r_loss, r_grads, _) in zip(_steps(SDELoss, {}, F_a, F_b),
                                                      _steps(ref.SDELoss, {}, F_a.double(), F_b.double())):
        torch.testing.assert_close(loss.double(), r_loss, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close([g.double() for g in grads], list(r_grads), atol=1e-5, rtol=1e-3)


def test_open_clip_call_convention():
    """ClipLoss's call (features, features, logit_scale, output_dict) plus step; without step it counts calls."""
    F_a, F_b = _features(dtype=torch.float32)
    loss_fn = SDELoss(100)
    out = loss_fn(F_a, F_b, torch.tensor(10.0), output_dict=True)
    assert set(out) == {"contrastive_loss"} and out["contrastive_loss"].dim() == 0
    assert loss_fn.last_stats["t"] == 0.0
    loss_fn(F_a, F_b)
    assert loss_fn.last_stats["t"] == pytest.approx(0.01)
    loss_fn(F_a, F_b, step=50)
    assert loss_fn.last_stats["t"] == pytest.approx(0.5)
    keys = {"t", "alpha", "lam", "loss_inst", "loss_spec"} | {
        f"{k}_{m}" for k in ("n_strong", "n_weak", "energy_strong", "energy_weak", "energy_noise") for m in "ab"}
    assert set(loss_fn.last_stats) == keys
    assert all(isinstance(v, float) for v in loss_fn.last_stats.values())


def _train(cls, steps=20):
    """A small two-tower model (linear encoders and a learnable logit scale) trained with Adam."""
    g = torch.Generator().manual_seed(0)
    x_a = torch.randn(64, 24, generator=g, dtype=torch.float64)
    x_b = x_a[:, :16] @ torch.randn(16, 16, generator=g, dtype=torch.float64) + 0.3 * torch.randn(
        64, 16, generator=g, dtype=torch.float64)
    torch.manual_seed(1)
    enc_a = torch.nn.Linear(24, 12, dtype=torch.float64)
    enc_b = torch.nn.Linear(16, 12, dtype=torch.float64)
    log_scale = torch.nn.Parameter(torch.tensor(2.3, dtype=torch.float64))
    params = [*enc_a.parameters(), *enc_b.parameters(), log_scale]
    opt = torch.optim.Adam(params, lr=1e-2)
    loss_fn = cls(steps, generator=torch.Generator().manual_seed(2))
    losses = []
    for step in range(steps):
        opt.zero_grad()
        loss = loss_fn(enc_a(x_a), enc_b(x_b), log_scale.exp(), step=step)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return torch.tensor(losses, dtype=torch.float64), torch.cat([p.detach().reshape(-1) for p in params])


def test_training_trajectory_matches_reference():
    """20 Adam steps from the same seed, in float64: the fused and reference losses and parameters agree.

    Tolerance: every fused op agrees with the reference to ~1e-12 relative in float64 (the
    parity tests above), the partition counts are piecewise constant and the sampled spectra
    sit far from the thresholds, and Adam's update is bounded by lr = 1e-2 per step whatever
    the gradient's scale. A per-step discrepancy of 1e-12 can grow at most like
    (1 + lr·‖Hessian‖)^20 over 20 steps, a factor well below 1e3 for this small model, so
    1e-8 absolute / 1e-7 relative leaves a wide margin while still catching any real
    difference (a wrong term or sign changes the trajectory at the 1e-3 level within a step).
    """
    losses, params = _train(SDELoss)
    r_losses, r_params = _train(ref.SDELoss)
    assert losses[-1] < losses[0]  # it trains
    torch.testing.assert_close(losses, r_losses, atol=1e-8, rtol=1e-7)
    torch.testing.assert_close(params, r_params, atol=1e-8, rtol=1e-7)


@pytest.mark.parametrize("m,n", [(12, 7), (7, 12), (9, 9)])
def test_shared_decomposition_gradient(m, n):
    """The one-eigh thin SVD the loss decomposes each feature matrix with has the exact SVD gradient
    (sign-free functions of its factors: σ, the rank-3 part, the top-2 projectors) in float64."""
    from sdekernels.ops.svd import decompose

    F = torch.randn(2, m, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)

    def outputs(U, S, V, k=3):
        rank_k = (U[..., :k] * S[..., None, :k]) @ V[..., :k].mT
        return S, rank_k, U[..., :2] @ U[..., :2].mT, V[..., :2] @ V[..., :2].mT

    U, S, Vh = torch.linalg.svd(F, full_matrices=False)
    want = outputs(U, S, Vh.mT)
    d = decompose(F)
    got = outputs(d.U, d.S, d.V)
    w = [torch.randn(t.shape, dtype=t.dtype, generator=torch.Generator().manual_seed(1)) for t in want]
    g_want = torch.autograd.grad(sum((t * x).sum() for t, x in zip(want, w)), F)[0]
    g_got = torch.autograd.grad(sum((t * x).sum() for t, x in zip(got, w)), F)[0]
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(g_got, g_want, atol=1e-9, rtol=1e-8)


@pytest.mark.parametrize("center", [False, True])
def test_one_decomposition_per_feature_matrix(center):
    """A call decomposes each feature matrix once (its partition, enhancement and both spectral terms
    read that decomposition), and the linalg backend (torch.linalg.svd) gives the same loss."""
    import sdekernels.loss as L

    F_a, F_b = _features()
    calls = []
    fused = L.BACKENDS["fused"]
    counting = type(fused)(**{**vars(fused), "decompose": lambda X: calls.append(X) or fused.decompose(X)})
    loss_fn = SDELoss(10, generator=torch.Generator().manual_seed(0), center=center)
    loss_fn.backend = counting
    loss = loss_fn(F_a, F_b, step=4)
    assert len(calls) == 2
    linalg = SDELoss(10, generator=torch.Generator().manual_seed(0), center=center, backend="linalg")
    torch.testing.assert_close(linalg(F_a, F_b, step=4), loss, atol=1e-10, rtol=1e-9)
    with pytest.raises(ValueError, match="backend"):
        SDELoss(10, backend="numpy")


def test_batched_and_wide_features_match_reference():
    """Leading batch dims (one k for the whole call) and features wider than the batch (m < n)."""
    pairs = [_features(seed=s) for s in (0, 1)]
    F_a, F_b = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    for a, b in ((F_a, F_b), (F_a[0, :16].clone(), F_b[0, :16].clone())):
        for (loss, grads, stats), (r_loss, r_grads, r_stats) in zip(_steps(SDELoss, {}, a, b, (5,)),
                                                                    _steps(ref.SDELoss, {}, a, b, (5,))):
            torch.testing.assert_close(loss, r_loss, atol=1e-10, rtol=1e-9)
            torch.testing.assert_close(grads, r_grads, atol=1e-9, rtol=1e-7)
            assert stats == pytest.approx(r_stats, rel=1e-9, abs=1e-12)


def test_clip_loss_constructor_and_call_order():
    """open_clip's create_loss arguments; ClipLoss's positional order (…, logit_scale, logit_bias,
    output_dict); extra model outputs as keywords are ignored; a bias only shifts every logit."""
    F_a, F_b = _features()
    loss_fn = SDELoss(local_loss=False, gather_with_grad=True, cache_labels=True, rank=0, world_size=1,
                      use_horovod=False, total_steps=10, generator=torch.Generator().manual_seed(0))
    s, bias = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64, requires_grad=True)
    out = loss_fn(F_a, F_b, s, bias, True)
    assert set(out) == {"contrastive_loss"}
    out["contrastive_loss"].backward()
    assert bias.grad == 0  # as ClipLoss: a constant shift of the logits
    model_out = {"image_features": F_a, "text_features": F_b, "logit_scale": s, "logit_bias": bias.detach(),
                 "image_embs": None}
    again = SDELoss(10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again(**model_out, step=0), out["contrastive_loss"].detach())
    with pytest.raises(ValueError, match="use_horovod"):
        SDELoss(10, use_horovod=True)
    with pytest.raises(ValueError, match="rank"):
        SDELoss(10, rank=2, world_size=2)


def test_progress_without_total_steps():
    """Without total_steps the progress comes from set_progress; a call that has none is a ValueError."""
    F_a, F_b = _features(dtype=torch.float32)
    loss_fn = SDELoss()
    with pytest.raises(ValueError, match="total_steps"):
        loss_fn(F_a, F_b)
    loss_fn.set_progress(0.25)
    loss_fn(F_a, F_b, step=7)
    assert loss_fn.last_stats["t"] == 0.25
    with pytest.raises(ValueError, match="t must be"):
        loss_fn.set_progress(1.5)
    with pytest.raises(ValueError, match="step"):
        SDELoss(10)(F_a, F_b, step=-1)


def test_step_counter_resumes_and_counts_only_gradient_calls():
    F_a, F_b = _features(dtype=torch.float32)
    loss_fn = SDELoss(8)
    for _ in range(3):
        loss_fn(F_a, F_b)
    with torch.no_grad():
        loss_fn(F_a, F_b)  # evaluation reads t without advancing it
    assert loss_fn.last_stats["t"] == 3 / 8 and loss_fn.num_calls == 3
    state = loss_fn.state_dict()
    resumed = SDELoss(8)
    resumed.load_state_dict(state)
    resumed(F_a, F_b)
    assert resumed.last_stats["t"] == 3 / 8 and resumed.num_calls == 4
    # the agreed ξ seed travels too: the resumed loss draws the same directions at the same step
    torch.testing.assert_close(resumed(F_a, F_b, step=5), loss_fn(F_a, F_b, step=5))
