"""Radial power spectra, spectrum matching (ESM / DSM) and difference of Gaussians (SPEC §9)."""
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as Fn

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def sample_scale(x: torch.Tensor) -> torch.Tensor:
    """Per sample of x [R, ...]: the power of two c with max|x| / c in [1, 2) (1 for a zero or non-finite
    sample), shaped [R, 1, ...]. The floors of radial_psd and dog act on x / c: relative to the
    sample's scale, not absolute (SPEC §10), and piecewise constant in x (no gradient)."""
    a = x.detach().abs().flatten(1).amax(1)
    e = torch.where(torch.isfinite(a) & (a > 0), torch.frexp(a).exponent - 1, 0)
    fi = torch.finfo(x.dtype)
    e = e.clamp(round(math.log2(fi.tiny)) + 1, math.floor(math.log2(fi.max)) - 1)
    return torch.exp2(e.to(x.dtype)).reshape(-1, *([1] * (x.dim() - 1)))


def _work(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in _LOW_PRECISION else x


def _check_images(x, name: str, min_dim: int = 3) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < min_dim or not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor of shape [..., C, H, W]")


def dct_matrix(n: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Orthonormal DCT-II matrix D [n, n]: D[k, i] = c_k cos(π (2i + 1) k / (2n)),
    c_0 = √(1/n), c_k = √(2/n); coefficients of x are D x, and Dᵀ D = I."""
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    D = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    D[0] = D[0] / math.sqrt(2.0)
    return D.to(dtype=dtype, device=device)


def _dct2(x: torch.Tensor) -> torch.Tensor:
    """2-D orthonormal DCT-II over the last two dims."""
    H, W = x.shape[-2:]
    DH, DW = dct_matrix(H, x.dtype, x.device), dct_matrix(W, x.dtype, x.device)
    return DH @ x @ DW.mT


def bin_index(H: int, W: int, bins: int, transform: str, official: bool = False) -> torch.Tensor:
    """Bin of every (u, v) [H, W] (int64): min(⌊r / r_max · bins⌋, bins − 1), in exact arithmetic: the bin
    is the number of j in 1..bins−1 with j / bins ≤ r / r_max, i.e. j²·r_max² ≤ bins²·r² (integers).

    transform="dct": r² = u² + v², r_max² = (H−1)² + (W−1)²; "fft": u, v wrapped (min(u, H−u)),
    r_max² = ⌊H/2⌋² + ⌊W/2⌋². official=True computes r, r_max and the quotient in float32 with
    r_max = max(r_max, 1), as the official Spectrum Matching code does (utils_DCT.py, radial_bin_map):
    an entry whose r / r_max · bins is an integer may land one bin below the exact map (e.g. 5×5).
    """
    u = torch.arange(H).unsqueeze(1)
    v = torch.arange(W).unsqueeze(0)
    if official:
        r = torch.sqrt((u * u + v * v).to(torch.float32))
        return torch.floor(r / r.max().clamp_min(1.0) * bins).long().clamp(0, bins - 1)
    if transform == "fft":
        u, v = torch.minimum(u, H - u), torch.minimum(v, W - v)
        r2_max = (H // 2) ** 2 + (W // 2) ** 2
    else:
        r2_max = (H - 1) ** 2 + (W - 1) ** 2
    j2 = torch.arange(1, bins) ** 2  # a 1×1 image (r_max = 0) has r = 0: bin 0
    return (j2 * max(r2_max, 1) <= (bins * bins * (u * u + v * v)).unsqueeze(-1)).sum(-1)


def _bin_means(P: torch.Tensor, idx: torch.Tensor, bins: int, count_eps: float = 0.0) -> torch.Tensor:
    """Mean of P [..., H, W] per bin of idx [H, W] (empty bins: 0); count_eps > 0: sum / (count + count_eps)."""
    onehot = Fn.one_hot(idx.reshape(-1).to(P.device), bins).to(P.dtype)  # [H*W, bins]
    counts = onehot.sum(0)
    sums = P.flatten(-2) @ onehot  # [..., bins]
    if count_eps:
        return sums / (counts.clamp_min(1) + count_eps)
    return torch.where(counts > 0, sums / counts.clamp_min(1), torch.zeros_like(sums))


def check_psd_options(transform: str, center: Optional[str], channel_reduce: str, keep_dc: bool = False) -> None:
    """The options of radial_psd (shared by the reference and the fused op)."""
    if not isinstance(keep_dc, bool):
        raise TypeError(f"keep_dc must be a bool, got {type(keep_dc).__name__}")
    if transform not in ("dct", "fft"):
        raise ValueError(f"transform must be 'dct' or 'fft', got {transform!r}")
    if center not in ("mean", None, "none"):
        raise ValueError(f"center must be 'mean' or None, got {center!r}")
    if channel_reduce not in ("mean", "none"):
        raise ValueError(f"channel_reduce must be 'mean' or 'none', got {channel_reduce!r}")


def radial_psd(x: torch.Tensor, *, bins: int = 16, transform: str = "dct", center: Optional[str] = "mean",
               channel_reduce: str = "mean", keep_dc: bool = False) -> torch.Tensor:
    """Radially binned power spectrum of x [..., C, H, W] (SPEC §9).

    transform="dct": P = (2-D orthonormal DCT-II coefficient)², r = √(u² + v²),
    r_max = √((H−1)² + (W−1)²); transform="fft": P = |FFT2|² / (HW), r = √(min(u, H−u)² +
    min(v, W−v)²), r_max = √(⌊H/2⌋² + ⌊W/2⌋²). Each sample-channel's spatial mean is removed
    first when center="mean" (center=None or "none": not). P is averaged over channels
    (channel_reduce="mean") or kept per channel ("none"), clamped ≥ 1e-12·c² with c =
    sample_scale of the centred x (SPEC §9's absolute 1e-12 made relative, SPEC §10), P[0, 0] = 0
    unless keep_dc; bin = min(⌊r / r_max · bins⌋, bins − 1) and the output [..., bins] (or
    [..., C, bins]) is the mean of P per bin, 0 for an empty bin (the DC entry counts in bin 0, with
    value 0 unless keep_dc). keep_dc=True with center="none" gives the Spectrum Matching paper's
    analysis spectra.
    """
    _check_images(x, "x")
    check_psd_options(transform, center, channel_reduce, keep_dc)
    if int(bins) < 1:
        raise ValueError(f"bins must be a positive int, got {bins}")
    return _psd(x, int(bins), transform, center == "mean", channel_reduce == "mean", keep_dc, None, False)


def _psd(x: torch.Tensor, bins: int, transform: str, centre: bool, channel_mean: bool, keep_dc: bool,
         floor: Optional[float], official: bool) -> torch.Tensor:
    """radial_psd with the entry floor as a parameter (None: the library's relative 1e-12·c²; a number:
    that absolute floor); official=True: the official code's float32 bin map and bin means
    sum / (count + 1e-8) (SPEC §9, esm_loss's official variant)."""
    dtype = x.dtype
    xw = _work(x)
    H, W = xw.shape[-2:]
    if centre:
        xw = xw - xw.mean(dim=(-2, -1), keepdim=True)
    if transform == "dct":
        P = _dct2(xw) ** 2
    else:
        P = torch.fft.fft2(xw).abs() ** 2 / (H * W)
    if channel_mean:
        P = P.mean(dim=-3)
    if floor is None:  # the library's floor 1e-12·c², c = sample_scale of the centred x: relative (SPEC §10)
        c = sample_scale((xw - xw.mean(dim=(-2, -1), keepdim=True)).reshape(-1, *xw.shape[-3:]))
        P = torch.maximum(P, 1e-12 * (c * c).reshape(*xw.shape[:-3], *([1] * (P.dim() - len(xw.shape[:-3])))))
    else:  # an absolute floor: the official Spectrum Matching code's
        P = P.clamp_min(floor)
    if not keep_dc:
        dc = torch.zeros(H, W, dtype=torch.bool, device=P.device)
        dc[0, 0] = True
        P = torch.where(dc, torch.zeros_like(P), P)
    idx = bin_index(H, W, bins, transform, official)
    return _bin_means(P, idx, bins, 1e-8 if official else 0.0).to(dtype)


def _gaussian_kernel1d(size: int, sigma: float, dtype, device) -> torch.Tensor:
    i = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(i * i) / (2.0 * sigma * sigma))
    return (g / g.sum()).to(dtype=dtype, device=device)


def _blur(x: torch.Tensor, kernel: torch.Tensor, name: str, padding: str = "reflect") -> torch.Tensor:
    """Separable per-channel blur of x [N, C, H, W] with an odd 1-D kernel, reflect (or zero) padding."""
    C = x.shape[1]
    K = kernel.numel()
    pad = K // 2
    if padding == "reflect" and (pad >= x.shape[-2] or pad >= x.shape[-1]):
        raise ValueError(f"{name}'s H and W must exceed the blur radius {pad}, got {tuple(x.shape[-2:])}")
    kh = kernel.reshape(1, 1, K, 1).expand(C, 1, K, 1)
    kw = kernel.reshape(1, 1, 1, K).expand(C, 1, 1, K)
    mode = "reflect" if padding == "reflect" else "constant"
    x = Fn.conv2d(Fn.pad(x, (0, 0, pad, pad), mode=mode), kh, groups=C)
    x = Fn.conv2d(Fn.pad(x, (pad, pad, 0, 0), mode=mode), kw, groups=C)
    return x


def _as_4d(x: torch.Tensor):
    batch = x.shape[:-3]
    return x.reshape(-1, *x.shape[-3:]), batch


def check_esm_options(variant: str, loss: str, blur, log_power: bool = True, keep_dc: bool = False) -> None:
    """The options of esm_loss (shared by the reference and the fused op)."""
    for name, flag in (("log_power", log_power), ("keep_dc", keep_dc)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    if variant not in ("library", "official"):
        raise ValueError(f"variant must be 'library' or 'official', got {variant!r}")
    if loss not in ("kl", "l2"):
        raise ValueError(f"loss must be 'kl' or 'l2', got {loss!r}")
    if blur is not None and (len(blur) != 2 or int(blur[0]) < 1 or int(blur[0]) % 2 == 0 or float(blur[1]) <= 0):
        raise ValueError(f"blur must be (odd size, sigma > 0) or None, got {blur!r}")


def esm_blur(blur, size, official: bool):
    """The blur esm_loss applies to the target images: none for 32-px latents in the official variant."""
    return None if official and size[0] == 32 else blur


def esm_target_images(x: torch.Tensor, size, blur, official: bool) -> torch.Tensor:
    """x [N, C, H, W] blurred and resized to `size` as esm_loss's target side (SPEC §9)."""
    blur = esm_blur(blur, size, official)
    if blur is not None:
        kernel = _gaussian_kernel1d(int(blur[0]), float(blur[1]), x.dtype, x.device)
        x = _blur(x, kernel, "x", "zeros" if official else "reflect")
    if x.shape[-2:] != tuple(size):  # a bicubic resize to the same size is the identity
        x = Fn.interpolate(x, size=tuple(size), mode="bicubic", align_corners=False)
    return x


def esm_distance(s_x: torch.Tensor, s_z: torch.Tensor, loss: str, log_power: bool, official: bool) -> torch.Tensor:
    """esm_loss from the two binned spectra [N, bins] (s_x the target, already times f^delta) (SPEC §9)."""
    eps = 1e-8 if official else 0.0

    def normalise(s):
        if log_power:
            s = torch.log1p(s + 1e-8)  # log(1 + s + 1e-8); log1p keeps every entry > 0 in float32 too
        s = s.clamp_min(0)
        total = s.sum(-1, keepdim=True)
        return s / (total + eps) if official else s / total.clamp_min(torch.finfo(s.dtype).tiny)

    p, q = normalise(s_x), normalise(s_z)
    if p.numel() == 0:  # an empty batch: 0, not the NaN of an empty mean
        return (p.sum() + q.sum()) * 0
    if loss == "l2":
        return ((q - p) ** 2).mean()
    if official:
        return (p * (torch.log(p + eps) - torch.log(q + eps))).sum(-1).mean()
    # 0 · log 0 = 0: bins empty in both spectra (or holding only the zeroed DC entry) add nothing.
    pos = p > 0
    one = torch.ones_like(p)
    kl = torch.where(pos, p * (torch.log(torch.where(pos, p, one)) - torch.log(torch.where(pos, q, one))), 0 * p)
    return kl.sum(-1).mean()


def esm_loss(z: torch.Tensor, x: torch.Tensor, *, delta: float = 0.0, bins: int = 16,
             blur: Optional[Sequence] = (7, 1.2), variant: str = "library", loss: str = "kl",
             log_power: bool = True, keep_dc: bool = False) -> torch.Tensor:
    """Explicit spectrum matching loss of latents z [..., C_z, h, w] to images x [..., C, H, W] (SPEC §9).

    variant="library": x is blurred (separable normalised Gaussian of blur = (size, sigma), size
    odd, reflect padding; blur=None: none), resized to (h, w) by bicubic interpolation
    (align_corners=False; skipped when the size already matches, where it is the identity), and
    s_x = radial_psd(x) · f^delta, f = 1..bins, is the detached target; s_z = radial_psd(z).
    Each s ← max(log(1 + s + 1e-8), 0) (log_power=False: max(s, 0)), normalised to sum 1;
    loss="kl": L = mean over the batch of Σ s_x (log s_x − log s_z) (0 · log 0 = 0);
    loss="l2": the mean of (s_z − s_x)² over batch and bins.
    variant="official" is the official Spectrum Matching code: no blur when h = 32, zero padding,
    the power floored at 1e-8 with the float32 bin map, bin means sum / (count + 1e-8),
    s / (Σ s + 1e-8), and the KL as Σ s_x (log(s_x + 1e-8) − log(s_z + 1e-8)).
    keep_dc=True: both spectra are those of the uncentred inputs with P[0, 0] kept (radial_psd's
    center="none", keep_dc=True; in the official variant P[0, 0] floored at 1e-8 like every entry).
    Not scale-invariant: the log and the floors are absolute, so z and x belong in [−1, 1] as in the paper.
    """
    _check_images(z, "z")
    _check_images(x, "x")
    check_esm_options(variant, loss, blur, log_power, keep_dc)
    if int(bins) < 1:
        raise ValueError(f"bins must be a positive int, got {bins}")
    bins = int(bins)
    if z.shape[:-3] != x.shape[:-3]:
        raise ValueError(f"z and x must have the same batch shape, got {tuple(z.shape[:-3])} and {tuple(x.shape[:-3])}")
    official = variant == "official"
    floor = 1e-8 if official else None  # the library: radial_psd's relative floor
    dtype = z.dtype
    zw, _ = _as_4d(_work(z))
    with torch.no_grad():
        xw, _ = _as_4d(_work(x.detach()).to(zw.dtype))
        xw = esm_target_images(xw, zw.shape[-2:], blur, official)
        f = torch.arange(1, bins + 1, dtype=xw.dtype, device=xw.device)
        s_x = _psd(xw, bins, "dct", not keep_dc, True, keep_dc, floor, official) * f ** delta
    s_z = _psd(zw, bins, "dct", not keep_dc, True, keep_dc, floor, official)
    return esm_distance(s_x, s_z, loss, log_power, official).to(dtype)


def _check_block(H: int, W: int, block: int) -> None:
    if H % block or W % block:
        raise ValueError(f"x's H and W must be multiples of block={block}, got H={H}, W={W}")


def block_dct_lowpass(x: torch.Tensor, k: int, *, block: int = 8) -> torch.Tensor:
    """Block-DCT low-pass of x [..., H, W] (SPEC §9).

    Per block×block tile: orthonormal DCT-II, zero the coefficients with u + v ≥ 2·block − 1 − k,
    inverse DCT. k = 0 is the identity, k = 2·block − 1 zeroes everything. An orthogonal
    projector (idempotent and self-adjoint), so its backward is itself.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or not x.is_floating_point():
        raise ValueError("x must be a floating-point tensor of shape [..., H, W]")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive int, got {block!r}")
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= 2 * block - 1:
        raise ValueError(f"k must be an int in [0, {2 * block - 1}], got {k!r}")
    H, W = x.shape[-2:]
    _check_block(H, W, block)
    dtype = x.dtype
    xw = _work(x)
    if k == 0:
        return x.clone()
    tiles = xw.reshape(*xw.shape[:-2], H // block, block, W // block, block).transpose(-3, -2)  # [..., H/b, W/b, b, b]
    D = dct_matrix(block, xw.dtype, xw.device)
    c = D @ tiles @ D.mT
    u = torch.arange(block, device=xw.device)
    keep = (u.unsqueeze(1) + u.unsqueeze(0)) < (2 * block - 1 - k)
    c = c * keep.to(c.dtype)
    y = D.mT @ c @ D
    y = y.transpose(-3, -2).reshape(xw.shape)
    return y.to(dtype)


def dog(z: torch.Tensor, sigma1: float = 1.0, sigma2: float = 2.0) -> torch.Tensor:
    """Difference of Gaussians of z [..., C, H, W], normalised per sample (SPEC §9).

    d = G_σ1 ∗ z − G_σ2 ∗ z per channel (normalised Gaussians of radius ⌈3σ⌉, reflect
    padding), returned as d / max(population std of d over each sample's C·H·W values, 1e-6·c),
    c = sample_scale(z). SPEC §9's "+ 1e-6" is absolute; SPEC §10 wins: the floor is relative to
    the sample's scale and acts only on a (near) constant d, so the output is invariant to the
    scale of z. σ1 = 1, σ2 = 2 and the std normalisation are this library's own choice: the papers
    give no DoG formula and the official Spectrum Matching code has none.
    """
    _check_images(z, "z")
    if sigma1 <= 0 or sigma2 <= 0:
        raise ValueError(f"sigma1 and sigma2 must be positive, got {sigma1}, {sigma2}")
    dtype = z.dtype
    zw, batch = _as_4d(_work(z))
    blurred = []
    for sigma in (sigma1, sigma2):
        radius = int(math.ceil(3.0 * sigma))
        blurred.append(_blur(zw, _gaussian_kernel1d(2 * radius + 1, sigma, zw.dtype, zw.device), "z"))
    d = blurred[0] - blurred[1]
    std = d.flatten(1).std(dim=1, unbiased=False)
    out = d / torch.maximum(std.reshape(-1, 1, 1, 1), 1e-6 * sample_scale(zw))
    return out.reshape(*batch, *out.shape[1:]).to(dtype)
