"""Spectrum matching (SPEC §9): `radial_psd`, `esm_loss`, `block_dct_lowpass` and `dog`.

radial_psd — forward: one fused Triton kernel (transform as products with DCT / DFT matrices,
power, channel reduction and radial binning in one pass over x), or on CPU the transform by
GEMMs / FFT followed by the fused power-and-bin kernel of csrc/cpu/spectrum.cpp. Backward:
csrc (cpu/spectrum.cpp, cuda/spectrum.cu): the transform recomputed by ATen, the bin gradients
scattered onto it by an elementwise kernel, the adjoint transform back to x. keep_dc: the kernels
zero P[0, 0]; the op adds it back to bin 0 (and its gradient) in ATen.
block_dct_lowpass — one block²×block² projector applied to every block by a single matmul
kernel; the projector is symmetric and idempotent, so the op is its own backward.
esm_loss — the target side's blur and bicubic resize as two GEMMs (both are separable linear maps),
ATen around the fused radial_psd, both variants. dog — both blurs and their difference as two GEMMs
(the reflect-padded blurs as banded matrices); the analytic backward works from the saved output and
per-sample std, so it blurs once (the adjoint map) and never recomputes the forward.
Reference: reference/spectrum.py. Tests: python_tests/test_ops.py (generic), test_spectrum.py and
test_official.py (against the official Spectrum Matching / FACT formulas).
"""
import functools
import math

import torch
import torch.nn.functional as Fn
from torch import Tensor

from . import _triton as kt
from .. import _ext, constants
from .._fallback import ref
from .._core import (HAS_TRITON, check, check_choice, check_flag, check_int, check_real, grad_like, pow2_scale,
                     ref_vjp, rows, use_triton, work_dtype)
from ..registry import F64, OpInfo, Sample, randn, register

if HAS_TRITON:
    import triton
    import triton.language as tl

    from ._triton import PSD_FLOOR, mma

    @triton.jit
    def _bin_store(p, u, v, H, W, IDX, OUT, bins):
        # Clamp, zero the DC entry, and write the per-bin sums of this tile (NaN survives the clamp).
        p = tl.where(p < PSD_FLOOR, PSD_FLOOR, p)
        p = tl.where((u[:, None] == 0) & (v[None, :] == 0), 0.0, p)
        idx = tl.load(IDX + u[:, None] * W + v[None, :], mask=(u[:, None] < H) & (v[None, :] < W), other=-1)
        for j in range(bins):
            tl.store(OUT + j, tl.sum(tl.sum(tl.where(idx == j, p, 0.0), 1), 0))

    @triton.jit(do_not_specialize=["C", "H", "W", "sxb", "sxc", "sxh", "bins", "n_tv"])
    def _radial_psd_kernel(X, AH, AW, IDX, PART, Y, C, H, W, sxb, sxc, sxh, bins, n_tv,
                           FFT: tl.constexpr, MEAN: tl.constexpr, SAVE: tl.constexpr, PRECISION: tl.constexpr,
                           ACC: tl.constexpr,
                           BU: tl.constexpr, BV: tl.constexpr, BK: tl.constexpr):
        # Program (b, tile) forms the (u, v) tile of Y = A_H x A_Wᵀ of every channel of sample b
        # (FFT: Re = C_H x C_Wᵀ − S_H x S_Wᵀ, Im = S_H x C_Wᵀ + C_H x S_Wᵀ), squares it, reduces the
        # channels and writes the tile's per-bin sums to PART. The spatial mean is subtracted first:
        # it only moves the (0, 0) coefficient, but the products then round like the centred input.
        # SAVE stores the spectrum tile for the backward (DCT: Y [B, C, H, W]; FFT: [B, C, H, W, 2]).
        # X [B, C, H, W] has strides (sxb, sxc, sxh, 1); Y is contiguous. The strides are not specialised:
        # with sxh known to be a multiple of 16, Triton 3.6 vectorised the loads and spilled (fp64, 156 B).
        b = tl.program_id(0).to(tl.int64)
        tile = tl.program_id(1)
        u = (tile // n_tv) * BU + tl.arange(0, BU)
        v = (tile % n_tv) * BV + tl.arange(0, BV)
        kk = tl.arange(0, BK)
        n_tiles = tl.num_programs(1)
        acc_p = tl.zeros([BU, BV], ACC)
        for c in range(C):
            xp = X + b * sxb + c * sxc
            msum = tl.zeros([BK, BK], ACC)
            for h0 in range(0, H, BK):
                for w0 in range(0, W, BK):
                    h, w = h0 + kk, w0 + kk
                    msum += tl.load(xp + h[:, None] * sxh + w[None, :], mask=(h[:, None] < H) & (w[None, :] < W),
                                    other=0).to(ACC)
            mean = tl.sum(tl.sum(msum, 1), 0) / (H * W)
            re = tl.zeros([BU, BV], ACC)
            im = tl.zeros([BU, BV], ACC)
            for h0 in range(0, H, BK):
                h = h0 + kk
                tc = tl.zeros([BK, BV], ACC)
                ts = tl.zeros([BK, BV], ACC)
                for w0 in range(0, W, BK):
                    w = w0 + kk
                    xmask = (h[:, None] < H) & (w[None, :] < W)
                    xb = tl.load(xp + h[:, None] * sxh + w[None, :], mask=xmask, other=0).to(ACC)
                    xb = tl.where(xmask, xb - mean, 0)
                    wmask = (w[:, None] < W) & (v[None, :] < W)
                    tc = mma(tc, xb, tl.load(AW + v[None, :] * W + w[:, None], mask=wmask, other=0), PRECISION)
                    if FFT:
                        ts = mma(ts, xb, tl.load(AW + W * W + v[None, :] * W + w[:, None], mask=wmask, other=0),
                                 PRECISION)
                hmask = (u[:, None] < H) & (h[None, :] < H)
                ah = tl.load(AH + u[:, None] * H + h[None, :], mask=hmask, other=0)
                if FFT:
                    sh = tl.load(AH + H * H + u[:, None] * H + h[None, :], mask=hmask, other=0)
                    re = mma(mma(re, ah, tc, PRECISION), -sh, ts, PRECISION)
                    im = mma(mma(im, sh, tc, PRECISION), ah, ts, PRECISION)
                else:
                    re = mma(re, ah, tc, PRECISION)
            if SAVE:
                ymask = (u[:, None] < H) & (v[None, :] < W)
                yoff = (b * C + c) * H * W + u[:, None] * W + v[None, :]
                if FFT:
                    tl.store(Y + 2 * yoff, re, mask=ymask)
                    tl.store(Y + 2 * yoff + 1, -im, mask=ymask)  # fft2's sign: Im = −(S x Cᵀ + C x Sᵀ)
                else:
                    tl.store(Y + yoff, re, mask=ymask)
            p = re * re
            if FFT:
                p = (p + im * im) / (H * W)
            if MEAN:
                acc_p += p
            else:
                _bin_store(p, u, v, H, W, IDX, PART + ((b * C + c) * n_tiles + tile) * bins, bins)
        if MEAN:
            _bin_store(acc_p / C, u, v, H, W, IDX, PART + (b * n_tiles + tile) * bins, bins)

    @triton.jit(do_not_specialize=["n_blocks", "nbh", "nbw", "H", "W", "sp", "sh"])
    def _block_proj_kernel(X, P, Y, n_blocks, nbh, nbw, H, W, sp, sh, E, BLOCK: tl.constexpr,
                           PRECISION: tl.constexpr, ACC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                           BK: tl.constexpr):
        # Rows = BM blocks gathered as block²-vectors straight from the image; y = x_blocks @ P.
        # X [planes, H, W] has strides (sp, sh, 1); Y is contiguous.
        m = tl.program_id(0) * BM + tl.arange(0, BM)
        n = tl.program_id(1) * BN + tl.arange(0, BN)
        per_plane = nbh * nbw
        plane, rem = (m // per_plane).to(tl.int64), m % per_plane
        bh, bw = (rem // nbw) * BLOCK, (rem % nbw) * BLOCK
        xbase = plane * sp + bh * sh + bw
        base = plane * H * W + bh * W + bw
        mm = m < n_blocks
        acc = tl.zeros([BM, BN], ACC)
        for k0 in range(0, E, BK):
            e = k0 + tl.arange(0, BK)
            xb = tl.load(X + xbase[:, None] + (e // BLOCK)[None, :] * sh + (e % BLOCK)[None, :],
                         mask=mm[:, None] & (e[None, :] < E), other=0)
            pb = tl.load(P + e[:, None] * E + n[None, :], mask=(e[:, None] < E) & (n[None, :] < E), other=0)
            acc = mma(acc, xb, pb, PRECISION)
        tl.store(Y + base[:, None] + (n // BLOCK)[None, :] * W + (n % BLOCK)[None, :], acc.to(Y.dtype.element_ty),
                 mask=mm[:, None] & (n[None, :] < E))


# ---------------------------------------------------------------- cached matrices and bin maps


@functools.lru_cache(maxsize=64)
def _dct(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Orthonormal DCT-II [n, n] (row k: frequency k); (2i + 1)·k is reduced mod 4n first, for accuracy at large n."""
    k = torch.arange(n, dtype=torch.int64)
    ang = ((2 * k[None, :] + 1) * k[:, None] % (4 * n)).double() * (math.pi / (2 * n))
    w = torch.full((n, 1), math.sqrt(2.0 / n), dtype=torch.float64)
    w[0] = math.sqrt(1.0 / n)
    return (w * ang.cos()).to(dtype=dtype, device=device)


def _bin_index(H: int, W: int, bins: int, transform: str, official: bool = False) -> Tensor:
    """Bin of every (u, v), row-major (int64): ⌊r / r_max · bins⌋ capped at bins − 1, exactly: r² and r_max²
    are integers, so j = ⌊√(⌊bins²·r² / r_max²⌋)⌋ with an integer square root (float64 would send an
    entry on a boundary, e.g. the diagonal of an FFT map, either way). official: the official code's
    float32 map, ⌊r / max(max r, 1) · bins⌋ (SPEC §9)."""
    u, v = torch.arange(H)[:, None], torch.arange(W)[None, :]
    if official:
        r = (u * u + v * v).float().sqrt()
        return (r / r.max().clamp_min(1.0) * bins).floor().long().clamp(0, bins - 1).reshape(-1)
    if transform == "fft":
        u, v = torch.minimum(u, H - u), torch.minimum(v, W - v)
        r2_max = (H // 2) ** 2 + (W // 2) ** 2
    else:
        r2_max = (H - 1) ** 2 + (W - 1) ** 2
    q = (bins * bins * (u * u + v * v)) // max(r2_max, 1)
    j = q.double().sqrt().long()
    j = j - (j * j > q).long() + ((j + 1) * (j + 1) <= q).long()  # the float root corrected to ⌊√q⌋
    return j.clamp_max(bins - 1).reshape(-1)


@functools.lru_cache(maxsize=64)
def _dft(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """[2, n, n]: cos and sin of 2π k i / n (k·i reduced mod n first, for accuracy at large n)."""
    k = torch.arange(n, dtype=torch.int64)
    ang = (k[:, None] * k[None, :] % n).double() * (2 * math.pi / n)
    return torch.stack([ang.cos(), ang.sin()]).to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=64)
def _bin_map(H: int, W: int, bins: int, transform: str, dtype: torch.dtype, device: torch.device,
             official: bool = False):
    """Bin index of every (u, v) (row-major, int64) and 1 / count per bin (0 for an empty bin);
    official: the official code's float32 map and 1 / (count + 1e-8) (SPEC §9, esm_loss)."""
    idx = _bin_index(H, W, bins, transform, official)
    count = torch.bincount(idx, minlength=bins).double()
    if official:  # an empty bin's sum is 0, so any factor does there
        inv = 1.0 / (count.clamp_min(1) + 1e-8)
    else:
        inv = torch.where(count > 0, 1.0 / count.clamp_min(1), torch.zeros_like(count))
    return idx.to(device), inv.to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=64)
def _projector(block: int, k: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """P = Kᵀ diag(keep) K with K = D ⊗ D: the block-DCT low-pass on row-major block²-vectors (symmetric)."""
    D = _dct(block, torch.float64, torch.device("cpu"))
    K = torch.kron(D, D)
    u = torch.arange(block)
    keep = ((u[:, None] + u[None, :]) < (2 * block - 1 - k)).reshape(-1).double()
    return (K.mT @ (keep[:, None] * K)).to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=64)
def _blur_matrix(n: int, size: int, sigma: float, padding: str = "reflect") -> Tensor:
    """[n, n] float64: the 1-D normalised Gaussian blur (odd `size`) with reflect (edge not repeated)
    or zero padding as a banded matrix."""
    r = size // 2
    g = torch.exp(-0.5 * ((torch.arange(size, dtype=torch.float64) - r) / sigma) ** 2)
    g = (g / g.sum()).expand(n, -1)
    pos = torch.arange(n)[:, None] + torch.arange(-r, r + 1)[None, :]
    if padding == "reflect":
        pos = torch.where(pos < 0, -pos, torch.where(pos > n - 1, 2 * (n - 1) - pos, pos))
    else:  # taps outside the image drop out
        g = torch.where((pos >= 0) & (pos < n), g, 0.0)
        pos = pos.clamp(0, n - 1)
    return torch.zeros(n, n, dtype=torch.float64).scatter_add_(1, pos, g.contiguous())


@functools.lru_cache(maxsize=64)
def _bicubic_matrix(n: int, out: int) -> Tensor:
    """[out, n] float64: Fn.interpolate(mode="bicubic", align_corners=False) along one axis (the 2-D
    resize is separable: its weights are products of per-axis weights, with clamped indices)."""
    eye = torch.eye(n, dtype=torch.float64).reshape(n, 1, n, 1)
    return Fn.interpolate(eye, size=(out, 1), mode="bicubic", align_corners=False).reshape(n, out).T


# ---------------------------------------------------------------- radial_psd


def _psd_triton(x4: Tensor, bins: int, fft: bool, mean: bool, Y: Tensor, official: bool) -> Tensor:
    B, C, H, W = x4.shape
    w = work_dtype(x4.dtype)
    mats = _dft if fft else _dct
    AH, AW = mats(H, w, x4.device), mats(W, w, x4.device)
    idx, inv = _bin_map(H, W, bins, "fft" if fft else "dct", w, x4.device, official)
    blk = 32 if max(H, W) > 16 else 16
    n_tu, n_tv = triton.cdiv(H, blk), triton.cdiv(W, blk)
    part = torch.empty((B, 1 if mean else C, n_tu * n_tv, bins), device=x4.device, dtype=w)
    if part.numel():
        _radial_psd_kernel[(B, n_tu * n_tv)](x4, AH, AW, idx, part, Y, C, H, W, *x4.stride()[:3], bins, n_tv,
                                             FFT=fft, MEAN=mean,
                                             SAVE=Y.numel() > 0, PRECISION=kt.precision(w), ACC=kt.acc(w),
                                             BU=blk, BV=blk, BK=blk, num_warps=8)  # 4 warps spilled (bf16, fp64)
    return part.sum(2) * inv


def _spectrum(x4: Tensor, fft: bool) -> Tensor:
    """Spectrum of the centred x4 by ATen: DCT [B, C, H, W] (GEMMs), FFT as the real view [B, C, H, W, 2]."""
    x4 = x4 - x4.mean((-2, -1), keepdim=True)
    if fft:
        return torch.view_as_real(torch.fft.fft2(x4))
    H, W = x4.shape[-2:]
    return _dct(H, x4.dtype, x4.device) @ x4 @ _dct(W, x4.dtype, x4.device).mT


def _spectrum_shape(x: Tensor, fft: bool, save: bool):
    C, H, W = x.shape[-3:]
    return ((x.numel() // max(C * H * W, 1), C, H, W) + ((2,) if fft else ())) if save else (0,)


def _dc_power(x: Tensor, channel_mean: bool) -> Tensor:
    """P[0, 0] of the uncentred x [..., C, H, W] for both transforms: H·W·mean², per channel or averaged."""
    H, W = x.shape[-2:]
    p0 = x.to(work_dtype(x.dtype)).mean((-2, -1)).square() * (H * W)
    return p0.mean(-1) if channel_mean else p0


@torch.library.custom_op("sdekernels::radial_psd", mutates_args=())
def _radial_psd(x: Tensor, bins: int, transform: str, channel_mean: bool, save: bool,
                official: bool = False, keep_dc: bool = False, centre: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """(binned power spectrum, the spectrum of the centred x for the backward when `save`, else empty,
    each sample's scale c of _unit_samples, which the backward reuses);
    official: the bin map and means of esm_loss's official variant (see _bin_map). The kernels give
    P[0, 0] = 0; keep_dc adds the clamped P[0, 0] to bin 0 here (0 for a centred x, H·W·mean² else)."""
    C, H, W = x.shape[-3:]
    w = work_dtype(x.dtype)
    fft = transform == "fft"
    x4, c = _unit_samples(x, official)
    Y = x.new_empty(_spectrum_shape(x, fft, save), dtype=w)
    if use_triton(x):
        out = _psd_triton(rows(x4, 3), bins, fft, channel_mean, Y, official)
    elif _ext.available():
        idx, inv = _bin_map(H, W, bins, transform, w, x.device, official)
        if fft:
            S = _spectrum(x4.to(w), True)
            out = torch.ops.sdekernels_C.radial_bin_fwd(S.reshape(S.shape[0], C, -1), idx, inv, 2, 1.0 / (H * W),
                                                       channel_mean)
            Y = S.contiguous() if save else Y
        else:
            out, Y = torch.ops.sdekernels_C.radial_psd_fwd(x4.to(w), idx, inv, _dct(H, w, x.device),
                                                           _dct(W, w, x.device), channel_mean, save)
    else:
        out = _psd_aten(x4.to(w), bins, fft, channel_mean, official)
        Y = _spectrum(x4.to(w), fft).contiguous() if save else Y
    out = out.reshape(x4.shape[0], (1 if channel_mean else C) * bins) * (c * c).reshape(-1, 1)
    out = out.reshape(x.shape[:-3] + ((bins,) if channel_mean else (C, bins)))
    if keep_dc:
        _, inv = _bin_map(H, W, bins, transform, w, x.device, official)
        p0 = torch.zeros_like(out[..., 0], dtype=w) if centre else _dc_power(x, channel_mean)
        out = out.to(w).clone()
        out[..., 0] += torch.maximum(p0, _dc_floor(c, x, channel_mean)) * inv[0]
    return out.to(x.dtype), Y, c.reshape(-1)


def _psd_aten(x4: Tensor, bins: int, fft: bool, channel_mean: bool, official: bool) -> Tensor:
    """What the kernels compute, in differentiable ATen (the path without the extension): the power of
    x4's spectrum [R, C, H, W] (channel mean), floored at PSD_FLOOR, P[0, 0] = 0, binned."""
    H, W = x4.shape[-2:]
    S = _spectrum(x4, fft)
    P = S.square().sum(-1) / (H * W) if fft else S.square()
    P = (P.mean(-3) if channel_mean else P).clamp_min(constants.PSD_FLOOR).flatten(-2)
    P = torch.cat([torch.zeros_like(P[..., :1]), P[..., 1:]], -1)
    idx, inv = _bin_map(H, W, bins, "fft" if fft else "dct", P.dtype, P.device, official)
    return P.new_zeros(P.shape[:-1] + (bins,)).index_add(-1, idx, P) * inv


def _unit_samples(x: Tensor, official: bool = False):
    """(centred x / c as [R, C, H, W] in the work dtype, c [R, 1, 1, 1]), c = pow2_scale of the
    centred x: the kernels' floor P >= 1e-12 on x/c is the reference's relative floor 1e-12·c², P(x) =
    c²·P(x/c), and the spectrum never overflows (SPEC §10). Centring changes only the DC entry (0).
    official: c = 1, since the official code's floor is absolute (esm_loss scales its input for it)."""
    x4 = x.reshape(-1, *x.shape[-3:]).to(work_dtype(x.dtype))
    x4 = x4 - x4.mean((-2, -1), keepdim=True)
    c = torch.ones_like(x4[:, :1, :1, :1]) if official else pow2_scale(x4, (1, 2, 3))
    return x4 / c, c


def _dc_floor(c: Tensor, x: Tensor, channel_mean: bool) -> Tensor:
    """The relative floor 1e-12·c² of P[0, 0], shaped like _dc_power(x, channel_mean)."""
    cc = (constants.PSD_FLOOR * c * c).reshape(x.shape[:-3])
    return cc if channel_mean else cc.unsqueeze(-1)


@_radial_psd.register_fake
def _(x, bins, transform, channel_mean, save, official=False, keep_dc=False, centre=True):
    out = x.new_empty(x.shape[:-3] + ((bins,) if channel_mean else (x.shape[-3], bins)))
    w = work_dtype(x.dtype)
    scale = x.new_empty((math.prod(x.shape[:-3]),), dtype=w)
    return out, x.new_empty(_spectrum_shape(x, transform == "fft", save), dtype=w), scale


@torch.library.custom_op("sdekernels::radial_psd_backward", mutates_args=())
def _radial_psd_backward(x: Tensor, Y: Tensor, c: Tensor, grad: Tensor, bins: int, transform: str,
                         channel_mean: bool, official: bool = False, keep_dc: bool = False,
                         centre: bool = True) -> Tensor:
    # in the forward's frame: dL/dx = c·dL/d(x/c) for the output c²·P(x/c), c the forward's
    w = work_dtype(x.dtype)
    C, H, W = x.shape[-3:]
    c = c.reshape(-1, 1, 1, 1)
    g = grad.to(w)
    if _ext.available() and Y.numel():
        idx, inv = _bin_map(H, W, bins, transform, w, x.device, official)
        D = (None, None) if transform == "fft" else (_dct(H, w, x.device), _dct(W, w, x.device))
        gc = (g.reshape(Y.shape[0], -1) * c.reshape(-1, 1)).contiguous()  # linear in g: c applied to g, not dx
        dx = torch.ops.sdekernels_C.radial_psd_bwd(Y, gc, idx, inv, *D, channel_mean).reshape(x.shape)
    else:
        x4 = _unit_samples(x, official)[0]
        (dx,) = ref_vjp(_psd_aten, (x4,), g.reshape(x4.shape[:1] + g.shape[x.dim() - 3:]), bins=bins,
                        fft=transform == "fft", channel_mean=channel_mean, official=official)
        dx = (dx.reshape(c.shape[0], C * H * W) * c.reshape(-1, 1)).reshape(x.shape)
    if keep_dc and not centre:  # d(H·W·m²)/dx = 2m at every pixel, where the floor does not clamp P[0, 0]
        _, inv = _bin_map(H, W, bins, transform, w, x.device, official)
        m = x.to(w).mean((-2, -1))
        g0 = g[..., 0] * inv[0] * (_dc_power(x, channel_mean) >= _dc_floor(c, x, channel_mean))
        coef = 2 * m * (g0.unsqueeze(-1) / C if channel_mean else g0)
        dx = dx + coef[..., None, None]
    return grad_like(dx, x)


@_radial_psd_backward.register_fake
def _(x, Y, c, grad, bins, transform, channel_mean, official=False, keep_dc=False, centre=True):
    return torch.empty_like(x)


def _radial_psd_setup(ctx, inputs, output):
    x, ctx.bins, ctx.transform, ctx.channel_mean, _, ctx.official, ctx.keep_dc, ctx.centre = inputs
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)  # no zero-filled gradients for the spectrum and scale outputs
    ctx.save_for_backward(x, *output[1:])


def _radial_psd_grad(ctx, grad, *_):
    x, Y, c = ctx.saved_tensors
    if grad is None:  # the spectrum alone was used (gradients are not materialised)
        return (None,) * 8
    dx = _radial_psd_backward(x, Y, c, grad, ctx.bins, ctx.transform, ctx.channel_mean, ctx.official, ctx.keep_dc,
                              ctx.centre)
    return (dx,) + (None,) * 7


_radial_psd.register_autograd(_radial_psd_grad, setup_context=_radial_psd_setup)


def _check_bins(bins):
    return check_int(bins, "bins", 1)


def radial_psd(x: Tensor, *, bins: int = 16, transform: str = "dct", center: str | None = "mean",
               channel_reduce: str = "mean", keep_dc: bool = False) -> Tensor:
    """Radially binned power spectrum of x [..., C, H, W] (SPEC §9): [..., bins] (or [..., C, bins]).

    transform="dct": orthonormal 2-D DCT-II; "fft": |FFT2|² / (HW) with wrapped frequencies.
    P[0, 0] = 0 unless keep_dc, and removing each channel's spatial mean changes only the (0, 0)
    coefficient of either transform (every other basis function sums to zero), so without keep_dc
    center="mean" and center=None give the same spectrum (and gradient). keep_dc=True keeps P[0, 0]
    (with center="none": the Spectrum Matching paper's analysis spectra).
    """
    check(x, "x", min_dim=3)
    bins = _check_bins(bins)
    check_choice(transform, "transform", ("dct", "fft"))
    check_choice(center, "center", ("mean", None, "none"))
    check_choice(channel_reduce, "channel_reduce", ("mean", "none"))
    check_flag(keep_dc, "keep_dc")
    save = torch.is_grad_enabled() and x.requires_grad  # keep the spectrum only when a backward may follow
    return _radial_psd(x, bins, transform, channel_reduce == "mean", save, False, keep_dc, center == "mean")[0]


# ---------------------------------------------------------------- esm_loss


def _as_4d(x: Tensor) -> Tensor:
    return x.reshape(-1, *x.shape[-3:])


# The official variant floors each power entry at 1e-8 where radial_psd floors at 1e-12: the op is
# evaluated at z·1e-2 and scaled back by 1e4, since clamp(P·1e-4, 1e-12)·1e4 = clamp(P, 1e-8).
_OFFICIAL_SCALE = 1e-2


def _esm_spectrum(x4: Tensor, bins: int, official: bool, keep_dc: bool) -> Tensor:
    """keep_dc: the spectrum of the uncentred x4 with P[0, 0] kept (floored like every entry)."""
    if not official:
        return radial_psd(x4, bins=bins, center="none" if keep_dc else "mean", keep_dc=keep_dc)
    save = torch.is_grad_enabled() and x4.requires_grad
    out = _radial_psd(x4 * _OFFICIAL_SCALE, bins, "dct", True, save, True, keep_dc, not keep_dc)[0]
    return out / _OFFICIAL_SCALE ** 2


@functools.lru_cache(maxsize=64)
def _esm_axis(n: int, out: int, blur, padding: str, dtype: torch.dtype, device: torch.device) -> Tensor:
    """[out, n]: the target side's blur (if any) then bicubic resize (if any) along one axis."""
    M = torch.eye(n, dtype=torch.float64) if blur is None else _blur_matrix(n, *blur, padding)
    if out != n:
        M = _bicubic_matrix(n, out) @ M
    return M.to(dtype=dtype, device=device)


def _esm_target(x4: Tensor, size, blur, official: bool) -> Tensor:
    """reference esm_target_images by two GEMMs: blur and bicubic resize are both separable linear
    maps, so the whole target side is M_H x M_Wᵀ per image (the W side first, which shrinks it)."""
    blur = None if official and size[0] == 32 else blur  # the official code does not blur 32-px targets
    (H, W), (h, w) = x4.shape[-2:], tuple(size)
    if blur is None and (H, W) == (h, w):
        return x4
    key = None if blur is None else (int(blur[0]), float(blur[1]))
    pad = "zeros" if official else "reflect"
    MH, MW = (_esm_axis(n, o, key, pad, x4.dtype, x4.device) for n, o in ((H, h), (W, w)))
    t = x4.reshape(-1, W) @ MW.mT
    return (MH @ t.reshape(-1, H, w)).reshape(*x4.shape[:-2], h, w)


def esm_loss(z: Tensor, x: Tensor, *, delta: float = 0.0, bins: int = 16, blur=(7, 1.2), variant: str = "library",
             loss: str = "kl", log_power: bool = True, keep_dc: bool = False) -> Tensor:
    """Explicit spectrum matching loss of latents z [..., C_z, h, w] to images x [..., C, H, W] (SPEC §9).

    The target s_x (x blurred, resized to h×w, radial_psd · f^delta) is detached; both spectra go
    through log(1 + s + 1e-8) (unless log_power=False), are normalised to sum 1, and L = mean over
    the batch of KL(s_x ‖ s_z) (loss="kl") or the mean of (s_z − s_x)² (loss="l2").
    variant="official" reproduces the official Spectrum Matching code (no blur for 32-px latents,
    zero padding, and its 1e-8 terms); "library" (the default) is the SPEC's own definition.
    keep_dc=True: both spectra are those of the uncentred inputs with P[0, 0] kept (radial_psd's
    center="none", keep_dc=True), so the loss also matches the latent's mean to the image's.
    The loss is not scale-invariant (absolute log and floors): z and x belong in [−1, 1], as in the paper.
    """
    check(z, "z", min_dim=3)
    check(x, "x", min_dim=3, like=z)
    bins = _check_bins(bins)
    delta = check_real(delta, "delta")
    if blur is not None:
        if not isinstance(blur, (tuple, list)) or len(blur) != 2:
            raise ValueError(f"blur must be (odd size, sigma > 0) or None, got {blur!r}")
        size, sigma = check_int(blur[0], "blur size", 1), check_real(blur[1], "blur sigma", 0.0, open_lo=True)
        if size % 2 == 0:
            raise ValueError(f"blur size must be odd, got {size}")
        blur = (size, sigma)
    check_choice(variant, "variant", ("library", "official"))
    check_choice(loss, "loss", ("kl", "l2"))
    check_flag(log_power, "log_power")
    check_flag(keep_dc, "keep_dc")
    if z.shape[:-3] != x.shape[:-3]:
        raise ValueError(f"x must have z's batch shape {tuple(z.shape[:-3])}, got {tuple(x.shape[:-3])}")
    official = variant == "official"
    if blur is not None and not official and int(blur[0]) // 2 >= min(x.shape[-2:]):
        raise ValueError(f"x's H and W must exceed the blur radius {int(blur[0]) // 2}, got {tuple(x.shape[-2:])}")
    w = work_dtype(z.dtype)
    zw = _as_4d(z.to(w))
    with torch.no_grad():
        xw = _esm_target(_as_4d(x.detach().to(w)), zw.shape[-2:], blur, official)
        f = torch.arange(1, bins + 1, dtype=w, device=xw.device)
        s_x = _esm_spectrum(xw, bins, official, keep_dc) * f ** delta
    s_z = _esm_spectrum(zw, bins, official, keep_dc)
    return _esm_distance(s_x, s_z, loss, log_power, official).to(z.dtype)


def _esm_distance(s_x: Tensor, s_z: Tensor, loss: str, log_power: bool, official: bool) -> Tensor:
    """esm_loss from the target spectrum s_x (times f^delta) and s_z, both [N, bins] (SPEC §9)."""
    eps = 1e-8 if official else 0.0
    p, q = (_unit_sum(torch.log1p(s + 1e-8) if log_power else s, official) for s in (s_x, s_z))
    if p.numel() == 0:  # an empty batch: 0 (with a graph), not the NaN of an empty mean
        return (p.sum() + q.sum()) * 0
    if loss == "l2":
        return (q - p).square().mean()
    if official:
        return (p * ((p + eps).log() - (q + eps).log())).sum(-1).mean()
    keep = p > 0  # 0 · log 0 = 0: a bin empty in the target adds nothing (and no gradient)
    ratio = torch.where(keep, p, 1.0) / torch.where(keep, q, 1.0)
    return torch.where(keep, p * ratio.log(), 0.0).sum(-1).mean()


def _unit_sum(s: Tensor, official: bool) -> Tensor:
    """s clamped at 0 and divided by its sum over bins: + 1e-8 (official), at least the dtype's tiny (library)."""
    s = s.clamp_min(0)
    total = s.sum(-1, keepdim=True)
    return s / (total + 1e-8) if official else s / total.clamp_min(torch.finfo(s.dtype).tiny)


# ---------------------------------------------------------------- block_dct_lowpass


def _lowpass_triton(x: Tensor, P: Tensor, block: int) -> Tensor:
    H, W = x.shape[-2:]
    xc = rows(x, 2)  # [planes, H, W], read in place where W has unit stride
    y = x.new_empty(x.shape)
    E = block * block
    n_blocks = xc.numel() // E
    bm, bn = 64, kt.tile(E, 64)
    if n_blocks:
        # Memory-bound: one pipeline stage when K fits one step (block 8) leaves shared memory for 2
        # programs per multiprocessor (3 stages took 96 KB in fp32, 128 KB in fp64).
        _block_proj_kernel[(triton.cdiv(n_blocks, bm), triton.cdiv(E, bn))](
            xc, P, y, n_blocks, H // block, W // block, H, W, *xc.stride()[:2], E, BLOCK=block,
            PRECISION=kt.precision(P.dtype), ACC=kt.acc(P.dtype), BM=bm, BN=bn, BK=bn,
            num_stages=1 if E <= bn else 2)
    return y


@torch.library.custom_op("sdekernels::block_dct_lowpass", mutates_args=())
def _block_lowpass(x: Tensor, k: int, block: int) -> Tensor:
    if k == 0:
        return x.clone(memory_format=torch.contiguous_format)
    w = work_dtype(x.dtype)
    if use_triton(x):  # the dot takes bf16/fp16 blocks as they are, against the projector in that dtype
        return _lowpass_triton(x, _projector(block, k, x.dtype, x.device), block)
    P = _projector(block, k, w, x.device)
    H, W = x.shape[-2:]
    t = x.to(w).reshape(-1, H // block, block, W // block, block).transpose(-3, -2).reshape(-1, block * block) @ P
    y = t.reshape(-1, H // block, W // block, block, block).transpose(-3, -2).reshape(x.shape)
    return y.to(x.dtype)


@_block_lowpass.register_fake
def _(x, k, block):
    return x.new_empty(x.shape)


def _block_lowpass_setup(ctx, inputs, output):
    _, ctx.k, ctx.block = inputs


def _block_lowpass_grad(ctx, grad):
    return _block_lowpass(grad, ctx.k, ctx.block), None, None  # a symmetric projector is its own adjoint


_block_lowpass.register_autograd(_block_lowpass_grad, setup_context=_block_lowpass_setup)


def block_dct_lowpass(x: Tensor, k: int, *, block: int = 8) -> Tensor:
    """Block-DCT low-pass of x [..., H, W] (SPEC §9): per block×block tile, the DCT coefficients with
    u + v ≥ 2·block − 1 − k are zeroed. One block²×block² projector per tile, applied by one matmul."""
    check(x, "x", min_dim=2)
    block = check_int(block, "block", 1)
    k = check_int(k, "k", 0, 2 * block - 1)
    H, W = x.shape[-2:]
    if H % block or W % block:
        raise ValueError(f"x's H and W must be multiples of block={block}, got H={H}, W={W}")
    return _block_lowpass(x, k, block)


# ---------------------------------------------------------------- dog


def _radius(sigma: float) -> int:
    return int(math.ceil(3.0 * sigma))


def _dog_blur(n: int, sigma: float) -> Tensor:
    return _blur_matrix(n, 2 * _radius(sigma) + 1, sigma)


@functools.lru_cache(maxsize=64)
def _dog_matrices(H: int, W: int, sigma1: float, sigma2: float, dtype: torch.dtype, device: torch.device):
    """(L [H, 2H], R [W, 2W]) with d = L · (z R).view(2H, W) = G1_H z G1_Wᵀ − G2_H z G2_Wᵀ per image:
    R = [G1_Wᵀ, G2_Wᵀ] blurs the rows with both kernels side by side, so (z R) viewed as [2H, W]
    interleaves the two results row by row, and L's columns interleave G1_H and −G2_H to match."""
    R = torch.cat([_dog_blur(W, sigma1).mT, _dog_blur(W, sigma2).mT], 1)
    L = torch.stack([_dog_blur(H, sigma1), -_dog_blur(H, sigma2)], 2).reshape(H, 2 * H)
    return L.to(dtype=dtype, device=device), R.to(dtype=dtype, device=device)



def _dog_map(z3: Tensor, sigma1: float, sigma2: float, adjoint: bool = False) -> Tensor:
    """d = G_σ1 ∗ z − G_σ2 ∗ z of z3 [N, H, W] by two GEMMs (the blurs as banded matrices); with
    `adjoint`, the adjoint map (the gradient of a linear map)."""
    N, H, W = z3.shape
    L, R = _dog_matrices(H, W, sigma1, sigma2, z3.dtype, z3.device)
    if adjoint:
        return (L.mT @ z3).reshape(N * H, 2 * W).matmul(R.mT).reshape(N, H, W)
    return L @ z3.reshape(N * H, W).matmul(R).reshape(N, 2 * H, W)


@torch.library.custom_op("sdekernels::dog", mutates_args=())
def _dog(z: Tensor, sigma1: float, sigma2: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(output, per-sample std s and mean of d and scale c, each [N] in the work dtype: the backward
    needs only these). Each sample is divided by c = pow2_scale(z), a power of two (exact):
    d/max(s, 1e-6) of z/c is the reference's d/max(std, 1e-6·c) of z, a relative floor (SPEC §10)."""
    C, H, W = z.shape[-3:]
    z2 = z.to(work_dtype(z.dtype)).reshape(-1, C * H * W)
    c = pow2_scale(z2, (1,)).reshape(-1)
    d = _dog_map((z2 / c[:, None]).reshape(-1, H, W), sigma1, sigma2).reshape(-1, C * H * W)
    s, mean = torch.std_mean(d, dim=1, correction=0)
    return (d / s.clamp_min(1e-6)[:, None]).reshape(z.shape).to(z.dtype), s, mean, c


@_dog.register_fake
def _(z, sigma1, sigma2):
    n = z.numel() // max(math.prod(z.shape[-3:]), 1)
    w = work_dtype(z.dtype)
    return z.new_empty(z.shape), *(z.new_empty(n, dtype=w) for _ in range(3))


@torch.library.custom_op("sdekernels::dog_backward", mutates_args=())
def _dog_backward(out: Tensor, s: Tensor, mean: Tensor, c: Tensor, grad: Tensor, sigma1: float,
                  sigma2: float) -> Tensor:
    # In the frame z/c: o = d / max(s, ε), s = population std of d. Where s > ε:
    #   dL/dd = g/s − Σ(g·d)/s² · (d − mean d)/(N·s) = g/s − Σ(g·o)/(N·s) · (o − mean d/s),
    # from the saved output: no blur is recomputed. Where the floor acts (s <= ε, a near-constant d)
    # only g/ε remains, so that no input gives NaN. dL/dz = dL/d(z/c) / c.
    C, H, W = out.shape[-3:]
    o = out.to(s.dtype).reshape(s.shape[0], C * H * W)
    g = grad.to(s.dtype).reshape(o.shape)
    den = s.clamp_min(1e-6)
    inv = (1.0 / den)[:, None]
    coef = torch.where(s > 1e-6, (g * o).sum(1) / (o.shape[1] * den), 0.0)[:, None]
    dd = torch.addcmul((coef * mean[:, None]) * inv, g, inv) - coef * o  # g/s − coef·(o − mean d/s)
    dz = _dog_map(dd.reshape(-1, H, W), sigma1, sigma2, adjoint=True).reshape(o.shape) / c[:, None]
    return dz.reshape(out.shape).to(out.dtype)


@_dog_backward.register_fake
def _(out, s, mean, c, grad, sigma1, sigma2):
    return torch.empty_like(out)


def _dog_setup(ctx, inputs, output):
    _, ctx.sigma1, ctx.sigma2 = inputs
    ctx.mark_non_differentiable(*output[1:])
    ctx.save_for_backward(*output)


def _dog_grad(ctx, grad, *_):
    return _dog_backward(*ctx.saved_tensors, grad, ctx.sigma1, ctx.sigma2), None, None


_dog.register_autograd(_dog_grad, setup_context=_dog_setup)


def dog(z: Tensor, sigma1: float = 1.0, sigma2: float = 2.0) -> Tensor:
    """Difference of Gaussians of z [..., C, H, W] over the spatial grid, divided by max(its population
    standard deviation over each sample's C·H·W values, 1e-6·c) (SPEC §9, with the floor relative to the
    sample's scale c = its max|z| rounded down to a power of two, SPEC §10). The defaults σ1 = 1,
    σ2 = 2 and the std normalisation are this library's own choice (the official Spectrum Matching
    code has no DoG)."""
    check(z, "z", min_dim=3)
    sigma1, sigma2 = (check_real(s, name, 0.0, open_lo=True) for s, name in ((sigma1, "sigma1"), (sigma2, "sigma2")))
    r = max(_radius(sigma1), _radius(sigma2))
    if r >= min(z.shape[-2:]):
        raise ValueError(f"z's H and W must exceed the blur radius {r}, got {tuple(z.shape[-2:])}")
    return _dog(z, float(sigma1), float(sigma2))[0]


# ---------------------------------------------------------------- registry entries


def _images(shape, device, dtype, gen, shift=0.0):
    size = (*([shape["batch"]] if shape.get("batch") else []), shape["C"], shape["H"], shape["W"])
    return randn(size, device, dtype, gen, 1.0, shift)


def _psd_sample(shape, device, dtype, gen):
    kwargs = {k: shape[k] for k in ("bins", "transform", "center", "channel_reduce", "keep_dc") if k in shape}
    return Sample((_images(shape, device, dtype, gen, shift=shape.get("shift", 0.0)),), kwargs)


def _bad_psd(device):
    x = torch.randn(2, 3, 8, 8, device=device)
    return [((x[0, 0],), {}, "x"), ((x.long(),), {}, "x"), ((x,), {"bins": 0}, "bins"),
            ((x,), {"bins": 4.0}, "bins", TypeError),
            ((x,), {"transform": "dst"}, "transform"), ((x,), {"center": "median"}, "center"),
            ((x,), {"channel_reduce": "sum"}, "channel_reduce")]


def _psd_cost(s):
    x = s.args[0]
    H, W = x.shape[-2:]
    return x.numel() * x.element_size(), 2 * x.numel() * (H + W) * (4 if s.kwargs.get("transform") == "fft" else 1)


register(OpInfo(
    name="radial_psd", op=radial_psd, ref=ref.radial_psd, make=_psd_sample,
    gpu_shape={"batch": 2, "C": 3, "H": 40, "W": 24},
    cond=(16, 64),  # the power is quadratic (twice the relative error) and summed per bin; its adjoint likewise
    scaling=lambda sh: ((0,), (2,)),
    shapes=[{"batch": 0, "C": 1, "H": 1, "W": 1}, {"batch": 2, "C": 4, "H": 32, "W": 32, "shift": 3.0},
            {"batch": 3, "C": 3, "H": 16, "W": 24, "transform": "fft"},
            {"batch": 2, "C": 2, "H": 8, "W": 8, "bins": 5, "channel_reduce": "none"},
            {"batch": 2, "C": 1, "H": 5, "W": 7, "transform": "fft", "channel_reduce": "none", "bins": 40},
            {"batch": 2, "C": 3, "H": 6, "W": 9, "bins": 7},
            {"batch": 2, "C": 3, "H": 8, "W": 8, "keep_dc": True, "center": "none", "shift": 0.5},
            {"batch": 2, "C": 2, "H": 6, "W": 7, "keep_dc": True, "transform": "fft", "channel_reduce": "none",
             "center": "none", "shift": -0.3}],
    space={"batch": (0, 3), "C": (1, 4), "H": (1, 40), "W": (1, 40), "bins": (1, 24)},
    bad=_bad_psd,
    bench=[{"batch": 256, "C": 4, "H": 32, "W": 32, "backward": True, "quick": True},
           {"batch": 64, "C": 3, "H": 256, "W": 256, "backward": True}],
    cost=_psd_cost,
    tol={F64: (1e-11, 1e-9), torch.float32: (1e-5, 1e-4), torch.bfloat16: (2e-2, 2e-2), torch.float16: (5e-3, 5e-3)},
))


def _esm_sample(shape, device, dtype, gen):
    z = _images({**shape, "C": shape["Cz"], "H": shape["h"], "W": shape["w"]}, device, dtype, gen)
    x = _images(shape, device, dtype, gen, shift=0.5)
    kwargs = {k: shape[k] for k in ("delta", "bins", "blur", "variant", "loss", "log_power", "keep_dc") if k in shape}
    return Sample((z, x), kwargs)


def _bad_esm(device):
    z, x = torch.randn(2, 4, 8, 8, device=device), torch.randn(2, 3, 32, 32, device=device)
    return [((z[0, 0], x), {}, "z"), ((z, x[:1]), {}, "x"), ((z, x.double()), {}, "x"),
            ((z, x), {"blur": (4, 1.0)}, "blur"), ((z, x), {"bins": 0}, "bins"),
            ((z, x), {"bins": 8.0}, "bins", TypeError),
            ((z, x), {"blur": (7.0, 1.2)}, "blur", TypeError), ((z, x), {"blur": (7, float("nan"))}, "blur"),
            ((z, x), {"blur": (7, float("inf"))}, "blur"), ((z, x), {"blur": (7, 0.0)}, "blur"),
            ((z, x), {"blur": 7}, "blur"),
            ((z, x), {"delta": float("nan")}, "delta"), ((z, x), {"delta": float("inf")}, "delta"),
            ((z, x[..., :3, :3]), {}, "x"), ((z, x), {"variant": "paper"}, "variant"), ((z, x), {"loss": "l1"}, "loss"),
            ((z, x), {"keep_dc": 1}, "keep_dc", TypeError)]


register(OpInfo(
    name="esm_loss", op=esm_loss, ref=ref.esm_loss, make=_esm_sample,
    gpu_shape={"batch": 2, "Cz": 4, "h": 16, "w": 16, "C": 3, "H": 40, "W": 24, "bins": 8, "blur": (5, 0.8)},
    cond=(64, 64),  # log power spectra: a bin's small absolute error is a large relative one, both ways
    shapes=[{"batch": 0, "Cz": 1, "h": 4, "w": 4, "C": 1, "H": 8, "W": 8},
            {"batch": 2, "Cz": 4, "h": 8, "w": 8, "C": 3, "H": 32, "W": 32},
            {"batch": 3, "Cz": 2, "h": 16, "w": 12, "C": 3, "H": 16, "W": 12, "blur": None, "delta": 0.5},
            {"batch": 2, "Cz": 4, "h": 16, "w": 16, "C": 3, "H": 40, "W": 24, "bins": 8, "blur": (5, 0.8)},
            {"batch": 2, "Cz": 3, "h": 8, "w": 8, "C": 3, "H": 32, "W": 32, "variant": "official"},
            {"batch": 2, "Cz": 2, "h": 5, "w": 5, "C": 1, "H": 15, "W": 15, "variant": "official", "loss": "l2",
             "log_power": False, "delta": 0.4},
            {"batch": 2, "Cz": 2, "h": 12, "w": 10, "C": 2, "H": 24, "W": 20, "loss": "l2", "log_power": False},
            {"batch": 2, "Cz": 3, "h": 8, "w": 8, "C": 3, "H": 32, "W": 32, "keep_dc": True},
            {"batch": 2, "Cz": 2, "h": 6, "w": 5, "C": 3, "H": 18, "W": 15, "variant": "official", "keep_dc": True,
             "delta": 0.5}],
    space={"batch": (0, 3), "Cz": (1, 4), "h": (2, 16), "w": (2, 16), "C": (1, 3), "H": (8, 40), "W": (8, 40)},
    bad=_bad_esm,
    constant=(1,), batch_key=None,  # the target side x is detached: gradients flow to z only
    bench=[{"batch": 64, "Cz": 4, "h": 32, "w": 32, "C": 3, "H": 256, "W": 256, "quick": True}],
    cost=lambda s: (sum(t.numel() * t.element_size() for t in s.args),
                    4 * sum(t.numel() * (t.shape[-1] + t.shape[-2]) for t in s.args)),
    tol={F64: (1e-10, 1e-8), torch.float32: (1e-5, 1e-4), torch.bfloat16: (2e-2, 2e-2), torch.float16: (5e-3, 5e-3)},
))


def _lowpass_sample(shape, device, dtype, gen):
    b = shape.get("block", 8)
    x = _images({**shape, "H": shape.get("H", shape.get("nbh", 1) * b), "W": shape.get("W", shape.get("nbw", 1) * b)},
                device, dtype, gen)
    return Sample((x, shape["k"]), {"block": b})


def _bad_lowpass(device):
    x = torch.randn(2, 3, 16, 16, device=device)
    return [((x[0, 0, 0], 4), {}, "x"), ((x[..., :12], 4), {}, "x"), ((x, 16), {}, "k"), ((x, -1), {}, "k"),
            ((x, 2.0), {}, "k", TypeError), ((x, 4), {"block": 0}, "block"),
            ((x, 4), {"block": 8.0}, "block", TypeError),
            ((x.int(), 4), {}, "x")]


register(OpInfo(
    name="block_dct_lowpass", op=block_dct_lowpass, ref=ref.block_dct_lowpass, make=_lowpass_sample,
    gpu_shape={"batch": 2, "C": 2, "H": 32, "W": 40, "k": 5},
    cond=(16, 64),  # an orthogonal projector, its own backward: nothing is amplified
    scaling=lambda sh: ((0,), (1,)),
    shapes=[{"batch": 0, "C": 1, "H": 8, "W": 8, "k": 0}, {"batch": 2, "C": 3, "H": 16, "W": 16, "k": 8},
            {"batch": 3, "C": 2, "H": 8, "W": 24, "k": 3}, {"batch": 2, "C": 1, "H": 8, "W": 16, "k": 15},
            {"batch": 1, "C": 2, "H": 12, "W": 12, "k": 2, "block": 4}, {"batch": 1, "C": 1, "H": 8, "W": 16, "k": 10},
            {"batch": 2, "C": 1, "H": 6, "W": 9, "k": 4, "block": 3}],
    space={"batch": (0, 3), "C": (1, 3), "nbh": (1, 4), "nbw": (1, 4), "block": (1, 9), "k": (0, 17)},
    valid=lambda sh: sh["k"] <= 2 * sh["block"] - 1,
    bad=_bad_lowpass, own_dims={"x": 2},  # x [..., H, W]: the channels are batch dims
    bench=[{"batch": 256, "C": 16, "H": 16, "W": 16, "k": 8, "quick": True, "backward": True},
           {"batch": 64, "C": 3, "H": 256, "W": 256, "k": 8, "backward": True}],
    cost=lambda s: (2 * s.args[0].numel() * s.args[0].element_size(), 2 * s.args[0].numel() * s.kwargs["block"] ** 2),
))


def _dog_sample(shape, device, dtype, gen):
    kwargs = {k: shape[k] for k in ("sigma1", "sigma2") if k in shape}
    return Sample((_images(shape, device, dtype, gen),), kwargs)


def _bad_dog(device):
    z = torch.randn(2, 3, 16, 16, device=device)
    return [((z[0, 0],), {}, "z"), ((z.long(),), {}, "z"), ((z,), {"sigma1": 0.0}, "sigma1"),
            ((z,), {"sigma2": -1.0}, "sigma2"), ((z[..., :6],), {}, "z"), ((z,), {"sigma1": float("inf")}, "sigma1"),
            ((z,), {"sigma2": float("nan")}, "sigma2")]


register(OpInfo(
    name="dog", op=dog, ref=ref.dog, make=_dog_sample,
    gpu_shape={"batch": 2, "C": 3, "H": 32, "W": 32},
    cond=(16, 64),  # linear: separable blur sums in either direction
    scaling=lambda sh: ((0,), (0,)),
    shapes=[{"batch": 0, "C": 1, "H": 7, "W": 8}, {"batch": 2, "C": 3, "H": 16, "W": 16},
            {"batch": 3, "C": 2, "H": 12, "W": 20, "sigma1": 0.7, "sigma2": 1.5},
            {"batch": 2, "C": 2, "H": 12, "W": 14, "sigma1": 0.5, "sigma2": 1.0}],
    space={"batch": (0, 3), "C": (1, 3), "H": (7, 24), "W": (7, 24)},
    bad=_bad_dog,
    bench=[{"batch": 256, "C": 4, "H": 32, "W": 32, "quick": True, "backward": True}],
    cost=lambda s: (2 * s.args[0].numel() * s.args[0].element_size(), 4 * s.args[0].numel() * 20),
))
