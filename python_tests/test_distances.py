"""hellinger and subspace_distance beyond the generic registry tests: known values, degenerate
spectra (zeros, repeats, tiny values) and the finiteness of their gradients."""
import pytest
import torch

import sdekernels as sk
import sdekernels.reference as ref

from helpers import DEVICE, PATHS, on_path


def _grad(fn, *xs, **kw):
    xs = [x.detach().clone().requires_grad_() for x in xs]
    out = fn(*xs, **kw)
    return out, torch.autograd.grad(out.sum(), xs)


@pytest.mark.parametrize("path", PATHS)
def test_hellinger_equal_spectra_is_zero_with_zero_gradient(path):
    S = torch.rand(4, 50, dtype=torch.float64, device=DEVICE) + 0.1
    with on_path(path):
        h, (ga, gb) = _grad(sk.hellinger, S, 3.0 * S)  # scale does not matter: both are normalised
    assert h.abs().max() < 1e-12
    assert ga.abs().max() < 1e-12 and gb.abs().max() < 1e-12


@pytest.mark.parametrize("path", PATHS)
def test_hellinger_disjoint_supports_is_one(path):
    a = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64, device=DEVICE)
    b = torch.tensor([[0.0, 0.0, 2.0, 2.0]], dtype=torch.float64, device=DEVICE)
    with on_path(path):
        h = sk.hellinger(a, b)
    # entries clamped to 1e-12 leave a Bhattacharyya sum of order 1e-6
    assert abs(float(h) - 1.0) < 1e-5


@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize("power", [1, 2, 0.5])
@pytest.mark.parametrize("case", ["zeros", "one_zero_side", "repeated", "tiny", "single"])
def test_hellinger_gradient_finite_on_degenerate_spectra(case, power, squared):
    r = 6
    a = {"zeros": torch.zeros(r), "one_zero_side": torch.zeros(r), "repeated": torch.ones(r),
         "tiny": torch.full((r,), 1e-30), "single": torch.tensor([1.0] + [0.0] * (r - 1))}[case]
    b = torch.rand(r) + 0.5 if case != "zeros" else torch.zeros(r)
    for dtype in (torch.float32, torch.float64):
        h, grads = _grad(sk.hellinger, a.to(DEVICE, dtype), b.to(DEVICE, dtype), power=power, squared=squared)
        assert torch.isfinite(h).all() and all(torch.isfinite(g).all() for g in grads), (case, power, squared, dtype)


def test_hellinger_sqrt_form():
    S_a, S_b = torch.rand(3, 9) + 0.1, torch.rand(3, 9) + 0.1
    torch.testing.assert_close(sk.hellinger(S_a, S_b, squared=False) ** 2, sk.hellinger(S_a, S_b))


@pytest.mark.parametrize("path", PATHS)
def test_subspace_known_values(path):
    Q = torch.linalg.qr(torch.randn(30, 8, dtype=torch.float64))[0].to(DEVICE)
    R = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))[0].to(DEVICE)
    with on_path(path):
        same = sk.subspace_distance(Q[:, :4], Q[:, :4])
        rotated = sk.subspace_distance(Q[:, :4], Q[:, :4] @ R)
        orthogonal = sk.subspace_distance(Q[:, :4], Q[:, 4:])
    assert float(same) < 1e-12 and float(rotated) < 1e-12  # a rotation inside the subspace changes nothing
    assert abs(float(orthogonal) - 1.0) < 1e-12


@pytest.mark.parametrize("path", PATHS)
def test_subspace_weighted_matches_explicit_projectors(path):
    Va = torch.linalg.qr(torch.randn(2, 40, 6, dtype=torch.float64))[0].to(DEVICE)
    Vb = torch.linalg.qr(torch.randn(2, 40, 6, dtype=torch.float64))[0].to(DEVICE)
    Sa, Sb = torch.rand(2, 6, dtype=torch.float64, device=DEVICE), torch.rand(2, 6, dtype=torch.float64, device=DEVICE)
    with on_path(path):
        got = sk.subspace_distance(Va, Vb, S_a=Sa, S_b=Sb)
    wa, wb = Sa**2 / (Sa**2).sum(-1, keepdim=True), Sb**2 / (Sb**2).sum(-1, keepdim=True)
    Pa, Pb = Va @ torch.diag_embed(wa) @ Va.mT, Vb @ torch.diag_embed(wb) @ Vb.mT
    torch.testing.assert_close(got, ((Pa - Pb) ** 2).sum((-2, -1)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, ref.subspace_distance(Va, Vb, S_a=Sa, S_b=Sb), rtol=1e-12, atol=1e-12)


def test_subspace_gradient_finite_for_zero_weights():
    V = torch.linalg.qr(torch.randn(20, 3, dtype=torch.float64))[0]
    zeros = torch.zeros(3, dtype=torch.float64)
    _, grads = _grad(sk.subspace_distance, V, V, S_a=zeros, S_b=zeros)
    assert all(torch.isfinite(g).all() for g in grads)


def test_subspace_tangent_gradient_matches_reference():
    """The fused M-form and the reference's explicit projectors agree on the Stiefel tangent space."""
    Va = torch.linalg.qr(torch.randn(25, 5, dtype=torch.float64))[0]
    Vb = torch.linalg.qr(torch.randn(25, 5, dtype=torch.float64))[0]
    (_, (g, _)), (_, (r, _)) = _grad(sk.subspace_distance, Va, Vb), _grad(ref.subspace_distance, Va, Vb)
    tangent = lambda G: G - Va @ (Va.mT @ G + G.mT @ Va) / 2  # noqa: E731
    torch.testing.assert_close(tangent(g), tangent(r), rtol=1e-10, atol=1e-12)


@pytest.mark.skipif("triton" not in PATHS, reason="needs the Triton path")
def test_subspace_split_over_n_matches_reference():
    """Few matrices on a large GPU (the CUDA launch choices, emulated on CPU): the n rows are split
    over programs, partials summed in order."""
    from sdekernels._core import emulate_cuda

    Va = torch.linalg.qr(torch.randn(1, 1100, 20, dtype=torch.float64))[0].to(DEVICE)
    Vb = torch.linalg.qr(torch.randn(1, 1100, 20, dtype=torch.float64))[0].to(DEVICE)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        with on_path("triton"), emulate_cuda():
            got = sk.subspace_distance(Va.to(dtype), Vb.to(dtype))
        torch.testing.assert_close(got.double(), ref.subspace_distance(Va, Vb), rtol=tol, atol=tol)
