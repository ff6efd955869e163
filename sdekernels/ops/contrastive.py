"""Contrastive loss (SPEC §6): `info_nce` without the B×B logits.

Forward: per row, an online log-sum-exp over column tiles of s·ẑ_a ẑ_bᵀ; the transposed direction
(symmetric loss) is the same kernel with the roles of a and b swapped. Backward by recomputation:
each row block rebuilds its logit tiles, forms dL/dlogits = c_r (P − I) + c_c (Q − I) (P, Q the
row/column softmaxes from the saved log-sum-exps) and accumulates dẑ_a = s·D ẑ_b; dẑ_b is the same
kernel on the swapped roles. Memory O(B·d) on Triton (CUDA, or CPU under the interpreter), and
O(chunk·B) on the CPU path, which walks over row chunks with ATen matmuls.
Reference: reference/contrastive.py. Tests: python_tests/test_ops.py (generic), test_contrastive.py.
"""
import math

import torch
from torch import Tensor

from .. import reference as ref
from .._core import HAS_TRITON, check, check_shape, grad_like, pow2_scale, rows, use_triton, work_dtype
from ..registry import F64, OpInfo, Sample, rand, randn, register

NORM_EPS = 1e-12  # ẑ = z / max(‖z‖, eps) after scaling z by a power of two to max|z| in [1, 2): eps only acts at z = 0
CHUNK_ELEMS = 1 << 21  # logits entries held at once by the CPU path (8 MB in float32)

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _tile_dot(x_row, y_row, i, j, B, d, USE_DOT: tl.constexpr, ACC: tl.constexpr,
                  BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        """X[i] · Y[j]ᵀ for a BM×BN tile, over d in chunks of BK (masked rows/columns read 0)."""
        qk = tl.zeros([BM, BN], ACC)
        for k0 in range(0, d, BK):
            k = k0 + tl.arange(0, BK)
            x = tl.load(x_row + i[:, None] * d + k[None, :], mask=(i[:, None] < B) & (k[None, :] < d), other=0)
            y = tl.load(y_row + j[:, None] * d + k[None, :], mask=(j[:, None] < B) & (k[None, :] < d), other=0)
            if USE_DOT:
                qk += tl.dot(x, tl.trans(y), input_precision="ieee")
            else:
                qk += tl.sum(x[:, None, :] * y[None, :, :], axis=2)
        return qk

    @triton.jit
    def _lse_kernel(X, Y, S, LSE, B, d, USE_DOT: tl.constexpr, ACC: tl.constexpr,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        # Program (r, rb): log Σ_j exp(s·x_i·y_j) for the BM rows i of block rb, online over column tiles.
        r = tl.program_id(0).to(tl.int64)
        i = tl.program_id(1) * BM + tl.arange(0, BM)
        x_row, y_row = X + r * B * d, Y + r * B * d
        s = tl.load(S).to(ACC)
        m = tl.full([BM], float("-inf"), ACC)
        acc = tl.zeros([BM], ACC)
        for j0 in range(0, B, BN):
            j = j0 + tl.arange(0, BN)
            logits = tl.where(j[None, :] < B, s * _tile_dot(x_row, y_row, i, j, B, d, USE_DOT, ACC, BM, BN, BK),
                              float("-inf"))
            m_new = tl.maximum(m, tl.max(logits, 1))
            acc = acc * tl.exp(m - m_new) + tl.sum(tl.exp(logits - m_new[:, None]), 1)
            m = m_new
        tl.store(LSE + r * B + i, m + tl.log(acc), mask=i < B)

    @triton.jit
    def _grad_kernel(X, Y, S, LSE_X, LSE_Y, DX, DS, B, d, c_x, c_y, USE_X: tl.constexpr, USE_Y: tl.constexpr,
                     USE_DOT: tl.constexpr, ACC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        # Program (r, rb) owns rows i of DX: DX_i = s Σ_j D_ij y_j with
        # D_ij = c_x exp(l_ij − lse_x_i) + c_y exp(l_ij − lse_y_j) − (c_x + c_y) δ_ij, l = s·x_i·y_j
        # recomputed tile by tile; DS gets the block's Σ D_ij x_i·y_j (the gradient of s).
        r = tl.program_id(0).to(tl.int64)
        rb = tl.program_id(1)
        i = rb * BM + tl.arange(0, BM)
        x_row, y_row, dx_row = X + r * B * d, Y + r * B * d, DX + r * B * d
        s = tl.load(S).to(ACC)
        lse_x = tl.load(LSE_X + r * B + i, mask=i < B, other=0).to(ACC)
        ds = tl.zeros([BM, BN], ACC)
        for j0 in range(0, B, BN):
            j = j0 + tl.arange(0, BN)
            qk = _tile_dot(x_row, y_row, i, j, B, d, USE_DOT, ACC, BM, BN, BK)
            logits = s * qk
            D = tl.zeros([BM, BN], ACC)
            if USE_X:
                D += c_x * tl.exp(logits - lse_x[:, None])
            if USE_Y:
                lse_y = tl.load(LSE_Y + r * B + j, mask=j < B, other=0).to(ACC)
                D += c_y * tl.exp(logits - lse_y[None, :])
            D = tl.where(i[:, None] == j[None, :], D - (c_x + c_y), D)
            D = tl.where((i[:, None] < B) & (j[None, :] < B), D, 0.0)
            ds += D * qk
            # The rows of DX are this program's alone: read-modify-write them chunk by chunk over d.
            # The barrier orders the previous tile's stores before this tile's loads across threads.
            tl.debug_barrier()
            for k0 in range(0, d, BK):
                k = k0 + tl.arange(0, BK)
                y = tl.load(y_row + j[:, None] * d + k[None, :], mask=(j[:, None] < B) & (k[None, :] < d), other=0)
                if USE_DOT:
                    upd = tl.dot(D, y, input_precision="ieee")
                else:
                    upd = tl.sum(D[:, :, None] * y[None, :, :], axis=1)
                ptr = dx_row + i[:, None] * d + k[None, :]
                msk = (i[:, None] < B) & (k[None, :] < d)
                tl.store(ptr, tl.load(ptr, mask=msk, other=0) + s * upd, mask=msk)
        tl.store(DS + r * tl.num_programs(1) + rb, tl.sum(tl.sum(ds, 1), 0))


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _blocks(x: Tensor):
    """(BM, BN, BK, use tl.dot, num_warps): tensor-core tiles for float32, small FMA tiles for float64;
    the interpreter runs numpy per program, so there larger tiles mean fewer programs."""
    if x.dtype == torch.float64:
        return 16, 16, 8, False, 4
    if x.is_cuda:
        return 64, 64, 32, True, 4
    return 32, 32, 32, True, 1


# ---------------------------------------------------------------- shared pieces


def _coefs(R: int, B: int, symmetric: bool) -> tuple[float, float]:
    """Weights of the row and column cross-entropies: each is a mean over the R·B rows."""
    n = R * B
    return (0.5 / n, 0.5 / n) if symmetric else (1.0 / n, 0.0)


def _normalized(z: Tensor, normalize: bool) -> Tensor:
    """[R, B, d] contiguous rows in the working dtype, L2-normalised when asked."""
    x = rows(z, 2).to(work_dtype(z.dtype))
    if not normalize:
        return x
    x = x / pow2_scale(x, (-1,))  # exact; ‖x‖ >= 1 unless x = 0: the eps is relative (SPEC §10), no overflow
    return x / x.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)


def _normalize_backward(z: Tensor, zh: Tensor, g: Tensor, normalize: bool) -> Tensor:
    """dL/dz from dL/dẑ through ẑ = z / max(‖z‖, eps)."""
    if not normalize:
        return g
    x = rows(z, 2).to(zh.dtype)
    c = pow2_scale(x, (-1,))  # as in _normalized: ‖z‖ = c·‖z/c‖
    norm = (x / c).norm(dim=-1, keepdim=True)
    radial = torch.where(norm > NORM_EPS, zh * (zh * g).sum(-1, keepdim=True), 0.0)
    return (g - radial) / norm.clamp_min(NORM_EPS) / c


def _chunk(B: int) -> int:
    return max(1, min(B, CHUNK_ELEMS // max(B, 1)))


def _keeps_logits(z: Tensor) -> bool:
    """CPU path with every logit in one chunk: the forward keeps them for the backward (no recomputation)."""
    R, B = math.prod(z.shape[:-2]), z.shape[-2]
    return not use_triton(z) and R * B * B <= CHUNK_ELEMS


# ---------------------------------------------------------------- forward


def _lse_triton(x: Tensor, y: Tensor, s: Tensor) -> Tensor:
    R, B, d = x.shape
    lse = torch.empty((R, B), device=x.device, dtype=x.dtype)
    BM, BN, BK, use_dot, warps = _blocks(x)
    _lse_kernel[(R, triton.cdiv(B, BM))](x, y, s, lse, B, d, USE_DOT=use_dot, ACC=_acc(x.dtype),
                                         BM=BM, BN=BN, BK=BK, num_warps=warps)
    return lse


def _lse_cpu(a: Tensor, b: Tensor, s: Tensor, symmetric: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Row (and column) log-sum-exps over row chunks: O(chunk·B) memory; and the logits of the
    last chunk (all of them when one chunk holds every row)."""
    R, B, _ = a.shape
    lse_r = a.new_empty((R, B))
    lse_c = a.new_full((R, B), float("-inf")) if symmetric else a.new_empty(0)
    step = _chunk(B)
    for i in range(0, B, step):
        logits = torch.matmul(a[:, i:i + step], b.mT).mul_(s)
        lse_r[:, i:i + step] = torch.logsumexp(logits, -1)
        if symmetric:
            lse_c = torch.logaddexp(lse_c, torch.logsumexp(logits, -2))
    return lse_r, lse_c, logits


@torch.library.custom_op("sdekernels::info_nce_loss", mutates_args=())
def _info_nce(z_a: Tensor, z_b: Tensor, scale: Tensor, normalize: bool,
              symmetric: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    a, b = _normalized(z_a, normalize), _normalized(z_b, normalize)
    s = scale.reshape(1).to(a.dtype)
    logits = a.new_empty(0)
    if use_triton(a):
        lse_r = _lse_triton(a, b, s)
        lse_c = _lse_triton(b, a, s) if symmetric else a.new_empty(0)
    else:
        lse_r, lse_c, last = _lse_cpu(a, b, s, symmetric)
        if _keeps_logits(a):
            logits = last
    R, B, _ = a.shape
    c_r, c_c = _coefs(R, B, symmetric)
    diag = s * (a * b).sum(-1)
    loss = c_r * (lse_r - diag).sum()
    if symmetric:
        loss = loss + c_c * (lse_c - diag).sum()
    return loss.to(z_a.dtype), lse_r, lse_c, logits


@_info_nce.register_fake
def _(z_a, z_b, scale, normalize, symmetric):
    R, B = math.prod(z_a.shape[:-2]), z_a.shape[-2]
    w = work_dtype(z_a.dtype)
    lse_c = z_a.new_empty((R, B), dtype=w) if symmetric else z_a.new_empty(0, dtype=w)
    logits = z_a.new_empty((R, B, B) if _keeps_logits(z_a) else (0,), dtype=w)
    return z_a.new_empty(()), z_a.new_empty((R, B), dtype=w), lse_c, logits


# ---------------------------------------------------------------- backward


def _grad_triton(a, b, s, lse_r, lse_c, c_r, c_c, logits):
    R, B, d = a.shape
    BM, BN, BK, use_dot, warps = _blocks(a)
    grid = (R, triton.cdiv(B, BM))
    da, db = torch.zeros_like(a), torch.zeros_like(b)
    ds = a.new_empty(grid)
    sym = c_c != 0.0
    lse_c = lse_c if sym else lse_r  # an unread placeholder when one-sided
    kw = dict(USE_DOT=use_dot, ACC=_acc(a.dtype), BM=BM, BN=BN, BK=BK, num_warps=warps)
    _grad_kernel[grid](a, b, s, lse_r, lse_c, da, ds, B, d, c_r, c_c, USE_X=True, USE_Y=sym, **kw)
    _grad_kernel[grid](b, a, s, lse_c, lse_r, db, a.new_empty(grid), B, d, c_c, c_r, USE_X=sym, USE_Y=True, **kw)
    return da, db, ds.sum()


def _grad_cpu(a, b, s, lse_r, lse_c, c_r, c_c, logits):
    """The same recomputation over row chunks with ATen matmuls: two chunk×B buffers at a time
    (the forward's logits instead of a recomputation when it kept them)."""
    R, B, _ = a.shape
    da, db = torch.empty_like(a), torch.zeros_like(b)
    ds = a.new_zeros(())
    step = _chunk(B)
    for i in range(0, B, step):
        a_i = a[:, i:i + step]
        # the logits, turned into dL/dlogits in place
        D = logits.clone() if logits.numel() else torch.matmul(a_i, b.mT).mul_(s)
        col = (D - lse_c[:, None, :]).exp_().mul_(c_c) if c_c else None
        D.sub_(lse_r[:, i:i + step, None]).exp_().mul_(c_r)
        if col is not None:
            D += col
            del col
        torch.diagonal(D, offset=i, dim1=-2, dim2=-1).sub_(c_r + c_c)
        Db = torch.matmul(D, b)
        ds += (a_i * Db).sum()  # Σ_ij D_ij a_i·b_j without a second chunk×B product
        da[:, i:i + step] = Db.mul_(s)
        db.baddbmm_(D.mT, a_i)
    return da, db.mul_(s), ds


@torch.library.custom_op("sdekernels::info_nce_loss_backward", mutates_args=())
def _info_nce_backward(z_a: Tensor, z_b: Tensor, scale: Tensor, lse_r: Tensor, lse_c: Tensor, logits: Tensor,
                       grad: Tensor, normalize: bool, symmetric: bool) -> tuple[Tensor, Tensor, Tensor]:
    a, b = _normalized(z_a, normalize), _normalized(z_b, normalize)
    s = scale.reshape(1).to(a.dtype)
    R, B, _ = a.shape
    c_r, c_c = _coefs(R, B, symmetric)
    grad_fn = _grad_triton if use_triton(a) else _grad_cpu
    da, db, ds = grad_fn(a, b, s, lse_r, lse_c, c_r, c_c, logits)
    g = grad.to(a.dtype)
    da = _normalize_backward(z_a, a, da * g, normalize).reshape(z_a.shape)
    db = _normalize_backward(z_b, b, db * g, normalize).reshape(z_b.shape)
    ds = (ds * g).reshape(scale.shape)
    return grad_like(da, z_a), grad_like(db, z_b), grad_like(ds, scale)


@_info_nce_backward.register_fake
def _(z_a, z_b, scale, lse_r, lse_c, logits, grad, normalize, symmetric):
    return torch.empty_like(z_a), torch.empty_like(z_b), torch.empty_like(scale)


def _info_nce_setup(ctx, inputs, output):
    z_a, z_b, scale, ctx.normalize, ctx.symmetric = inputs
    _, lse_r, lse_c, logits = output
    ctx.mark_non_differentiable(lse_r, lse_c, logits)
    ctx.save_for_backward(z_a, z_b, scale, lse_r, lse_c, logits)


def _info_nce_grad(ctx, grad, *_):
    z_a, z_b, scale, lse_r, lse_c, logits = ctx.saved_tensors
    return (*_info_nce_backward(z_a, z_b, scale, lse_r, lse_c, logits, grad, ctx.normalize, ctx.symmetric), None, None)


_info_nce.register_autograd(_info_nce_grad, setup_context=_info_nce_setup)


def info_nce(z_a: Tensor, z_b: Tensor, temperature: float = 0.07, *, logit_scale=None, normalize: bool = True,
             symmetric: bool = True, gather: bool = False) -> Tensor:
    """InfoNCE of paired features z_a, z_b [..., B, d] without the B×B logits (SPEC §6).

    logits = s·ẑ_a ẑ_bᵀ with s = logit_scale if given (a float, or a one-element tensor that
    receives its gradient; already exponentiated, as open_clip passes it) else 1/temperature;
    ẑ = z/‖z‖ when normalize. Returns ½[CE(logits, diag) + CE(logitsᵀ, diag)] (the first term
    alone when not symmetric), averaged over the B rows and any leading batch dims.
    gather=True under torch.distributed: the loss of the batch all-gathered (with gradient) over
    the process group, identical on every rank.
    """
    check(z_a, "z_a", min_dim=2)
    check(z_b, "z_b", min_dim=2, like=z_a)
    check_shape(z_b, "z_b", z_a.shape, " (that of z_a)")
    if z_a.numel() == 0:
        raise ValueError(f"z_a must hold at least one pair of features, got shape {tuple(z_a.shape)}")
    if isinstance(logit_scale, Tensor):
        check(logit_scale, "logit_scale", min_dim=0)
        if logit_scale.numel() != 1 or logit_scale.device != z_a.device:
            raise ValueError(f"logit_scale must be a one-element tensor on {z_a.device}, "
                             f"got shape {tuple(logit_scale.shape)} on {logit_scale.device}")
        scale = logit_scale
    else:
        if logit_scale is None:
            if not (isinstance(temperature, (int, float)) and temperature > 0):
                raise ValueError(f"temperature must be a positive number, got {temperature!r}")
            value = 1.0 / temperature
        elif isinstance(logit_scale, (int, float)):
            value = float(logit_scale)
        else:
            raise ValueError(f"logit_scale must be a number or a tensor, got {type(logit_scale).__name__}")
        scale = torch.full((), value, dtype=work_dtype(z_a.dtype), device=z_a.device)
    if gather:
        z_a, z_b = ref.gather_batch(z_a), ref.gather_batch(z_b)
    return _info_nce(z_a, z_b, scale, bool(normalize), bool(symmetric))[0]


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
            ((z, z), {"temperature": 0.0}, "temperature"),
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


register(OpInfo(
    name="info_nce", op=info_nce, ref=ref.info_nce, make=_pairs,
    scaling=lambda sh: ((0, 1), (0,)) if sh.get("normalize", 1) else None,
    shapes=[{"B": 1, "d": 1, "scale": 1}, {"batch": 2, "B": 9, "d": 5}, {"B": 40, "d": 33, "symmetric": 0},
            {"batch": 3, "B": 70, "d": 20, "scale": 1}, {"B": 37, "d": 70, "normalize": 0, "temperature": 0.5},
            {"B": 16, "d": 8, "scale": 1, "symmetric": 0, "normalize": 0}],
    space={"batch": (0, 2), "B": (1, 80), "d": (1, 70), "symmetric": (0, 1), "normalize": (0, 1), "scale": (0, 1)},
    bad=_bad_info_nce, batch_key=None,  # the loss is one mean over every batch element
    bench=[{"B": B, "d": d, "backward": True, "quick": (B, d) == (4096, 256)}
           for B in (4096, 16384, 65536) for d in (256, 512, 1024)],
    cost=lambda s: (2 * s.args[0].numel() * s.args[0].element_size(),
                    4 * s.args[0].shape[-2] ** 2 * s.args[0].shape[-1]),
    baselines={"explicit logits (F.cross_entropy)": _explicit_fp32_logits},
    tol={F64: (1e-10, 1e-9), torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2), torch.float16: (5e-3, 5e-3)},
))
