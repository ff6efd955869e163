"""svd_topk, singular_values, spectral_partition (SPEC §1, §2) beyond the generic registry tests:
accuracy at the default settings on both solvers, seeding, the stabilised backward on degenerate
spectra, agreement with autograd through torch.linalg.svd (exact on full-rank matrices on the Gram
path), and the partition on spiked matrices."""
import math

import numpy as np
import pytest
import torch

import sdekernels
import sdekernels.ops._solvers as solvers
from sdekernels import reference as ref
from sdekernels.ops._matrices import planted, spiked
from sdekernels.ops._svd_backward import exact_backward_math, truncated_backward_math

from helpers import on_path, PATHS


def _gap_matrix(m, n, k, gen, gap=1.1, batch=(), low=0.05):
    """float64 U diag(σ) Vᵀ with σ_k/σ_{k+1} = gap and a tail decaying linearly to `low`·σ_{k+1}
    (slowly; low = 0.9: SPEC §1's flat tail); exact factors returned."""
    r = min(m, n)
    s = torch.cat([10 * 0.97 ** torch.arange(k, dtype=torch.float64),
                   10 * 0.97 ** (k - 1) / gap * torch.linspace(1, low, r - k, dtype=torch.float64)])
    U = torch.linalg.qr(torch.randn(*batch, m, r, generator=gen, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(*batch, n, r, generator=gen, dtype=torch.float64))[0]
    return (U * s) @ V.mT, U[..., :k], s[:k], V[..., :k]


def _sin(Q, Q_true):
    """sin of the largest principal angle between span(Q) and span(Q_true) (orthonormal columns)."""
    Q = torch.linalg.qr(Q.double())[0]
    return torch.linalg.matrix_norm(Q - Q_true @ (Q_true.mT @ Q), ord=2).max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,n,k", [(300, 200, 10), (60, 500, 16), (256, 256, 8), (300, 400, 12)])
def test_accuracy_gram_solver(m, n, k, dtype):
    """SPEC §1 at the defaults: σ within 1e-4 of float64 truth, sin∠ ≤ 1e-3 at σ_k/σ_{k+1} = 1.1."""
    F, U0, _, V0 = _gap_matrix(m, n, k, torch.Generator().manual_seed(m + n))
    Fl = F.to(dtype)
    U, S, V = sdekernels.svd_topk(Fl, k)
    assert U.dtype == S.dtype == V.dtype == dtype
    truth = torch.linalg.svdvals(Fl.double())[..., :k]  # truth of the rounded input
    tol = 1e-4 if dtype == torch.float32 else 1e-2   # bf16 outputs are rounded to 8 bits
    assert ((S.double() - truth).abs() / truth).max() <= tol
    U1, _, Vh1 = torch.linalg.svd(Fl.double(), full_matrices=False)
    assert _sin(U, U1[..., :k]) <= (1e-3 if dtype == torch.float32 else 2e-2)
    assert _sin(V, Vh1[..., :k, :].mT) <= (1e-3 if dtype == torch.float32 else 2e-2)


def test_accuracy_randomized_solver(monkeypatch):
    """The randomized subspace iteration (used beyond GRAM_MAX_R) on a decaying spectrum."""
    monkeypatch.setattr(solvers, "GRAM_MAX_R", 0)
    g = torch.Generator().manual_seed(0)
    m, n, k = 200, 300, 12
    s = 10 * 0.8 ** torch.arange(200, dtype=torch.float64)
    U0 = torch.linalg.qr(torch.randn(m, 200, generator=g, dtype=torch.float64))[0]
    V0 = torch.linalg.qr(torch.randn(n, 200, generator=g, dtype=torch.float64))[0]
    F = ((U0 * s) @ V0.T).float()
    U, S, V = sdekernels.svd_topk(F, k)
    assert ((S.double() - s[:k]).abs() / s[:k]).max() <= 1e-4
    assert _sin(U, U0[:, :k]) <= 1e-3 and _sin(V, V0[:, :k]) <= 1e-3
    with on_path(PATHS[-1]):
        Ut, St, Vt = sdekernels.svd_topk(F[:40, :60], 5, niter=4)
    Ua, Sa, Va = sdekernels.svd_topk(F[:40, :60], 5, niter=4)
    torch.testing.assert_close(St, Sa, atol=1e-5, rtol=1e-5)


def _errors(F, out, k):
    """(max relative σ error, sin∠ of the left and of the right top-k subspaces) against the float64 SVD of F."""
    U1, S1, Vh1 = torch.linalg.svd(F.double(), full_matrices=False)
    U, S, V = out
    err = float(((S.double() - S1[..., :k]).abs() / S1[..., :k]).max())
    return err, float(_sin(U, U1[..., :k])), float(_sin(V, Vh1[..., :k, :].mT))


def _count_products(monkeypatch, m, n):
    """A list that records each product over an m×n F (either orientation) the solvers run."""
    calls, mm_for = [], solvers.mm_for
    big = {(m, n), (n, m)}

    def counted(x):
        mm = mm_for(x)

        def run(a, b, dtype):
            calls.extend(t for t in (a, b) if tuple(t.shape[-2:]) in big)
            return mm(a, b, dtype)
        return run
    monkeypatch.setattr(solvers, "mm_for", counted)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["spiked", "gap"])
@pytest.mark.parametrize("m,n,k", [(600, 240, 8), (160, 500, 12), (900, 300, 32)])
def test_adaptive_meets_bar(m, n, k, kind, dtype):
    """SPEC §1 at the defaults on the adaptive path (no gradient): spiked features and the hard
    spectrum (σ_k/σ_{k+1} = 1.1, slowly decaying tail), tall and wide, both subspaces; float64 input
    is held to its own default tol (1e-10)."""
    g = torch.Generator().manual_seed(m + k)
    F = (spiked(0, m, n, k, 3.0, g) if kind == "spiked" else _gap_matrix(m, n, k, g)[0]).to(dtype)
    tol = solvers.default_tol(dtype)
    err, sin_u, sin_v = _errors(F, sdekernels.svd_topk(F, k), k)
    assert err <= tol and sin_u <= 10 * tol and sin_v <= 10 * tol, (err, sin_u, sin_v)


@pytest.mark.parametrize("case", ["spiked32", "spiked64", "gap32", "weak32", "flat32", "flat64"])
def test_bound_holds_at_every_iteration(case, monkeypatch):
    """The stopping rule's bound (ritz_error) is above the true error of the triplets it certifies
    (lifted or not) at every iteration, in tol units (σ error, sin∠/10 of both sides): the solver is
    forced to stop at the 1st, 2nd, … test (one test per iteration, or per Krylov block on the flat
    tails, where the first test sends the solver to the Krylov space) until its own rule would stop.
    There the bar is met, and one iteration fewer misses it (so the rule neither stops early nor,
    on these inputs, an iteration late)."""
    g = torch.Generator().manual_seed(3)
    m, n, k = 700, 260, 12
    F = {"spiked32": lambda: spiked(0, m, n, k, 3.0, g).float(), "spiked64": lambda: spiked(0, m, n, k, 3.0, g),
         "gap32": lambda: _gap_matrix(m, n, k, g, gap=1.25)[0].float(),
         "weak32": lambda: spiked(0, m, n, k, 1.2, g).float(),
         "flat32": lambda: _gap_matrix(m, n, k, g, low=0.9)[0].float(),
         "flat64": lambda: _gap_matrix(m, n, 4, g, low=0.9)[0]}[case]()
    k = 4 if case == "flat64" else k  # float64's tol 1e-10 needs a deeper basis: within r/2 for k = 4
    tol = solvers.default_tol(F.dtype)
    monkeypatch.setattr(solvers, "FIRST_TEST", 1)  # a test after every iteration
    if case.startswith("flat"):  # and after every Krylov block
        monkeypatch.setattr(solvers, "_krylov_blocks", lambda err, *a: np.zeros_like(err))
    else:
        monkeypatch.setattr(solvers, "_predicted_iterations", lambda err, *a: np.zeros_like(err))
    ritz_error = solvers.ritz_error
    rows = []
    for stop in range(1, 40):
        bounds = []

        def forced(RtR, s, k, unit, bounds=bounds, stop=stop):
            err, lift = ritz_error(RtR, s, k, unit)
            bounds.append(err[0])
            return np.full_like(err, 0.0 if len(bounds) == stop else 1e300), lift
        monkeypatch.setattr(solvers, "ritz_error", forced)
        err, sin_u, sin_v = _errors(F, sdekernels.svd_topk(F, k), k)
        true = max(err, sin_u / 10, sin_v / 10)
        rows.append((stop, bounds[-1], true))
        if bounds[-1] <= tol:
            break
    for stop, bound, true in rows:
        assert true <= bound, (stop, bound, true)
    # flat64: the block before the stop already meets the bar (true error 0.98·tol, its bound 1.4× above)
    assert rows[-1][1] <= tol and rows[-1][2] <= tol and rows[-2][2] > (tol / 2 if case == "flat64" else tol), rows[-2:]


def test_spiked_certified_after_three_iterations(monkeypatch):
    """Spiked features (the SDE setting): the sketch, three iterations and the tested Rayleigh–Ritz
    step: 9 products over F, the bar met on both sides; an int niter caps the iterations (2·niter + 2
    products where the bound is not met first) and still stops at the bound; tol sets the bar."""
    calls = _count_products(monkeypatch, 1500, 400)
    for m, n, k in [(1500, 400, 16), (400, 1500, 16)]:
        F = spiked(0, m, n, k, 3.0, torch.Generator().manual_seed(k)).float()
        calls.clear()
        err, sin_u, sin_v = _errors(F, sdekernels.svd_topk(F, k), k)
        assert len(calls) == 9 and err <= 1e-4 and sin_u <= 1e-3 and sin_v <= 1e-3, (len(calls), err, sin_u, sin_v)
        calls.clear()
        sdekernels.svd_topk(F, k, niter=8)
        assert len(calls) == 9
        for niter in range(4):
            calls.clear()
            sdekernels.svd_topk(F, k, niter=niter, tol=1e-9)
            assert len(calls) == 2 * niter + 2
        used = []
        for tol in (1e-2, 1e-3, 1e-5):  # tol: σ within tol, sin∠ within 10·tol; a smaller tol costs more
            calls.clear()
            err, sin_u, sin_v = _errors(F, sdekernels.svd_topk(F, k, tol=tol), k)
            assert err <= tol and sin_u <= 10 * tol and sin_v <= 10 * tol, (tol, err, sin_u, sin_v)
            used.append(len(calls))
        assert used == sorted(used) and used[0] < used[-1], used


def _krylov_runs(monkeypatch):
    """A list that records, for each Krylov run of the solver, (rows it was given, rows it left to the Gram solver)."""
    runs, krylov = [], solvers._krylov

    def spy(F3, *args):
        out, failed = krylov(F3, *args)
        runs.append((F3.shape[0], int(failed.sum())))
        return out, failed
    monkeypatch.setattr(solvers, "_krylov", spy)
    return runs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m,n,k", [(1000, 400, 8), (240, 800, 4)])
def test_krylov_meets_bar_on_flat_tail(m, n, k, dtype, monkeypatch):
    """SPEC §1's hard spectrum (σ_k/σ_{k+1} = 1.1, flat tail: ~60 subspace iterations): the solver
    turns to the Krylov space after its first test and certifies there (no Gram fallback), tall and
    wide, float32 and float64 (tol 1e-10: ~6 blocks of k + 1 columns, within r/2 for these k), both
    subspaces; an int niter keeps the subspace iteration."""
    runs = _krylov_runs(monkeypatch)
    F = _gap_matrix(m, n, k, torch.Generator().manual_seed(m + k), low=0.9)[0].to(dtype)
    tol = solvers.default_tol(dtype)
    err, sin_u, sin_v = _errors(F, sdekernels.svd_topk(F, k), k)
    assert runs == [(1, 0)]
    assert err <= tol and sin_u <= 10 * tol and sin_v <= 10 * tol, (err, sin_u, sin_v)
    runs.clear()
    sdekernels.svd_topk(F, k, niter=6)
    assert runs == []


def test_krylov_exhausted_space(monkeypatch):
    """rank(F) = 17, above the sketch's 16 columns and below the Krylov basis after one block (2·9):
    the next block is rounding noise, which must come out orthogonal to the basis; the run then
    certifies (a single projection pass left it far from orthogonal: a blown-up bound, the Gram fallback)."""
    runs = _krylov_runs(monkeypatch)
    g = torch.Generator().manual_seed(11)
    m, n, k, rank = 400, 300, 8, 17
    s = torch.cat([1.1 * torch.linspace(1.2, 1, k, dtype=torch.float64),
                   torch.linspace(1, 0.95, rank - k, dtype=torch.float64)])
    U = torch.linalg.qr(torch.randn(m, rank, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(n, rank, generator=g, dtype=torch.float64))[0]
    F = ((U * s) @ V.T).float()
    err, sin_u, sin_v = _errors(F, sdekernels.svd_topk(F, k), k)
    assert runs == [(1, 0)]
    assert err <= 1e-4 and sin_u <= 1e-3 and sin_v <= 1e-3, (err, sin_u, sin_v)


def test_krylov_rows_stop_independently(monkeypatch):
    """A batch of flat-tail rows with different gaps in one Krylov run (plus a spiked row certified
    before it): each row meets the bar, and the rows certified at different tests match their results alone."""
    runs = _krylov_runs(monkeypatch)
    g = torch.Generator().manual_seed(7)
    m, n, k = 500, 200, 8
    F = torch.stack([_gap_matrix(m, n, k, g, gap=1.1, low=0.9)[0], spiked(0, m, n, k, 3.0, g),
                     _gap_matrix(m, n, k, g, gap=1.2, low=0.9)[0]]).float()
    out = sdekernels.svd_topk(F, k)
    assert runs[0] == (2, 0)
    for i in range(3):
        err, sin_u, sin_v = _errors(F[i], [t[i] for t in out], k)
        assert err <= 1e-4 and sin_u <= 1e-3 and sin_v <= 1e-3, (i, err, sin_u, sin_v)
        for a, b in zip(out, sdekernels.svd_topk(F[i], k)):
            torch.testing.assert_close(a[i], b, rtol=1e-4, atol=1e-5)


def test_rows_stop_independently():
    """A batch whose rows stop at different iterations (lifted or not) gives each row's own result."""
    g = torch.Generator().manual_seed(5)
    m, n, k = 300, 120, 6
    F = torch.stack([spiked(0, m, n, k, 3.0, g), spiked(0, m, n, k, 1.2, g),
                     _gap_matrix(m, n, k, g, gap=1.3)[0]]).float()
    out = sdekernels.svd_topk(F, k)
    for i in range(3):
        for a, b in zip(out, sdekernels.svd_topk(F[i], k)):
            torch.testing.assert_close(a[i], b, rtol=1e-4, atol=1e-5)
        err, sin_u, sin_v = _errors(F[i], [t[i] for t in out], k)
        assert err <= 1e-4 and sin_u <= 1e-3 and sin_v <= 1e-3


def test_randomized_solver_parity_and_gradient(monkeypatch):
    monkeypatch.setattr(solvers, "GRAM_MAX_R", 0)
    g = torch.Generator().manual_seed(1)
    F = planted(2, 30, 20, 4, g, tail=1e-12).requires_grad_()
    U, S, V = sdekernels.svd_topk(F, 4)
    Ur, Sr, Vr = ref.svd_topk(F, 4)
    torch.testing.assert_close(S, Sr, atol=1e-9, rtol=1e-9)
    W = torch.randn(2, 30, 20, generator=g, dtype=torch.float64)
    loss = lambda U, S, V: ((U * S.unsqueeze(-2)) @ V.mT * W).sum() + (S ** 2).sum()  # noqa: E731
    g1, = torch.autograd.grad(loss(U, S, V), F)
    g2, = torch.autograd.grad(loss(Ur, Sr, Vr), F)
    torch.testing.assert_close(g1, g2, atol=1e-8, rtol=1e-6)


def test_generator_seeding(monkeypatch):
    monkeypatch.setattr(solvers, "GRAM_MAX_R", 0)  # the randomized solver, where the seed matters
    F = torch.randn(3, 40, 90)
    a = sdekernels.svd_topk(F, 4, niter=1, generator=torch.Generator().manual_seed(5))
    b = sdekernels.svd_topk(F, 4, niter=1, generator=torch.Generator().manual_seed(5))
    c = sdekernels.svd_topk(F, 4, niter=1, generator=torch.Generator().manual_seed(6))
    d, e = sdekernels.svd_topk(F, 4, niter=1), sdekernels.svd_topk(F, 4, niter=1)  # default: a fixed seed
    for x, y in zip(a + d, b + e):
        assert torch.equal(x, y)
    assert not torch.equal(a[1], c[1])


def test_topk_result_names_its_backward():
    """The spectral core's result says which gradient applies, and carries what that gradient needs."""
    F = planted(2, 30, 20, 4, torch.Generator().manual_seed(8))
    exact = solvers.topk(F, 4, backward="exact")
    trunc = solvers.topk(F, 4, backward="truncated")
    assert exact.backward == "exact" and exact.W.shape == (2, 20, 20) and exact.S_all.shape == (2, 20)
    assert trunc.backward == "truncated" and trunc.W.shape == (2, 0, 0) and trunc.S_all.shape == (2, 0)
    torch.testing.assert_close(exact.S, trunc.S, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(exact.S_all[:, :4], exact.S, atol=1e-12, rtol=1e-10)
    with pytest.raises(ValueError, match="backward"):
        solvers.topk(F, 4, backward="full")


def test_batch_element_independent_of_batch():
    F = torch.randn(4, 3, 20, 30, dtype=torch.float64)
    U, S, V = sdekernels.svd_topk(F, 5)
    U1, S1, V1 = sdekernels.svd_topk(F[2, 1], 5)
    torch.testing.assert_close(S[2, 1], S1)
    torch.testing.assert_close(U[2, 1], U1)


def _degenerate(gen):
    base = torch.linalg.qr(torch.randn(12, 8, generator=gen, dtype=torch.float64))[0]
    Vb = torch.linalg.qr(torch.randn(9, 8, generator=gen, dtype=torch.float64))[0]
    mk = lambda s: (base * torch.tensor(s, dtype=torch.float64)) @ Vb.T  # noqa: E731
    return {
        "repeated": mk([3, 2, 2, 2, 1, 0.5, 0.5, 0.1]),
        "near_equal": mk([3, 2 + 1e-13, 2, 1, 1 - 1e-12, 0.5, 0.2, 0.1]),
        "zero_values": mk([3, 2, 0, 0, 0, 0, 0, 0]),
        "rank_one": mk([1, 0, 0, 0, 0, 0, 0, 0]),
        "zero": torch.zeros(12, 9, dtype=torch.float64),
        "tiny": mk([3, 2, 1, 1, 0.5, 0.2, 0.1, 0.1]) * 1e-30,
        "huge": mk([3, 2, 1, 1, 0.5, 0.2, 0.1, 0.1]) * 1e30,
    }


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", list(_degenerate(torch.Generator())))
def test_backward_finite_on_degenerate_spectra(case, dtype):
    F = _degenerate(torch.Generator().manual_seed(0))[case].to(dtype)
    if dtype == torch.float32 and case == "huge":
        F = F * 1e-22  # keep the float32 entries finite
    g = torch.Generator().manual_seed(3)
    for k in (1, 4, 8):
        X = F.clone().requires_grad_()
        U, S, V = sdekernels.svd_topk(X, k)
        assert torch.isfinite(U).all() and torch.isfinite(S).all() and torch.isfinite(V).all()
        w = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(dtype) for t in (U, S, V)]
        loss = (U * w[0]).sum() + (S * w[1]).sum() + (V * w[2]).sum()
        gF, = torch.autograd.grad(loss, X)
        assert torch.isfinite(gF).all(), f"{case} k={k}"
    X = F.clone().requires_grad_()
    gS, = torch.autograd.grad((sdekernels.singular_values(X) * torch.arange(9.0, dtype=dtype)).sum(), X)
    assert torch.isfinite(gS).all()


def _exact_backward(U, S, V, gU, gS, gV):
    """The unstabilised formula (plain 1/(σ_l² − σ_j²) and 1/σ)."""
    A, B = U.mT @ gU, V.mT @ gV
    E = S.unsqueeze(-2) ** 2 - S.unsqueeze(-1) ** 2
    E = E + torch.eye(S.shape[-1], dtype=S.dtype)
    off = 1 - torch.eye(S.shape[-1])
    K = ((A - A.mT) * S.unsqueeze(-2) + S.unsqueeze(-1) * (B - B.mT)) / E * off + torch.diag_embed(gS)
    m, n = U.shape[-2], V.shape[-2]
    return (U @ K @ V.mT + (torch.eye(m, dtype=U.dtype) - U @ U.mT) @ gU / S.unsqueeze(-2) @ V.mT
            + U / S.unsqueeze(-2) @ gV.mT @ (torch.eye(n, dtype=U.dtype) - V @ V.mT))


def test_backward_matches_exact_formula_where_gaps_are_large():
    """1e-6 relative in float64 where all gaps exceed 1e-3·σ_1² (SPEC §1), C++ and ATen fallback alike."""
    g = torch.Generator().manual_seed(2)
    s = torch.tensor([3.0, 2.9994, 1.5, 1.0, 0.2, 0.03], dtype=torch.float64)  # smallest gap 3.6e-3·σ_1² > 1e-3·σ_1²
    U = torch.linalg.qr(torch.randn(3, 20, 6, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(3, 15, 6, generator=g, dtype=torch.float64))[0]
    S = s.expand(3, 6).contiguous()
    gU, gS, gV = (torch.randn(t.shape, generator=g, dtype=torch.float64) for t in (U, S, V))
    exact = _exact_backward(U, S, V, gU, gS, gV)
    py = truncated_backward_math(U, S, V, gU, gS, gV)
    scale = exact.abs().amax((-2, -1), keepdim=True)  # relative to the gradient's size (entries cancel)
    assert ((py - exact).abs() / scale).max() <= 1e-6
    if sdekernels._ext.available():
        cpp = torch.ops.sdekernels_C.svd_topk_bwd(U, S, V, gU, gS, gV)
        torch.testing.assert_close(cpp, py, atol=1e-13, rtol=1e-12)
        cpp32 = torch.ops.sdekernels_C.svd_topk_bwd(*(t.float() for t in (U, S, V, gU, gS, gV)))
        assert ((cpp32.double() - exact).abs() / scale).max() <= 1e-3  # float32 rounding of a 3.6e-3 gap


def test_gradient_matches_linalg_svd_for_sign_invariant_losses():
    """Well-separated spectrum of rank k (plus a negligible tail): equal to autograd through torch.linalg.svd."""
    g = torch.Generator().manual_seed(4)
    F = planted(2, 24, 18, 5, g, ratio=0.7, tail=1e-12)
    Wm = torch.randn(2, 24, 18, generator=g, dtype=torch.float64)
    Pw = torch.randn(2, 18, 18, generator=g, dtype=torch.float64)

    def loss(U, S, V):  # invariant to the sign of each pair
        rec = (U * S.unsqueeze(-2)) @ V.mT
        return (rec * Wm).sum() + (S.log() * torch.arange(1.0, 6.0)).sum() + ((V @ V.mT) * Pw).sum() + \
            ((U * U).sum(-2) * S).sum()

    X1, X2 = F.clone().requires_grad_(), F.clone().requires_grad_()
    g1, = torch.autograd.grad(loss(*sdekernels.svd_topk(X1, 5)), X1)
    U, S, Vh = torch.linalg.svd(X2, full_matrices=False)
    g2, = torch.autograd.grad(loss(U[..., :5], S[..., :5], Vh[..., :5, :].mT), X2)
    torch.testing.assert_close(g1, g2, atol=1e-8, rtol=1e-6)


def _full_rank_loss(g, m, n, batch=2):
    """A sign-invariant loss of (U_k, S_k, V_k): Σ w ⊙ U_k S_k V_kᵀ + ‖U_kᵀA‖² + ‖V_kᵀB‖² + Σ c_i σ_i²."""
    Wm = torch.randn(batch, m, n, generator=g, dtype=torch.float64)
    A = torch.randn(m, 4, generator=g, dtype=torch.float64)
    B = torch.randn(n, 4, generator=g, dtype=torch.float64)

    def loss(U, S, V):
        c = torch.arange(1.0, S.shape[-1] + 1, dtype=S.dtype)
        return ((U * S.unsqueeze(-2)) @ V.mT * Wm).sum() + ((U.mT @ A) ** 2).sum() + ((V.mT @ B) ** 2).sum() + \
            (S * S * c).sum()
    return loss


def _linalg_grad(F, k, loss):
    X = F.clone().requires_grad_()
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    return torch.autograd.grad(loss(U[..., :k], S[..., :k], Vh[..., :k, :].mT), X)[0]


@pytest.mark.parametrize("fallback", [False, True])
@pytest.mark.parametrize("m,n", [(40, 25), (25, 40), (30, 30)])
def test_gradient_exact_on_full_rank_matrices(m, n, fallback, monkeypatch):
    """Gram path, full-rank Gaussian F (σ_{k+1}/σ_k ~ 0.9): 1e-6 relative to autograd through
    torch.linalg.svd wherever every gap exceeds 1e-3·σ_1² (SPEC §1); C++ and ATen fallback alike."""
    if fallback:
        monkeypatch.setattr(sdekernels._ext, "available", lambda: False)
    g = torch.Generator().manual_seed(m * n)
    for k in (1, 3, 8):
        for _ in range(20):  # draw until all gaps exceed 1e-3·σ_1² (SPEC's condition)
            F = torch.randn(2, m, n, generator=g, dtype=torch.float64)
            s2 = torch.linalg.svdvals(F) ** 2
            if ((s2[:, :-1] - s2[:, 1:]) > 1e-3 * s2[:, :1]).all():
                break
        loss = _full_rank_loss(g, m, n)
        X = F.clone().requires_grad_()
        g1, = torch.autograd.grad(loss(*sdekernels.svd_topk(X, k)), X)
        g2 = _linalg_grad(F, k, loss)
        assert ((g1 - g2).abs().amax() / g2.abs().amax()) <= 1e-6, (m, n, k)


def test_truncated_formula_is_not_exact_on_full_rank():
    """Why the Gram path does not use the SPEC §1 truncated formula: on full-rank F it is far off."""
    g = torch.Generator().manual_seed(11)
    m, n, k = 30, 20, 3
    F = torch.randn(2, m, n, generator=g, dtype=torch.float64)
    loss = _full_rank_loss(g, m, n)
    U, S, V = (t.detach().requires_grad_() for t in sdekernels.svd_topk(F, k))
    gU, gS, gV = torch.autograd.grad(loss(U, S, V), (U, S, V))
    g2 = _linalg_grad(F, k, loss)
    trunc = truncated_backward_math(U.detach(), S.detach(), V.detach(), gU, gS, gV)
    assert ((trunc - g2).abs().amax() / g2.abs().amax()) > 1e-2


@pytest.mark.parametrize("m,n,k", [(7, 5, 2), (4, 9, 3), (6, 6, 6)])
def test_gradcheck_full_rank(m, n, k):
    g = torch.Generator().manual_seed(m + 10 * n + k)
    F = torch.randn(2, m, n, generator=g, dtype=torch.float64, requires_grad=True)
    loss = _full_rank_loss(g, m, n)
    assert torch.autograd.gradcheck(lambda X: loss(*sdekernels.svd_topk(X, k)), (F,), atol=1e-6, rtol=1e-5)


def test_exact_backward_cpp_matches_aten():
    if not sdekernels._ext.available():
        pytest.skip("extension unavailable")
    g = torch.Generator().manual_seed(12)
    R, r, N, k = 3, 7, 11, 3
    A = torch.randn(R, r, N, generator=g, dtype=torch.float64)
    lam, W = torch.linalg.eigh(A @ A.mT)
    W, sigma = W.flip(-1).contiguous(), lam.flip(-1).clamp_min(0).sqrt().contiguous()
    Ws = W[..., :k].contiguous()
    Wl = (A.mT @ Ws / sigma[:, None, :k]).contiguous()
    gWs, gS, gWl = (torch.randn(t.shape, generator=g, dtype=torch.float64) for t in (Ws, sigma[:, :k], Wl))
    args = (A, Ws, Wl, W, sigma, gWs, gS, gWl)
    py = exact_backward_math(*args)
    torch.testing.assert_close(torch.ops.sdekernels_C.svd_topk_exact_bwd(*args), py, atol=1e-12, rtol=1e-10)
    cpp32 = torch.ops.sdekernels_C.svd_topk_exact_bwd(*(t.float() for t in args))
    torch.testing.assert_close(cpp32.double(), py, atol=1e-4, rtol=1e-4)


def test_gradient_sign_invariant():
    """Flipping the sign of a pair flips gU, gV: the gradient of F is the same."""
    g = torch.Generator().manual_seed(6)
    F = planted(0, 10, 8, 3, g)
    U, S, V = (t.detach() for t in sdekernels.svd_topk(F, 3))
    gU, gS, gV = (torch.randn(t.shape, generator=g, dtype=torch.float64) for t in (U, S, V))
    flip = torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)
    a = truncated_backward_math(U, S, V, gU, gS, gV)
    b = truncated_backward_math(U * flip, S, V * flip, gU * flip, gS, gV * flip)
    torch.testing.assert_close(a, b, atol=1e-13, rtol=1e-12)


def test_singular_values_match_reference_aspect_ratios():
    g = torch.Generator().manual_seed(7)
    for m, n in ((5, 40), (30, 30), (70, 9)):
        F = torch.randn(2, m, n, generator=g)
        torch.testing.assert_close(sdekernels.singular_values(F), ref.singular_values(F), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- spectral_partition


def test_mp_median_matches_monte_carlo():
    rng = np.random.default_rng(0)
    for m, n in ((200, 800), (400, 400), (300, 600)):
        beta = m / n
        eig = np.concatenate([np.linalg.eigvalsh(X @ X.T / n) for X in rng.standard_normal((4, m, n))])
        assert abs(np.median(eig) - ref.mp_median(beta)) / ref.mp_median(beta) < 0.02, (m, n)
    assert abs(ref.mp_median(1.0) - 0.6527759416) < 1e-8


@pytest.mark.parametrize("m,n", [(60, 200), (120, 120), (300, 80)])
@pytest.mark.parametrize("s", [1, 3, 6])
def test_partition_finds_planted_spike(m, n, s):
    g = torch.Generator().manual_seed(m * n + s)
    F = spiked(4, m, n, s, 2.5, g)
    S = sdekernels.singular_values(F)
    p = sdekernels.spectral_partition(S, m, n)
    found = p.n_strong + p.n_weak
    # Every spike is found; the top noise value crosses the MP edge now and then at finite size
    # (Tracy–Widom fluctuations), so one extra in four draws is tolerated.
    assert (found >= s).all() and (found == s).sum() >= 3, (p.n_strong, p.n_weak)
    r = ref.spectral_partition(S, m, n)
    for a, b in zip((p.n_strong, p.n_weak, p.tau_noise, p.tau_strong, p.sigma_hat, *p.energy),
                    (r.n_strong, r.n_weak, r.tau_noise, r.tau_strong, r.sigma_hat, *r.energy)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(sum(p.energy), torch.ones(4, dtype=torch.float64))


def _fields(p):
    return p.n_strong, p.n_weak, p.tau_noise, p.tau_strong, p.sigma_hat, *p.energy


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_partition_cpu_kernel_matches_aten_formula(dtype, monkeypatch):
    """The C++ pass over sorted rows and the ATen formula (CUDA, no extension; SDE's enhance) agree."""
    import sdekernels._ext as ext

    if not ext.available():
        pytest.skip("needs the extension")
    g = torch.Generator().manual_seed(3)
    S = torch.cat([sdekernels.singular_values(spiked(5, 90, 40, 3, 2.5, g)), torch.zeros(1, 40),
                   torch.full((1, 40), float("nan")), torch.rand(1, 40, generator=g, dtype=torch.float64)]).to(dtype)
    cases = [(S, 90, 40, 1.5), (S[:, :1], 1, 7, 0.0), (S[2:4], 40, 40, 3.0)]
    for x, m, n, c in cases:
        fused = sdekernels.spectral_partition(x, m, n, iqr_c=c)
        monkeypatch.setattr(ext, "available", lambda: False)
        aten = sdekernels.spectral_partition(x, m, n, iqr_c=c)
        monkeypatch.undo()
        for a, b in zip(_fields(fused), _fields(aten)):
            torch.testing.assert_close(a, b, atol=0, rtol=4 * torch.finfo(dtype).eps, equal_nan=True)


def test_partition_edge_cases():
    z = sdekernels.spectral_partition(torch.zeros(3, 5), 5, 9)
    assert (z.n_strong == 1).all() and (z.n_weak == 0).all()
    assert torch.equal(z.energy[0], torch.ones(3))
    one = sdekernels.spectral_partition(torch.tensor([[2.0]]), 1, 1)
    assert one.n_strong.item() == 1 and one.energy[0].item() == 1.0
    unsorted = torch.tensor([0.5, 9.0, 1.0, 0.7, 0.6, 0.65])
    a = sdekernels.spectral_partition(unsorted, 6, 10)
    b = sdekernels.spectral_partition(unsorted.sort(descending=True).values, 6, 10)
    assert a.n_strong == b.n_strong and a.n_weak == b.n_weak
    assert math.isclose(float(a.tau_noise), float(b.tau_noise))


def test_mp_median_library_and_reference_agree():
    """The MP median exists twice, written independently: a closed-form CDF in the library, Gauss–Legendre
    quadrature in the reference; μ_1 solves φ + sin φ = π/2 in the reference's parametrisation."""
    from sdekernels.ops._partition import mp_median

    for beta in (1e-4, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0):
        assert mp_median(beta) == pytest.approx(ref.mp_median(beta), rel=1e-12), beta
    phi = 1.0
    for _ in range(60):  # Newton on φ + sin φ − π/2
        phi -= (phi + math.sin(phi) - math.pi / 2) / (1 + math.cos(phi))
    assert mp_median(1.0) == pytest.approx(2 * (1 - math.cos(phi)), rel=1e-14)
    with pytest.raises(ValueError, match="beta"):
        mp_median(0.0)
