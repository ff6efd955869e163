"""Fourier amplitude/phase split, merge and amplitude mix (SPEC §8).

`fourier_split` forward, Triton (CUDA, or CPU under the interpreter): the 2-D DFT as two GEMM
stages with real cos/sin DFT matrices — rows (only the W/2 + 1 non-redundant columns of a real
image's spectrum), then columns — with amplitude, phase, log1p, the exact-real bins, the fftshift
remap and the Hermitian mirror into the full spectrum fused into the epilogue of the second stage:
no complex spectrum is ever stored. Forward on CPU: ATen's rfft2, then one fused C++ pass
(csrc/cpu/fourier.cpp) that writes A and P of the half spectrum and mirrors them.
`fourier_merge`: a fused prologue builds the Hermitian spectrum of A·e^{iP} straight from the
(shifted) maps: Triton, its half, then one irfft2; C++ (CPU), the spectrum of the image packed
as x[:, 0::2] + i·x[:, 1::2], then one complex ifft2 of half the width (MKL's irfft2 costs more).
Backward (csrc/cpu/fourier.cpp, csrc/cuda/fourier.cu): pointwise kernels around one ATen FFT.
Reference: reference/fourier.py. Tests: python_tests/test_ops.py (generic), python_tests/test_fourier.py.
"""
import functools
import math
from typing import Optional

import torch
from torch import Tensor

from . import _triton as kt
from .. import _ext
from .._fallback import ref
from .._core import (HAS_TRITON, check, check_domain, check_int, check_real, grad_like, pow2_scale,
                     ref_vjp, rows, use_triton, work_dtype)
from ..registry import F64, OpInfo, Sample, rand, randn, register

NORMS = ("backward", "ortho", "forward")

if HAS_TRITON:
    import triton
    import triton.language as tl

    from ._triton import ATAN_C3, ATAN_C5, ATAN_C7, ATAN_C9, ATAN_TAN_PI_8, mma

    @triton.jit
    def _pos(k1, k2, H, W, Wo, ONESIDED: tl.constexpr, CENTERED: tl.constexpr):
        """Offset of frequency (k1, k2) in the stored [H, ·] map of row stride Wo (fftshifted when CENTERED)."""
        if CENTERED:
            if ONESIDED:
                return ((k1 + H // 2) % H) * Wo + k2
            return ((k1 + H // 2) % H) * Wo + (k2 + W // 2) % W
        return k1 * Wo + k2

    @triton.jit
    def _atan2(y, x, pi, REFINE: tl.constexpr):
        # Reduction to |u| <= tan(π/8) and Cephes' atanf polynomial (~2e-7); one Newton step on
        # x·sin θ − y·cos θ = 0 brings float64 to full accuracy. atan2(±0, x < 0) = π.
        ax, ay = tl.abs(x), tl.abs(y)
        mx, mn = tl.maximum(ax, ay), tl.minimum(ax, ay)
        t = mn / tl.where(mx > 0, mx, 1.0)
        big = t > ATAN_TAN_PI_8
        u = tl.where(big, (t - 1.0) / (t + 1.0), t)
        z = u * u
        r = (((ATAN_C9 * z - ATAN_C7) * z + ATAN_C5) * z - ATAN_C3) * z * u + u
        r = tl.where(big, r + 0.25 * pi, r)
        r = tl.where(ay > ax, 0.5 * pi - r, r)
        r = tl.where(x < 0, pi - r, r)
        r = tl.where(y < 0, -r, r)
        if REFINE:
            c, s = tl.cos(r), tl.sin(r)
            d = x * c + y * s
            r = r - tl.where(mx > 0, (x * s - y * c) / tl.where(mx > 0, d, 1.0), 0.0)
            r = tl.where(y < 0, tl.minimum(tl.maximum(r, -pi), 0.0), tl.minimum(tl.maximum(r, 0.0), pi))
        return tl.where(r == -pi, pi, r)

    @triton.jit(do_not_specialize=["M", "W", "Wh"])
    def _dft_rows_kernel(X, CW, SW, YR, YI, M, W, Wh, PRECISION: tl.constexpr,
                         ACC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        # Stage 1: Y = x · (C − iS) over the rows of every image at once ([R·H, W] · [W, W/2+1]).
        pm, pn = tl.program_id(0).to(tl.int64), tl.program_id(1)
        m = pm * BM + tl.arange(0, BM)
        n = pn * BN + tl.arange(0, BN)
        yr = tl.zeros([BM, BN], ACC)
        yi = tl.zeros([BM, BN], ACC)
        for k0 in range(0, W, BK):
            k = k0 + tl.arange(0, BK)
            x = tl.load(X + m[:, None] * W + k[None, :], mask=(m[:, None] < M) & (k[None, :] < W), other=0).to(ACC)
            bmask = (k[:, None] < W) & (n[None, :] < Wh)
            c = tl.load(CW + k[:, None] * Wh + n[None, :], mask=bmask, other=0)
            s = tl.load(SW + k[:, None] * Wh + n[None, :], mask=bmask, other=0)
            yr = mma(yr, x, c, PRECISION)
            yi = mma(yi, x, -s, PRECISION)
        out = m[:, None] * Wh + n[None, :]
        omask = (m[:, None] < M) & (n[None, :] < Wh)
        tl.store(YR + out, yr, mask=omask)
        tl.store(YI + out, yi, mask=omask)

    @triton.jit(do_not_specialize=["H", "W", "Wh", "Wo"])
    def _split_kernel(YR, YI, CH, SH, A, P, PI, TOL, H, W, Wh, Wo, scale, ONESIDED: tl.constexpr,
                      CENTERED: tl.constexpr, LOG: tl.constexpr, PRECISION: tl.constexpr, REFINE: tl.constexpr,
                      ACC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        # Stage 2: X = (C − iS) · Y over the columns of one image, then the polar epilogue.
        img = tl.program_id(0).to(tl.int64)
        k1 = tl.program_id(1) * BM + tl.arange(0, BM)
        k2 = tl.program_id(2) * BN + tl.arange(0, BN)
        yr_img, yi_img = YR + img * H * Wh, YI + img * H * Wh
        re = tl.zeros([BM, BN], ACC)
        im = tl.zeros([BM, BN], ACC)
        for h0 in range(0, H, BK):
            h = h0 + tl.arange(0, BK)
            amask = (k1[:, None] < H) & (h[None, :] < H)
            c = tl.load(CH + k1[:, None] * H + h[None, :], mask=amask, other=0)
            s = tl.load(SH + k1[:, None] * H + h[None, :], mask=amask, other=0)
            bmask = (h[:, None] < H) & (k2[None, :] < Wh)
            yr = tl.load(yr_img + h[:, None] * Wh + k2[None, :], mask=bmask, other=0)
            yi = tl.load(yi_img + h[:, None] * Wh + k2[None, :], mask=bmask, other=0)
            re = mma(mma(re, c, yr, PRECISION), s, yi, PRECISION)
            im = mma(mma(im, c, yi, PRECISION), -s, yr, PRECISION)
        re = re * scale
        im = im * scale
        # Im X is exactly 0 at k ∈ {0, n/2} on both axes: round-off must not pick −π over π there.
        real_bin = ((k1[:, None] == 0) | (2 * k1[:, None] == H)) & ((k2[None, :] == 0) | (2 * k2[None, :] == W))
        im = tl.where(real_bin, 0.0, im)
        pi = tl.load(PI)
        amp = tl.sqrt(re * re + im * im)
        # SPEC §8's branch cut: π on the negative real axis up to round-off (the image's cut width).
        ph = tl.where((re < 0) & (tl.abs(im) <= tl.load(TOL + img)), pi, _atan2(im, re, pi, REFINE))
        if LOG:  # log1p without cancellation: log(u)·a/(u − 1), u = 1 + a
            u = 1.0 + amp
            amp = tl.where(u == 1.0, amp, tl.log(u) * (amp / tl.where(u == 1.0, 1.0, u - 1.0)))
        mask = (k1[:, None] < H) & (k2[None, :] < Wh)
        a_img, p_img = A + img * H * Wo, P + img * H * Wo
        o = _pos(k1[:, None], k2[None, :], H, W, Wo, ONESIDED, CENTERED)
        tl.store(a_img + o, amp.to(A.dtype.element_ty), mask=mask)
        tl.store(p_img + o, ph.to(P.dtype.element_ty), mask=mask)
        if not ONESIDED:  # X[−k1, −k2] = conj X[k1, k2] fills the columns beyond W/2
            mirror = mask & (k2[None, :] >= 1) & (2 * k2[None, :] < W)
            om = _pos((H - k1[:, None]) % H, W - k2[None, :], H, W, Wo, ONESIDED, CENTERED)
            tl.store(a_img + om, amp.to(A.dtype.element_ty), mask=mirror)
            tl.store(p_img + om, tl.where(ph == pi, pi, -ph).to(P.dtype.element_ty), mask=mirror)

    @triton.jit(do_not_specialize=["total", "H", "W", "Wh"])
    def _merge_kernel(A, P, Z, total, H, W, Wh, s_img, s_row, ONESIDED: tl.constexpr, CENTERED: tl.constexpr,
                      ACC: tl.constexpr, BLOCK: tl.constexpr):
        # Half spectrum Z (interleaved re, im) of the Hermitian part of A·e^{iP}: Re IFFT2 = irfft2(Z).
        # A and P [R, H, Wo] share the strides (s_img, s_row, 1); Z is contiguous.
        i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = i < total
        k2 = i % Wh
        row = i // Wh
        k1 = row % H
        img = row // H
        base = img * s_img
        o = base + _pos(k1, k2, H, W, s_row, ONESIDED, CENTERED)
        a = tl.load(A + o, mask=mask, other=0).to(ACC)
        p = tl.load(P + o, mask=mask, other=0).to(ACC)
        re = a * tl.cos(p)
        im = a * tl.sin(p)
        m2 = (W - k2) % W
        if ONESIDED:  # only the columns 0 and W/2 have their mirror in the half
            has_mirror = mask & (m2 < Wh)
        else:
            has_mirror = mask
        om = base + _pos((H - k1) % H, m2, H, W, s_row, ONESIDED, CENTERED)
        am = tl.load(A + om, mask=has_mirror, other=0).to(ACC)
        pm = tl.load(P + om, mask=has_mirror, other=0).to(ACC)
        re = tl.where(has_mirror, 0.5 * (re + am * tl.cos(pm)), re)
        im = tl.where(has_mirror, 0.5 * (im - am * tl.sin(pm)), im)
        tl.store(Z + 2 * i, re, mask=mask)
        tl.store(Z + 2 * i + 1, im, mask=mask)


@functools.lru_cache(maxsize=64)
def _dft_tables(n: int, cols: int, device: torch.device, dtype: torch.dtype):
    """cos and sin of 2π·j·k/n for j < n, k < cols, from exact integer phases (sin is exactly 0 at k = 0, n/2)."""
    j = torch.arange(n, dtype=torch.int64)
    jk = (j[:, None] * torch.arange(cols, dtype=torch.int64)[None, :]) % n
    theta = jk.to(torch.float64) * (2.0 * math.pi / n)
    c, s = torch.cos(theta), torch.sin(theta)
    s[(2 * jk) % n == 0] = 0.0
    c[jk == 0] = 1.0
    c[2 * jk == n] = -1.0
    return c.to(device=device, dtype=dtype).contiguous(), s.to(device=device, dtype=dtype).contiguous()


def _scale(norm: str, H: int, W: int) -> float:
    return {"backward": 1.0, "ortho": 1.0 / math.sqrt(H * W), "forward": 1.0 / (H * W)}[norm]


def _blocks(acc: torch.dtype):
    """Tiles, warps and dot precision of both DFT stages (no spills for sm_90 under Triton 3.6 and
    3.9: benchmarks/NOTES.md, "Tile choices"). tf32x3 keeps fp32 accuracy (a phase is as sensitive
    as the smallest amplitude); fp64 runs on the fp64 MMA."""
    if acc == torch.float64:
        return dict(PRECISION="ieee", BM=16, BN=32, BK=16, num_warps=4)
    return dict(PRECISION=kt.precision(acc), BM=64, BN=32, BK=16, num_warps=4)


def _split_triton(x: Tensor, tol: Tensor, onesided: bool, norm: str, centered: bool, log_amplitude: bool):
    R, H, W = x.shape
    Wh, Wo = W // 2 + 1, (W // 2 + 1 if onesided else W)
    acc = work_dtype(x.dtype)
    A = torch.empty((R, H, Wo), device=x.device, dtype=x.dtype)
    P = torch.empty_like(A)
    if R == 0:
        return A, P
    cw, sw = _dft_tables(W, Wh, x.device, acc)
    ch, sh = _dft_tables(H, H, x.device, acc)
    yr = torch.empty((R * H, Wh), device=x.device, dtype=acc)
    yi = torch.empty_like(yr)
    cfg = _blocks(acc)
    tacc = kt.acc(acc)
    grid1 = (triton.cdiv(R * H, cfg["BM"]), triton.cdiv(Wh, cfg["BN"]))
    _dft_rows_kernel[grid1](x, cw, sw, yr, yi, R * H, W, Wh, ACC=tacc, **cfg)
    pi = torch.full((1,), math.pi, device=x.device, dtype=acc)
    grid2 = (R, triton.cdiv(H, cfg["BM"]), triton.cdiv(Wh, cfg["BN"]))
    _split_kernel[grid2](yr, yi, ch, sh, A, P, pi, tol, H, W, Wh, Wo, _scale(norm, H, W), ONESIDED=onesided,
                         CENTERED=centered, LOG=log_amplitude, REFINE=acc == torch.float64, ACC=tacc, **cfg)
    return A, P


def _merge_half_triton(A: Tensor, P: Tensor, W: int, onesided: bool, centered: bool) -> Tensor:
    """A, P [..., H, Wo] read in place when they share strides with a unit column stride."""
    A, P = rows(A, 2), rows(P, 2)
    if A.stride() != P.stride():
        A, P = A.contiguous(), P.contiguous()
    R, H, Wo = A.shape
    Wh = W // 2 + 1
    acc = work_dtype(A.dtype)
    Z = torch.empty((R, H, Wh, 2), device=A.device, dtype=acc)
    total = R * H * Wh
    if total:
        BLOCK = 256  # one entry per thread: more spilled (two sin/cos pairs each; up to 1.2 KB in fp64)
        _merge_kernel[(triton.cdiv(total, BLOCK),)](A, P, Z, total, H, W, Wh, *A.stride()[:2], ONESIDED=onesided,
                                                    CENTERED=centered, ACC=kt.acc(acc), BLOCK=BLOCK, num_warps=8)
    return Z


def _flat(t: Tensor) -> Tensor:
    return t.reshape((-1,) + tuple(t.shape[-2:])).contiguous()


# ---------------------------------------------------------------- fourier_split


def _round_off(x: Tensor, norm: str, factor: float) -> Tensor:
    """Per image [..., 1, 1]: factor·eps·‖x‖₂ in the units of X under `norm` (0 for a non-finite image)."""
    n = x.shape[-2] * x.shape[-1]
    unit = {"backward": 1.0, "ortho": n ** -0.5, "forward": 1.0 / n}[norm]
    c = pow2_scale(x, (-2, -1))  # ‖x‖ = c·‖x/c‖: no overflow or underflow at any scale
    size = (x / c).square().sum((-2, -1), keepdim=True).sqrt() * c
    return torch.nan_to_num(size, nan=0.0, posinf=0.0) * (factor * unit * torch.finfo(x.dtype).eps)


def cut_width(x: Tensor, norm: str) -> Tensor:
    """SPEC §8's branch cut: 2·√(H + W)·eps·‖x‖₂ per image, twice the round-off of Im X of a DFT taken as
    two matrix products (the widest of the paths); a phase of ±π within it of the cut is set to π."""
    return _round_off(x, norm, 2.0 * math.sqrt(x.shape[-2] + x.shape[-1]))


def zero_phase_floor(x: Tensor, norm: str, log_amplitude: bool) -> Tensor:
    """The stored amplitude (log1p when log_amplitude) at or below which a coefficient is zero up to the
    transform's round-off, 4·√(HW)·eps·‖x‖₂ per image: its phase is set to 0 (atan2 of round-off would
    depend on how the transform was taken)."""
    tol = _round_off(x, norm, 4.0 * math.sqrt(x.shape[-2] * x.shape[-1]))
    return torch.log1p(tol) if log_amplitude else tol


@torch.library.custom_op("sdekernels::fourier_split", mutates_args=())
def _split(x: Tensor, onesided: bool, norm: str, centered: bool, log_amplitude: bool) -> tuple[Tensor, Tensor]:
    H, W = x.shape[-2:]
    Wo = W // 2 + 1 if onesided else W
    shape = x.shape[:-2] + (H, Wo)
    if x.numel() == 0:  # an empty batch (MKL's FFT rejects it)
        return x.new_empty(shape), x.new_empty(shape)
    # Each image as x/c (c: its power of two, exact): |X|² never overflows or underflows (SPEC §10);
    # A = c·|X(x/c)| (then log1p), P = P(x/c).
    xf = _flat(x).to(work_dtype(x.dtype))
    c = pow2_scale(xf, (-2, -1))
    xf = xf / c
    tol = cut_width(xf, norm).reshape(-1).contiguous()  # SPEC §8's branch cut, per image
    if use_triton(x):
        A, P = _split_triton(xf, tol, onesided, norm, centered, False)
    elif _ext.available():
        Xh = torch.fft.rfft2(xf, norm=norm)
        A, P = torch.ops.sdekernels_C.fourier_split_fwd(torch.view_as_real(Xh), tol, W, onesided, centered, False)
    else:
        A, P = ref.fourier_split(xf, onesided=onesided, norm=norm, centered=centered)
    A = A.reshape(c.shape[0], H, Wo) * c
    A = torch.log1p(A) if log_amplitude else A
    return A.reshape(shape).to(x.dtype), P.reshape(shape).to(x.dtype)


@_split.register_fake
def _(x, onesided, norm, centered, log_amplitude):
    W = x.shape[-1]
    out = x.new_empty(x.shape[:-1] + (W // 2 + 1 if onesided else W,))
    return out, torch.empty_like(out)


def _split_ref(x, gA, gP, onesided, norm, centered, log_amplitude):
    return ref_vjp(ref.fourier_split, (x,), (gA, gP), onesided=onesided, norm=norm, centered=centered,
                   log_amplitude=log_amplitude)[0]


@torch.library.custom_op("sdekernels::fourier_split_backward", mutates_args=())
def _split_backward(x: Tensor, A: Tensor, gA: Tensor, gP: Tensor, onesided: bool, norm: str, centered: bool,
                    log_amplitude: bool) -> Tensor:
    if x.numel() == 0:
        return torch.zeros_like(x)
    w = work_dtype(x.dtype)
    xw, ga, gp = _flat(x.to(w)), _flat(gA.to(w)), _flat(gP.to(w))
    if log_amplitude:  # A = log1p|X| (the forward's output): dL/d|X| = gA / (1 + |X|) = gA·exp(−A)
        ga = ga * torch.exp(-_flat(A.to(w)))
    # Per image, in the forward's frame x/c: the |X|² threshold is relative (SPEC §10) and |X|² never
    # overflows; |X| = c·|X(x/c)|, P = P(x/c), so gP scales by 1/c.
    c = pow2_scale(xw, (-2, -1))
    xw, gp = xw / c, gp / c
    if _ext.available():
        gx = torch.ops.sdekernels_C.fourier_split_bwd(xw, ga, gp, onesided, norm, centered, False)
    else:
        gx = _split_ref(xw, ga, gp, onesided, norm, centered, False)
    return grad_like(gx.reshape(x.shape), x)


@_split_backward.register_fake
def _(x, A, gA, gP, onesided, norm, centered, log_amplitude):
    return torch.empty_like(x)


def _split_setup(ctx, inputs, output):
    x, ctx.onesided, ctx.norm, ctx.centered, ctx.log_amplitude = inputs
    ctx.save_for_backward(x, output[0] if ctx.log_amplitude else None)


def _split_grad(ctx, gA, gP):
    x, A = ctx.saved_tensors
    shape = x.shape[:-1] + (x.shape[-1] // 2 + 1 if ctx.onesided else x.shape[-1],)
    gA = gA if gA is not None else x.new_zeros(shape)
    gP = gP if gP is not None else x.new_zeros(shape)
    A = A if A is not None else x.new_empty(0)
    gx = _split_backward(x, A, gA, gP, ctx.onesided, ctx.norm, ctx.centered, ctx.log_amplitude)
    return gx, None, None, None, None


_split.register_autograd(_split_grad, setup_context=_split_setup)


def _check_image(x, name: str):
    check(x, name, min_dim=2)
    if x.shape[-2] == 0 or x.shape[-1] == 0:
        raise ValueError(f"{name} must have non-empty spatial dims [..., H, W], got shape {tuple(x.shape)}")


def _check_norm(norm):
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def fourier_split(x: Tensor, *, onesided: bool = False, norm: str = "backward", centered: bool = False,
                  log_amplitude: bool = False) -> tuple[Tensor, Tensor]:
    """Amplitude and phase of the 2-D FFT of real x [..., H, W] (SPEC §8).

    A = |X| (log1p|X| when log_amplitude), P = arg X ∈ (−π, π], X = fft2(x, norm) — the half
    spectrum [..., H, W//2 + 1] of rfft2 when onesided; centered applies fftshift (rows only when
    onesided). One phase on every path at the branch cut (SPEC §8): Im X = 0 at the self-conjugate
    frequencies, P = π where Re X < 0 and |Im X| ≤ 2·√(H + W)·eps·‖x‖₂ (never −π from the sign of
    round-off), P = 0 where |X| is zero up to round-off (4·√(HW)·eps·‖x‖₂). Where |X|² < 1e-30·c²
    (c: the image's scale, as in the reference) the gradients of A and P are 0. No complex tensor
    is returned or kept: the fused kernels write A and P directly.
    """
    _check_image(x, "x")
    _check_norm(norm)
    A, P = _split(x, bool(onesided), norm, bool(centered), bool(log_amplitude))
    floor = zero_phase_floor(x.detach().to(work_dtype(x.dtype)), norm, bool(log_amplitude))
    return A, torch.where(A <= floor, 0.0, P)


# ---------------------------------------------------------------- fourier_merge


@torch.library.custom_op("sdekernels::fourier_merge", mutates_args=())
def _merge(A: Tensor, P: Tensor, onesided: bool, norm: str, centered: bool, H: int, W: int) -> Tensor:
    if A.numel() == 0:
        return A.new_empty(A.shape[:-2] + (H, W))
    w = work_dtype(A.dtype)
    if use_triton(A):
        Z = _merge_half_triton(A, P, W, onesided, centered)
        x = torch.fft.irfft2(torch.view_as_complex(Z), s=(H, W), norm=norm)
    elif _ext.available():
        x = torch.ops.sdekernels_C.fourier_merge_fwd(_flat(A).to(w), _flat(P).to(w), W, onesided, centered, norm)
    else:
        size = (H, W) if onesided else None
        return ref.fourier_merge(A, P, onesided=onesided, norm=norm, centered=centered, size=size)
    return x.reshape(A.shape[:-2] + (H, W)).to(A.dtype)


@_merge.register_fake
def _(A, P, onesided, norm, centered, H, W):
    return A.new_empty(A.shape[:-2] + (H, W))


def _merge_ref(A, P, gx, onesided, norm, centered, H, W):
    size = (H, W) if onesided else None
    return ref_vjp(ref.fourier_merge, (A, P), gx, onesided=onesided, norm=norm, centered=centered, size=size)


@torch.library.custom_op("sdekernels::fourier_merge_backward", mutates_args=())
def _merge_backward(A: Tensor, P: Tensor, gx: Tensor, onesided: bool, norm: str,
                    centered: bool) -> tuple[Tensor, Tensor]:
    if A.numel() == 0:
        return torch.zeros_like(A), torch.zeros_like(P)
    w = work_dtype(A.dtype)
    a, p, g = _flat(A.to(w)), _flat(P.to(w)), _flat(gx.to(w))
    if _ext.available():
        gA, gP = torch.ops.sdekernels_C.fourier_merge_bwd(a, p, g, onesided, norm, centered)
    else:
        gA, gP = _merge_ref(a, p, g, onesided, norm, centered, *gx.shape[-2:])
    return grad_like(gA.reshape(A.shape), A), grad_like(gP.reshape(P.shape), P)


@_merge_backward.register_fake
def _(A, P, gx, onesided, norm, centered):
    return torch.empty_like(A), torch.empty_like(P)


def _merge_setup(ctx, inputs, output):
    A, P, ctx.onesided, ctx.norm, ctx.centered, _, _ = inputs
    ctx.save_for_backward(A, P)


def _merge_grad(ctx, gx):
    A, P = ctx.saved_tensors
    return (*_merge_backward(A, P, gx, ctx.onesided, ctx.norm, ctx.centered), None, None, None, None, None)


_merge.register_autograd(_merge_grad, setup_context=_merge_setup)


def fourier_merge(A: Tensor, P: Tensor, *, onesided: bool = False, norm: str = "backward", centered: bool = False,
                  size=None) -> Tensor:
    """Re IFFT2(A·e^{iP}) — the inverse of `fourier_split` without log_amplitude (SPEC §8).

    onesided: A, P are the half spectrum and the result is irfft2 with output ``size`` = (H, W)
    (default (H, 2·(W_r − 1)); give it for odd W). Two-sided: ``size``, if given, must equal A's
    last two dims.
    """
    _check_image(A, "A")
    check(P, "P", min_dim=2, like=A)
    if P.shape != A.shape:
        raise ValueError(f"P must have the shape of A {tuple(A.shape)}, got {tuple(P.shape)}")
    _check_norm(norm)
    H, Wo = A.shape[-2:]
    if size is not None:
        if not isinstance(size, (tuple, list, torch.Size)) or len(size) != 2:
            raise ValueError(f"size must be (H, W), got {size!r}")
        size = tuple(check_int(s, "size", 1) for s in size)
        if not onesided and size != (H, Wo):
            raise ValueError(f"size must equal A's spatial shape {(H, Wo)} when not onesided, got {size}")
        if onesided and (size[0] != H or size[1] // 2 + 1 != Wo or size[1] < 1):
            raise ValueError(f"size {size} does not match the one-sided spectrum shape {(H, Wo)}")
    W = size[1] if size is not None else (2 * (Wo - 1) if onesided else Wo)
    if W < 1:
        raise ValueError(f"size must be given for a one-sided spectrum with one column, got shape {tuple(A.shape)}")
    return _merge(A, P, bool(onesided), norm, bool(centered), H, W)


# ---------------------------------------------------------------- amplitude_mix


def _window(H: int, W: int, ratio: float, device) -> Tensor:
    h, w = int(math.floor(H * math.sqrt(ratio))), int(math.floor(W * math.sqrt(ratio)))
    h0, w0 = H // 2 - h // 2, W // 2 - w // 2
    mask = torch.zeros(H, W, dtype=torch.bool, device=device)
    mask[h0:h0 + h, w0:w0 + w] = True
    return mask


def amplitude_mix(x1: Tensor, x2: Tensor, lam, *, ratio: float = 1.0) -> Tensor:
    """Fourier amplitude mix (FACT) of real x1, x2 [..., H, W] (SPEC §8).

    In the centred spectrum A = (1 − lam)·A1 + lam·A2 inside the window of ⌊H√ratio⌋ × ⌊W√ratio⌋
    frequencies around DC, A1 elsewhere; the phase of x1 is kept. ``lam``: a float, or a tensor
    whose shape is a prefix of the batch shape (e.g. [B] for x [B, C, H, W]). Built from the fused
    split and merge (one split per image, one merge).

    x1 and x2 are un-normalised pixels (e.g. in [0, 1]), as in FACT, which mixes raw images and
    normalises after: on mean-subtracted images |DC| loses the sign of each image's mean offset.
    ``sample_mix_lam`` draws lam as FACT does.
    """
    _check_image(x1, "x1")
    check(x2, "x2", min_dim=2, like=x1)
    if x2.shape != x1.shape:
        raise ValueError(f"x2 must have the shape of x1 {tuple(x1.shape)}, got {tuple(x2.shape)}")
    ratio = check_real(ratio, "ratio", 0.0, 1.0, open_lo=True)
    if isinstance(lam, Tensor):
        check(lam, "lam", min_dim=0)
        check_domain(lam, "lam", lambda v: (v >= 0) & (v <= 1), "in [0, 1]")
        if lam.device != x1.device:
            raise ValueError(f"lam is on {lam.device}, expected {x1.device}")
        nb = x1.dim() - 2
        if lam.dim() > nb or tuple(lam.shape) != tuple(x1.shape[:lam.dim()]):
            raise ValueError(f"lam must be a float or have a prefix of the batch shape {tuple(x1.shape[:-2])}, "
                             f"got {tuple(lam.shape)}")
        lam = lam.to(work_dtype(x1.dtype)).reshape(*lam.shape, *([1] * (x1.dim() - lam.dim())))
    else:
        lam = check_real(lam, "lam", 0.0, 1.0)
    w = work_dtype(x1.dtype)  # low precision: the spectra stay in float32 between the kernels
    A1, P1 = fourier_split(x1.to(w), centered=True)
    A2, _ = fourier_split(x2.to(w), centered=True)
    mixed = A1 + lam * (A2 - A1)
    A = torch.where(_window(*x1.shape[-2:], ratio, x1.device), mixed, A1)
    return fourier_merge(A, P1, centered=True).to(x1.dtype)


def sample_mix_lam(batch: int, alpha: float = 1.0, *, generator: Optional[torch.Generator] = None,
                   device=None, dtype: Optional[torch.dtype] = None) -> Tensor:
    """Per-pair weights for ``amplitude_mix`` drawn as FACT draws them: lam ~ U(0, alpha), shape [batch].

    alpha in [0, 1] (FACT's default is 1); the tensor is on the generator's device unless ``device``
    is given, in ``dtype`` (default: torch's default dtype).
    """
    if isinstance(batch, bool) or not isinstance(batch, int):
        raise TypeError(f"batch must be an int, got {type(batch).__name__}")
    if batch < 0:
        raise ValueError(f"batch must be >= 0, got {batch}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a float, got {type(alpha).__name__}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
    if device is None and generator is not None:
        device = generator.device
    return alpha * torch.rand(batch, generator=generator, device=device, dtype=dtype)


# ---------------------------------------------------------------- registry entries

_NORM_KEYS = {0: "backward", 1: "ortho", 2: "forward"}


def _images(shape, device, dtype, gen):
    b = [shape["batch"]] if shape.get("batch") else []
    return randn((*b, *([shape["c"]] if shape.get("c") else []), shape["H"], shape["W"]), device, dtype, gen)


def _split_sample(shape, device, dtype, gen):
    return Sample((_images(shape, device, dtype, gen),),
                  {"onesided": bool(shape.get("onesided")), "norm": _NORM_KEYS[shape.get("norm", 0)],
                   "centered": bool(shape.get("centered")), "log_amplitude": bool(shape.get("log"))})


def _bad_split(device):
    x = torch.randn(2, 6, 7, device=device)
    return [((x[0, 0],), {}, "x"),
            ((x.numpy() if device.type == "cpu" else x.tolist(),), {}, "x"),
            ((x.to(torch.int64),), {}, "x"),
            ((x[:, :0],), {}, "x"),
            ((x,), {"norm": "none"}, "norm")]


def _image_bytes(s):
    return sum(t.numel() * t.element_size() for t in s.tensors())


def _fft_flops(s, t):
    H, W = t.shape[-2:]
    return 5.0 * t.numel() * math.log2(max(H * W, 2))


def _fft2_abs_angle(x, **kw):
    X = torch.fft.fft2(x)
    return X.abs(), X.angle()


def _rfft2(x, **kw):
    return torch.view_as_real(torch.fft.rfft2(x))  # a real view, so fwd+bwd timing can weight it


register(OpInfo(
    name="fourier_split", op=fourier_split, ref=ref.fourier_split, make=_split_sample,
    gpu_shape={"batch": 2, "c": 2, "H": 40, "W": 36, "centered": 1},
    # forward: the phase of a small coefficient moves by its rounding over |X|; backward: the same C++
    # backward on both paths, after DFTs of H·W-term sums
    cond=(512, 64),
    scaling=lambda sh: None if sh.get("log") else ((0,), (1, 0)),
    shapes=[{"batch": 0, "H": 1, "W": 1}, {"batch": 3, "H": 8, "W": 9, "centered": 1},
            {"batch": 2, "H": 7, "W": 6, "onesided": 1, "centered": 1, "log": 1},
            {"batch": 2, "H": 5, "W": 5, "norm": 1, "log": 1}, {"batch": 0, "H": 1, "W": 12, "norm": 2, "onesided": 1},
            {"batch": 1, "H": 32, "W": 20, "centered": 1}, {"batch": 2, "c": 2, "H": 10, "W": 4}],
    space={"batch": (0, 3), "H": (1, 24), "W": (1, 24), "onesided": (0, 1), "centered": (0, 1), "norm": (0, 2),
           "log": (0, 1)},
    bad=_bad_split,
    bench=[{"batch": 16, "c": 3, "H": 64, "W": 64, "quick": True},
           {"batch": 8, "c": 3, "H": 224, "W": 224, "quick": True, "backward": True},
           {"batch": 256, "c": 3, "H": 224, "W": 224}, {"batch": 64, "c": 3, "H": 512, "W": 512},
           {"batch": 64, "c": 3, "H": 224, "W": 224, "backward": True}],
    cost=lambda s: (3 * _image_bytes(s), _fft_flops(s, s.args[0]) + 30 * s.args[0].numel()),
    tol={F64: (1e-10, 1e-9), torch.float32: (5e-5, 1e-4), torch.bfloat16: (3e-2, 2e-2),
         torch.float16: (1e-2, 5e-3)},
    baselines={"fft2+abs+angle": _fft2_abs_angle, "rfft2": _rfft2},
))


def _merge_sample(shape, device, dtype, gen):
    b = [shape["batch"]] if shape.get("batch") else []
    H, W, onesided = shape["H"], shape["W"], bool(shape.get("onesided"))
    Wo = W // 2 + 1 if onesided else W
    A = rand((*b, H, Wo), device, dtype, gen, 0.1, 2.0)
    P = rand((*b, H, Wo), device, dtype, gen, -math.pi, math.pi)
    kwargs = {"onesided": onesided, "norm": _NORM_KEYS[shape.get("norm", 0)], "centered": bool(shape.get("centered"))}
    if onesided:
        kwargs["size"] = (H, W)
    return Sample((A, P), kwargs)


def _bad_merge(device):
    A = torch.rand(2, 6, 7, device=device)
    return [((A[0, 0], A[0, 0]), {}, "A"),
            ((A, A[:, :, :4]), {}, "P"),
            ((A, A.double()), {}, "P"),
            ((A, A), {"norm": "bad"}, "norm"),
            ((A, A), {"size": (6, 8)}, "size"),
            ((A, A), {"onesided": True, "size": (6, 20)}, "size"),
            ((A, A), {"size": (6,)}, "size"), ((A, A), {"size": (6, 7.0)}, "size", TypeError),
            ((A, A), {"onesided": True, "size": (6.5, 12)}, "size", TypeError)]


register(OpInfo(
    name="fourier_merge", op=fourier_merge, ref=ref.fourier_merge, make=_merge_sample,
    gpu_shape={"batch": 2, "H": 40, "W": 36, "centered": 1},
    cond=(16, 64),  # linear in the spectrum: DFT sums of H·W terms, backward likewise
    scaling=lambda sh: ((0,), (1,)),  # linear in A; P is a phase
    shapes=[{"batch": 0, "H": 1, "W": 1}, {"batch": 3, "H": 6, "W": 7, "centered": 1},
            {"batch": 2, "H": 7, "W": 6, "onesided": 1, "centered": 1}, {"batch": 2, "H": 5, "W": 5, "norm": 1},
            {"batch": 1, "H": 6, "W": 11, "onesided": 1, "norm": 2}, {"batch": 2, "H": 16, "W": 20, "centered": 1}],
    space={"batch": (0, 3), "H": (1, 24), "W": (1, 24), "onesided": (0, 1), "centered": (0, 1), "norm": (0, 2)},
    bad=_bad_merge,
    bench=[{"batch": 48, "H": 64, "W": 64, "quick": True}, {"batch": 768, "H": 224, "W": 224},
           {"batch": 192, "H": 224, "W": 224, "backward": True}],
    cost=lambda s: (3 * _image_bytes(s) // 2, _fft_flops(s, s.args[0]) + 20 * s.args[0].numel()),
    tol={F64: (1e-10, 1e-9), torch.float32: (2e-5, 1e-4), torch.bfloat16: (3e-2, 2e-2), torch.float16: (1e-2, 5e-3)},
))


def _mix_sample(shape, device, dtype, gen):
    b = [shape["batch"]] if shape.get("batch") else []
    size = (*b, *([shape["c"]] if shape.get("c") else []), shape["H"], shape["W"])
    x1, x2 = randn(size, device, dtype, gen), randn(size, device, dtype, gen)
    lam = rand(b, device, dtype, gen, 0.0, 1.0) if shape.get("per_sample") and b else 0.35
    return Sample((x1, x2, lam), {"ratio": shape.get("ratio", 1.0)})


def _bad_mix(device):
    x = torch.randn(2, 6, 7, device=device)
    return [((x[0, 0, :1].squeeze(0), x[0, 0, :1].squeeze(0), 0.5), {}, "x1"),
            ((x, x[:1], 0.5), {}, "x2"),
            ((x, x.double(), 0.5), {}, "x2"),
            ((x, x, 0.5), {"ratio": 0.0}, "ratio"),
            ((x, x, 0.5), {"ratio": 1.5}, "ratio"),
            ((x, x, torch.rand(3, device=device)), {}, "lam"),
            ((x, x, "half"), {}, "lam"), ((x, x, 1.5), {}, "lam"), ((x, x, -0.1), {}, "lam"),
            ((x, x, float("nan")), {}, "lam"), ((x, x, 0.5), {"ratio": float("nan")}, "ratio")]


def _bad_lam_values(device):
    x = torch.randn(2, 6, 7, device=device)
    return [((x, x, torch.tensor([0.5, 1.5], device=device)), {}, "lam"),
            ((x, x, torch.tensor(-0.5, device=device)), {}, "lam")]


register(OpInfo(
    name="amplitude_mix", op=amplitude_mix, ref=ref.amplitude_mix, make=_mix_sample,
    gpu_shape={"batch": 2, "c": 2, "H": 40, "W": 36, "ratio": 0.5},
    cond=(16, 64),  # a split and a merge: sums of H·W terms; the split's phase gradient is 0 where |X| = 0
    scaling=lambda sh: ((0, 1), (1,)),  # lam is a weight
    # gradcheck (inputs of <= 600 entries) runs on the first two only: three FFT ops per call.
    shapes=[{"batch": 0, "H": 1, "W": 1}, {"batch": 3, "H": 5, "W": 6, "per_sample": 1},
            {"batch": 2, "c": 2, "H": 12, "W": 13, "ratio": 0.5},
            {"batch": 2, "H": 16, "W": 20, "ratio": 0.3, "per_sample": 1},
            {"batch": 1, "H": 24, "W": 27, "ratio": 0.7}],
    space={"batch": (0, 3), "H": (1, 20), "W": (1, 20), "per_sample": (0, 1)},
    bad=_bad_mix, debug_bad=_bad_lam_values,
    bench=[{"batch": 16, "c": 3, "H": 64, "W": 64, "quick": True, "per_sample": 1},
           {"batch": 256, "c": 3, "H": 224, "W": 224, "per_sample": 1, "ratio": 0.5}],
    cost=lambda s: (4 * s.args[0].numel() * s.args[0].element_size(), 3 * _fft_flops(s, s.args[0])),
    tol={F64: (1e-10, 1e-9), torch.float32: (5e-5, 1e-4), torch.bfloat16: (3e-2, 3e-2), torch.float16: (1e-2, 1e-2)},
))
