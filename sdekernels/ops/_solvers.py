"""The top-k solvers of the spectral core (private; SPEC §1): every eigendecomposition of the package.

topk(F3, k) returns the top-k triplets of a batch of matrices F3 [R, m, n] (TopK), worked on the
short side A = F (m <= n) or Fᵀ, r = min(m, n), and finished by a float64 Rayleigh–Ritz step. Up to
GRAM_MAX_R, and wherever the exact gradient is asked, the basis comes from the eigenpairs of the
short-side Gram (gram_eigh); otherwise from an adaptive randomized block subspace iteration
(subspace_basis) that stops on a-posteriori bounds from the Ritz residuals (ritz_error), continues
in a block Krylov space (_krylov) where it converges slowly, and hands a row to the Gram solver
where a cost model predicts that cheaper. torch.linalg.eigh / eigvalsh are called from this module
alone (python_tests/test_layout.py holds that); the constants of the cost model are named below,
and benchmarks/NOTES.md gives the measurements that set them.
"""
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._core import use_triton, work_dtype
from ._gemm import mm_for, triton_bmm
from ._scaling import safe_inv

OVERSAMPLE = 8      # SPEC §1's default extra columns of the randomized basis (q = k + OVERSAMPLE)
GRAM_MAX_R = 2048   # up to this r = min(m, n) the Gram eigen-solver (exact, measured faster here) is used
DEFAULT_SEED = 0x5DE
BACKWARDS = ("exact", "truncated")
SMALL_R = 32        # up to this r topk takes the Gram basis whatever the backward
FAST_GRAM_R = 256   # above this r a float32 input's Gram and eigh run in float32 (fast_gram)
FIRST_TEST = 2      # the iteration of subspace_basis's first test (see there)
KRYLOV_AFTER = 4    # subspace_basis turns to the Krylov space where more iterations than this are predicted
MAX_ITERATIONS = 200  # subspace_basis's cap with niter=None
# The cost model of subspace_basis and _krylov, in the flops of an iteration's two products
# (4·r·N·q), fitted to CPU times (benchmarks/NOTES.md, "The cost model of svd_topk"):
GRAM_PRODUCT_COST = 1.9   # the Gram solver's products: GRAM_PRODUCT_COST·r²·N
EIGH_COST_F32 = 5.3       # its r×r eigh: EIGH_COST_F32·r³ in float32 (fast_gram) ...
EIGH_COST_F64 = 11.0      # ... EIGH_COST_F64·r³ in float64
KRYLOV_EIGH_COST = 20.0   # the n×n float64 eigh of a Krylov test on n columns: KRYLOV_EIGH_COST·n³


def eigh_desc(G: Tensor):
    """Eigenpairs of symmetric G, eigenvalues descending and clamped at 0."""
    lam, W = torch.linalg.eigh(G)
    return lam.flip(-1).clamp_min(0), W.flip(-1)


def use_gram(r: int) -> bool:
    return r <= GRAM_MAX_R


def gram_eigh(F3: Tensor, finite: Tensor, vectors: bool = True, fast: bool = False):
    """Eigenpairs (descending) of the Gram of the short side of F3 [R, m, n] (or the eigenvalues
    alone), accumulated and decomposed in float64, or in float32 when `fast` (for callers whose
    accuracy a Rayleigh–Ritz step or float32 outputs bound anyway).
    Rows not `finite` get the eigenpairs of 0 (LAPACK raises on NaN)."""
    m, n = F3.shape[-2:]
    A, At = (F3, F3.mT) if m <= n else (F3.mT, F3)
    acc = torch.float32 if fast else torch.float64
    if use_triton(F3):
        G = triton_bmm(A, At, acc)
    else:
        Ad = A.to(acc)  # one up-cast copy for both operands
        G = Ad @ Ad.mT
    G = torch.where(finite[:, None, None], G, 0.0)
    if vectors:
        return eigh_desc(G)
    return torch.linalg.eigvalsh(G).flip(-1).clamp_min(0)


def fast_gram(r: int, dtype: torch.dtype) -> bool:
    """float32 Gram and eigh for float32/bf16/fp16 input above r = FAST_GRAM_R (fp64 below: cheap and exact)."""
    return r > FAST_GRAM_R and work_dtype(dtype) == torch.float32


# ---------------------------------------------------------------- randomized iteration, Rayleigh–Ritz


def _omega(F3: Tensor, rows: int, cols: int, seed: int, dtype) -> Tensor:
    gen = torch.Generator(device=F3.device).manual_seed(seed)
    return torch.randn((1, rows, cols), generator=gen, device=F3.device, dtype=dtype)


def default_tol(dtype: torch.dtype) -> float:
    """Target of the a-posteriori bound on the relative σ error (sin∠ is held to 10× it): SPEC §1's bars
    (1e-4 on σ, 1e-3 on sin∠) for float32 and below; near float64 accuracy for float64 input."""
    return 1e-10 if dtype == torch.float64 else 1e-4


def ritz_error(RtR: np.ndarray, s: np.ndarray, k: int, unit: float):
    """(err, lift): a-posteriori error bound per row in units of the σ tolerance (SPEC §1 allows 10×
    more on sin∠ than on σ), and whether it bounds the lifted triplets (_triplets) rather than the
    Ritz triplets. Inputs: the Gram RtR [R, k1, k1] = RᵀR of the residual block
    R = AAᵀU − U diag(σ²) of the top k1 = min(k + 1, q) Ritz vectors U = QW (columns
    σ_i(A v_i − σ_i u_i); Aᵀu_i = σ_i v_i holds exactly after Rayleigh–Ritz), the block's Ritz values
    s [R, q] (descending), and `unit` ≈ √N·u (the rounding of a product over N terms). Bounds:
    - σ: the relative error min(ρ_i, η_i²/(2σ_i²δ_i)), ρ_i = ‖A v_i − σ_i u_i‖/σ_i (Weyl),
      η_i = σ_i‖A v_i − σ_i u_i‖ the residual of u_i for AAᵀ and δ_i the distance of σ_i² to the nearest
      other Ritz value (Kato–Temple for AAᵀ). The lifted σ' (σ_i(A V_k)) lie between σ_i and the
      true values (interlacing), so the bound holds for them too.
    - sin∠ (the largest principal angle) of the top-k subspaces, asked where σ_k/σ_{k+1} >= 1.1
      (SPEC §1; divided by 10). Ritz: ‖R_k‖₂/(σ_k² − σ_{k+1}²) (Davis–Kahan for AAᵀ; the long side
      Aᵀ U_k is closer). Lifted: with λ̂ = σ_{k+1}² + η_{k+1} (the (k+1)-th Ritz value raised by its
      residual: the Ritz value alone underestimates λ_{k+1}), tan∠(U_k) <= t = ‖R_k‖₂/(σ_k² − λ̂)
      (the tan θ theorem), and one more product shrinks tan∠ by the ratio of the gap's two sides:
      ≤ t·(λ̂/σ_k²)^½ for the long side V_k = AᵀU_kΣ⁻¹, ≤ t·λ̂/σ_k² for the short side AV_k (the
      larger one is taken), plus unit·σ_1/σ_k for the rounding of A V_k.
    Host arithmetic on a few numbers per row (numpy, and torch's CPU eigvalsh of R_kᵀR_k: no device
    dispatch per operation)."""
    R, q = s.shape
    t = np.sqrt(np.maximum(np.diagonal(RtR, axis1=-2, axis2=-1), 0.0))   # ‖σ_i r_i‖
    sk = s[:, :k]
    pos = sk > 0
    s2 = np.where(pos, sk * sk, 1.0)
    rho = np.where(pos, t[:, :k] / s2, 0.0)
    gaps = np.full((R, q + 1), np.inf)
    gaps[:, 1:-1] = s[:, :-1] ** 2 - s[:, 1:] ** 2
    near = np.minimum(gaps[:, :k], gaps[:, 1:k + 1])  # δ_i: the Ritz values are sorted
    lift = np.zeros(R, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        err = np.minimum(rho, np.where(pos, t[:, :k] ** 2 / (2 * s2 * np.maximum(near, 1e-300)), 0.0)).max(-1)
        if q == k:
            return err, lift
        top, nxt = s[:, k - 1] ** 2, s[:, k] ** 2
        asked = (s[:, k - 1] >= 1.1 * s[:, k]) & (top > nxt)
        # ‖R_k‖₂ by torch's eigvalsh: numpy's took 16 ms at k = 128 here (torch's < 1 ms)
        norm2 = np.sqrt(np.maximum(torch.linalg.eigvalsh(torch.from_numpy(RtR[:, :k, :k]))[:, -1].numpy(), 0.0))
        ritz = norm2 / np.where(asked, top - nxt, 1.0)
        lam = nxt + t[:, k]
        tan = np.where(top > lam, norm2 / (top - lam), np.inf)
        lifted = tan * np.sqrt(lam / top) + unit * s[:, 0] / s[:, k - 1]
        lift = asked & (lifted < ritz)
        return np.maximum(err, np.where(asked, np.minimum(ritz, lifted) / 10, 0.0)), lift


def _predicted_iterations(err: np.ndarray, s: np.ndarray, k: int, tol: float) -> np.ndarray:
    """Iterations still needed per row: the bound shrinks by the rate (σ_q/σ_k)² per iteration."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.clip((s[:, -1] / np.maximum(s[:, k - 1], 1e-300)) ** 2, 1e-300, 1 - 1e-9)
        return np.log(tol / np.maximum(err, 1e-300)) / np.log(rate)


def _gram_basis(F3: Tensor, q: int, w) -> Tensor:
    """Top-q eigenvectors of the short-side Gram (the Rayleigh–Ritz step restores full accuracy)."""
    R, r = F3.shape[0], min(F3.shape[-2:])
    ones = torch.ones(R, dtype=torch.bool, device=F3.device)
    return gram_eigh(F3, ones, fast=fast_gram(r, F3.dtype))[1][:, :, :q].to(w)


def _gram64(B: Tensor) -> Tensor:
    Bd = B.double()
    return Bd.mT @ Bd


def _rayleigh_ritz(B: Tensor):
    """Eigenpairs (descending, float64) of BᵀB, B = AᵀQ [R, long, q]: λ = σ², the Ritz values of Q."""
    return eigh_desc(_gram64(B))


def _triplets(Q: Tensor, B: Tensor, lam: Tensor, W: Tensor, k: int, lifted=None):
    """Top-k triplets (short [R, r, k], σ [R, k] float64, long [R, N, k]) from the Rayleigh–Ritz
    eigenpairs (λ, W) of Q, B = AᵀQ: the Ritz triplets u = Qw, v = Bw/σ; or, for the rows where
    lifted = (M, RtR, lift) says so, the SVD of A V_k = M Σ⁻¹ (M = ABW_k, its Gram
    Σ² + Σ⁻¹RᵀRΣ⁻¹ from the residuals, as U_kᵀR = 0): u = A V_k P/σ', v = V_k P, σ'. Its short side is
    one product further along than Q (ritz_error's bound), at no product over F."""
    w = Q.dtype
    S = lam[:, :k].sqrt()
    inv = safe_inv(S, S[:, :1])
    Wk = W[:, :, :k]
    if lifted is None or not lifted[2].any():
        return Q @ Wk.to(w), S, B @ (Wk * inv.unsqueeze(-2)).to(w)
    M, RtR, lift = lifted
    lam2, P = eigh_desc(torch.diag_embed(S * S) + inv[:, :, None] * RtR[:, :k, :k] * inv[:, None, :])
    S2 = lam2.sqrt()
    if not lift.all():  # the other rows keep their Ritz triplets (P = I)
        sel = torch.from_numpy(lift).to(Q.device)
        P = torch.where(sel[:, None, None], P, torch.eye(k, dtype=P.dtype, device=P.device))
        S2 = torch.where(sel[:, None], S2, S)
    short = M[..., :k] @ (inv[:, :, None] * P * safe_inv(S2, S2[:, :1])[:, None, :]).to(w)
    if not lift.all():
        short = torch.where(sel[:, None, None], short, Q @ Wk.to(w))
    return short, S2, B @ ((Wk * inv.unsqueeze(-2)) @ P).to(w)


def _conditioned(B: Tensor, G: Tensor):
    """(Z, R): B = Z·R with R [R, q, q] upper triangular and Z well conditioned, in B's dtype: Z = B·R⁻¹
    with R the Cholesky factor of the float64 Gram G = BᵀB (CholeskyQR, cheaper than Householder:
    benchmarks/NOTES.md), Householder QR where G is not numerically positive definite. Z needs no exact
    orthonormality: it conditions the product A·Z, and A·B = (A·Z)·R holds either way."""
    L, info = torch.linalg.cholesky_ex(G)
    if bool(info.any()):
        return torch.linalg.qr(B)
    R = L.mT.to(B.dtype)
    return torch.linalg.solve_triangular(R, B, upper=True, left=False), R


def _krylov_blocks(err: np.ndarray, s: np.ndarray, k: int, tol: float) -> np.ndarray:
    """Krylov blocks still needed per row, from the Ritz values s of a Krylov basis: a block multiplies
    the Chebyshev polynomial at λ_k over [0, λ_{k+1}] by x + √(x² − 1) = e^arccosh(x), x = 2(σ_k/σ_{k+1})² − 1
    (2.43 at the gap 1.1, where a subspace iteration gains 1.21), and the σ errors, which the bound
    follows first, by its square."""
    with np.errstate(divide="ignore", invalid="ignore"):
        x = 2 * (s[:, k - 1] / np.maximum(s[:, k], 1e-300)) ** 2 - 1
        return np.log(np.maximum(err, 1e-300) / tol) / np.maximum(2 * np.arccosh(np.clip(x, 1, 1e300)), 1e-3)


def _krylov_cost(blocks: np.ndarray, n: int, b: int, r: int, cost_col: float) -> np.ndarray:
    """The cost model's price of `blocks` more Krylov blocks of b columns on a basis of n (units of
    subspace_basis): two products of b columns each (cost_col per column), the re-orthogonalisation
    (4·r·n² over a run that ends at n columns) and two tests there (KᵀAAᵀK, 2·r·n², and its float64
    eigh, KRYLOV_EIGH_COST·n³)."""
    end = n + np.ceil(blocks) * b
    return (blocks * b * cost_col + 4.0 * r * (end * end - n * n)
            + 2 * (2.0 * r * end * end + KRYLOV_EIGH_COST * end ** 3))


def _krylov(F3: Tensor, K0: Tensor, B0: Tensor, Y0: Tensor, k: int, tol: float, unit: float, cost_col: float,
            cost_gram: float):
    """Randomized block Krylov (Musco & Musco 2015) on the short side A of F3 [R, m, n], from the
    orthonormal block K0 [R, r, b] with B0 = AᵀK0 and Y0 = AAᵀK0: the basis K = [K0, K1, …], each
    block the orthonormalised AAᵀ of the previous one (projected off the basis and QR'd twice: where
    the Krylov space is exhausted, as for rank(A) < the basis, the new columns are rounding noise,
    which a single pass leaves far from orthogonal to K; orthonormal noise is harmless to Rayleigh–Ritz),
    Rayleigh–Ritz over the whole basis (H = KᵀY, Y = AAᵀK; a float64 eigh), tested by ritz_error on
    its top k + 1 Ritz vectors (residuals YW − KWΛ, no product over F) and lifted as there
    (_triplets). The first test follows the first new block (the Ritz values are then close enough
    to predict the rest: σ_k/σ_{k+1} 1.05–1.08 for the true 1.1); the next comes where _krylov_blocks
    predicts the bound to hold for the first open row (rounded down), at most 4 blocks on. A row
    stops (its triplets frozen) as soon as its bound holds. Returns (triplets, failed): rows whose
    predicted remaining Krylov cost (_krylov_cost, cost_col: a column of the two products) exceeds
    the Gram solver's (cost_gram), or whose basis would pass r/2 columns, are `failed` (their
    triplets untested) and left to the Gram solver."""
    mm = mm_for(F3)
    w = K0.dtype
    R, m, n = F3.shape
    r, b = K0.shape[-2:]
    A, At = (F3, F3.mT) if m <= n else (F3.mT, F3)
    Ks, Bs, Ys = [K0], [B0], [Y0]
    done, failed = np.zeros(R, dtype=bool), np.zeros(R, dtype=bool)
    out, test, k1 = None, 1, k + 1
    while True:
        K = torch.cat(Ks, -1)
        cols = K.shape[-1]
        if len(Ks) - 1 >= test or cols + b > r // 2:
            Y, Bk = torch.cat(Ys, -1), torch.cat(Bs, -1)
            H = (K.mT @ Y).double()
            lam, W = eigh_desc((H + H.mT) / 2)
            W1 = W[:, :, :k1]
            M = Y @ W1.to(w)                                            # AAᵀu: columns σ_i A v_i
            res = (M - K @ (W1 * lam[:, None, :k1]).to(w)).double()     # σ_i (A v_i − σ_i u_i)
            RtR = res.mT @ res
            s = lam.sqrt().cpu().numpy()
            err, lift = ritz_error(RtR.cpu().numpy(), s[:, :k1 + 1], k, unit)
            ok = (err <= tol) | ~np.isfinite(err)
            ahead = _krylov_blocks(err, s, k, tol)
            stuck = (cols + b > r // 2) | (_krylov_cost(ahead, cols, b, r, cost_col) > cost_gram)
            new = ~done & (ok | stuck)
            failed |= new & ~ok
            if new.any():
                out = _merge(out, _triplets(K, Bk, lam, W, k, (M, RtR, lift & new)), new)
            done |= new
            if done.all():
                return out, failed
            test = len(Ks) - 1 + int(min(max(math.floor(ahead[~done].min()), 1), 4))
        Kn = Ys[-1]
        for _ in range(2):  # normalised between the passes: orthogonal to K even where Ys[-1] lies in its span
            Kn = torch.linalg.qr(Kn - K @ (K.mT @ Kn))[0]
        Bn = mm(At, Kn, w)
        Ks.append(Kn)
        Bs.append(Bn)
        Ys.append(mm(A, Bn, w))


def _merge(out, step, new: np.ndarray):
    """The triplets `step` on the rows `new`, `out` elsewhere (out None: step)."""
    if out is None or new.all():
        return step
    sel = torch.from_numpy(new).to(step[0].device)
    return tuple(torch.where(sel.reshape(-1, *[1] * (a.dim() - 1)), a, b) for a, b in zip(step, out))


def _rows(F3: Tensor, rows: np.ndarray):
    """(index tensor, F3 restricted to the rows) without a copy where every row is taken."""
    idx = torch.from_numpy(np.flatnonzero(rows)).to(F3.device)
    return idx, F3 if rows.all() else F3[idx]


def subspace_basis(F3: Tensor, k: int, q: int, niter: int | None, tol: float, seed: int):
    """Top-k triplets (short [R, r, k], σ [R, k] float64, long [R, N, k]) of the short side A of
    F3 [R, m, n] whose error bounds meet `tol` (ritz_error), by randomized block subspace iteration
    from the sketch Q = qr(AΩ): B = AᵀQ, B = Z·R_B (_conditioned), Y = AZ, Q ← qr(Y).

    A test costs a q×q eigh (Rayleigh–Ritz: u_i = Q w_i, v_i = B w_i/σ_i) and the residuals, which
    come free from Y: with A B = Y R_B, σ_i(A v_i − σ_i u_i) = Y R_B w_i − σ_i² u_i; Y also lifts the
    short side one product further (_triplets). The first test follows iteration FIRST_TEST = 2 (a
    test costs about a product at r ≈ 768, and spiked spectra never meet the bar after one); the next
    comes where the rate (σ_q/σ_k)² predicts the bound to hold, at most it + 2 iterations on (a poor
    prediction costs at most about twice the iterations, with a logarithmic number of tests). A row
    stops (its triplets frozen, so they never depend on its neighbours) as soon as its bound holds.
    niter caps the iterations (the last one is not tested: Ritz triplets). niter=None runs until
    converged (at most MAX_ITERATIONS); a row predicted to need more than KRYLOV_AFTER more iterations
    continues in the Krylov space of its top k + 1 Ritz vectors instead (_krylov), where 4 blocks fit
    in r/2 columns; else a row whose predicted remaining iterations would cost more than the Gram
    eigen-solver takes that solver (as does a Krylov run predicted to cost more than it). The cost
    model counts the flops of an iteration's two products (4·r·N·q) against the Gram solver's
    GRAM_PRODUCT_COST·r²·N plus an r×r eigh of EIGH_COST_F32·r³ (float32) or EIGH_COST_F64·r³ (float64)."""
    mm = mm_for(F3)
    w = work_dtype(F3.dtype)
    R, m, n = F3.shape
    r, N = min(m, n), max(m, n)
    A, At = (F3, F3.mT) if m <= n else (F3.mT, F3)
    Q = torch.linalg.qr(mm(A, _omega(F3, N, q, seed, w), w))[0]
    cost_it = 4.0 * r * N * q
    cost_gram = GRAM_PRODUCT_COST * r * r * N + (EIGH_COST_F32 if fast_gram(r, F3.dtype) else EIGH_COST_F64) * r ** 3
    unit = math.sqrt(N) * torch.finfo(w).eps
    k1 = min(k + 1, q)
    cap = MAX_ITERATIONS if niter is None else niter
    done, gram, krylov = (np.zeros(R, dtype=bool) for _ in range(3))
    out, starts = None, []
    test = min(FIRST_TEST, cap)  # the next iteration whose result is tested
    for it in range(cap + 1):
        B = mm(At, Q, w)                                       # [R, N, q]
        if it < test:
            Q = torch.linalg.qr(mm(A, _conditioned(B, _gram64(B))[0], w))[0]
            continue
        G = _gram64(B)
        lam, Wr = eigh_desc(G)
        lifted = None
        if it == cap:
            new = ~done
        else:
            Z, Rb = _conditioned(B, G)
            Y = mm(A, Z, w)                                    # A B R_B⁻¹, [R, r, q]
            W1 = Wr[:, :, :k1]
            M = Y @ (Rb @ W1.to(w))                            # A B W: columns σ_i A v_i
            res = (M - Q @ (W1 * lam[:, None, :k1]).to(w)).double()   # σ_i (A v_i − σ_i u_i)
            RtR = res.mT @ res
            s = lam.sqrt().cpu().numpy()
            err, lift = ritz_error(RtR.cpu().numpy(), s, k, unit)
            ok = (err <= tol) | ~np.isfinite(err)
            more = _predicted_iterations(err, s, k, tol)
            if niter is None:
                open_ = ~done & ~ok
                to_kry = open_ & (more > KRYLOV_AFTER) & (4 * k1 <= r // 2)
                gram |= open_ & ~to_kry & (more * cost_it > cost_gram)
                if to_kry.any():  # its first block: the top k + 1 Ritz vectors, their products at hand
                    starts.append((to_kry, Q @ W1.to(w), B @ W1.to(w), M))
                krylov |= to_kry
            new = ~done & (ok | gram | krylov)
            lifted = (M, RtR, lift & new & ~gram & ~krylov)
        if new.any():  # every row is new once (at the latest at the cap)
            out = _merge(out, _triplets(Q, B, lam, Wr, k, lifted), new)
        done |= new
        if done.all():
            break
        # the next test: where the slowest row should have converged (rounded down: a test costs no
        # product, and the bound falls faster than the rate predicts while the angles are large),
        # at most it + 2 iterations on
        ahead = more[~done].min()
        test = it + int(min(max(math.floor(ahead), 1), it + 2, cap - it)) if np.isfinite(ahead) else it + 1
        Q = torch.linalg.qr(Y)[0]
    for rows, K0, B0, Y0 in starts:
        idx, Fk = _rows(F3, rows)
        res, failed = _krylov(Fk, K0[idx], B0[idx], Y0[idx], k, tol, unit, cost_it / q, cost_gram)
        for a, b in zip(out, res):
            a[idx] = b
        gram[np.flatnonzero(rows)[failed]] = True
    if gram.any():
        idx, Fg = _rows(F3, gram)
        Qg = _gram_basis(Fg, q, w)
        Bg = mm(Fg.mT if m <= n else Fg, Qg, w)
        for a, b in zip(out, _triplets(Qg, Bg, *_rayleigh_ritz(Bg), k)):
            a[idx] = b
    return out


@dataclass(frozen=True)
class TopK:
    """Top-k triplets U [R, m, k], S [R, k], V [R, n, k] (work dtype) and the backward that applies:
    "exact": W [R, r, r] (the short-side Gram eigenbasis) and S_all [R, r] (every σ) are kept for
    exact_grad_short; "truncated": they are empty ([R, 0, 0], [R, 0]) and truncated_grad applies."""
    U: Tensor
    S: Tensor
    V: Tensor
    W: Tensor
    S_all: Tensor
    backward: str


def topk(F3: Tensor, k: int, *, niter: int | None = None, oversample: int = 8, seed: int = DEFAULT_SEED,
         tol: float | None = None, backward: str = "truncated") -> TopK:
    """The top-k triplets of F3 [R, m, n] (non-finite rows zeroed) in the work dtype.

    Works on the short side: A = F (m <= n) or Fᵀ, so the basis Q [R, r, q], q = min(k + oversample, r),
    is the small one. backward="exact": the Gram path (its full eigenbasis and every σ kept for the exact
    gradient); "truncated": the adaptive subspace iteration (subspace_basis, tol: default_tol), or the
    Gram basis anyway when q >= r or r <= SMALL_R. The triplets come from Rayleigh–Ritz (the SVD of QᵀA
    through its q×q Gram in float64, _triplets), on the iteration's certified rows lifted one product on.
    """
    if backward not in BACKWARDS:
        raise ValueError(f"backward must be one of {BACKWARDS}, got {backward!r}")
    mm = mm_for(F3)
    w = work_dtype(F3.dtype)
    R, m, n = F3.shape
    r = min(m, n)
    At = F3.mT if m <= n else F3
    q = min(k + oversample, r)
    exact = backward == "exact"
    W_all, S_all = F3.new_empty((R, 0, 0), dtype=w), F3.new_empty((R, 0), dtype=w)
    if exact or q >= r or r <= SMALL_R:
        # Top-q eigenvectors of the short-side Gram AAᵀ (float32 for large r: the Rayleigh–Ritz step
        # below restores full accuracy of σ and of the subspace).
        lam, W = gram_eigh(F3, torch.ones(R, dtype=torch.bool, device=F3.device), fast=fast_gram(r, F3.dtype))
        Q = W[:, :, :q].to(w)
        if exact:
            W_all, S_all = W.to(w), lam.sqrt().to(w)
        B = mm(At, Q, w)
        short, S, long_ = _triplets(Q, B, *_rayleigh_ritz(B), k)
    else:
        short, S, long_ = subspace_basis(F3, k, q, niter, default_tol(F3.dtype) if tol is None else tol, seed)
    U, V = (short, long_) if m <= n else (long_, short)
    return TopK(U, S.to(w), V, W_all, S_all, backward)
