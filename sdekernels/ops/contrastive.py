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
from typing import Optional

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

    @triton.jit
    def _label_masks(LX, LY, r, i, j, nlx, npair, off, MODE: tl.constexpr):
        """(pos, keep) of a BM×BN tile (SPEC §6): the first nlx rows and npair columns carry labels (the
        rest are hard negatives); MODE 1, the equal-labelled pairs are positives; MODE 2
        (mask_duplicates), they leave the candidates except the own pair j = i + off."""
        own = j[None, :] == i[:, None] + off
        yi = tl.load(LX + r * nlx + i, mask=i < nlx, other=0)
        yj = tl.load(LY + r * npair + j, mask=j < npair, other=0)
        same = (yi[:, None] == yj[None, :]) & (i[:, None] < nlx) & (j[None, :] < npair)
        if MODE == 1:
            return same | own, own | (j[None, :] >= 0)
        return own, (same == 0) | own

    @triton.jit
    def _online_lse(m, acc, logits):
        """One column tile into the running (max, Σ exp) of each row; a row whose entries so far are all
        masked (−inf) stays at (−inf, 0)."""
        m_new = tl.maximum(m, tl.max(logits, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        acc = acc * tl.exp(m - m_safe) + tl.sum(tl.exp(logits - m_safe[:, None]), 1)
        return m_new, acc

    @triton.jit(do_not_specialize=["nx", "ny", "off", "nlx", "npair"])
    def _fwd_kernel(X, Y, S, BIAS, OUT, LX, LY, OUT_P, nx, ny, d, sxr, sxn, syr, syn, off, nlx, npair,
                    SIGLIP: tl.constexpr, MODE: tl.constexpr,
                    PREC: tl.constexpr, ACC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        # X [R, nx, d], Y [R, ny, d] with strides (sxr, sxn, 1), (syr, syn, 1): row-strided views are read in place.
        # Program (r, rb), rows i of block rb. info_nce: OUT[r, i] = log Σ_j exp(s·x_i·y_j), online over
        # column tiles (MODE > 0, labels LX [R, nx], LY [R, npair]: over the candidates, and OUT_P[r, i] over
        # the positives). siglip: OUT[r, rb] = Σ_{i, j} −log σ(y_ij (s·x_i·y_j + b)), y = +1 at j = i + off, else −1.
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
            mp = tl.full([BM], float("-inf"), ACC)
            accp = tl.zeros([BM], ACC)
        for j0 in range(0, ny, BN):
            j = j0 + tl.arange(0, BN)
            qk = _tile_dot(X, Y, i, j, nx, ny, d, sxn, syn, PREC, ACC, BM, BN, BK)
            if SIGLIP:
                L = s * qk + b
                z = tl.where(j[None, :] == i[:, None] + off, L, -L)
                tot += tl.where((i[:, None] < nx) & (j[None, :] < ny), _neg_log_sigmoid(z), 0.0)
            else:
                logits = tl.where(j[None, :] < ny, s * qk, float("-inf"))
                if MODE != 0:
                    pos, keep = _label_masks(LX, LY, r, i, j, nlx, npair, off, MODE)
                    mp, accp = _online_lse(mp, accp, tl.where(pos, logits, float("-inf")))
                    logits = tl.where(keep, logits, float("-inf"))
                m, acc = _online_lse(m, acc, logits)
        if SIGLIP:
            tl.store(OUT + r * tl.num_programs(1) + rb, tl.sum(tl.sum(tot, 1), 0))
        else:
            tl.store(OUT + r * nx + i, m + tl.log(acc), mask=i < nx)
            if MODE != 0:
                tl.store(OUT_P + r * nx + i, mp + tl.log(accp), mask=i < nx)

    @triton.jit(do_not_specialize=["nx", "ny", "off", "nlx", "npair"])
    def _grad_kernel(X, Y, S, BIAS, LSE_X, LSE_Y, DX, DS, LX, LY, LSEP_X, LSEP_Y, nx, ny, d, sxr, sxn, syr, syn,
                     off, nlx, npair, c_x, c_y, SIGLIP: tl.constexpr, MODE: tl.constexpr,
                     USE_X: tl.constexpr, USE_Y: tl.constexpr, PREC: tl.constexpr,
                     ACC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr):
        # Program (r, rb, kb) owns DX[i, kb·BD : (kb+1)·BD] for the rows i of block rb:
        # DX_i = s Σ_j D_ij y_j, accumulated in registers over all column tiles and stored once, with
        # info_nce: D_ij = c_x exp(l_ij − lse_x_i) + c_y exp(l_ij − lse_y_j) − (c_x + c_y)[j = i + off],
        # with labels (MODE > 0): c_x (keep_ij e^{l_ij − lse_x_i} − pos_ij e^{l_ij − lsep_x_i}) + the same in y,
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
        elif USE_X:
            lse_x = tl.load(LSE_X + r * nx + i, mask=i < nx, other=0).to(ACC)
            if MODE != 0:
                lsep_x = tl.load(LSEP_X + r * nx + i, mask=i < nx, other=0).to(ACC)
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
            elif MODE != 0:
                logits = s * qk
                pos, keep = _label_masks(LX, LY, r, i, j, nlx, npair, off, MODE)
                D = tl.zeros([BM, BN], ACC)
                if USE_X:
                    D += c_x * (tl.where(keep, tl.exp(logits - lse_x[:, None]), 0.0)
                                - tl.where(pos, tl.exp(logits - lsep_x[:, None]), 0.0))
                if USE_Y:
                    lse_y = tl.load(LSE_Y + r * ny + j, mask=j < ny, other=0).to(ACC)
                    lsep_y = tl.load(LSEP_Y + r * ny + j, mask=j < ny, other=0).to(ACC)
                    D += c_y * (tl.where(keep, tl.exp(logits - lse_y[None, :]), 0.0)
                                - tl.where(pos, tl.exp(logits - lsep_y[None, :]), 0.0))
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


def _fwd_triton(x: Tensor, y: Tensor, s: Tensor, bias: Tensor | None, off: int, dtype: torch.dtype,
                labels=None, mode: int = 0):
    """info_nce (bias None): the row log-sum-exps [R, nx]; siglip: per row block Σ −log σ [R, blocks].
    info_nce with labels (lx [R, nx], ly [R, npair]) and mode 1 or 2: (over the candidates, over the positives)."""
    R, nx, d = x.shape
    siglip = bias is not None
    out_dtype = x.dtype
    x, y = _kernel_input(x, dtype), _kernel_input(y, dtype)
    cfg = _config(x)
    cfg.pop("BD")
    grid = (R, triton.cdiv(nx, cfg["BM"]))
    out = x.new_empty(grid if siglip else (R, nx), dtype=out_dtype)
    lx, ly = labels if mode else (s, s)
    out_p = torch.empty_like(out) if mode else out
    _fwd_kernel[grid](x, y, s, bias if siglip else s, out, lx, ly, out_p, nx, y.shape[1], d, *x.stride()[:2],
                      *y.stride()[:2], off, lx.shape[-1] if mode else 0, ly.shape[-1] if mode else 0,
                      SIGLIP=siglip, MODE=mode, **cfg)
    return (out, out_p) if mode else out


def _grad_triton(x: Tensor, y: Tensor, s: Tensor, bias: Tensor | None, lse_x: Tensor | None, lse_y: Tensor | None,
                 off: int, w_x: float, w_y: float, dtype: torch.dtype, labels=None, lsep=(None, None),
                 mode: int = 0) -> tuple[Tensor, Tensor]:
    """(DX [R, nx, d], [Σ D·x·y, Σ D]) of one side; w_x, w_y: exact weights of the two softmax terms
    (1/n is applied by the caller: the kernel's float arguments are fp32). With labels (mode 1, 2):
    lsep, the log-sum-exps over the positives of the rows and of the columns."""
    R, nx, d = x.shape
    dx = x.new_empty(x.shape)  # contiguous, whatever x's strides
    x, y = _kernel_input(x, dtype), _kernel_input(y, dtype)
    cfg = _config(x)
    grid = (R, triton.cdiv(nx, cfg["BM"]), triton.cdiv(d, cfg["BD"]))
    parts = dx.new_empty((R, grid[1], 2))
    lx, ly = labels if mode else (s, s)
    lsep_x, lsep_y = (p if p is not None else s for p in lsep)
    _grad_kernel[grid](x, y, s, s if bias is None else bias, s if lse_x is None else lse_x,
                       s if lse_y is None else lse_y, dx, parts, lx, ly, lsep_x, lsep_y, nx, y.shape[1], d,
                       *x.stride()[:2], *y.stride()[:2], off, lx.shape[-1] if mode else 0,
                       ly.shape[-1] if mode else 0, w_x, w_y,
                       SIGLIP=bias is not None, MODE=mode, USE_X=lse_x is not None, USE_Y=lse_y is not None, **cfg)
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


def _masks_cpu(yr: Tensor, yc: Tensor, i0: int, off: int, ny: int, mode: int):
    """(pos, keep) [R, c, ny] of rows i0.. (labels yr [R, c]) against the columns (labels yc [R, npair],
    then hard negatives), SPEC §6; keep None: every column."""
    same = yr[:, :, None] == yc[:, None, :]
    if ny > yc.shape[1]:
        same = torch.nn.functional.pad(same, (0, ny - yc.shape[1]))
    own = torch.zeros_like(same[:1])
    torch.diagonal(own, offset=i0 + off, dim1=-2, dim2=-1).fill_(True)
    return (same | own, None) if mode == 1 else (own.expand_as(same), ~same | own)


def _lse_labels_cpu(a, b, s, yr, yc, off, mode, symmetric):
    """Row (and column) log-sum-exps over the candidates and over the positives, by row chunks."""
    R, nx, _ = a.shape
    ny = b.shape[1]
    step = _chunk(ny)
    lse_r, lsep_r = a.new_empty((R, nx)), a.new_empty((R, nx))
    lse_c, lsep_c = (a.new_full((R, ny), float("-inf")) for _ in range(2))
    for i in range(0, nx, step):
        L = torch.matmul(a[:, i:i + step], b.mT).mul_(s)
        pos, keep = _masks_cpu(yr[:, i:i + step], yc, i, off, ny, mode)
        Lk = L if keep is None else L.masked_fill(~keep, float("-inf"))
        Lp = L.masked_fill(~pos, float("-inf"))
        lse_r[:, i:i + step], lsep_r[:, i:i + step] = torch.logsumexp(Lk, -1), torch.logsumexp(Lp, -1)
        if symmetric:
            lse_c = torch.logaddexp(lse_c, torch.logsumexp(Lk, -2))
            lsep_c = torch.logaddexp(lsep_c, torch.logsumexp(Lp, -2))
    if not symmetric:
        lse_c, lsep_c = a.new_empty(0), a.new_empty(0)
    return lse_r, lsep_r, lse_c, lsep_c


def _grad_labels_cpu(a, b, s, yr, yc, lse, lsep, c_r, c_c, off, mode, g):
    """(dL/da, dL/db, dL/ds) with labels: D = Σ_sides c (keep·softmax − pos·softmax over the positives)."""
    R, nx, _ = a.shape
    ny = b.shape[1]
    (lse_r, lse_c), (lsep_r, lsep_c) = lse, lsep
    da, db, ds = torch.empty_like(a), torch.zeros_like(b), a.new_zeros(())
    step = _chunk(ny)
    zero = a.new_zeros(())
    for i in range(0, nx, step):
        a_i, rows = a[:, i:i + step], slice(i, i + step)
        L = torch.matmul(a_i, b.mT).mul_(s)
        pos, keep = _masks_cpu(yr[:, rows], yc, i, off, ny, mode)
        sides = [(c_r, lse_r[:, rows, None], lsep_r[:, rows, None])]
        if c_c:
            sides.append((c_c, lse_c[:, None, :], lsep_c[:, None, :]))
        D = torch.zeros_like(L)
        for c, lk, lp in sides:
            E = (L - lk).exp_()
            D += c * (E if keep is None else torch.where(keep, E, zero))
            D -= c * torch.where(pos, (L - lp).exp_(), zero)
        D.mul_(g)
        ds += (D * L).sum() / s[0]
        da[:, rows] = torch.matmul(D, b).mul_(s)
        db.baddbmm_(D.mT, a_i, alpha=float(s))
    return da, db, ds


def _pad_inf(lse: Tensor, n: int) -> Tensor:
    """Column log-sum-exps of the paired columns, +inf for the hard negatives (no column term there)."""
    if lse.shape[-1] >= n:
        return lse
    return torch.nn.functional.pad(lse, (0, n - lse.shape[-1]), value=float("inf"))


@torch.library.custom_op("sdekernels::info_nce_loss", mutates_args=())
def _info_nce(z_a: Tensor, z_b: Tensor, scale: Tensor, offset: int, normalize: bool, symmetric: bool,
              n_pair: int = -1, row_labels: Optional[Tensor] = None, col_labels: Optional[Tensor] = None,
              mode: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    # rows z_a [..., nx, d] against columns z_b [..., ny, d]: the first n_pair (all for -1) are the paired
    # columns, the label of row i is column i + offset, the rest hard negatives; the symmetric term
    # ranks the n_pair paired columns over the rows. mode 1 (labels) / 2 (mask_duplicates): row_labels
    # [R, nx], col_labels [R, n_pair] (SPEC §6).
    a, b = _normalized(z_a, normalize), _normalized(z_b, normalize)
    s = scale.reshape(1).to(a.dtype)
    R, nx, _ = a.shape
    ny = b.shape[1]
    npair = ny if n_pair < 0 else n_pair
    logits, lsep_r, lsep_c = a.new_empty(0), a.new_empty(0), a.new_empty(0)
    if mode:
        labels = (row_labels.reshape(R, nx), col_labels.reshape(R, npair))
        if use_triton(a):
            lse_r, lsep_r = _fwd_triton(a, b, s, None, offset, z_a.dtype, labels, mode)
            lse_c, lsep_c = (_fwd_triton(b[:, :npair], a, s, None, -offset, z_a.dtype, labels[::-1], mode)
                             if symmetric else (a.new_empty(0), a.new_empty(0)))
        else:
            lse_r, lsep_r, lse_c, lsep_c = _lse_labels_cpu(a, b, s, *labels, offset, mode, symmetric)
        diag_r = lsep_r
        diag_c = lsep_c[:, :npair] if symmetric else None
    else:
        if use_triton(a):
            lse_r = _fwd_triton(a, b, s, None, offset, z_a.dtype)
            lse_c = _fwd_triton(b[:, :npair], a, s, None, -offset, z_a.dtype) if symmetric else a.new_empty(0)
            # as the kernels saw them
            a, b = _kernel_input(a, z_a.dtype).to(a.dtype), _kernel_input(b, z_a.dtype).to(a.dtype)
        else:
            lse_r, lse_c, logits = _lse_cpu(a, b, s, symmetric, _keeps_logits(z_a, z_b))
        diag_r = diag_c = s * _rowdot(a, b[:, offset:offset + nx])
    if symmetric:  # padded with +inf for the hard negatives' columns: no column term there
        lse_c = _pad_inf(lse_c[:, :npair], ny)
        if mode:
            lsep_c = _pad_inf(lsep_c[:, :npair], ny)
    w = 0.5 if symmetric else 1.0
    loss = (w / (R * nx)) * (lse_r - diag_r).sum()
    if symmetric:
        loss = loss + (w / (R * nx)) * (lse_c[:, :npair] - diag_c).sum()
    return loss.to(z_a.dtype), lse_r, lse_c, logits, lsep_r, lsep_c


@_info_nce.register_fake
def _(z_a, z_b, scale, offset, normalize, symmetric, n_pair=-1, row_labels=None, col_labels=None, mode=0):
    R, nx, ny = math.prod(z_a.shape[:-2]), z_a.shape[-2], z_b.shape[-2]
    w = work_dtype(z_a.dtype)
    lse_c = z_a.new_empty((R, ny) if symmetric else (0,), dtype=w)
    keeps = not mode and _keeps_logits(z_a, z_b)
    logits = z_a.new_empty((R, nx, ny) if keeps else (0,), dtype=w)
    lsep_r = z_a.new_empty((R, nx) if mode else (0,), dtype=w)
    lsep_c = z_a.new_empty((R, ny) if mode and symmetric else (0,), dtype=w)
    return z_a.new_empty(()), z_a.new_empty((R, nx), dtype=w), lse_c, logits, lsep_r, lsep_c


@torch.library.custom_op("sdekernels::info_nce_loss_backward", mutates_args=())
def _info_nce_backward(z_a: Tensor, z_b: Tensor, scale: Tensor, lse_r: Tensor, lse_c: Tensor, logits: Tensor,
                       grad: Tensor, offset: int, normalize: bool, symmetric: bool, lsep_r: Optional[Tensor] = None,
                       lsep_c: Optional[Tensor] = None, row_labels: Optional[Tensor] = None,
                       col_labels: Optional[Tensor] = None, mode: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    (a, parts_a), (b, parts_b) = _norm_parts(z_a, normalize), _norm_parts(z_b, normalize)
    s = scale.reshape(1).to(a.dtype)
    R, nx, _ = a.shape
    w = 0.5 if symmetric else 1.0
    wc = w if symmetric else 0.0
    labels = (row_labels.reshape(R, nx), col_labels.reshape(R, -1)) if mode else None
    if use_triton(a):
        extra = dict(labels=labels, lsep=(lsep_r, lsep_c), mode=mode) if mode else {}
        da, parts = _grad_triton(a, b, s, None, lse_r, lse_c if symmetric else None, offset, w, wc, z_a.dtype,
                                 **extra)
        if mode:
            extra = dict(labels=labels[::-1], lsep=(lsep_c, lsep_r), mode=mode)
        db, _ = _grad_triton(b, a, s, None, lse_c if symmetric else None, lse_r, -offset, wc, w, z_a.dtype, **extra)
        f = grad.to(a.dtype) / (R * nx)
        da, db, ds = da * f, db * f, parts[0] * f
    elif mode:
        c = w / (R * nx)
        da, db, ds = _grad_labels_cpu(a, b, s, *labels, (lse_r, lse_c), (lsep_r, lsep_c), c, c if symmetric else 0.0,
                                      offset, mode, grad.to(a.dtype))
    else:
        c = w / (R * nx)
        da, db, ds = _grad_cpu(a, b, s, lse_r, lse_c, c, c if symmetric else 0.0, logits, offset, grad.to(a.dtype))
    da = _normalize_backward(z_a, a, da, normalize, parts_a).reshape(z_a.shape)
    db = _normalize_backward(z_b, b, db, normalize, parts_b).reshape(z_b.shape)
    ds = ds.reshape(scale.shape)
    return grad_like(da, z_a), grad_like(db, z_b), grad_like(ds, scale)


@_info_nce_backward.register_fake
def _(z_a, z_b, scale, lse_r, lse_c, logits, grad, offset, normalize, symmetric, *rest):
    return torch.empty_like(z_a), torch.empty_like(z_b), torch.empty_like(scale)


def _info_nce_setup(ctx, inputs, output):
    z_a, z_b, scale, ctx.offset, ctx.normalize, ctx.symmetric, _, row_labels, col_labels, ctx.mode = inputs
    _, lse_r, lse_c, logits, lsep_r, lsep_c = output
    ctx.mark_non_differentiable(lse_r, lse_c, logits, lsep_r, lsep_c)
    ctx.set_materialize_grads(False)  # no zero-filled gradients for them (the logits: B² floats)
    ctx.save_for_backward(z_a, z_b, scale, lse_r, lse_c, logits, lsep_r, lsep_c, row_labels, col_labels)


def _info_nce_grad(ctx, grad, *_):
    if grad is None:  # an undefined loss gradient (the others are never materialised)
        return (None,) * 10
    z_a, z_b, scale, lse_r, lse_c, logits, lsep_r, lsep_c, row_labels, col_labels = ctx.saved_tensors
    grads = _info_nce_backward(z_a, z_b, scale, lse_r, lse_c, logits, grad, ctx.offset, ctx.normalize, ctx.symmetric,
                               lsep_r, lsep_c, row_labels, col_labels, ctx.mode)
    return (*grads, None, None, None, None, None, None, None)


_info_nce.register_autograd(_info_nce_grad, setup_context=_info_nce_setup)


def _negatives(negatives, z_b: Tensor) -> Optional[Tensor]:
    """Hard negatives [..., B, K, d] (K per row) or [..., N, d] (shared) as [..., N, d] columns, checked."""
    if negatives is None:
        return None
    check(negatives, "negatives", min_dim=1, like=z_b)
    lead, d = z_b.shape[:-2], z_b.shape[-1]
    if negatives.dim() == z_b.dim() + 1 and negatives.shape[:-2] == z_b.shape[:-1] and negatives.shape[-1] == d:
        return negatives.flatten(-3, -2)
    if negatives.dim() == z_b.dim() and negatives.shape[:-2] == lead and negatives.shape[-1] == d:
        return negatives
    raise ValueError(f"negatives must have shape [..., B, K, d] or [..., N, d] with z_b's leading dims and d "
                     f"(z_b: {tuple(z_b.shape)}), got {tuple(negatives.shape)}")


def _labels(labels, z_a: Tensor) -> Optional[Tensor]:
    """Integer labels [B] or [..., B] (z_a's leading dims) as int64 [..., B]."""
    if labels is None:
        return None
    if not isinstance(labels, Tensor) or labels.dtype.is_floating_point or labels.dtype.is_complex \
            or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {getattr(labels, 'dtype', type(labels).__name__)}")
    if labels.device != z_a.device or labels.shape not in (z_a.shape[-2:-1], z_a.shape[:-1]):
        raise ValueError(f"labels must have shape [B] or [..., B] = {tuple(z_a.shape[:-1])} on {z_a.device}, "
                         f"got {tuple(labels.shape)} on {labels.device}")
    return labels.to(torch.int64).expand(z_a.shape[:-1])


def _contrast(z_a: Tensor, z_b: Tensor, scale: Tensor, offset: int, normalize: bool, symmetric: bool,
              neg=None, row_labels=None, col_labels=None, mode: int = 0) -> Tensor:
    """The rows z_a against the columns z_b (+ the hard negatives neg), through the custom op."""
    cols = z_b if neg is None else torch.cat([z_b, neg.to(z_b.dtype)], dim=-2)
    n_pair = -1 if neg is None else z_b.shape[-2]
    if row_labels is None:
        return _info_nce(z_a, cols, scale, offset, normalize, symmetric, n_pair)[0]
    return _info_nce(z_a, cols, scale, offset, normalize, symmetric, n_pair, row_labels.reshape(-1).contiguous(),
                     col_labels.reshape(-1).contiguous(), mode)[0]


def local_info_nce(z_a: Tensor, z_b: Tensor, all_a: Tensor, all_b: Tensor, scale: Tensor, offset: int,
                   normalize: bool = True, symmetric: bool = True, negatives=None, labels=None, all_labels=None,
                   mode: int = 0) -> Tensor:
    """open_clip's ClipLoss(local_loss=True): the local rows z_a against the gathered columns all_b
    (labels offset by `offset`; then the gathered hard negatives), and z_b against all_a; each
    cross-entropy a mean over the local rows. labels / all_labels: the local and gathered labels.
    A rank without rows contributes 0, through the gathered columns that the other ranks use (their
    backward is a collective)."""
    if z_a.shape[-2] == 0:
        tie = 0 if negatives is None else 0 * negatives.sum().to(all_b.dtype)
        return _empty_loss(all_a if symmetric else all_a.detach(), all_b, scale) + tie
    loss = _contrast(z_a, all_b, scale, offset, normalize, False, negatives, labels, all_labels, mode)
    if symmetric:
        loss = 0.5 * (loss + _contrast(z_b, all_a, scale, offset, normalize, False, None, labels, all_labels, mode))
    return loss


def info_nce(z_a: Tensor, z_b: Tensor, temperature: float = 0.07, *, logit_scale=None, normalize: bool = True,
             symmetric: bool = True, gather: bool | str = False, local_loss: bool = False, negatives=None,
             labels=None, mask_duplicates: bool = False) -> Tensor:
    """InfoNCE of paired features z_a, z_b [..., B, d] without the logits (SPEC §6).

    logits = s·ẑ_a ẑ_cᵀ with s = logit_scale if given (a float, or a one-element tensor that
    receives its gradient; already exponentiated, as open_clip passes it) else 1/temperature;
    ẑ = z/‖z‖ when normalize; the candidates c are z_b's rows followed by the hard negatives
    (``negatives`` [..., B, K, d], K per row, or [..., N, d]; every row ranks all of them).
    Returns ½[CE_rows + CE_cols] (the first term alone when not symmetric): row i of z_a has the
    target column i; the symmetric term ranks each row of z_b over the rows of z_a (negatives are
    never queries); each CE averaged over the B rows and any leading batch dims.
    ``labels`` [B] or [..., B] (integers): rows of equal label are positives of each other on both
    sides (CE = −log of the softmax mass on the positives); mask_duplicates=True instead keeps the
    own pair as the only positive and drops the other equal-labelled columns from the candidates.
    gather=True under torch.distributed: the loss of the batch all-gathered (with gradient) over
    the process group (negatives and labels too), identical on every rank. With local_loss=True as
    well: this rank's rows against the gathered columns, both ways (open_clip's
    ClipLoss(local_loss=True)); the mean of the ranks' losses is the global loss. gather="ring": the
    same losses and gradients without gathering, memory O(B_local·d) per rank (sdekernels/ops/_ring.py;
    without negatives or labels). The ranks' batch sizes may differ (0 included); a rank without rows
    still takes part in every collective.
    """
    gather, spread = _check_pairs(z_a, z_b, gather)
    temperature = check_real(temperature, "temperature", 0.0, open_lo=True)
    scale = _scalar(logit_scale, "logit_scale", z_a, 1.0 / temperature, positive=True)
    normalize, symmetric = bool(normalize), bool(symmetric)
    neg, labels = _negatives(negatives, z_b), _labels(labels, z_a)
    mode = 0 if labels is None else 2 if mask_duplicates else 1
    if spread and gather == "ring":
        if neg is not None or labels is not None:
            raise ValueError("gather='ring' takes no negatives or labels yet: use gather=True for them")
        from ._ring import ring_info_nce

        return ring_info_nce(z_a, z_b, scale, normalize, symmetric, bool(local_loss))
    if spread:
        sizes = batch_sizes(z_a)
        all_a, all_b = gather_batch(z_a, sizes=sizes), gather_batch(z_b, sizes=sizes)
        neg = None if neg is None else gather_batch(neg)
        all_labels = None if labels is None else gather_batch(labels[..., None], False, sizes)[..., 0]
        if local_loss and all_a.numel():
            return local_info_nce(z_a, z_b, all_a, all_b, scale, rank_offset(z_a, sizes), normalize, symmetric,
                                  neg, labels, all_labels, mode)
        z_a, z_b, labels = all_a, all_b, all_labels
    if z_a.numel() == 0:
        return _empty_loss(z_a, z_b, scale) + (0 if neg is None else 0 * neg.sum().to(z_a.dtype))
    return _contrast(z_a, z_b, scale, 0, normalize, symmetric, neg, labels, labels, mode)


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
                gather: bool | str = False, local_loss: bool = False, negatives=None) -> Tensor:
    """Sigmoid contrastive loss (SigLIP) of paired features z_a, z_b [..., B, d] without the B×B logits (SPEC §6).

    L = s·ẑ_a ẑ_bᵀ + b with labels y = 2I − 1; returns −Σ_ij log σ(y_ij L_ij) / B (open_clip's
    SigLipLoss), averaged over any leading batch dims. logit_scale (already exponentiated) and
    logit_bias: floats, or one-element tensors that receive their gradients.
    gather=True under torch.distributed: the loss of one process on the all-gathered batch (with
    gradient). With local_loss=True as well: this rank's rows against the gathered columns divided
    by the local batch, which is exactly the per-rank loss of open_clip's SigLipLoss(world_size > 1).
    gather="ring": the same without gathering (memory O(B_local·d) per rank; without negatives);
    batch sizes may differ between ranks, as for info_nce.
    ``negatives`` ([..., B, K, d] or [..., N, d]): extra columns, negative pairs of every row
    (y = −1), as in info_nce (SPEC §6).
    """
    gather, spread = _check_pairs(z_a, z_b, gather)
    scale = _scalar(logit_scale, "logit_scale", z_a, positive=True)
    bias = _scalar(logit_bias, "logit_bias", z_a)
    neg = _negatives(negatives, z_b)
    if spread and gather == "ring":
        if neg is not None:
            raise ValueError("gather='ring' takes no negatives yet: use gather=True for them")
        from ._ring import ring_siglip

        return ring_siglip(z_a, z_b, scale, bias, bool(normalize), bool(local_loss))
    offset = 0
    if spread:
        sizes = batch_sizes(z_a)
        neg = None if neg is None else gather_batch(neg)
        if local_loss:
            offset, z_b = rank_offset(z_a, sizes), gather_batch(z_b, sizes=sizes)
        else:
            z_a, z_b = gather_batch(z_a, sizes=sizes), gather_batch(z_b, sizes=sizes)
    if z_a.numel() == 0:  # without rows here: 0, through the gathered columns (their backward is a collective)
        return _empty_loss(z_a, z_b, scale, bias) + (0 if neg is None else 0 * neg.sum().to(z_a.dtype))
    if neg is not None:  # rectangular columns: the labels j = i + offset are all among z_b's rows
        z_b = torch.cat([z_b, neg.to(z_b.dtype)], dim=-2)
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
