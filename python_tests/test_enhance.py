"""spectral_enhance (SPEC §4) beyond the generic registry tests: parity with the reference on
realistic spiked features (same generator seed, given directions), details, exact gradients,
the Frobenius bound, degenerate inputs, and the randomized (large-r) path including torch.compile."""
import pytest
import torch

import sdekernels
import sdekernels.ops._solvers as solvers
from sdekernels import reference as ref
from sdekernels.ops._matrices import planted, spiked

from helpers import PATHS, on_path


def _features(batch, m, n, s, seed):
    return spiked(batch, m, n, s, 1.5, torch.Generator().manual_seed(seed))


def _same_details(a, b, tol=1e-9):
    pa, pb = a[1], b[1]
    assert torch.equal(pa.n_strong, pb.n_strong) and torch.equal(pa.n_weak, pb.n_weak)
    for x, y in zip((pa.tau_noise, pa.tau_strong, pa.sigma_hat, *pa.energy, a[2]),
                    (pb.tau_noise, pb.tau_strong, pb.sigma_hat, *pb.energy, b[2])):
        torch.testing.assert_close(x, y, atol=tol, rtol=tol)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("m,n", [(24, 40), (32, 32), (48, 20)])
def test_parity_random_xi_same_seed(m, n, path):
    F = _features(2, m, n, 3, m + n)
    for t in (0.0, 0.4, 1.0):
        with on_path(path):
            a = sdekernels.spectral_enhance(F, t, generator=torch.Generator().manual_seed(7), return_details=True)
        b = ref.spectral_enhance(F, t, generator=torch.Generator().manual_seed(7), return_details=True)
        torch.testing.assert_close(a[0], b[0], atol=1e-9, rtol=1e-9)
        _same_details(a, b)


def test_parity_direction_modes_and_options():
    F = _features(3, 30, 50, 4, 1)
    d = torch.randn(3, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for kw in ({"direction": d}, {"direction": d[0]}, {"direction": d, "mode": "augment"},
               {"direction": d, "rho": 0.05},
               {"direction": d, "eps_strong": 0.5, "gamma_weak": 0.0, "gamma_noise": 0.2}):
        a = sdekernels.spectral_enhance(F, 0.7, return_details=True, **kw)
        b = ref.spectral_enhance(F, 0.7, return_details=True, **kw)
        torch.testing.assert_close(a[0], b[0], atol=1e-9, rtol=1e-9)
        _same_details(a, b)


@pytest.mark.parametrize("mode", ["full", "augment"])
def test_gradients_match_reference_on_realistic_noise(mode):
    """Exact gradient (noise values comparable to the signal), not only as the noise vanishes."""
    F = _features(2, 20, 28, 3, 5)
    d = torch.randn(2, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    W = torch.randn(2, 20, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    grads = []
    for fn in (sdekernels.spectral_enhance, ref.spectral_enhance):
        X = F.clone().requires_grad_()
        grads.append(torch.autograd.grad((fn(X, 0.6, direction=d, mode=mode) * W).sum(), X)[0])
    torch.testing.assert_close(grads[0], grads[1], atol=1e-8, rtol=1e-7)
    if mode == "augment":
        assert torch.equal(grads[0], W)


def test_frobenius_bound():
    F = _features(4, 24, 36, 4, 9)
    for rho in (0.02, 0.2, 0.5):
        _, _, delta = sdekernels.spectral_enhance(F, 0.3, rho=rho, gamma_noise=0.99, return_details=True)
        S = torch.linalg.svdvals(F)
        assert (delta.norm(dim=-1) <= rho * S.norm(dim=-1) * (1 + 1e-9)).all()
    _, _, delta = sdekernels.spectral_enhance(F, 0.0, rho=0.02, return_details=True)
    torch.testing.assert_close(delta.norm(dim=-1), 0.02 * torch.linalg.svdvals(F).norm(dim=-1))  # bound active


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_degenerate_inputs_finite(dtype):
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(10, 1, generator=g), torch.randn(1, 7, generator=g)
    cases = {"zero": torch.zeros(10, 7), "rank_one": u @ v, "repeated": torch.eye(10, 7) * 2.0,
             "tiny": torch.randn(10, 7, generator=g) * 1e-30}
    for name, F in cases.items():
        X = F.to(dtype).requires_grad_()
        out = sdekernels.spectral_enhance(X, 0.5, generator=torch.Generator().manual_seed(1))
        assert torch.isfinite(out).all(), name
        gF, = torch.autograd.grad((out * torch.randn(10, 7, generator=g).to(dtype)).sum(), X)
        assert torch.isfinite(gF).all(), name
    z = sdekernels.spectral_enhance(torch.zeros(3, 6, 4, dtype=dtype), 0.5)
    assert torch.equal(z, torch.zeros_like(z))


def test_low_precision_and_batch_shapes():
    F = _features(6, 16, 24, 2, 3).reshape(2, 3, 16, 24)
    d = torch.randn(2, 3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out64 = sdekernels.spectral_enhance(F, 0.5, direction=d)
    for dtype, tol in ((torch.bfloat16, 5e-2), (torch.float16, 1e-2)):
        o = sdekernels.spectral_enhance(F.to(dtype), 0.5, direction=d.to(dtype))
        assert o.dtype == dtype and o.shape == F.shape
        torch.testing.assert_close(o.double(), out64, atol=tol * out64.abs().max(), rtol=tol)


@pytest.fixture
def randomized(monkeypatch):
    """The large-r path (top-k_max by randomized subspace iteration, truncated-SVD backward)."""
    monkeypatch.setattr(solvers, "GRAM_MAX_R", 0)


def test_randomized_path_parity_and_gradient(randomized):
    g = torch.Generator().manual_seed(3)
    F = planted(2, 20, 30, 4, g, ratio=0.6, tail=1e-6)
    d = torch.randn(2, 20, dtype=torch.float64, generator=g)
    a = sdekernels.spectral_enhance(F, 0.6, direction=d, return_details=True)
    b = ref.spectral_enhance(F, 0.6, direction=d, return_details=True)
    torch.testing.assert_close(a[0], b[0], atol=1e-9, rtol=1e-9)
    _same_details(a, b, tol=1e-6)
    W = torch.randn(2, 20, 30, dtype=torch.float64, generator=g)
    grads = []
    for fn in (sdekernels.spectral_enhance, ref.spectral_enhance):
        X = F.clone().requires_grad_()
        grads.append(torch.autograd.grad((fn(X, 0.6, direction=d) * W).sum(), X)[0])
    # the truncated backward is exact up to O(noise σ / signal σ), ~1e-5 here
    torch.testing.assert_close(grads[0], grads[1], atol=1e-4, rtol=1e-4)


def test_randomized_path_compiles_with_data_dependent_k(randomized):
    F = _features(2, 12, 16, 2, 4).float()
    d = torch.randn(2, 12, generator=torch.Generator().manual_seed(0))
    fn = lambda X: sdekernels.spectral_enhance(X, 0.5, direction=d)  # noqa: E731
    results = []
    for f in (fn, torch.compile(fn, fullgraph=True)):
        X = F.clone().requires_grad_()
        out = f(X)
        results.append((out, torch.autograd.grad(out.square().sum(), X)[0]))
    torch._dynamo.reset()
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_float32_gram_range_matches_reference():
    """r > 256 with float32 input: float32 Gram and eigh (the fast path), checked against float64 truth."""
    F = _features(1, 300, 420, 5, 11).float()
    d = torch.randn(1, 300, generator=torch.Generator().manual_seed(1))
    a = sdekernels.spectral_enhance(F, 0.5, direction=d, return_details=True)
    b = ref.spectral_enhance(F.double(), 0.5, direction=d.double(), return_details=True)
    assert torch.equal(a[1].n_strong, b[1].n_strong) and torch.equal(a[1].n_weak, b[1].n_weak)
    torch.testing.assert_close(a[0].double(), b[0], atol=2e-4 * b[0].abs().max(), rtol=1e-3)
    torch.testing.assert_close(a[2].double(), b[2], atol=1e-4 * b[2].abs().max(), rtol=1e-3)
