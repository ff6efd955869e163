"""Tests of the pure-PyTorch reference (SPEC.md) on cases whose answer is known independently."""
import math
import os
import socket
import tempfile

import numpy as np
import pytest
import torch

import sdekernels.reference as ref
from sdekernels.schedules import alpha, lam


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _orth(rows, cols, g, dtype=torch.float64):
    Q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=g, dtype=dtype))
    return Q


def _with_spectrum(S, m, n, seed=0, dtype=torch.float64):
    """m×n matrix U diag(S) Vᵀ with Haar-like U, V and the given singular values."""
    g = _gen(seed)
    k = len(S)
    U, V = _orth(m, k, g, dtype), _orth(n, k, g, dtype)
    return (U * torch.as_tensor(S, dtype=dtype)) @ V.T


def _planted(m, n, s, seed, strengths=(3.0, 4.0, 5.0, 6.0), dtype=torch.float64):
    """i.i.d. N(0, 1) noise plus a rank-s spike with singular values strength·(√m + √n)."""
    g = _gen(seed)
    X = torch.randn(m, n, generator=g, dtype=dtype)
    U, V = _orth(m, s, g, dtype), _orth(n, s, g, dtype)
    edge = math.sqrt(m) + math.sqrt(n)
    return X + (U * (edge * torch.tensor(strengths[:s], dtype=dtype))) @ V.T


# --------------------------------------------------------------------------- §2 mp_median
def test_mp_median_beta1_closed_form():
    # For β = 1 the MP CDF in φ (x = 2(1 − cos φ)) is (φ + sin φ)/π: the median solves φ + sin φ = π/2.
    lo, hi = 0.0, 2.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mid + math.sin(mid) < math.pi / 2 else (lo, mid)
    exact = 2 * (1 - math.cos(lo))
    assert abs(exact - 0.6527759) < 1e-6
    assert abs(ref.mp_median(1.0) - exact) / exact < 1e-9


def _mp_median_by_quadrature(beta):
    """The median of the Marchenko–Pastur density of ratio beta, by scipy's quadrature and root finding."""
    from scipy import integrate, optimize

    a, b = (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2

    def density(x):
        return math.sqrt(max((b - x) * (x - a), 0.0)) / (2 * math.pi * beta * x)

    def below(q):
        return integrate.quad(density, a, q, epsabs=1e-13, limit=200)[0] - 0.5

    return optimize.brentq(below, a, b, xtol=1e-14)


def test_mp_median_vs_scipy_quadrature():
    for beta in (0.05, 0.25, 0.5, 0.9):
        med = _mp_median_by_quadrature(beta)
        assert abs(ref.mp_median(beta) - med) / med < 1e-6, beta


@pytest.mark.parametrize("beta", [0.25, 0.5, 1.0])
def test_mp_median_vs_monte_carlo(beta):
    n = 800
    m = int(beta * n)
    g = _gen(1)
    eig = []
    for _ in range(4):
        X = torch.randn(m, n, generator=g, dtype=torch.float64)
        eig.append(torch.linalg.eigvalsh(X @ X.T / n))
    emp = torch.cat(eig).median().item()
    assert abs(emp - ref.mp_median(beta)) / ref.mp_median(beta) < 1e-2


def test_mp_median_rejects_bad_beta():
    for beta in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="beta"):
            ref.mp_median(beta)


# --------------------------------------------------------------------------- §1 svd
def test_svd_topk_and_singular_values_vs_float64_truth():
    m, n, k = 60, 40, 5
    S_true = torch.cat([torch.tensor([50.0, 30.0, 20.0, 12.0, 8.0]), torch.linspace(4.0, 0.1, n - 5)]).double()
    g = _gen(3)
    U0, V0 = _orth(m, n, g), _orth(n, n, g)
    F64 = (U0 * S_true) @ V0.T
    F = F64.float()
    U, S, V = ref.svd_topk(F, k)
    assert U.shape == (m, k) and S.shape == (k,) and V.shape == (n, k) and S.dtype == torch.float32
    assert torch.allclose(S.double(), S_true[:k], rtol=1e-5)
    # sin of the largest principal angle between computed and true subspaces: ‖(I − Q0 Q0ᵀ) Q‖₂
    for Q, Q0 in ((U, U0[:, :k]), (V, V0[:, :k])):
        Q = Q.double()
        assert torch.linalg.matrix_norm(Q - Q0 @ (Q0.T @ Q), ord=2) < 1e-4
    # each pair reconstructs F's top-k part
    assert torch.allclose(((U * S) @ V.T).double(), (U0[:, :k] * S_true[:k]) @ V0[:, :k].T, atol=1e-3)
    sv = ref.singular_values(F)
    assert sv.shape == (n,)
    assert torch.allclose(sv.double(), S_true, rtol=1e-4, atol=1e-4)


def test_svd_batched_and_low_precision():
    g = _gen(4)
    F = torch.randn(2, 3, 7, 9, generator=g)
    U, S, V = ref.svd_topk(F, 3)
    assert U.shape == (2, 3, 7, 3) and S.shape == (2, 3, 3) and V.shape == (2, 3, 9, 3)
    truth = torch.from_numpy(np.linalg.svd(F.double().numpy(), compute_uv=False))
    assert torch.allclose(ref.singular_values(F).double(), truth, rtol=1e-5, atol=1e-5)
    assert torch.allclose(S.double(), truth[..., :3], rtol=1e-5)
    Ub, Sb, Vb = ref.svd_topk(F.bfloat16(), 3)
    assert Sb.dtype == torch.bfloat16 and torch.allclose(Sb.float(), S, rtol=2e-2)
    assert ref.singular_values(F.half()).dtype == torch.float16


def test_svd_topk_rejects_bad_k():
    F = torch.randn(5, 4)
    for k in (0, 5, 2.0):
        with pytest.raises(ValueError, match="k"):
            ref.svd_topk(F, k)


def test_non_finite_batch_element_stays_in_its_element():
    F = torch.randn(3, 6, 5, generator=_gen(6), dtype=torch.float64)
    F[1, 2, 3] = float("nan")
    S = ref.singular_values(F)
    assert S[1].isnan().all() and torch.allclose(S[[0, 2]], torch.linalg.svdvals(F[[0, 2]]))
    assert ref.svd_topk(F, 2)[1][1].isnan().all()
    out, part, _ = ref.spectral_enhance(F, 0.5, generator=_gen(0), return_details=True)
    assert out[1].isnan().all() and torch.isfinite(out[[0, 2]]).all() and part.energy[0][1].isnan()
    good = ref.spectral_enhance(F[[0, 2]], 0.5, direction=torch.ones(5, dtype=torch.float64))
    assert torch.allclose(ref.spectral_enhance(F, 0.5, direction=torch.ones(5, dtype=torch.float64))[[0, 2]], good)


# --------------------------------------------------------------------------- §2 partition
@pytest.mark.parametrize("m,n", [(120, 360), (200, 200), (360, 120)])
def test_partition_recovers_planted_rank(m, n):
    s = 4
    F = torch.stack([_planted(m, n, s, seed) for seed in range(3)])
    S = ref.singular_values(F)
    p = ref.spectral_partition(S, m, n)
    assert p.n_strong.shape == (3,) and p.n_strong.dtype == torch.int64
    assert torch.equal(p.n_strong + p.n_weak, torch.full((3,), s))
    # the noise level is recovered (unit variance) and the edge is √m + √n
    assert torch.allclose(p.sigma_hat, torch.ones(3, dtype=F.dtype), rtol=0.05)
    assert torch.allclose(p.tau_noise, torch.full((3,), math.sqrt(m) + math.sqrt(n), dtype=F.dtype), rtol=0.05)
    E = torch.stack(p.energy)
    assert torch.allclose(E.sum(0), torch.ones(3, dtype=F.dtype))
    s2 = S ** 2
    assert torch.allclose(p.energy[2], s2[:, s:].sum(-1) / s2.sum(-1))


def _expected_partition(S, m, n, iqr_c=1.5):
    """Independent numpy statement of SPEC §2 for a 1-D spectrum."""
    S = np.sort(np.asarray(S, dtype=np.float64))[::-1]
    r = min(m, n)
    sigma_hat = np.quantile(S, 0.5) / math.sqrt(max(m, n) * ref.mp_median(r / max(m, n)))
    tau_noise = sigma_hat * (math.sqrt(m) + math.sqrt(n))
    q1, q3 = np.quantile(S, 0.25), np.quantile(S, 0.75)
    tau_strong = max(tau_noise, q3 + iqr_c * (q3 - q1))
    strong = S > tau_strong
    if not strong.any():
        strong[0] = True
    weak = (S > tau_noise) & ~strong
    noise = ~(strong | weak)
    E = [(S[x] ** 2).sum() / (S ** 2).sum() for x in (strong, weak, noise)]
    return int(strong.sum()), int(weak.sum()), tau_noise, tau_strong, E


def test_partition_known_spectrum_with_weak_set():
    m = n = 100
    S = np.linspace(1.0, 0.1, 100)
    # strong fence and edge for this bulk: tau_noise ≈ 1.36, tau_strong = q3 + 1.5 IQR ≈ 1.45
    S[:4] = [6.0, 5.0, 1.44, 1.40]
    ns, nw, tn, ts, E = _expected_partition(S, m, n)
    assert (ns, nw) == (2, 2)  # the case has both sets non-empty
    p = ref.spectral_partition(torch.tensor(S), m, n)
    assert (int(p.n_strong), int(p.n_weak)) == (ns, nw)
    assert abs(float(p.tau_noise) - tn) < 1e-12 and abs(float(p.tau_strong) - ts) < 1e-12
    for got, want in zip(p.energy, E):
        assert abs(float(got) - want) < 1e-12
    # order of S does not matter
    perm = torch.randperm(100, generator=_gen(0))
    p2 = ref.spectral_partition(torch.tensor(S)[perm], m, n)
    assert int(p2.n_strong) == ns and int(p2.n_weak) == nw


def test_partition_flat_spectrum_forces_one_strong():
    # all σ equal: every value is below the edge (med·2√10/√(10·μ_1) = 2.475·med), so the
    # strong set is empty and index 1 is strong; the rest is noise.
    p = ref.spectral_partition(torch.ones(10, dtype=torch.float64), 10, 10)
    assert int(p.n_strong) == 1 and int(p.n_weak) == 0
    assert abs(float(p.energy[0]) - 0.1) < 1e-12 and abs(float(p.energy[2]) - 0.9) < 1e-12


def test_partition_zero_spectrum_is_finite():
    p = ref.spectral_partition(torch.zeros(2, 8), 8, 20)
    assert torch.equal(p.n_strong, torch.ones(2, dtype=torch.long))
    assert torch.equal(p.n_weak, torch.zeros(2, dtype=torch.long))
    for e, want in zip(p.energy, (1.0, 0.0, 0.0)):
        assert torch.equal(e, torch.full((2,), want))
    assert torch.isfinite(p.tau_noise).all() and torch.isfinite(p.sigma_hat).all()
    F = torch.zeros(8, 20, requires_grad=True)
    out = ref.spectral_enhance(F, 0.5)
    assert torch.equal(out, torch.zeros(8, 20))


# --------------------------------------------------------------------------- §4 enhance
def _weak_case(seed=0):
    S = np.linspace(1.0, 0.1, 100)
    S[:4] = [6.0, 5.0, 1.44, 1.40]
    return _with_spectrum(S, 100, 100, seed), S


def test_enhance_t0_only_attenuates_noise():
    F, S = _weak_case()
    out, part, delta = ref.spectral_enhance(F, 0.0, rho=1.0, return_details=True)
    assert (int(part.n_strong), int(part.n_weak)) == (2, 2)
    S = torch.tensor(S)
    assert torch.equal(delta[:4], torch.zeros(4, dtype=delta.dtype))  # strong and weak δ = 0
    assert torch.allclose(delta[4:], -0.9 * S[4:], rtol=1e-10)
    want = torch.cat([S[:4], 0.1 * S[4:]])
    assert torch.allclose(torch.linalg.svdvals(out), want.sort(descending=True).values, atol=1e-10)


def test_enhance_t1_formula_with_direction():
    F, S = _weak_case(1)
    S = torch.tensor(S)
    direction = torch.tensor([1.0, -3.0] + [0.5] * 98, dtype=torch.float64)
    out, part, delta = ref.spectral_enhance(F, 1.0, rho=10.0, direction=direction, eps_strong=0.2,
                                            gamma_weak=0.3, return_details=True)
    want = torch.zeros(100, dtype=torch.float64)
    want[0] = 0.2 * 1.0 * 6.0 * 1.0
    want[1] = 0.2 * (5.0 / 6.0) * 5.0 * -1.0
    want[2:4] = -0.3 * S[2:4]
    assert torch.allclose(delta, want, atol=1e-10)  # noise δ = 0 at α = 1


def test_enhance_rho_bound():
    g = _gen(5)
    F = torch.randn(3, 40, 30, generator=g, dtype=torch.float64)  # noise-dominated: bound active at t=0
    out, part, delta = ref.spectral_enhance(F, 0.0, rho=0.5, return_details=True)
    S = torch.linalg.svdvals(F)
    nd, ns = delta.norm(dim=-1), S.norm(dim=-1)
    assert torch.allclose(nd, 0.5 * ns, rtol=1e-10)
    # δ is the unbounded one scaled uniformly: noise values keep a common factor
    k = part.n_strong + part.n_weak
    for b in range(3):
        ratio = delta[b, k[b]:] / S[b, k[b]:]
        assert torch.allclose(ratio, ratio[0].expand_as(ratio))
        assert -0.9 < ratio[0] < 0
    # and is untouched when inactive
    _, _, d2 = ref.spectral_enhance(F, 0.0, rho=1.0, return_details=True)
    assert torch.allclose(d2[:, -1], -0.9 * S[:, -1])


@pytest.mark.parametrize("t", [0.0, 0.3, 0.8])
def test_enhance_topk_identity(t):
    F = torch.stack([_planted(50, 70, 3, seed, strengths=(3.0, 5.0, 8.0)) for seed in (7, 8)])
    out, part, delta = ref.spectral_enhance(F, t, generator=_gen(9), return_details=True)
    U, S, Vh = torch.linalg.svd(F, full_matrices=False)
    for b in range(2):
        k = int(part.n_strong[b] + part.n_weak[b])
        s_n = 1 + delta[b, -1] / S[b, -1]  # uniform noise scaling
        assert torch.allclose(1 + delta[b, k:] / S[b, k:], s_n.expand(S.shape[-1] - k))
        Uk, Sk, Vk = U[b, :, :k], S[b, :k], Vh[b, :k].T
        rebuilt = s_n * F[b] + (Uk * (Sk + delta[b, :k] - s_n * Sk)) @ Vk.T
        assert torch.allclose(out[b], rebuilt, atol=1e-9)


def test_enhance_random_direction_generator_and_low_precision():
    F = _planted(30, 40, 2, 11, strengths=(4.0, 6.0))
    a = ref.spectral_enhance(F.float(), 0.7, generator=_gen(1))
    assert torch.equal(a, ref.spectral_enhance(F.float(), 0.7, generator=_gen(1)))
    assert not torch.equal(a, ref.spectral_enhance(F.float(), 0.7, generator=_gen(2)))
    # the draw is ξ = 2·torch.rand([r], generator) − 1 in float32: δ_strong / (ε α σ_i²/σ_1)
    # is ξ times the common bound factor
    xi = (2 * torch.rand(30, generator=_gen(1)) - 1).double()
    _, part, d = ref.spectral_enhance(F, 0.7, generator=_gen(1), rho=10.0, return_details=True)
    ns = int(part.n_strong)
    assert ns == 2
    S = torch.linalg.svdvals(F)
    assert torch.allclose(d[:ns], 0.1 * alpha(0.7) * S[:ns] ** 2 / S[0] * xi[:ns], rtol=1e-10)
    # a given direction enters through its sign only
    direction = torch.tensor([-7.0, 0.01] + [1.0] * 28, dtype=torch.float64)
    _, _, d_dir = ref.spectral_enhance(F, 0.7, direction=direction, rho=10.0, return_details=True)
    sign = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    assert torch.allclose(d_dir[:ns], 0.1 * alpha(0.7) * S[:ns] ** 2 / S[0] * sign)
    h = ref.spectral_enhance(F.bfloat16(), 0.7, generator=_gen(1))
    assert h.dtype == torch.bfloat16 and (h.float() - a).abs().max() < 0.05 * a.abs().max()


def test_enhance_augment_gradient_is_identity_and_full_flows():
    F = _planted(20, 30, 2, 12, strengths=(4.0, 6.0)).requires_grad_()
    G = torch.randn(20, 30, generator=_gen(0), dtype=torch.float64)
    out = ref.spectral_enhance(F, 0.4, generator=_gen(3), mode="augment")
    (out * G).sum().backward()
    assert torch.equal(F.grad, G)
    full = ref.spectral_enhance(F, 0.4, generator=_gen(3), mode="full")
    assert torch.allclose(full, out, atol=1e-10)
    (gF,) = torch.autograd.grad((full * G).sum(), F)
    assert torch.isfinite(gF).all() and not torch.allclose(gF, G)
    with pytest.raises(ValueError, match="mode"):
        ref.spectral_enhance(F, 0.4, mode="bogus")


# --------------------------------------------------------------------------- §6 info_nce
def _explicit_ce(za, zb, scale, symmetric=True):
    a = za / za.norm(dim=-1, keepdim=True)
    b = zb / zb.norm(dim=-1, keepdim=True)
    logits = scale * a @ b.T
    B = logits.shape[0]
    row = -sum(logits[i, i] - torch.logsumexp(logits[i], 0) for i in range(B)) / B
    if not symmetric:
        return row
    col = -sum(logits[i, i] - torch.logsumexp(logits[:, i], 0) for i in range(B)) / B
    return (row + col) / 2


def test_info_nce_matches_explicit_cross_entropy():
    g = _gen(20)
    za, zb = torch.randn(9, 5, generator=g, dtype=torch.float64), torch.randn(9, 5, generator=g, dtype=torch.float64)
    assert torch.allclose(ref.info_nce(za, zb, 0.1), _explicit_ce(za, zb, 10.0))
    assert torch.allclose(ref.info_nce(za, zb, 0.1, symmetric=False), _explicit_ce(za, zb, 10.0, False))
    assert not torch.allclose(ref.info_nce(za, zb, 0.1, symmetric=False), ref.info_nce(za, zb, 0.1))
    # normalize=False uses the raw dot products
    raw = ref.info_nce(za, zb, logit_scale=1.0, normalize=False)
    logits = za @ zb.T
    ce = torch.nn.functional.cross_entropy
    want = 0.5 * (ce(logits, torch.arange(9)) + ce(logits.T, torch.arange(9)))
    assert torch.allclose(raw, want)
    # leading batch dims: mean of the per-problem losses
    zs_a, zs_b = (torch.randn(2, 6, 4, generator=g, dtype=torch.float64) for _ in range(2))
    want = (_explicit_ce(zs_a[0], zs_b[0], 1 / 0.07) + _explicit_ce(zs_a[1], zs_b[1], 1 / 0.07)) / 2
    assert torch.allclose(ref.info_nce(zs_a, zs_b), want)
    # gather without a process group is the plain loss
    assert torch.equal(ref.info_nce(za, zb, gather=True), ref.info_nce(za, zb))


def test_info_nce_logit_scale_tensor_gets_gradient():
    g = _gen(21)
    za = torch.randn(8, 6, generator=g, dtype=torch.float64, requires_grad=True)
    zb = torch.randn(8, 6, generator=g, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(14.0, dtype=torch.float64, requires_grad=True)
    loss = ref.info_nce(za, zb, logit_scale=s)
    assert torch.allclose(loss, _explicit_ce(za, zb, 14.0))
    loss.backward()
    assert s.grad is not None and s.grad.abs() > 0 and za.grad.abs().sum() > 0 and zb.grad.abs().sum() > 0
    # central difference in the scale
    with torch.no_grad():
        fd = (ref.info_nce(za, zb, logit_scale=14.0 + 1e-6) - ref.info_nce(za, zb, logit_scale=14.0 - 1e-6)) / 2e-6
    assert abs(float(s.grad) - float(fd)) < 1e-6
    assert ref.info_nce(za.detach().half(), zb.detach().half()).dtype == torch.float16


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gather_worker(rank, world, port, path):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(0)
        za = torch.randn(8, 5, generator=g, dtype=torch.float64)
        zb = torch.randn(8, 5, generator=g, dtype=torch.float64)
        la = za[4 * rank:4 * rank + 4].clone().requires_grad_()
        lb = zb[4 * rank:4 * rank + 4].clone().requires_grad_()
        loss = ref.info_nce(la, lb, 0.2, gather=True)
        loss.backward()
        sde = ref.SDELoss(10, gather=True, mode="augment", generator=torch.Generator().manual_seed(1))
        sde_loss = sde(za[4 * rank:4 * rank + 4], zb[4 * rank:4 * rank + 4], step=5)
        torch.save({"loss": loss.detach(), "ga": la.grad, "sde": sde_loss.detach()}, f"{path}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_info_nce_gather_under_torch_distributed():
    import torch.multiprocessing as mp

    world = 2
    with tempfile.TemporaryDirectory() as path:
        mp.spawn(_gather_worker, args=(world, _free_port(), path), nprocs=world, join=True)
        res = [torch.load(os.path.join(path, f"{r}.pt")) for r in range(world)]
    g = torch.Generator().manual_seed(0)
    za = torch.randn(8, 5, generator=g, dtype=torch.float64, requires_grad=True)
    zb = torch.randn(8, 5, generator=g, dtype=torch.float64)
    full = ref.info_nce(za, zb, 0.2)
    full.backward()
    sde_full = ref.SDELoss(10, mode="augment", generator=_gen(1))(za.detach(), zb, step=5)
    for r in range(world):
        assert torch.allclose(res[r]["loss"], full.detach())
        assert torch.allclose(res[r]["sde"], sde_full)
        # every rank computes the whole loss and all_gather's backward sums them: the local
        # gradient is world × the single-process one (DDP's averaging divides it back)
        assert torch.allclose(res[r]["ga"], world * za.grad[4 * r:4 * r + 4])


# --------------------------------------------------------------------------- §7 SDE loss
def _features(seed, B=24, d=16):
    g = _gen(seed)
    base = torch.randn(B, 3, generator=g, dtype=torch.float64) @ torch.randn(3, d, generator=g, dtype=torch.float64) * 3
    za = base + 0.3 * torch.randn(B, d, generator=g, dtype=torch.float64)
    zb = base + 0.3 * torch.randn(B, d, generator=g, dtype=torch.float64)
    return za, zb


@pytest.mark.parametrize("weighted", [False, True])
def test_sde_loss_combines_its_parts(weighted):
    za, zb = _features(30)
    za.requires_grad_()
    total = 40
    loss_fn = ref.SDELoss(total, generator=_gen(5), weighted_subspace=weighted, temperature=0.1)
    loss = loss_fn(za, zb, step=10)
    t = 10 / total
    # recompute every part with the same random draws
    gen = _gen(5)
    Ea, pa, _ = ref.spectral_enhance(za.detach(), t, generator=gen, return_details=True)
    Eb, pb, _ = ref.spectral_enhance(zb, t, generator=gen, return_details=True)
    l_inst = ref.info_nce(Ea, Eb, 0.1)
    k = int(min(pa.n_strong + pa.n_weak, pb.n_strong + pb.n_weak))
    _, Sa, Va = ref.svd_topk(za.detach(), k)
    _, Sb, Vb = ref.svd_topk(zb, k)
    l_spec = ref.hellinger(ref.singular_values(za.detach()), ref.singular_values(zb))
    if weighted:
        l_spec = l_spec + ref.subspace_distance(Va, Vb, S_a=Sa, S_b=Sb)
    else:
        l_spec = l_spec + ref.subspace_distance(Va, Vb)
    lam_t = lam(t, 0.5, 0.05)
    assert torch.allclose(loss.detach(), (1 - lam_t) * l_inst + lam_t * l_spec)
    st = loss_fn.last_stats
    assert st["t"] == t and st["alpha"] == alpha(t) and st["lam"] == lam_t
    assert abs(st["loss_inst"] - float(l_inst)) < 1e-10 and abs(st["loss_spec"] - float(l_spec)) < 1e-10
    assert st["n_strong_a"] == float(pa.n_strong) and st["n_weak_b"] == float(pb.n_weak)
    for key in ("a", "b"):
        e = [st[f"energy_{x}_{key}"] for x in ("strong", "weak", "noise")]
        assert abs(sum(e) - 1) < 1e-10
        assert all(isinstance(v, float) for v in st.values())
    loss.backward()
    assert za.grad is not None and torch.isfinite(za.grad).all() and za.grad.abs().sum() > 0


def test_sde_loss_counts_calls_and_clip_loss_interface():
    za, zb = _features(31)
    loss_fn = ref.SDELoss(4, generator=_gen(0))
    ts = []
    for _ in range(6):
        loss_fn(za, zb)
        ts.append(loss_fn.last_stats["t"])
    assert ts == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    out = loss_fn(za, zb, logit_scale=torch.tensor(10.0, dtype=torch.float64), output_dict=True, step=2)
    assert set(out) == {"contrastive_loss"} and out["contrastive_loss"].dim() == 0
    assert loss_fn.last_stats["t"] == 0.5
    s = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    loss_fn(za, zb, s, step=1).backward()
    assert s.grad is not None and s.grad.abs() > 0
    # k_sub fixes the subspace size; mode="augment" lets the instance term's gradient pass as is
    fixed = ref.SDELoss(4, k_sub=2, mode="augment", generator=_gen(0))
    assert torch.isfinite(fixed(za, zb, step=3))


def test_sde_loss_ops_are_swappable_and_adversarial_direction():
    calls = []

    def enhance(F, t, *, direction=None, **kw):
        out = ref.spectral_enhance(F, t, direction=direction, **kw)
        calls.append((direction, F, out[0]))
        if out[0].requires_grad:
            out[0].retain_grad()
        return out

    class Recording(ref.SDELoss):
        ops = type(ref.SDELoss.ops)(**{**vars(ref.SDELoss.ops), "spectral_enhance": enhance})

    za, zb = _features(32)
    za.requires_grad_()
    loss_fn = Recording(10, direction="adversarial", generator=_gen(0))
    loss_fn(za, zb, step=3).backward()
    assert len(calls) == 2 and calls[0][0] is None  # no previous gradient yet: random
    (_, F_prev, E_prev), _ = calls
    G = E_prev.grad
    U, _, Vh = torch.linalg.svd(F_prev.detach(), full_matrices=False)
    want = (U * (G @ Vh.T)).sum(0)  # ∂L/∂σ'_i = u_iᵀ G v_i
    calls.clear()
    loss_fn(za, zb, step=4)
    assert calls[0][0] is not None and torch.allclose(calls[0][0], want)
    # the subclass did not touch the base class's ops
    assert ref.SDELoss.ops.spectral_enhance is ref.spectral_enhance


# --------------------------------------------------------------------------- §8 Fourier
@pytest.mark.parametrize("onesided", [False, True])
@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("norm", ["backward", "ortho", "forward"])
@pytest.mark.parametrize("shape", [(2, 3, 8, 10), (5, 7), (1, 9, 6)])
def test_fourier_merge_inverts_split(onesided, centered, norm, shape):
    x = torch.randn(*shape, generator=_gen(40), dtype=torch.float64)
    A, P = ref.fourier_split(x, onesided=onesided, norm=norm, centered=centered)
    if onesided:
        assert A.shape[-1] == shape[-1] // 2 + 1
    assert (A >= 0).all() and (P > -math.pi).all() and (P <= math.pi).all()
    size = shape[-2:] if onesided else None
    y = ref.fourier_merge(A, P, onesided=onesided, norm=norm, centered=centered, size=size)
    assert torch.allclose(y, x, atol=1e-12)


def test_fourier_split_values_and_shift_invariance():
    x = torch.randn(3, 12, 10, generator=_gen(41), dtype=torch.float64)
    A, P = ref.fourier_split(x)
    X = np.fft.fft2(x.numpy())
    assert np.allclose(A.numpy(), np.abs(X)) and np.allclose(np.exp(1j * P.numpy()), np.exp(1j * np.angle(X)))
    Ac, _ = ref.fourier_split(x, centered=True)
    assert torch.equal(Ac, torch.fft.fftshift(A, dim=(-2, -1)))
    assert torch.allclose(ref.fourier_split(x, log_amplitude=True)[0], torch.log1p(A))
    shifted = torch.roll(x, shifts=(3, -4), dims=(-2, -1))
    A2, P2 = ref.fourier_split(shifted)
    assert torch.allclose(A2, A, atol=1e-12) and not torch.allclose(P2, P)
    Af, _ = ref.fourier_split(x.float())
    assert Af.dtype == torch.float32 and ref.fourier_split(x.half())[0].dtype == torch.float16


def test_fourier_split_gradient_zero_at_vanishing_bins():
    # a constant image has X = 0 off DC: those bins contribute no gradient, DC gives ∂|X_00|/∂x = 1
    x = torch.full((8, 8), 2.0, dtype=torch.float64, requires_grad=True)
    A, P = ref.fourier_split(x)
    assert (A.flatten()[1:].abs() < 1e-12).all()
    (A.sum() + P.sum()).backward()
    assert torch.allclose(x.grad, torch.ones(8, 8, dtype=torch.float64))


def test_amplitude_mix_identity_and_window():
    g = _gen(42)
    x1 = torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64)
    x2 = torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64)
    assert torch.allclose(ref.amplitude_mix(x1, x2, 0.0), x1, atol=1e-12)
    assert torch.allclose(ref.amplitude_mix(x1, x2, torch.zeros(2, dtype=torch.float64), ratio=0.5), x1, atol=1e-12)
    # lam = 1 on the full window: the amplitude of x2 with the phase of x1
    out = ref.amplitude_mix(x1, x2, 1.0)
    assert torch.allclose(torch.fft.fft2(out).abs(), torch.fft.fft2(x2).abs(), atol=1e-9)
    X_out, X1 = torch.fft.fft2(out), torch.fft.fft2(x1)
    assert torch.allclose(X_out / X_out.abs(), X1 / X1.abs(), atol=1e-6)
    # an odd window (h = w = 17) is symmetric about DC, so the output keeps exactly the mixed amplitude
    ratio = (17.5 / 32) ** 2
    lam_t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    out = ref.amplitude_mix(x1, x2, lam_t, ratio=ratio)
    A1 = torch.fft.fftshift(torch.fft.fft2(x1).abs(), dim=(-2, -1))
    A2 = torch.fft.fftshift(torch.fft.fft2(x2).abs(), dim=(-2, -1))
    want = A1.clone()
    lo = 16 - 8
    sl = (slice(None), slice(None), slice(lo, lo + 17), slice(lo, lo + 17))
    want[sl] = (1 - lam_t.view(2, 1, 1, 1)) * A1[sl] + lam_t.view(2, 1, 1, 1) * A2[sl]
    got = torch.fft.fftshift(torch.fft.fft2(out).abs(), dim=(-2, -1))
    assert torch.allclose(got, want, atol=1e-9)
    # even window (h = 16): rows 8..23 in shifted coordinates, the FACT convention, checked in numpy
    out = ref.amplitude_mix(x1[0, 0], x2[0, 0], 0.6, ratio=0.25).numpy()
    X1 = np.fft.fftshift(np.fft.fft2(x1[0, 0].numpy()))
    X2 = np.fft.fftshift(np.fft.fft2(x2[0, 0].numpy()))
    A = np.abs(X1).copy()
    A[8:24, 8:24] = 0.4 * np.abs(X1)[8:24, 8:24] + 0.6 * np.abs(X2)[8:24, 8:24]
    want = np.real(np.fft.ifft2(np.fft.ifftshift(A * np.exp(1j * np.angle(X1)))))
    assert np.allclose(out, want, atol=1e-10)
    with pytest.raises(ValueError, match="ratio"):
        ref.amplitude_mix(x1, x2, 0.5, ratio=1.5)


def test_fourier_attentive_tokens_shapes_gradients_and_split_swap():
    torch.manual_seed(0)
    mod = ref.FourierAttentiveTokens(in_channels=3, dim=32, n_tokens=5, patch=8, heads=4)
    x = torch.randn(2, 3, 32, 32)
    out = mod(x)
    for name in ("fused", "structure", "style", "tokens"):
        assert getattr(out, name).shape == (2, 5, 32), name
    assert torch.equal(out.tokens[0], mod.tokens) and torch.equal(out.tokens[1], mod.tokens)
    w = torch.randn(2, 5, 32, generator=_gen(0))
    (out.fused * w).sum().backward()
    for name, p in mod.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    # the split is a class attribute a subclass may swap
    seen = []

    class Swapped(ref.FourierAttentiveTokens):
        @staticmethod
        def split(x, **kw):
            seen.append(kw)
            return ref.fourier_split(x, **kw)

    sw = Swapped(3, 32, 5, 8, 4)
    sw.load_state_dict(mod.state_dict())
    assert torch.allclose(sw(x).fused, out.fused) and seen == [{"centered": True, "log_amplitude": True}]
    # the structure tokens depend on the phase only: scaling the image changes only the amplitude
    assert torch.allclose(mod(3 * x).structure, out.structure, atol=1e-5)
    assert not torch.allclose(mod(3 * x).style, out.style, atol=1e-3)


# --------------------------------------------------------------------------- §9 spectra
def test_dct_matrix_orthonormal_and_matches_scipy():
    from scipy.fft import dct

    for n in (1, 5, 8):
        D = ref.dct_matrix(n, torch.float64, "cpu")
        assert torch.allclose(D @ D.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
        x = np.random.default_rng(n).normal(size=n)
        assert np.allclose(D.numpy() @ x, dct(x, type=2, norm="ortho"))


def test_radial_psd_of_one_dct_basis_function():
    H, W, bins = 16, 12, 8
    DH, DW = ref.dct_matrix(H, torch.float64, "cpu"), ref.dct_matrix(W, torch.float64, "cpu")
    u0, v0 = 9, 4
    x = torch.outer(DH[u0], DW[v0]).expand(1, 2, H, W)
    psd = ref.radial_psd(x, bins=bins)
    r = np.sqrt(np.arange(H)[:, None] ** 2 + np.arange(W)[None] ** 2)
    b = np.minimum(np.floor(r / np.sqrt((H - 1) ** 2 + (W - 1) ** 2) * bins), bins - 1).astype(int)
    counts = np.bincount(b.ravel(), minlength=bins)
    # the floor is relative: 1e-12·c², c = the (zero-mean) sample's max|x| rounded down to a power of two
    fl = 1e-12 * 2.0 ** (2 * (np.frexp(float(x.abs().max()))[1] - 1))
    want = np.array([(fl * (counts[i] - (i == 0)) + (i == b[u0, v0])) / counts[i] for i in range(bins)])
    want[b[u0, v0]] = (1 + fl * (counts[b[u0, v0]] - 1)) / counts[b[u0, v0]]
    assert psd.shape == (1, bins)
    assert np.allclose(psd[0].numpy(), want, rtol=1e-9, atol=0)
    per_channel = ref.radial_psd(x, bins=bins, channel_reduce="none")
    assert per_channel.shape == (1, 2, bins) and torch.allclose(per_channel[:, 0], psd)


@pytest.mark.parametrize("transform", ["dct", "fft"])
def test_radial_psd_white_noise_is_flat(transform):
    x = torch.randn(32, 3, 64, 64, generator=_gen(50))
    psd = ref.radial_psd(x, bins=16, transform=transform).mean(0)
    assert psd.shape == (16,)
    # unit-variance white noise has P ≈ 1 at every frequency (bin 0 also holds the zeroed DC)
    assert torch.allclose(psd[1:], torch.ones(15), rtol=0.1), psd
    assert 0.8 < psd[0] < 1.1
    # the spectrum of a smoothed image is not flat: the same check fails
    smooth = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1)
    assert not torch.allclose(ref.radial_psd(smooth, transform=transform).mean(0)[1:], torch.ones(15), rtol=0.1)


def _photo_crops(size):
    from skimage import color, data

    crops = []
    for name in ("astronaut", "camera", "chelsea", "coffee"):
        img = getattr(data, name)()
        grey = color.rgb2gray(img) if img.ndim == 3 else img / 255.0
        crops.append(torch.tensor(grey[60:60 + size, 100:100 + size], dtype=torch.float32))
    return torch.stack(crops).unsqueeze(1)  # [4, 1, size, size]


@pytest.mark.parametrize("transform", ["dct", "fft"])
def test_radial_psd_of_photos_falls_as_power_law(transform):
    x = _photo_crops(128)
    psd = ref.radial_psd(x, bins=16, transform=transform)
    f = np.arange(1, 16) + 0.5  # bin centres (in bin units), bins 1..15
    for p in psd.numpy():
        slope = np.polyfit(np.log(f), np.log(p[1:]), 1)[0]
        assert -4.5 < slope < -2.0, slope  # natural images: steep power law (white noise: 0)


def test_block_dct_lowpass_is_an_orthogonal_projector():
    g = _gen(60)
    x = torch.randn(2, 3, 16, 24, generator=g, dtype=torch.float64)
    y = torch.randn(2, 3, 16, 24, generator=g, dtype=torch.float64)
    for k in (8, 10, 12):
        Px = ref.block_dct_lowpass(x, k)
        assert torch.allclose(ref.block_dct_lowpass(Px, k), Px, atol=1e-12)
        assert torch.allclose((Px * y).sum(), (x * ref.block_dct_lowpass(y, k)).sum(), atol=1e-10)
        assert not torch.allclose(Px, x)
    assert torch.equal(ref.block_dct_lowpass(x, 0), x)
    assert torch.allclose(ref.block_dct_lowpass(x, 15), torch.zeros_like(x))
    # known tile: basis (u, v) survives iff u + v < 15 − k
    D = ref.dct_matrix(8, torch.float64, "cpu")
    for (u, v), kept in (((3, 3), True), ((3, 4), False)):
        tile = torch.outer(D[u], D[v])
        out = ref.block_dct_lowpass(tile, 8)
        assert torch.allclose(out, tile if kept else torch.zeros_like(tile), atol=1e-12)
    with pytest.raises(ValueError, match="block"):
        ref.block_dct_lowpass(torch.randn(12, 16), 8)
    with pytest.raises(ValueError, match="^k"):
        ref.block_dct_lowpass(x, 16)
    assert ref.block_dct_lowpass(x.bfloat16(), 8).dtype == torch.bfloat16


def test_esm_loss_zero_when_spectra_match_and_positive_otherwise():
    g = _gen(70)
    x = torch.randn(3, 3, 32, 32, generator=g)
    assert float(ref.esm_loss(x, x, delta=0.0, blur=None)) == 0.0
    z = torch.nn.functional.avg_pool2d(torch.randn(3, 4, 16, 16, generator=g), 3, stride=1, padding=1).requires_grad_()
    loss = ref.esm_loss(z, x, delta=1.0)  # blurred, resized 32 → 16
    assert loss > 0
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    # independent numpy statement for the unblurred, same-size case
    zz = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)
    xx = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64) * 2
    f = np.arange(1, 9) ** 0.5
    sx = np.log1p(ref.radial_psd(xx, bins=8).numpy() * f + 1e-8)
    sz = np.log1p(ref.radial_psd(zz, bins=8).numpy() + 1e-8)
    sx, sz = sx / sx.sum(-1, keepdims=True), sz / sz.sum(-1, keepdims=True)
    want = (sx * (np.log(sx) - np.log(sz))).sum(-1).mean()
    assert abs(float(ref.esm_loss(zz, xx, delta=0.5, bins=8, blur=None)) - want) < 1e-12


def test_dog_is_normalised_per_sample():
    z = torch.randn(4, 3, 32, 32, generator=_gen(80)) * torch.tensor([1.0, 5.0, 0.1, 20.0]).view(4, 1, 1, 1)
    out = ref.dog(z)
    std = out.flatten(1).std(dim=1, unbiased=False)
    assert out.shape == z.shape and torch.allclose(std, torch.ones(4), atol=1e-4)
    # a constant image has no band-pass content (reflect padding keeps it constant); in float32
    # the rounding of the blurs (~1e-7) divided by (0 + 1e-6) is O(1), so check it in float64
    const = torch.full((1, 1, 16, 16), 3.0, dtype=torch.float64)
    assert torch.allclose(ref.dog(const), torch.zeros_like(const), atol=1e-8)
    # known case: blurs of an impulse are the two normalised Gaussians (radius 3 and 6)
    imp = torch.zeros(1, 1, 31, 31, dtype=torch.float64)
    imp[..., 15, 15] = 1
    i = np.arange(-15, 16)
    g1 = np.exp(-i ** 2 / 2.0)
    g1 = np.where(np.abs(i) <= 3, g1, 0)
    g1 /= g1.sum()
    g2 = np.exp(-i ** 2 / 8.0)
    g2 = np.where(np.abs(i) <= 6, g2, 0)
    g2 /= g2.sum()
    d = np.outer(g1, g1) - np.outer(g2, g2)
    assert np.allclose(ref.dog(imp)[0, 0].numpy(), d / max(d.std(), 1e-6))  # the floor (1e-6·c, c = 1) is inactive
    assert ref.dog(z.half()).dtype == torch.float16
