"""The ops against the formulas of the papers' official code, re-implemented here as test oracles.

Spectrum Matching: github.com/forever208/SpectrumMatching, branch SDVAE_and_ESM (commit 115c70b)
and branch DSM (commit 3d8680c): utils_DCT.py, modules/vae.py, latent_analysis.py.
FACT: github.com/MediaBrain-SJTU/FACT (commit a877cc8): data/data_utils.py.
The oracles follow those lines step by step (cited per step) in float64; where the official code
casts to float32 (utils_DCT.py L135 `x = x.float()`) they keep float64, so that the ops can be held
to 1e-6 relative. The official DCT is torch-dct's (`pip install --no-deps torch-dct`).
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sdekernels as sk
from sdekernels.nn import ESMLoss

from helpers import PATHS, on_path, require_module

dct = require_module("torch_dct", "torch-dct")

EPS = 1e-8  # latent_spectral_reg_dct's eps (SDVAE_and_ESM utils_DCT.py L244), passed to every step


# ---------------------------------------------------------------- Spectrum Matching oracles
# Line numbers: utils_DCT.py on branch SDVAE_and_ESM.


def _dct2(x, center):
    # dct_2d_torch_unified, L125-145: optional per-plane mean removal, ortho DCT on the last dim,
    # then on the second-last dim through a transpose.
    if center == "mean":
        x = x - x.mean(dim=(-2, -1), keepdim=True)
    x = dct.dct(x, norm="ortho")
    x = dct.dct(x.transpose(-2, -1), norm="ortho")
    return x.transpose(-2, -1)


def _idct2(X):
    # idct_2d_torch_unified with center="none", L103-113.
    x = dct.idct(X, norm="ortho")
    x = dct.idct(x.transpose(-2, -1), norm="ortho")
    return x.transpose(-2, -1)


def _blur(x, kernel_size, sigma):
    # gaussian_kernel2d, L151-156 (2-D kernel, offsets from kernel_size // 2, normalised), and
    # gaussian_blur, L159-171 (depthwise conv2d, zero padding kernel_size // 2).
    ax = torch.arange(kernel_size, dtype=x.dtype) - (kernel_size // 2)
    xx, yy = torch.meshgrid(ax, ax, indexing="ij")
    k = torch.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2))
    k = (k / k.sum()).view(1, 1, kernel_size, kernel_size).repeat(x.shape[1], 1, 1, 1)
    return F.conv2d(x, k, padding=kernel_size // 2, groups=x.shape[1])


def _power(x, center, remove_dc, eps):
    # channel_agg_power_dct_unified, L185-198: channel mean of the squared coefficients, clamped at
    # eps, then the DC entry set to 0.
    B, C, H, W = x.shape
    P = (_dct2(x.reshape(B * C, H, W), center).view(B, C, H, W) ** 2).mean(dim=1).clamp_min(eps)
    if remove_dc:
        P[:, 0, 0] = 0.0
    return P


def _band_energy(P, n_bins, eps):
    # radial_bin_map, L204-210 (float32 radii, rmax clamped at 1), and radial_band_energy,
    # L213-227 (scatter_add of P per bin, divided by count + eps).
    B, H, W = P.shape
    yy = torch.arange(H).view(H, 1).float()
    xx = torch.arange(W).view(1, W).float()
    rr = torch.sqrt(yy ** 2 + xx ** 2)
    bin_id = torch.floor(rr / rr.max().clamp_min(1.0) * n_bins).long().clamp(0, n_bins - 1).view(-1)
    counts = torch.bincount(bin_id, minlength=n_bins).to(P.dtype).clamp_min(1.0)
    s = torch.zeros(B, n_bins, dtype=P.dtype).scatter_add(1, bin_id.view(1, -1).expand(B, -1), P.reshape(B, -1))
    return s / (counts.view(1, -1) + eps)


def _official_esm(x, z, blur_ks=7, blur_sigma=1.2, n_bins=16, loss_type="kl", log_power=True, delta=0.0):
    # latent_spectral_reg_dct, L234-288, with center="mean", remove_dc=True, eps=1e-8 as modules/vae.py
    # calls it (SDVAE_and_ESM L529-537).
    hz, wz = z.shape[-2:]
    x_blur = x if hz == 32 else _blur(x, blur_ks, blur_sigma)                          # L251-254
    x_ds = F.interpolate(x_blur, size=(hz, wz), mode="bicubic", align_corners=False)   # L255, L174-175
    sx = _band_energy(_power(x_ds, "mean", True, EPS), n_bins, EPS)                    # L258, L262
    sz = _band_energy(_power(z, "mean", True, EPS), n_bins, EPS)                       # L259, L263
    sx = sx * torch.arange(1, n_bins + 1, dtype=sx.dtype).view(1, -1) ** delta          # L266-267
    if log_power:                                                                      # L269-271
        sx, sz = torch.log(sx + EPS + 1.0), torch.log(sz + EPS + 1.0)
    sx, sz = sx.clamp_min(0.0), sz.clamp_min(0.0)                                      # L274-275
    sx = sx / (sx.sum(dim=1, keepdim=True) + EPS)                                      # L276
    sz = sz / (sz.sum(dim=1, keepdim=True) + EPS)                                      # L277
    if loss_type == "l2":
        return F.mse_loss(sz, sx)                                                      # L283-284
    return (sx * (torch.log(sx + EPS) - torch.log(sz + EPS))).sum(dim=1).mean()        # L285-286


def _with_floored_coefficients(shape, gen):
    """Latents whose DCT power has entries in [1e-12, 1e-8) next to entries ~1 (one channel, so the
    channel mean is the entry itself): the official floor (1e-8) differs from radial_psd's (1e-12)."""
    C = torch.randn(shape, generator=gen, dtype=torch.float64)
    tiny = torch.rand(shape, generator=gen) < 0.3
    C = torch.where(tiny, C * 1e-5, C)
    return _idct2(C)


def _compare_esm(z, x, path, **kwargs):
    """Loss and gradient of esm_loss(variant="official") against the oracle, 1e-6 relative."""
    want_kw = {"blur_ks": kwargs.get("blur", (7, 1.2))[0], "blur_sigma": kwargs.get("blur", (7, 1.2))[1],
               "n_bins": kwargs.get("bins", 16), "loss_type": kwargs.get("loss", "kl"),
               "log_power": kwargs.get("log_power", True), "delta": kwargs.get("delta", 0.0)}
    zo = z.clone().requires_grad_(True)
    want = _official_esm(x, zo, **want_kw)
    (g_want,) = torch.autograd.grad(want, zo)
    zs = z.clone().requires_grad_(True)
    with on_path(path):
        got = sk.esm_loss(zs, x, variant="official", **kwargs)
    (g_got,) = torch.autograd.grad(got, zs)
    got, want = float(got.detach()), float(want.detach())
    assert abs(got - want) <= 1e-6 * abs(want), (got, want)
    err = float((g_got - g_want).abs().max() / g_want.abs().max())
    assert err <= 1e-6, f"gradient: max error {err:.2e} of the largest entry"
    return want


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("loss", ["kl", "l2"])
@pytest.mark.parametrize("log_power", [True, False])
def test_esm_official_matches_official_code(path, loss, log_power):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=gen, dtype=torch.float64) * 2 - 1  # images in [-1, 1]
    z = torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64)           # blurred branch (h != 32)
    _compare_esm(z, x, path, loss=loss, log_power=log_power, delta=0.4)
    z1 = _with_floored_coefficients((2, 1, 12, 10), gen)                       # entries under the 1e-8 floor
    x1 = torch.rand(2, 3, 24, 20, generator=gen, dtype=torch.float64) * 2 - 1
    _compare_esm(z1, x1, path, loss=loss, log_power=log_power, blur=(5, 0.8), bins=8)


@pytest.mark.parametrize("path", PATHS)
def test_esm_official_32px_latents_skip_the_blur(path):
    """h = 32 (CelebA f8): the official code does not blur; 5×5: its float32 bin map differs from the
    float64 one at r / r_max · 16 = 12 (entry (3, 3))."""
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 64, 64, generator=gen, dtype=torch.float64) * 2 - 1
    z = torch.randn(1, 2, 32, 32, generator=gen, dtype=torch.float64)
    _compare_esm(z, x, path, delta=0.0)
    x5 = torch.rand(2, 3, 20, 20, generator=gen, dtype=torch.float64) * 2 - 1
    z5 = torch.randn(2, 3, 5, 5, generator=gen, dtype=torch.float64)
    _compare_esm(z5, x5, path, blur=(3, 0.7))


def test_esm_official_differs_from_library():
    """The two variants are different losses (blur padding and eps terms), not two names for one."""
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 64, 64, generator=gen, dtype=torch.float64) * 2 - 1
    z = torch.randn(2, 4, 16, 16, generator=gen, dtype=torch.float64) * 0.3
    lib, off = sk.esm_loss(z, x), sk.esm_loss(z, x, variant="official")
    assert abs(float(lib) - float(off)) > 1e-3 * abs(float(off))


@pytest.mark.parametrize("path", PATHS)
def test_radial_psd_keep_dc_is_the_analysis_spectrum(path):
    """keep_dc=True, center="none": the spectra of latent_analysis.py (DSM L148-151), i.e.
    channel_agg_power_dct_unified(center="none", remove_dc=False) then radial_band_energy."""
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 16, 12, generator=gen, dtype=torch.float64) * 2 - 1 + 0.3  # a mean: DC power matters
    want = _band_energy(_power(x, "none", False, EPS), 16, EPS)
    with on_path(path):
        got = sk.radial_psd(x, keep_dc=True, center="none")
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    with on_path(path):  # the default (DC removed) is the training spectrum, which centring does not change
        got = sk.radial_psd(x)
    torch.testing.assert_close(got, _band_energy(_power(x, "none", True, EPS), 16, EPS), rtol=1e-6, atol=0)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("k", [8, 10, 12])
def test_block_dct_lowpass_is_dsm(path, k):
    """DSM's low-pass of image and latent, modules/vae.py (DSM) L549-575, with utils_DCT.py (DSM)
    split_into_blocks_torch L37-42 and combine_blocks_torch L79-83."""
    gen = torch.Generator().manual_seed(k)
    x = torch.randn(2, 3, 16, 24, generator=gen, dtype=torch.float64)
    b = 8
    B, C, H, W = x.shape
    blocks = x.unfold(2, b, b).unfold(3, b, b).contiguous().view(B, C, -1, b, b)  # split, L40-41
    X = _dct2(blocks, "none")                                                       # vae.py L557
    thresh = 2 * (b - 1) - (k - 1)                                                  # L560-561: 15 - k
    u, v = torch.arange(b).view(b, 1), torch.arange(b).view(1, b)
    X[..., (u + v) >= thresh] = 0.0                                                 # L563-568
    y = _idct2(X).view(B, C, H // b, W // b, b, b).permute(0, 1, 2, 4, 3, 5).reshape(B, C, H, W)  # L570, L82-83
    with on_path(path):
        got = sk.block_dct_lowpass(x, k)
    torch.testing.assert_close(got, y, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- FACT oracles (data/data_utils.py)


@pytest.mark.parametrize("path", PATHS)
def test_fourier_split_is_fact_spectrum(path):
    """get_spectrum L70-74 and get_centralized_spectrum L76-81 (numpy fft2, abs, angle)."""
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 255, size=(2, 3, 9, 12))
    for centered in (False, True):
        X = np.fft.fft2(x)
        if centered:
            X = np.fft.fftshift(X, axes=(-2, -1))
        with on_path(path):
            A, P = sk.fourier_split(torch.from_numpy(x), centered=centered)
        torch.testing.assert_close(A, torch.from_numpy(np.abs(X)), rtol=1e-10, atol=1e-9)
        d = P - torch.from_numpy(np.angle(X))  # equal up to the branch cut at ±π
        assert float((torch.remainder(d + math.pi, 2 * math.pi) - math.pi).abs().max()) < 1e-9


def _colorful_spectrum_mix(img1, img2, lam, ratio):
    # colorful_spectrum_mix, L84-124, on [H, W, C] arrays, with lam given instead of drawn from
    # U(0, alpha) (L86), and without the final uint8 clip (L121-122) so that floats compare.
    h, w, _ = img1.shape
    h_crop, w_crop = int(h * math.sqrt(ratio)), int(w * math.sqrt(ratio))           # L90-91
    h_start, w_start = h // 2 - h_crop // 2, w // 2 - w_crop // 2                   # L92-93
    f1, f2 = np.fft.fft2(img1, axes=(0, 1)), np.fft.fft2(img2, axes=(0, 1))         # L95-96
    a1, p1 = np.fft.fftshift(np.abs(f1), axes=(0, 1)), np.angle(f1)                 # L97, L100
    a2, p2 = np.fft.fftshift(np.abs(f2), axes=(0, 1)), np.angle(f2)                 # L98, L101
    win = (slice(h_start, h_start + h_crop), slice(w_start, w_start + w_crop))
    m1, m2 = a1.copy(), a2.copy()                                                   # L103-104
    m1[win] = lam * a2[win] + (1 - lam) * a1[win]                                   # L105-108
    m2[win] = lam * a1[win] + (1 - lam) * a2[win]                                   # L109-112
    m1, m2 = np.fft.ifftshift(m1, axes=(0, 1)), np.fft.ifftshift(m2, axes=(0, 1))   # L114-115
    img21 = np.real(np.fft.ifft2(m1 * np.e ** (1j * p1), axes=(0, 1)))              # L117, L119
    img12 = np.real(np.fft.ifft2(m2 * np.e ** (1j * p2), axes=(0, 1)))              # L118, L120
    return img21, img12


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_amplitude_mix_is_fact(path, ratio):
    """amplitude_mix(x1, x2, lam) is FACT's img21 and amplitude_mix(x2, x1, lam) its img12, on raw pixels."""
    rng = np.random.default_rng(5)
    img1, img2 = rng.uniform(0, 255, size=(2, 11, 14, 3))  # [H, W, C] as FACT's loader gives them
    lam = 0.37
    img21, img12 = _colorful_spectrum_mix(img1, img2, lam, ratio)
    t1, t2 = (torch.from_numpy(a).permute(2, 0, 1) for a in (img1, img2))
    with on_path(path):
        got21 = sk.amplitude_mix(t1, t2, lam, ratio=ratio)
        got12 = sk.amplitude_mix(t2, t1, lam, ratio=ratio)
    for got, want in ((got21, img21), (got12, img12)):
        torch.testing.assert_close(got, torch.from_numpy(want).permute(2, 0, 1), rtol=1e-10, atol=1e-9)


def test_esm_module_passes_its_options():
    gen = torch.Generator().manual_seed(6)
    x = torch.rand(2, 3, 16, 16, generator=gen, dtype=torch.float64) * 2 - 1
    z = torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64)
    module = ESMLoss(delta=0.0, variant="official", loss="l2", log_power=False)
    assert float(module(z, x)) == float(sk.esm_loss(z, x, delta=0.0, variant="official", loss="l2", log_power=False))
    assert float(module(z, x)) != float(ESMLoss(delta=0.0)(z, x))
