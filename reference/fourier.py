"""Fourier amplitude/phase split, merge, amplitude mix and the FARL token module (SPEC §8)."""
import math
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn as nn

from .spectrum import sample_scale

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_NORMS = ("backward", "ortho", "forward")
_TINY = 1e-30  # |X|² below this: amplitude and phase gradients are 0


def _work(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in _LOW_PRECISION else x


def _check_image(x, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"{name} must be a real tensor of shape [..., H, W]")
    if x.is_complex() or not x.is_floating_point():
        raise ValueError(f"{name} must be a real floating-point tensor, got {x.dtype}")


def _shift_dims(onesided: bool):
    # A one-sided spectrum keeps only the non-negative column frequencies; centring it
    # shifts the rows only.
    return (-2,) if onesided else (-2, -1)


def _spectrum_scale(x: torch.Tensor, norm: str, factor: float) -> torch.Tensor:
    """factor·eps·‖x‖₂ per image [..., 1, 1], scaled as X by norm; 0 for a non-finite image."""
    H, W = x.shape[-2:]
    scale = {"backward": 1.0, "ortho": 1.0 / math.sqrt(H * W), "forward": 1.0 / (H * W)}[norm]
    size = torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True)
    return torch.where(torch.isfinite(size), size * (factor * scale * torch.finfo(x.dtype).eps), 0.0)


def phase_tolerance(x: torch.Tensor, norm: str) -> torch.Tensor:
    """Per image [..., 1, 1]: 4·√(HW)·eps·‖x‖₂ in X's units (scaled as X by norm), a generous bound
    on the transform's round-off in |X| (an FFT errs by ~eps·log(HW)·‖x‖₂, a DFT as matrix products
    by up to ~0.4·√(HW)·eps·‖x‖₂); 0 for a non-finite image."""
    H, W = x.shape[-2:]
    return _spectrum_scale(x, norm, 4.0 * math.sqrt(H * W))


def cut_width(x: torch.Tensor, norm: str) -> torch.Tensor:
    """Per image [..., 1, 1]: 2·√(H + W)·eps·‖x‖₂ in X's units (scaled as X by norm), twice the
    round-off of Im X of a DFT computed as two matrix products (rows, then columns), the largest of
    the paths' (an FFT's is ~eps·√log(HW)·‖x‖₂). Narrow, as a phase within it of ±π is set to π:
    that moves it by up to cut_width/|X|."""
    H, W = x.shape[-2:]
    return _spectrum_scale(x, norm, 2.0 * math.sqrt(H + W))


def zero_phase_floor(x: torch.Tensor, norm: str, log_amplitude: bool) -> torch.Tensor:
    """Per image [..., 1, 1]: the stored amplitude (log1p when log_amplitude) at or below which a
    coefficient counts as zero up to the transform's round-off (``phase_tolerance``).

    The phase there is set to 0: atan2 of round-off would make it depend on how the transform was
    computed (quantised images have exact zeros, e.g. at the real Nyquist bins).
    """
    tol = phase_tolerance(x, norm)
    return torch.log1p(tol) if log_amplitude else tol


def real_bins(H: int, W: int, onesided: bool, device=None) -> torch.Tensor:
    """Boolean [H, W] ([H, W//2 + 1] when onesided) in frequency order: the self-conjugate frequencies
    (k1 ∈ {0, H/2}, k2 ∈ {0, W/2}), where the spectrum of a real image is exactly real."""
    k1 = torch.arange(H, device=device)
    k2 = torch.arange(W // 2 + 1 if onesided else W, device=device)
    return ((k1 == 0) | (2 * k1 == H))[:, None] & ((k2 == 0) | (2 * k2 == W))[None, :]


def fourier_split(x: torch.Tensor, *, onesided: bool = False, norm: str = "backward",
                  centered: bool = False, log_amplitude: bool = False):
    """Amplitude and phase of the 2-D FFT of real x [..., H, W] (SPEC §8).

    X = fft2(x, norm) (rfft2 when onesided: shape [..., H, W//2 + 1]); A = |X| (log1p(A) when
    log_amplitude), P = atan2(Im X, Re X) ∈ (−π, π], with the branch cut fixed (SPEC §8): Im X = 0
    at the self-conjugate frequencies (``real_bins``), P = π where Re X < 0 and |Im X| ≤ w (on the
    negative real axis up to round-off, so the sign of a round-off Im X never picks −π; w =
    ``cut_width``), and P = 0 where |X| ≤ tol (``zero_phase_floor``). The gradient of P is atan2's
    everywhere (it is continuous across the cut).
    centered: fftshift over both dims (over the row dim only when onesided).
    Where |X|² < 1e-30·c² the forward values are exact but the gradients of A and P are 0; c is
    the image's max|x| rounded down to a power of two (SPEC §8's absolute 1e-30 made relative,
    SPEC §10, so the gradients are right at any scale of x).
    """
    _check_image(x, "x")
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
    dtype = x.dtype
    xw = _work(x)
    H, W = xw.shape[-2:]
    X = torch.fft.rfft2(xw, norm=norm) if onesided else torch.fft.fft2(xw, norm=norm)
    re, im = X.real, torch.where(real_bins(H, W, onesided, xw.device), 0.0, X.imag)
    c = sample_scale(xw.reshape(-1, H * W)).reshape(*xw.shape[:-2], 1, 1)
    re, im = re / c, im / c  # the spectrum of x/c: |X/c|² cannot overflow; A is rescaled below
    p = re * re + im * im
    ok = p >= _TINY
    # Differentiable branch on safe inputs; the tiny entries take a detached exact value.
    A = torch.where(ok, torch.sqrt(torch.where(ok, p, torch.ones_like(p))), torch.sqrt(p).detach()) * c
    P = torch.where(ok,
                    torch.atan2(torch.where(ok, im, torch.zeros_like(im)), torch.where(ok, re, torch.ones_like(re))),
                    torch.atan2(im, re).detach())
    cut = (re < 0) & (im.abs() <= cut_width(xw, norm) / c)
    P = torch.where(cut, P - P.detach() + math.pi, P)  # the value π, atan2's gradient
    if log_amplitude:
        A = torch.log1p(A)
    if centered:
        dims = _shift_dims(onesided)
        A, P = torch.fft.fftshift(A, dim=dims), torch.fft.fftshift(P, dim=dims)
    P = torch.where(A <= zero_phase_floor(xw, norm, log_amplitude), 0.0, P)
    return A.to(dtype), P.to(dtype)


def fourier_merge(A: torch.Tensor, P: torch.Tensor, *, onesided: bool = False, norm: str = "backward",
                  centered: bool = False, size: Optional[Sequence[int]] = None):
    """Re IFFT2(A e^{iP}) — the inverse of ``fourier_split`` without log_amplitude (SPEC §8).

    onesided: irfft2 with output size ``size`` = (H, W) (default (H, 2(W_r − 1)); give it for
    odd W). Two-sided: ``size`` may be given but must equal A's last two dims.
    """
    _check_image(A, "A")
    _check_image(P, "P")
    if A.shape != P.shape:
        raise ValueError(f"A and P must have the same shape, got {tuple(A.shape)} and {tuple(P.shape)}")
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
    if size is not None:
        size = tuple(int(s) for s in size)
        if len(size) != 2:
            raise ValueError(f"size must be (H, W), got {size}")
        if not onesided and size != tuple(A.shape[-2:]):
            raise ValueError(f"size must equal A's spatial shape {tuple(A.shape[-2:])} when not onesided, got {size}")
        if onesided and (size[0] != A.shape[-2] or size[1] // 2 + 1 != A.shape[-1]):
            raise ValueError(f"size {size} does not match the one-sided spectrum shape {tuple(A.shape[-2:])}")
    dtype = A.dtype
    A, P = _work(A), _work(P)
    if centered:
        dims = _shift_dims(onesided)
        A, P = torch.fft.ifftshift(A, dim=dims), torch.fft.ifftshift(P, dim=dims)
    X = torch.complex(A * torch.cos(P), A * torch.sin(P))
    if onesided:
        x = torch.fft.irfft2(X, s=size, norm=norm)
    else:
        x = torch.fft.ifft2(X, norm=norm).real
    return x.to(dtype)


def _window(H: int, W: int, ratio: float, device) -> torch.Tensor:
    """Boolean [H, W] mask of the centred window in fftshifted coordinates (SPEC §8)."""
    h, w = int(math.floor(H * math.sqrt(ratio))), int(math.floor(W * math.sqrt(ratio)))
    h0, w0 = H // 2 - h // 2, W // 2 - w // 2
    mask = torch.zeros(H, W, dtype=torch.bool, device=device)
    mask[h0:h0 + h, w0:w0 + w] = True
    return mask


def amplitude_mix(x1: torch.Tensor, x2: torch.Tensor, lam, *, ratio: float = 1.0):
    """Fourier amplitude mix (FACT) of real x1, x2 [..., H, W] (SPEC §8).

    In the fftshifted spectrum, A = (1 − lam) A1 + lam A2 inside the centred window of
    h = ⌊H√ratio⌋ rows starting at ⌊H/2⌋ − ⌊h/2⌋ (likewise w columns), A = A1 elsewhere; the
    phase of x1 is kept and the output is Re IFFT2(A e^{iP1}). ``lam`` is a float or a tensor
    whose shape is a prefix of the batch shape (e.g. [B] for x [B, C, H, W]).
    Expects un-normalised pixels, as FACT mixes images before the mean/std normalisation: on
    normalised images |DC| folds the sign of a channel whose mean is below the normalisation mean.
    """
    _check_image(x1, "x1")
    _check_image(x2, "x2")
    if x1.shape != x2.shape:
        raise ValueError(f"x1 and x2 must have the same shape, got {tuple(x1.shape)} and {tuple(x2.shape)}")
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must lie in (0, 1], got {ratio}")
    dtype = x1.dtype
    a, b = _work(x1), _work(x2)
    H, W = a.shape[-2:]
    A1, P1 = fourier_split(a, centered=True)
    A2, _ = fourier_split(b, centered=True)
    if isinstance(lam, torch.Tensor):
        lam = _work(lam).to(device=a.device)
        if lam.dim() > a.dim() - 2 or tuple(lam.shape) != tuple(a.shape[:lam.dim()]):
            raise ValueError(f"lam must be a float or have a prefix of the batch shape {tuple(a.shape[:-2])}, "
                             f"got {tuple(lam.shape)}")
        lam = lam.reshape(*lam.shape, *([1] * (a.dim() - lam.dim())))
    mixed = (1.0 - lam) * A1 + lam * A2
    A = torch.where(_window(H, W, ratio, a.device), mixed, A1)
    return fourier_merge(A, P1, centered=True).to(dtype)


class FourierTokens(NamedTuple):
    fused: torch.Tensor      # [B, n_tokens, dim] — deep prompts for the text encoder
    structure: torch.Tensor  # [B, n_tokens, dim] — tokens attended to phase patches
    style: torch.Tensor      # [B, n_tokens, dim] — tokens attended to amplitude patches
    tokens: torch.Tensor     # [B, n_tokens, dim] — the unfused learnable tokens (image encoder)


class FourierAttentiveTokens(nn.Module):
    """FARL's Fourier-attentive tokens (SPEC §8).

    x [B, C, H, W] → centred spectrum → amplitude map log1p(A) [B, C, H, W] and phase map
    (cos P, sin P) [B, 2C, H, W] (phase="cos_sin") or P [B, C, H, W] (phase="angle") → patch
    embeddings (Conv2d, kernel = stride = patch, then LayerNorm) → learnable tokens T [n_tokens, dim]
    cross-attend (nn.MultiheadAttention, batch_first) to the phase patches (structure) and to the
    amplitude patches (style) → fused = T + Linear([structure, style]). No positional embedding is
    added to the patches. branches="amplitude" or "phase" keeps one branch: the other's embedding,
    norm and attention do not exist, its output is zeros and fused = T + Linear(present branch).
    The spectral split is the class attribute ``split`` so a subclass can swap in a kernel.
    H and W must be multiples of ``patch``.
    """

    split = staticmethod(fourier_split)

    def __init__(self, in_channels: int, dim: int, n_tokens: int, patch: int, heads: int, *,
                 phase: str = "cos_sin", branches: str = "both"):
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        if phase not in ("cos_sin", "angle"):
            raise ValueError(f"phase must be 'cos_sin' or 'angle', got {phase!r}")
        if branches not in ("both", "amplitude", "phase"):
            raise ValueError(f"branches must be 'both', 'amplitude' or 'phase', got {branches!r}")
        self.in_channels, self.dim, self.n_tokens, self.patch, self.heads = in_channels, dim, n_tokens, patch, heads
        self.phase, self.branches = phase, branches
        amp, pha = branches in ("both", "amplitude"), branches in ("both", "phase")
        phase_maps = 2 * in_channels if phase == "cos_sin" else in_channels
        self.tokens = nn.Parameter(torch.randn(n_tokens, dim) * 0.02)
        # modules are created in this order (both branches: the parameter order of checkpoints)
        self.amp_embed = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch) if amp else None
        self.phase_embed = nn.Conv2d(phase_maps, dim, kernel_size=patch, stride=patch) if pha else None
        self.amp_norm = nn.LayerNorm(dim) if amp else None
        self.phase_norm = nn.LayerNorm(dim) if pha else None
        self.structure_attn = nn.MultiheadAttention(dim, heads, batch_first=True) if pha else None
        self.style_attn = nn.MultiheadAttention(dim, heads, batch_first=True) if amp else None
        self.fuse = nn.Linear((amp + pha) * dim, dim)

    def _patches(self, conv: nn.Module, norm: nn.Module, maps: torch.Tensor) -> torch.Tensor:
        return norm(conv(maps).flatten(2).transpose(1, 2))  # [B, N, dim]

    def forward(self, x: torch.Tensor) -> FourierTokens:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        if x.shape[-2] % self.patch or x.shape[-1] % self.patch:
            raise ValueError(f"x's H and W must be multiples of patch={self.patch}, got {tuple(x.shape[-2:])}")
        A, P = self.split(x, centered=True, log_amplitude=True)
        dtype = self.fuse.weight.dtype
        T = self.tokens.unsqueeze(0).expand(x.shape[0], -1, -1)
        parts = []
        structure = style = torch.zeros_like(T)
        if self.phase_embed is not None:
            maps = torch.cat([torch.cos(P), torch.sin(P)], dim=1) if self.phase == "cos_sin" else P
            phase_p = self._patches(self.phase_embed, self.phase_norm, maps.to(dtype))
            structure = self.structure_attn(T, phase_p, phase_p, need_weights=False)[0]
            parts.append(structure)
        if self.amp_embed is not None:
            amp_p = self._patches(self.amp_embed, self.amp_norm, A.to(dtype))
            style = self.style_attn(T, amp_p, amp_p, need_weights=False)[0]
            parts.append(style)
        fused = T + self.fuse(torch.cat(parts, dim=-1))
        return FourierTokens(fused=fused, structure=structure, style=style, tokens=T)
