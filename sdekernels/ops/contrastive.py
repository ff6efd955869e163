"""Contrastive losses (SPEC §6): `info_nce` and `siglip_loss` without the B×B logits.

Both are written for rows X [nx, d] against columns Y [ny, d] whose label of row i is column
i + off: the global loss (nx = ny, off = 0) and open_clip's local loss (a rank's rows against
the gathered columns, off = rank·nx) are the same kernels.
info_nce forward: per row, an online log-sum-exp over column tiles of s·x_i·y_j; the transposed
direction (symmetric loss) is the same kernel with the roles swapped. siglip forward: per row
block, Σ_j softplus(−y_ij L_ij) over column tiles, L = s·x·yᵀ + b. Backward (both) by
recomputation: each row block rebuilds its logit tiles, forms dL/dlogits tile by tile and
accumulates dX = s·D·Y in registers over all column tiles (one store per row block); dY is the
same kernel on the swapped roles. Memory O(B·d) on Triton (CUDA, or CPU under the interpreter),
O(chunk·B) on the CPU path, which walks over row chunks with ATen matmuls (siglip's CPU path
forms its gradients in the same pass as the loss, since it has no row normaliser).
Tensor cores: bf16/fp16 enter tl.dot as they are (fp32 accumulation), fp32 as tf32x3, fp64 as
DMMA. Reference: reference/contrastive.py. Tests: python_tests/test_ops.py (generic),
test_contrastive.py, test_open_clip.py.
"""
import math

import torch
from torch import Tensor

from . import _triton as kt
from .. import dist
from .._fallback import ref
from .._core import (HAS_TRITON, check, check_domain, check_real, check_shape, cuda_like, grad_like,
                     max_abs, next_pow2, pow2_of, rows, use_triton, work_dtype)
from ..dist import batch_sizes, gather_batch, rank_offset
from ..registry import F64, OpInfo, Sample, rand, randn, register

NORM_EPS = 1e-12  # ẑ = z / max(‖z‖, eps) after scaling z by a power of two to max|z| in [1, 2): eps only acts at z = 0
_RAW_LOG2 = 40  # rows with max|z| in [2^-40, 2^40] are normalised unscaled on CPU (see _norm_parts)
CHUNK_ELEMS = 1 << 21  # logits entries held at once by the CPU path (8 MB in float32)
KEEP_ELEMS = 1 << 24  # the CPU forward keeps up to this many logits (64 MB in float32): no recomputation GEMM
# CUDA tiles {fp64?: ...}; BD caps the DX columns a gradient program holds in registers
CUDA_TILES = {torch.float32: dict(BM=64, BN=32, BK=32, BD=128, num_warps=8),  # tf32x3: three dots' operands
              torch.bfloat16: dict(BM=64, BN=64, BK=32, BD=128, num_warps=8),
              torch.float16: dict(BM=64, BN=64, BK=32, BD=128, num_warps=8),
              torch.float64: dict(BM=32, BN=32, BK=16, BD=64, num_warps=4)}

if HAS_TRITON:
    import triton
    import triton.language as tl

    from ._triton import mma

    @triton.jit
    def _load(P, idx, n, k, d, stride):
        """Rows idx (< n) of an [n, d] matrix with unit column stride at columns k (< d); 0 outside."""
        return tl.load(P + idx[:, None] * stride + k[None, :], mask=(idx[:, None] < n) & (k[None, :] < d), other=0)

    @triton.jit
    def _tile_dot(X, Y, i, j, nx, ny, d, sxn, syn, PREC: tl.constexpr, ACC: tl.constexpr,
                  BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        """X[i] · Y[j]ᵀ for a BM×BN tile, over d in chunks of BK (masked rows/columns read 0)."""
        qk = tl.zeros([BM, BN], ACC)
        for k0 in range(0, d, BK):
            k = k0 + tl.arange(0, BK)
            qk = mma(qk, _load(X, i, nx, k, d, sxn), tl.trans(_load(Y, j, ny, k, d, syn)), PREC)
        return qk

    @triton.jit
    def _neg_log_sigmoid(z):
        """−log σ(z) = max(−z, 0) + log1p(e^{−|z|}), log1p by the compensated log(1 + u)."""
        u = tl.exp(-tl.abs(z))
        w = 1.0 + u
        return tl.maximum(-z, 0.0) + tl.where(w == 1.0, u, tl.log(w) * (u / (w - 1.0)))

    @triton.jit(do_not_specialize=["nx", "ny", "off"])
    def _fwd_kernel(X, Y, S, BIAS, OUT, nx, ny, d, sxr, sxn, syr, syn, off, SIGLIP: tl.constexpr,
                    PREC: tl.constexpr, ACC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        # X [R, nx, d], Y [R, ny, d] with strides (sxr, sxn, 1), (syr, syn, 1): row-strided views are read in place.
        # Program (r, rb), rows i of block rb. info_nce: OUT[r, i] = log Σ_j exp(s·x_i·y_j), online over
        # column tiles. siglip: OUT[r, rb] = Σ_{i, j} −log σ(y_ij (s·x_i·y_j + b)), y = +1 at j = i + off, else −1.
        r = tl.program_id(0).to(tl.int64)
        rb = tl.program_id(1)
        i = rb * BM + tl.arange(0, BM)
        X, Y = X + r * sxr, Y + r * syr
        s = tl.load(S).to(ACC)
        if SIGLIP:
            b = tl.load(BIAS).to(ACC)
            tot = tl.zeros([BM, BN], ACC)
        else:
            m = tl.full([BM], float("-inf"), ACC)
            acc = tl.zeros([BM], ACC)
        for j0 in range(0, ny, BN):
            j = j0 + tl.arange(0, BN)
            qk = _tile_dot(X, Y, i, j, nx, ny, d, sxn, syn, PREC, ACC, BM, BN, BK)
            if SIGLIP:
                L = s * qk + b
                z = tl.where(j[None, :] == i[:, None] + off, L, -L)
                tot += tl.where((i[:, None] < nx) & (j[None, :] < ny), _neg_log_sigmoid(z), 0.0)
            else:
                logits = tl.where(j[None, :] < ny, s * qk, float("-inf"))
                m_new = tl.maximum(m, tl.max(logits, 1))
                acc = acc * tl.exp(m - m_new) + tl.sum(tl.exp(logits - m_new[:, None]), 1)
                m = m_new
        if SIGLIP:
            tl.store(OUT + r * tl.num_programs(1) + rb, tl.sum(tl.sum(tot, 1), 0))
        else:
            tl.store(OUT + r * nx + i, m + tl.log(acc), mask=i < nx)

    @triton.jit(do_not_specialize=["nx", "ny", "off"])
    def _grad_kernel(X, Y, S, BIAS, LSE_X, LSE_Y, DX, DS, nx, ny, d, sxr, sxn, syr, syn, off, c_x, c_y,
                     SIGLIP: tl.constexpr, USE_X: tl.constexpr, USE_Y: tl.constexpr, PREC: tl.constexpr,
                     ACC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr):
        # Program (r, rb, kb) owns DX[i, kb·BD : (kb+1)·BD] for the rows i of block rb:
        # DX_i = s Σ_j D_ij y_j, accumulated in registers over all column tiles and stored once, with
        # info_nce: D_ij = c_x exp(l_ij − lse_x_i) + c_y exp(l_ij − lse_y_j) − (c_x + c_y)[j = i + off],
        # siglip:   D_ij = −c_x y_ij σ(−y_ij L_ij)  (l = s·x·y, L = l + b), recomputed tile by tile.
        # DS[r, rb] gets (Σ D_ij x_i·y_j, Σ D_ij): the block's share of the gradients of s and b.
        r = tl.program_id(0).to(tl.int64)
        rb = tl.program_id(1)
        kb = tl.program_id(2)
        i = rb * BM + tl.arange(0, BM)
        kd = kb * BD + tl.arange(0, BD)
        X, Y = X + r * sxr, Y + r * syr
        s = tl.load(S).to(ACC)
        if SIGLIP:
            b = tl.load(BIAS).to(ACC)
        else:
            lse_x = tl.load(LSE_X + r * nx + i, mask=i < nx, other=0).to(ACC)
        dx = tl.zeros([BM, BD], ACC)
        ds = tl.zeros([BM], ACC)
        db = tl.zeros([BM], ACC)
        for j0 in range(0, ny, BN):
            j = j0 + tl.arange(0, BN)
            qk = _tile_dot(X, Y, i, j, nx, ny, d, sxn, syn, PREC, ACC, BM, BN, BK)
            label = j[None, :] == i[:, None] + off
            if SIGLIP:
                L = s * qk + b
                z = tl.where(label, L, -L)
                D = tl.where(label, -c_x, c_x) / (1.0 + tl.exp(z))
            else:
                logits = s * qk
                D = tl.zeros([BM, BN], ACC)
                if USE_X:
                    D += c_x * tl.exp(logits - lse_x[:, None])
                if USE_Y:
                    lse_y = tl.load(LSE_Y + r * ny + j, mask=j < ny, other=0).to(ACC)
                    D += c_y * tl.exp(logits - lse_y[None, :])
                D = tl.where(label, D - (c_x + c_y), D)
            D = tl.where((i[:, None] < nx) & (j[None, :] < ny), D, 0.0)
            ds += tl.sum(D * qk, 1)
            db += tl.sum(D, 1)
            y = _load(Y, j, ny, kd, d, syn)
            dx = mma(dx, D.to(y.dtype), y, PREC)
        msk = (i[:, None] < nx) & (kd[None, :] < d)
        tl.store(DX + r * nx * d + i[:, None] * d + kd[None, :], s * dx, mask=msk)
        out = DS + 2 * (r * tl.num_programs(1) + rb)
        tl.store(out, tl.sum(ds, 0), mask=kb == 0)
        tl.store(out + 1, tl.sum(db, 0), mask=kb == 0)


def _config(x: Tensor) -> dict:
    """Tiles, warps and dot precision of the kernels reading x (its dtype and device). CUDA: tensor-core tiles
    (tf32x3 for fp32, native bf16/fp16, DMMA for fp64) sized from the sm_90 compile report (no
    spills); the interpreter runs numpy per program, so there larger tiles mean fewer programs."""
    d = x.shape[-1]
    cfg = dict(PREC=kt.precision(x.dtype), ACC=kt.acc(x.dtype))
    if cuda_like(x):
        tiles = CUDA_TILES[x.dtype]
        return dict(cfg, **{**tiles, "BD": kt.tile(d, tiles["BD"])})
    return dict(cfg, BM=32, BN=32, BK=32, BD=next_pow2(max(d, 16)), num_warps=1)


def _kernel_input(x: Tensor, dtype: torch.dtype) -> Tensor:
    """What the Triton kernels read: the normalised rows, rounded back to bf16/fp16 for the tensor cores."""
    return x.to(dtype) if dtype in kt.LOW else x


def _fwd_triton(x: Tensor, y: Tensor, s: Tensor, bias: Tensor | None, off: int, dtype: torch.dtype) -> Tensor:
    """info_nce (bias None): the row log-sum-exps [R, nx]; siglip: per row block Σ −log σ [R, blocks]."""
    R, nx, d = x.shape
    siglip = bias is not None
    out_dtype = x.dtype
    x, y = _kernel_input(x, dtype), _kernel_input(y, dtype)
    cfg = _config(x)
    cfg.pop("BD")
    grid = (R, triton.cdiv(nx, cfg["BM"]))
    out = x.new_empty(grid if siglip else (R, nx), dtype=out_dtype)
    _fwd_kernel[grid](x, y, s, bias if siglip else s, out, nx, y.shape[1], d, *x.stride()[:2], *y.stride()[:2], off,
                      SIGLIP=siglip, **cfg)
    return out


def _grad_triton(x: Tensor, y: Tensor, s: Tensor, bias: Tensor | None, lse_x: Tensor | None, lse_y: Tensor | None,
                 off: int, w_x: float, w_y: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(DX [R, nx, d], [Σ D·x·y, Σ D]) of one side; w_x, w_y: exact weights of the two softmax terms
    (1/n is applied by the caller: the kernel's float arguments are fp32)."""
    R, nx, d = x.shape
    dx = x.new_empty(x.shape)  # contiguous, whatever x's strides
    x, y = _kernel_input(x, dtype), _kernel_input(y, dtype)
    cfg = _config(x)
    grid = (R, triton.cdiv(nx, cfg["BM"]), triton.cdiv(d, cfg["BD"]))
    parts = dx.new_empty((R, grid[1], 2))
    _grad_kernel[grid](x, y, s, s if bias is None else bias, s if lse_x is None else lse_x,
                       s if lse_y is None else lse_y, dx, parts, nx, y.shape[1], d, *x.stride()[:2], *y.stride()[:2],
                       off, w_x, w_y,
                       SIGLIP=bias is not None, USE_X=lse_x is not None, USE_Y=lse_y is not None, **cfg)
    return dx, parts.sum((0, 1))


# ---------------------------------------------------------------- shared pieces


def _norm_parts(z: Tensor, normalize: bool):
    """(ẑ [R, B, d] rows in the working dtype (unit column stride), L2-normalised when asked; (c, ‖z/c‖)
    per row, which the backward reuses, or None)."""
    x = rows(z, 2).to(work_dtype(z.dtype))
    if not normalize:
        return x, None
    top = max_abs(x, (-1,))
    # On CPU (a check costs no device sync there; not where CPU tensors take the GPU's path: CUDA
    # emulation and the aot capture): where no square can overflow or underflow, ‖z‖ itself equals
    # c·‖z/c‖ to rounding and the passes that divide by c are saved (c = 1).
    if not cuda_like(x) and x.shape[-1] and bool(((top >= 2.0 ** -_RAW_LOG2) & (top <= 2.0 ** _RAW_LOG2)).all()):
        norm = x.norm(dim=-1, keepdim=True)
        return x / norm, (x.new_ones(()), norm)
    c = pow2_of(top)
    x = x / c  # exact; ‖x‖ >= 1 unless x = 0: the eps is relative (SPEC §10), no overflow
    norm = x.norm(dim=-1, keepdim=True)
    return x.div_(norm.clamp_min(NORM_EPS)), (c, norm)


def _normalized(z: Tensor, normalize: bool) -> Tensor:
    return _norm_parts(z, normalize)[0]


def _rowdot(x: Tensor, y: Tensor) -> Tensor:
    """Σ_k x_ik y_ik per row [..., n, d] -> [..., n] in one pass (no product of x's size)."""
    return torch.einsum("...k,...k->...", x, y)


def _normalize_backward(z: Tensor, zh: Tensor, g: Tensor, normalize: bool, parts=None) -> Tensor:
    """dL/dz from dL/dẑ through ẑ = z / max(‖z‖, eps); `parts` from _norm_parts, else recomputed."""
    if not normalize:
        return g
    c, norm = parts if parts is not None else _norm_parts(z, True)[1]  # ‖z‖ = c·‖z/c‖
    dot = torch.where(norm > NORM_EPS, _rowdot(zh, g)[..., None], 0.0)
    return torch.addcmul(g, zh, dot, value=-1).div_(norm.clamp_min(NORM_EPS) * c)  # (g − ẑ(ẑ·g)) / ‖z‖


def _chunk(n: int) -> int:
    return max(1, min(n, CHUNK_ELEMS // max(n, 1)))


def _n_rows(z: Tensor) -> int:
    """R·nx: the rows a loss is averaged over (every leading batch dim times the batch)."""
    return math.prod(z.shape[:-1])


def _keeps_logits(z_a: Tensor, z_b: Tensor) -> bool:
    """CPU path with at most KEEP_ELEMS logits: the forward keeps them for the backward, which then
    saves one of its three B²·d GEMMs (a fixed budget: memory stays O(B·d) as B grows)."""
    return not use_triton(z_a) and _n_rows(z_a) * z_b.shape[-2] <= KEEP_ELEMS


def _scalar(value, name: str, z: Tensor, default=None, positive: bool = False) -> Tensor:
    """A one-element tensor on z's device (a user tensor as is, so that it gets its gradient);
    positive: a number must be > 0, a tensor is checked in debug mode (a value check syncs)."""
    if isinstance(value, Tensor):
        check(value, name, min_dim=0)
        if value.numel() != 1 or value.device != z.device:
            raise ValueError(f"{name} must be a one-element tensor on {z.device}, "
                             f"got shape {tuple(value.shape)} on {value.device}")
        if positive:
            check_domain(value, name, lambda s: s > 0, "positive")
        return value
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number or a tensor, got {value!r} ({type(value).__name__})")
    value = check_real(value, name, 0.0, open_lo=True) if positive else check_real(value, name)
    return torch.full((), value, dtype=work_dtype(z.dtype), device=z.device)


def _check_pairs(z_a: Tensor, z_b: Tensor, gather=False):
    """(gather checked, whether it spans a process group of several ranks). There a rank may hold
    no rows: it still takes part in every collective, so that its peers do not wait for it."""
    gather = dist.check_gather(gather)
    spread = bool(gather) and dist.world() > 1
    own = 1 if spread and z_a.dim() >= 2 else 2  # the dims that must be non-empty
    check(z_a, "z_a", min_dim=own)
    check(z_b, "z_b", min_dim=own, like=z_a)
    check_shape(z_b, "z_b", z_a.shape, " (that of z_a)")
    return gather, spread


def _empty_loss(z_a: Tensor, z_b: Tensor, *scalars) -> Tensor:
    """An empty batch: the mean over no pair is taken as 0, with zero gradients for every input."""
    zero = (z_a.sum() + z_b.sum()).to(work_dtype(z_a.dtype))
    for s in scalars:
        zero = zero + s.sum() * 0
    return (zero * 0).to(z_a.dtype)


# ---------------------------------------------------------------- info_nce


def _direct_exp(a: Tensor, b: Tensor, s: Tensor) -> bool:
    """Whether exp(logits) itself is a normal number of the dtype: |logits| <= s·max‖a_i‖·max‖b_j‖
    (Cauchy–Schwarz) <= 0.45·log(max) (s up to ~40 for unit features in float32: temperatures
    above 0.025). Then the row and column sums of E = exp(logits) neither overflow nor underflow,
    one exp pass gives both directions' log-sum-exps, and the backward's softmaxes are E scaled
    per row and per column."""
    bound = float(s) * float(a.norm(dim=-1).amax()) * float(b.norm(dim=-1).amax())
    return bound <= 0.45 * math.log(torch.finfo(a.dtype).max)


def _lse_cpu(a: Tensor, b: Tensor, s: Tensor, symmetric: bool, keep: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Row (and column) log-sum-exps over row chunks: O(chunk·ny) memory. With `keep`, all of
    E = exp(logits) from one GEMM (the logits where _direct_exp does not hold) for the backward."""
    R, nx, _ = a.shape
    step = _chunk(b.shape[1])
    if _direct_exp(a, b, s):
        a_s = a * s
        kept = torch.matmul(a_s, b.mT).exp_() if keep else a.new_empty(0)
        if keep:
            sum_r, sum_c = kept.sum(-1), kept.sum(-2)
        else:
            sum_r, sum_c = a.new_empty((R, nx)), a.new_zeros((R, b.shape[1]))
            for i in range(0, nx, step):
                E = torch.matmul(a_s[:, i:i + step], b.mT).exp_()
                sum_r[:, i:i + step] = E.sum(-1)
                if symmetric:
                    sum_c += E.sum(-2)
        return sum_r.log_(), sum_c.log_() if symmetric else a.new_empty(0), kept
    lse_r = a.new_empty((R, nx))
    lse_c = a.new_full((R, b.shape[1]), float("-inf")) if symmetric else a.new_empty(0)
    kept = torch.matmul(a, b.mT).mul_(s) if keep else a.new_empty(0)
    for i in range(0, nx, step):
        logits = kept[:, i:i + step] if keep else torch.matmul(a[:, i:i + step], b.mT).mul_(s)
        lse_r[:, i:i + step] = torch.logsumexp(logits, -1)
        if symmetric:
            lse_c = torch.logaddexp(lse_c, torch.logsumexp(logits, -2))
    return lse_r, lse_c, kept


def _grad_cpu(a, b, s, lse_r, lse_c, c_r, c_c, kept, off, g):
    """(dL/da, dL/db, dL/ds) for the loss gradient g, over row chunks with ATen matmuls: two
    chunk×ny buffers at a time, from the forward's kept E (or logits) or by recomputing them.
    D holds s·g·dL/dlogits, so that D·b and Dᵀ·a are the gradients without a pass to scale them;
    for an s outside [2^-20, 2^20] (where folding it in could underflow, or lose dL/ds at s = 0)
    D holds g·dL/dlogits and s is applied after."""
    R, nx, _ = a.shape
    da, db = torch.empty_like(a), torch.zeros_like(b)
    ds = a.new_zeros(())
    step = _chunk(b.shape[1])
    fold = 2.0 ** -20 <= float(s) <= 2.0 ** 20
    two_sided, f = bool(c_c), s * g if fold else g
    c_r, c_c = c_r * f, c_c * f
    direct = _direct_exp(a, b, s)  # the forward's choice: same inputs, same answer
    if direct:  # D = E·(u_i + v_j): the softmaxes as E = exp(logits) rescaled per row and per column
        a_s = a * s if not kept.numel() else None
        u = lse_r.neg().exp_().mul_(c_r)[..., None]
        v = lse_c.neg().exp_().mul_(c_c)[:, None, :] if two_sided else None
        bufs = [a.new_empty((R, min(step, nx), b.shape[1])) for _ in range(2)]  # reused: no page faults per chunk
    for i in range(0, nx, step):
        a_i, rows = a[:, i:i + step], slice(i, i + step)
        if direct:
            recomputed = not kept.numel()
            E = torch.matmul(a_s[:, rows], b.mT).exp_() if recomputed else kept[:, rows]
            uv, D = (t if t.shape[1] == E.shape[1] else torch.empty_like(E) for t in bufs)
            w = torch.add(u[:, rows], v, out=uv) if v is not None else u[:, rows]  # one-sided: v = 0
            D = torch.mul(E, w, out=E if recomputed else D)
        else:  # the logits, turned into dL/dlogits in place
            D = kept[:, rows].clone() if kept.numel() else torch.matmul(a_i, b.mT).mul_(s)
            col = (D - lse_c[:, None, :]).exp_().mul_(c_c) if two_sided else None
            D.sub_(lse_r[:, rows, None]).exp_().mul_(c_r)
            if col is not None:
                D += col
                del col
        torch.diagonal(D, offset=i + off, dim1=-2, dim2=-1).sub_(c_r + c_c)
        Db = torch.matmul(D, b, out=da[:, rows]) if R == 1 else torch.matmul(D, b)
        ds += _rowdot(a_i, Db).sum()  # (s·)g·Σ_ij dL/dlogits_ij a_i·b_j without a second chunk×ny product
        if R != 1:
            da[:, rows] = Db
        db.baddbmm_(D.mT, a_i)
    return (da, db, ds / s) if fold else (da.mul_(s), db.mul_(s), ds)


@torch.library.custom_op("sdekernels::info_nce_loss", mutates_args=())
def _info_nce(z_a: Tensor, z_b: Tensor, scale: Tensor, offset: int, normalize: bool,
              symmetric: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    # rows z_a [..., nx, d] against columns z_b [..., ny, d]; the label of row i is column i + offset
    a, b = _normalized(z_a, normalize), _normalized(z_b, normalize)
    s = scale.reshape(1).to(a.dtype)
    R, nx, _ = a.shape
    logits = a.new_empty(0)
    if use_triton(a):
        lse_r = _fwd_triton(a, b, s, None, offset, z_a.dtype)
        lse_c = _fwd_triton(b, a, s, None, -offset, z_a.dtype) if symmetric else a.new_empty(0)
        # as the kernels saw them
        a, b = _kernel_input(a, z_a.dtype).to(a.dtype), _kernel_input(b, z_a.dtype).to(a.dtype)
    else:
        lse_r, lse_c, logits = _lse_cpu(a, b, s, symmetric, _keeps_logits(z_a, z_b))
    diag = s * _rowdot(a, b[:, offset:offset + nx])
    w = 0.5 if symmetric else 1.0
    loss = (w / (R * nx)) * (lse_r - diag).sum()
    if symmetric:
        loss = loss + (w / (R * nx)) * (lse_c - diag).sum()
    return loss.to(z_a.dtype), lse_r, lse_c, logits


@_info_nce.register_fake
def _(z_a, z_b, scale, offset, normalize, symmetric):
    R, nx, ny = math.prod(z_a.shape[:-2]), z_a.shape[-2], z_b.shape[-2]
    w = work_dtype(z_a.dtype)
    lse_c = z_a.new_empty((R, ny) if symmetric else (0,), dtype=w)
    logits = z_a.new_empty((R, nx, ny) if _keeps_logits(z_a, z_b) else (0,), dtype=w)
    return z_a.new_empty(()), z_a.new_empty((R, nx), dtype=w), lse_c, logits


@torch.library.custom_op("sdekernels::info_nce_loss_backward", mutates_args=())
def _info_nce_backward(z_a: Tensor, z_b: Tensor, scale: Tensor, lse_r: Tensor, lse_c: Tensor, logits: Tensor,
                       grad: Tensor, offset: int, normalize: bool, symmetric: bool) -> tuple[Tensor, Tensor, Tensor]:
    (a, parts_a), (b, parts_b) = _norm_parts(z_a, normalize), _norm_parts(z_b, normalize)
    s = scale.reshape(1).to(a.dtype)
    R, nx, _ = a.shape
    w = 0.5 if symmetric else 1.0
    if use_triton(a):
        wc = w if symmetric else 0.0
        da, parts = _grad_triton(a, b, s, None, lse_r, lse_c if symmetric else None, offset, w, wc, z_a.dtype)
        db, _ = _grad_triton(b, a, s, None, lse_c if symmetric else None, lse_r, -offset, wc, w, z_a.dtype)
        f = grad.to(a.dtype) / (R * nx)
        da, db, ds = da * f, db * f, parts[0] * f
    else:
        c = w / (R * nx)
        da, db, ds = _grad_cpu(a, b, s, lse_r, lse_c, c, c if symmetric else 0.0, logits, offset, grad.to(a.dtype))
    da = _normalize_backward(z_a, a, da, normalize, parts_a).reshape(z_a.shape)
    db = _normalize_backward(z_b, b, db, normalize, parts_b).reshape(z_b.shape)
    ds = ds.reshape(scale.shape)
    return grad_like(da, z_a), grad_like(db, z_b), grad_like(ds, scale)


@_info_nce_backward.register_fake
def _(z_a, z_b, scale, lse_r, lse_c, logits, grad, offset, normalize, symmetric):
    return torch.empty_like(z_a), torch.empty_like(z_b), torch.empty_like(scale)


def _info_nce_setup(ctx, inputs, output):
    z_a, z_b, scale, ctx.offset, ctx.normalize, ctx.symmetric = inputs
    _, lse_r, lse_c, logits = output
    ctx.mark_non_differentiable(lse_r, lse_c, logits)
    ctx.set_materialize_grads(False)  # no zero-filled gradients for them (the logits: B² floats)
    ctx.save_for_backward(z_a, z_b, scale, lse_r, lse_c, logits)


def _info_nce_grad(ctx, grad, *_):
    if grad is None:  # an undefined loss gradient (the others are never materialised)
        return (None,) * 6
    z_a, z_b, scale, lse_r, lse_c, logits = ctx.saved_tensors
    grads = _info_nce_backward(z_a, z_b, scale, lse_r, lse_c, logits, grad, ctx.offset, ctx.normalize, ctx.symmetric)
    return (*grads, None, None, None)


_info_nce.register_autograd(_info_nce_grad, setup_context=_info_nce_setup)


def local_info_nce(z_a: Tensor, z_b: Tensor, all_a: Tensor, all_b: Tensor, scale: Tensor, offset: int,
                   normalize: bool = True, symmetric: bool = True) -> Tensor:
    """open_clip's ClipLoss(local_loss=True): the local rows z_a against the gathered columns all_b
    (labels offset by `offset`), and z_b against all_a; each cross-entropy a mean over the local rows.
    A rank without rows contributes 0, through the gathered columns that the other ranks use (their
    backward is a collective)."""
    if z_a.shape[-2] == 0:
        return _empty_loss(all_a if symmetric else all_a.detach(), all_b, scale)
    loss = _info_nce(z_a, all_b, scale, offset, normalize, False)[0]
    if symmetric:
        loss = 0.5 * (loss + _info_nce(z_b, all_a, scale, offset, normalize, False)[0])
    return loss


def info_nce(z_a: Tensor, z_b: Tensor, temperature: float = 0.07, *, logit_scale=None, normalize: bool = True,
             symmetric: bool = True, gather: bool | str = False, local_loss: bool = False) -> Tensor:
    """InfoNCE of paired features z_a, z_b [..., B, d] without the B×B logits (SPEC §6).

    logits = s·ẑ_a ẑ_bᵀ with s = logit_scale if given (a float, or a one-element tensor that
    receives its gradient; already exponentiated, as open_clip passes it) else 1/temperature;
    ẑ = z/‖z‖ when normalize. Returns ½[CE(logits, diag) + CE(logitsᵀ, diag)] (the first term
    alone when not symmetric), averaged over the B rows and any leading batch dims.
    gather=True under torch.distributed: the loss of the batch all-gathered (with gradient) over
    the process group, identical on every rank. With local_loss=True as well: this rank's rows
    against the gathered columns, both ways (open_clip's ClipLoss(local_loss=True)); the mean of
    the ranks' losses is the global loss. gather="ring": the same losses and gradients without
    gathering, memory O(B_local·d) per rank (sdekernels/ops/_ring.py). The ranks' batch sizes may
    differ (0 included); a rank without rows still takes part in every collective.
    """
    gather, spread = _check_pairs(z_a, z_b, gather)
    temperature = check_real(temperature, "temperature", 0.0, open_lo=True)
    scale = _scalar(logit_scale, "logit_scale", z_a, 1.0 / temperature, positive=True)
    normalize, symmetric = bool(normalize), bool(symmetric)
    if spread and gather == "ring":
        from ._ring import ring_info_nce

        return ring_info_nce(z_a, z_b, scale, normalize, symmetric, bool(local_loss))
    if spread:
        sizes = batch_sizes(z_a)
        all_a, all_b = gather_batch(z_a, sizes=sizes), gather_batch(z_b, sizes=sizes)
        if local_loss and all_a.numel():
            return local_info_nce(z_a, z_b, all_a, all_b, scale, rank_offset(z_a, sizes), normalize, symmetric)
        z_a, z_b = all_a, all_b
    if z_a.numel() == 0:
        return _empty_loss(z_a, z_b, scale)
    return _info_nce(z_a, z_b, scale, 0, normalize, symmetric)[0]


# ---------------------------------------------------------------- siglip_loss


def _siglip_cpu(a: Tensor, b: Tensor, s: Tensor, bias: Tensor, off: int, c: float, need_grad: bool):
    """Σ −log σ(y·L)·c over row chunks, and (need_grad) the gradients of a, b, s and the bias in the
    same pass: G = dL/dlogits = −c·y·σ(−y·L) needs no normaliser over the row, so nothing is
    recomputed. Four passes over each chunk: the GEMM (scale and bias in its epilogue), log σ,
    its sum, and σ(−z) = −expm1(log σ(z))."""
    R, nx, _ = a.shape
    loss = a.new_zeros(())
    da, db, gs, gb = torch.empty_like(a), torch.zeros_like(b), a.new_zeros(()), a.new_zeros(())
    step = _chunk(b.shape[1])
    s_val, minus_bias = float(s), (-bias).reshape(1, 1, 1)
    for i in range(0, nx, step):
        a_i = a[:, i:i + step]
        Z = torch.baddbmm(minus_bias, a_i, b.mT, alpha=-s_val)  # z = y·L: −L off the labels, L on them
        torch.diagonal(Z, offset=i + off, dim1=-2, dim2=-1).neg_()
        H = torch.nn.functional.logsigmoid(Z)
        del Z
        loss -= H.sum()
        if not need_grad:
            continue
        H.expm1_()  # −σ(−z); with the labels' sign flipped, G = −c·H
        torch.diagonal(H, offset=i + off, dim1=-2, dim2=-1).neg_()
        gb -= c * H.sum()
        Hb = torch.matmul(H, b)
        gs -= c * (a_i * Hb).sum()
        da[:, i:i + step] = Hb.mul_(-c * s_val)
        db.baddbmm_(H.mT, a_i, alpha=-c)
    return loss * c, (da, db.mul_(s_val), gs, gb)


def _siglip_saves(z_a: Tensor, need_grad: bool) -> bool:
    """The CPU path forms the gradients in the forward pass; the Triton path recomputes in the backward."""
    return need_grad and not use_triton(z_a)


@torch.library.custom_op("sdekernels::siglip_loss", mutates_args=())
def _siglip(z_a: Tensor, z_b: Tensor, scale: Tensor, bias: Tensor, offset: int, normalize: bool,
            need_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    # rows z_a [..., nx, d] against columns z_b [..., ny, d]; the label of row i is column i + offset
    a, b = _normalized(z_a, normalize), _normalized(z_b, normalize)
    s, t = scale.reshape(1).to(a.dtype), bias.reshape(1).to(a.dtype)
    c = 1.0 / _n_rows(z_a)
    if use_triton(a):
        loss = _fwd_triton(a, b, s, t, offset, z_a.dtype).sum() * c
        return loss.to(z_a.dtype), *(a.new_empty(0) for _ in range(4))
    need = _siglip_saves(z_a, need_grad)
    loss, (da, db, gs, gb) = _siglip_cpu(a, b, s, t, offset, c, need)
    if not need:
        return loss.to(z_a.dtype), *(a.new_empty(0) for _ in range(4))
    da = _normalize_backward(z_a, a, da, normalize).reshape(z_a.shape)
    db = _normalize_backward(z_b, b, db, normalize).reshape(z_b.shape)
    return loss.to(z_a.dtype), da, db, gs.reshape(scale.shape), gb.reshape(bias.shape)


@_siglip.register_fake
def _(z_a, z_b, scale, bias, offset, normalize, need_grad):
    w = work_dtype(z_a.dtype)
    if not _siglip_saves(z_a, need_grad):
        return z_a.new_empty(()), *(z_a.new_empty(0, dtype=w) for _ in range(4))
    return (z_a.new_empty(()), z_a.new_empty(z_a.shape, dtype=w), z_b.new_empty(z_b.shape, dtype=w),
            scale.new_empty(scale.shape, dtype=w), bias.new_empty(bias.shape, dtype=w))


@torch.library.custom_op("sdekernels::siglip_loss_backward", mutates_args=())
def _siglip_backward(z_a: Tensor, z_b: Tensor, scale: Tensor, bias: Tensor, ga: Tensor, gb: Tensor, gs: Tensor,
                     gt: Tensor, grad: Tensor, offset: int, normalize: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = grad.to(work_dtype(z_a.dtype))
    if not ga.numel():  # recompute (the Triton path)
        a, b = _normalized(z_a, normalize), _normalized(z_b, normalize)
        s, t = scale.reshape(1).to(a.dtype), bias.reshape(1).to(a.dtype)
        n = _n_rows(z_a)
        if use_triton(a):
            da, parts = _grad_triton(a, b, s, t, None, None, offset, 1.0, 0.0, z_a.dtype)
            db, _ = _grad_triton(b, a, s, t, None, None, -offset, 1.0, 0.0, z_a.dtype)
            da, db, gs, gt = da / n, db / n, parts[0] / n, parts[1] / n
        else:
            _, (da, db, gs, gt) = _siglip_cpu(a, b, s, t, offset, 1.0 / n, True)
        ga = _normalize_backward(z_a, a, da, normalize).reshape(z_a.shape)
        gb = _normalize_backward(z_b, b, db, normalize).reshape(z_b.shape)
    return (grad_like(ga * g, z_a), grad_like(gb * g, z_b), grad_like((gs * g).reshape(scale.shape), scale),
            grad_like((gt * g).reshape(bias.shape), bias))


@_siglip_backward.register_fake
def _(z_a, z_b, scale, bias, ga, gb, gs, gt, grad, offset, normalize):
    return torch.empty_like(z_a), torch.empty_like(z_b), torch.empty_like(scale), torch.empty_like(bias)


def _siglip_setup(ctx, inputs, output):
    z_a, z_b, scale, bias, ctx.offset, ctx.normalize, _ = inputs
    _, ga, gb, gs, gt = output
    ctx.mark_non_differentiable(ga, gb, gs, gt)
    ctx.set_materialize_grads(False)  # no zero-filled gradients for them
    ctx.save_for_backward(z_a, z_b, scale, bias, ga, gb, gs, gt)


def _siglip_grad(ctx, grad, *_):
    if grad is None:  # an undefined loss gradient (the others are never materialised)
        return (None,) * 7
    return (*_siglip_backward(*ctx.saved_tensors, grad, ctx.offset, ctx.normalize), None, None, None)


_siglip.register_autograd(_siglip_grad, setup_context=_siglip_setup)


def siglip_loss(z_a: Tensor, z_b: Tensor, logit_scale, logit_bias, *, normalize: bool = True,
                gather: bool | str = False, local_loss: bool = False) -> Tensor:
    """Sigmoid contrastive loss (SigLIP) of paired features z_a, z_b [..., B, d] without the B×B logits (SPEC §6).

    L = s·ẑ_a ẑ_bᵀ + b with labels y = 2I − 1; returns −Σ_ij log σ(y_ij L_ij) / B (open_clip's
    SigLipLoss), averaged over any leading batch dims. logit_scale (already exponentiated) and
    logit_bias: floats, or one-element tensors that receive their gradients.
    gather=True under torch.distributed: the loss of one process on the all-gathered batch (with
    gradient). With local_loss=True as well: this rank's rows against the gathered columns divided
    by the local batch, which is exactly the per-rank loss of open_clip's SigLipLoss(world_size > 1).
    gather="ring": the same without gathering (memory O(B_local·d) per rank); batch sizes may
    differ between ranks, as for info_nce.
    """
    gather, spread = _check_pairs(z_a, z_b, gather)
    scale = _scalar(logit_scale, "logit_scale", z_a, positive=True)
    bias = _scalar(logit_bias, "logit_bias", z_a)
    if spread and gather == "ring":
        from ._ring import ring_siglip

        return ring_siglip(z_a, z_b, scale, bias, bool(normalize), bool(local_loss))
    offset = 0
    if spread:
        sizes = batch_sizes(z_a)
        if local_loss:
            offset, z_b = rank_offset(z_a, sizes), gather_batch(z_b, sizes=sizes)
        else:
            z_a, z_b = gather_batch(z_a, sizes=sizes), gather_batch(z_b, sizes=sizes)
    if z_a.numel() == 0:  # without rows here: 0, through the gathered columns (their backward is a collective)
        return _empty_loss(z_a, z_b, scale, bias)
    need = torch.is_grad_enabled() and any(t.requires_grad for t in (z_a, z_b, scale, bias))
    return _siglip(z_a, z_b, scale, bias, offset, bool(normalize), need)[0]


# ---------------------------------------------------------------- registry entry


def _pairs(shape, device, dtype, gen):
    b = [shape["batch"]] if shape.get("batch") else []
    # Unnormalised features get norm ~1, so the logits stay O(s) as they would after normalising.
    scale = 1.0 if shape.get("normalize", 1) else shape["d"] ** -0.5
    z_a = randn((*b, shape["B"], shape["d"]), device, dtype, gen, scale)
    # Partly aligned pairs, so that the loss is neither trivial nor saturated.
    z_b = (0.6 * z_a.double() + randn((*b, shape["B"], shape["d"]), device, torch.float64, gen, scale)).to(dtype)
    kwargs = {"normalize": bool(shape.get("normalize", 1)), "symmetric": bool(shape.get("symmetric", 1))}
    if shape.get("scale"):
        kwargs["logit_scale"] = rand((), device, dtype, gen, 5.0, 20.0)
    else:
        kwargs["temperature"] = shape.get("temperature", 0.07)
    return Sample((z_a, z_b), kwargs)


def _bad_info_nce(device):
    z = torch.randn(2, 8, 4, device=device)
    return [((z.tolist(), z), {}, "z_a"),
            ((z[0, 0], z[0, 0]), {}, "z_a"),
            ((z, z[:, :4]), {}, "z_b"),
            ((z, z.double()), {}, "z_b"),
            ((z, z.long()), {}, "z_b"),
            ((z[:, :0], z[:, :0]), {}, "z_a"),
            ((z, z), {"temperature": 0.0}, "temperature"), ((z, z), {"temperature": float("inf")}, "temperature"),
            ((z, z), {"temperature": float("nan")}, "temperature"), ((z, z), {"logit_scale": 0.0}, "logit_scale"),
            ((z, z), {"logit_scale": -1.0}, "logit_scale"), ((z, z), {"logit_scale": float("inf")}, "logit_scale"),
            ((z, z), {"logit_scale": torch.ones(2, device=device)}, "logit_scale"),
            ((z, z), {"logit_scale": torch.ones((), dtype=torch.int64, device=device)}, "logit_scale")]


def _explicit_fp32_logits(z_a, z_b, temperature=0.07, *, logit_scale=None, normalize=True, symmetric=True):
    """open_clip's ClipLoss formulation: explicit logits and F.cross_entropy (the memory baseline)."""
    import torch.nn.functional as Fn
    a = Fn.normalize(z_a, dim=-1) if normalize else z_a
    b = Fn.normalize(z_b, dim=-1) if normalize else z_b
    s = logit_scale if logit_scale is not None else 1.0 / temperature
    logits = s * a @ b.mT
    labels = torch.arange(logits.shape[-1], device=logits.device)
    loss = Fn.cross_entropy(logits, labels)
    return 0.5 * (loss + Fn.cross_entropy(logits.mT, labels)) if symmetric else loss


def _bad_scale_values(device):
    z = torch.randn(2, 8, 4, device=device)
    return [((z, z), {"logit_scale": torch.zeros((), device=device)}, "logit_scale"),
            ((z, z), {"logit_scale": -torch.ones(1, device=device)}, "logit_scale")]


register(OpInfo(
    name="info_nce", op=info_nce, ref=ref.info_nce, make=_pairs,
    gpu_shape={"batch": 2, "B": 70, "d": 200, "scale": 1},
    # dL/dlogits = softmax − label from logits rounded per path (tf32x3, bf16 operands), summed over B columns
    cond=(16, 64),
    scaling=lambda sh: ((0, 1), (0,)) if sh.get("normalize", 1) else None,
    shapes=[{"B": 1, "d": 1, "scale": 1}, {"batch": 2, "B": 9, "d": 5}, {"B": 40, "d": 33, "symmetric": 0},
            {"batch": 3, "B": 70, "d": 20, "scale": 1}, {"B": 37, "d": 70, "normalize": 0, "temperature": 0.5},
            {"B": 16, "d": 8, "scale": 1, "symmetric": 0, "normalize": 0}],
    space={"batch": (0, 2), "B": (1, 80), "d": (1, 70), "symmetric": (0, 1), "normalize": (0, 1), "scale": (0, 1)},
    bad=_bad_info_nce, debug_bad=_bad_scale_values, batch_key=None,  # the loss is one mean over every batch element
    bench=[{"B": B, "d": d, "backward": True, "quick": (B, d) == (4096, 256)}
           for B in (4096, 16384, 65536) for d in (256, 512, 1024)],
    cost=lambda s: (2 * s.args[0].numel() * s.args[0].element_size(),
                    4 * s.args[0].shape[-2] ** 2 * s.args[0].shape[-1]),
    baselines={"explicit logits (F.cross_entropy)": _explicit_fp32_logits},
    tol={F64: (1e-10, 1e-9), torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2), torch.float16: (5e-3, 5e-3)},
))


def _siglip_pairs(shape, device, dtype, gen):
    sample = _pairs(shape, device, dtype, gen)
    scale = rand((), device, dtype, gen, 5.0, 15.0) if shape.get("scale") else 10.0
    bias = rand((), device, dtype, gen, -12.0, -6.0) if shape.get("scale") else -8.0
    return Sample(sample.args, {"logit_scale": scale, "logit_bias": bias, "normalize": sample.kwargs["normalize"]})


def _bad_siglip(device):
    z = torch.randn(2, 8, 4, device=device)
    bad = [(args, {"logit_scale": 10.0, "logit_bias": -5.0, **kw}, name) for args, kw, name in _bad_info_nce(device)
           if name != "temperature"]
    return bad + [((z, z), {"logit_scale": 10.0, "logit_bias": torch.ones(3, device=device)}, "logit_bias"),
                  ((z, z), {"logit_scale": float("nan"), "logit_bias": 0.0}, "logit_scale"),
                  ((z, z), {"logit_scale": 10.0, "logit_bias": "x"}, "logit_bias")]


def _explicit_sigmoid_logits(z_a, z_b, logit_scale, logit_bias, *, normalize=True):
    """open_clip's SigLipLoss formulation: explicit logits, a ±1 label matrix and F.logsigmoid (the baseline)."""
    import torch.nn.functional as Fn
    a = Fn.normalize(z_a, dim=-1) if normalize else z_a
    b = Fn.normalize(z_b, dim=-1) if normalize else z_b
    logits = logit_scale * a @ b.mT + logit_bias
    n = logits.shape[-1]
    labels = 2 * torch.eye(n, device=logits.device, dtype=logits.dtype) - 1
    return (-Fn.logsigmoid(labels * logits).sum((-2, -1)) / n).mean()


register(OpInfo(
    name="siglip_loss", op=siglip_loss, ref=ref.siglip_loss, make=_siglip_pairs,
    gpu_shape={"B": 40, "d": 520, "scale": 1},
    cond=(16, 64),  # σ(−y·L) from logits rounded per path, summed over B columns into each row's gradient
    shapes=[{"B": 1, "d": 1, "scale": 1}, {"batch": 2, "B": 9, "d": 5}, {"B": 40, "d": 33},
            {"batch": 3, "B": 70, "d": 20, "scale": 1}, {"B": 37, "d": 70, "normalize": 0, "scale": 1}],
    space={"batch": (0, 2), "B": (1, 80), "d": (1, 70), "normalize": (0, 1), "scale": (0, 1)},
    bad=_bad_siglip, batch_key=None,  # the loss is one mean over every batch element
    bench=[{"B": B, "d": d, "backward": True, "quick": (B, d) == (4096, 256)}
           for B in (4096, 16384, 65536) for d in (256, 512, 1024)],
    cost=lambda s: (2 * s.args[0].numel() * s.args[0].element_size(),
                    2 * s.args[0].shape[-2] ** 2 * s.args[0].shape[-1]),
    baselines={"explicit logits (F.logsigmoid)": _explicit_sigmoid_logits},
    tol={F64: (1e-10, 1e-9), torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2), torch.float16: (5e-3, 5e-3)},
))
