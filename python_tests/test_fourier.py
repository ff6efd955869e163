"""fourier_split / fourier_merge / amplitude_mix (SPEC §8) beyond the generic registry tests:
parity with torch.fft at vision sizes, the inverse and invariance properties, amplitude- and
phase-only reconstructions, the phase convention, the |X| = 0 gradient rule."""
import itertools
import math

import pytest
import torch

import sdekernels
from sdekernels import reference as ref

from helpers import DEVICE, PATHS, on_path

OPTIONS = [dict(onesided=o, centered=c, norm=n, log_amplitude=lg)
           for o, c, n, lg in itertools.product((False, True), (False, True), ("backward", "ortho", "forward"),
                                                (False, True))]


def _x(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(DEVICE, dtype)


def _phase_close(P, Q, atol):
    d = torch.remainder(P.double() - Q.double() + math.pi, 2 * math.pi) - math.pi
    assert d.abs().max() <= atol, f"phase differs by {d.abs().max():.3g}"


def _fft_truth(x, onesided=False):
    X = (torch.fft.rfft2 if onesided else torch.fft.fft2)(x.double())
    return X.abs(), X.angle()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("size", [(1, 1), (1, 17), (9, 1), (5, 8), (7, 9), (16, 16), (31, 12)])
def test_split_matches_torch_fft_small(size, path):
    x = _x(2, 3, *size)
    for onesided in (False, True):
        with on_path(path):
            A, P = sdekernels.fourier_split(x, onesided=onesided)
        A0, P0 = _fft_truth(x, onesided)
        torch.testing.assert_close(A.double(), A0, atol=2e-5, rtol=1e-5)
        _phase_close(P, P0, 1e-4)


@pytest.mark.parametrize("size", [(224, 224), (256, 256), (100, 90), (512, 64)])
def test_split_vision_sizes_aten(size):
    x = _x(2, *size)
    A, P = sdekernels.fourier_split(x)
    A0, P0 = _fft_truth(x)
    torch.testing.assert_close(A.double(), A0, atol=5e-4 * math.sqrt(x[0].numel()) / 100, rtol=1e-5)
    ok = A0 > 1e-2 * A0.mean()  # the phase of a near-zero coefficient is ill-conditioned in float32
    _phase_close(P[ok], P0[ok], 1e-3)


@pytest.mark.skipif("triton" not in PATHS, reason="no Triton path here")
@pytest.mark.parametrize("size", [(224, 224), (256, 256)])
def test_split_vision_sizes_triton_batch_of_one(size):
    x = _x(1, *size)
    with on_path("triton"):
        A, P = sdekernels.fourier_split(x, centered=True, log_amplitude=True)
    A0, P0 = ref.fourier_split(x.double(), centered=True, log_amplitude=True)
    torch.testing.assert_close(A.double(), A0, atol=1e-4, rtol=1e-5)
    ok = A0 > 1e-2 * A0.mean()
    _phase_close(P[ok], P0[ok], 1e-3)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_split_dtypes_and_batch_shapes(dtype, path):
    for shape in [(6, 5), (2, 6, 5), (2, 1, 3, 4, 7)]:
        x = _x(*shape, dtype=dtype)
        with on_path(path):
            A, P = sdekernels.fourier_split(x, centered=True)
        assert A.dtype == P.dtype == dtype and A.shape == P.shape == x.shape
        A0, P0 = ref.fourier_split(x.double(), centered=True)
        tol = 1e-10 if dtype == torch.float64 else (1e-4 if dtype == torch.float32 else 3e-2)
        torch.testing.assert_close(A.double(), A0, atol=tol * 10, rtol=tol)
        _phase_close(P, P0, 10 * tol)


@pytest.mark.parametrize("path", PATHS)
def test_merge_inverts_split_every_option(path):
    for kw, (H, W) in itertools.product(OPTIONS, [(6, 8), (5, 7)]):
        if kw["log_amplitude"]:
            continue
        x = _x(2, H, W, dtype=torch.float64)
        with on_path(path):
            A, P = sdekernels.fourier_split(x, **kw)
            kw_m = dict(kw)
            del kw_m["log_amplitude"]
            y = sdekernels.fourier_merge(A, P, size=(H, W) if kw["onesided"] else None, **kw_m)
        what = f"{kw} {(H, W)}"
        torch.testing.assert_close(y, x, atol=1e-10, rtol=1e-10, msg=lambda m, what=what: f"{what}: {m}")


@pytest.mark.parametrize("path", PATHS)
def test_split_every_option_matches_reference(path):
    x = _x(2, 6, 7, dtype=torch.float64)
    for kw in OPTIONS:
        with on_path(path):
            A, P = sdekernels.fourier_split(x, **kw)
        A0, P0 = ref.fourier_split(x, **kw)
        torch.testing.assert_close(A, A0, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(P, P0, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("path", PATHS)
def test_amplitude_invariant_to_circular_shifts(path):
    x = _x(3, 12, 10)
    with on_path(path):
        A = sdekernels.fourier_split(x)[0]
        for shift in [(1, 0), (0, 3), (5, 7), (-4, 2)]:
            As = sdekernels.fourier_split(torch.roll(x, shift, dims=(-2, -1)))[0]
            torch.testing.assert_close(As, A, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("path", PATHS)
def test_amplitude_only_and_phase_only_reconstructions(path):
    x = _x(2, 9, 12, dtype=torch.float64)
    with on_path(path):
        A, P = sdekernels.fourier_split(x)
        amp_only = sdekernels.fourier_merge(A, torch.zeros_like(P))
        phase_only = sdekernels.fourier_merge(torch.ones_like(A), P)
        A_amp, P_amp = sdekernels.fourier_split(amp_only)
        A_ph, P_ph = sdekernels.fourier_split(phase_only)
    # Amplitude only: the spectrum is A itself (real, >= 0), an even image; phase only: |X| = 1.
    torch.testing.assert_close(A_amp, A, atol=1e-9, rtol=1e-9)
    assert P_amp.abs().max() < 1e-8
    torch.testing.assert_close(amp_only, torch.roll(amp_only.flip(-2, -1), (1, 1), dims=(-2, -1)))
    torch.testing.assert_close(A_ph, torch.ones_like(A), atol=1e-9, rtol=0)
    _phase_close(P_ph, P, 1e-8)


@pytest.mark.parametrize("path", PATHS)
def test_phase_range_and_negative_real_bins(path):
    x = -torch.ones(2, 4, 6, device=DEVICE)  # DC = −24: exactly real and negative
    x[1, ::2] = -3.0  # row frequency H/2 real and negative as well
    with on_path(path):
        for onesided, centered in itertools.product((False, True), repeat=2):
            A, P = sdekernels.fourier_split(x, onesided=onesided, centered=centered)
            assert (P > -math.pi).all() and (P <= math.pi).all()
            A0, P0 = ref.fourier_split(x.double(), onesided=onesided, centered=centered)
            torch.testing.assert_close(A.double(), A0, atol=1e-5, rtol=1e-6)
            strong = A0 > 1e-3
            torch.testing.assert_close(P.double()[strong], P0[strong], atol=1e-6, rtol=0)
    A, P = sdekernels.fourier_split(x)
    assert P[0, 0, 0].item() == torch.tensor(math.pi).item()  # exactly π, never −π


@pytest.mark.parametrize("kw", OPTIONS[::3], ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_split_gradcheck_options(kw):
    x = _x(2, 4, 5, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: sdekernels.fourier_split(t, **kw), (x,), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("onesided,centered,norm",
                         [(False, True, "ortho"), (True, True, "backward"), (True, False, "forward")])
def test_merge_gradcheck_options(onesided, centered, norm):
    H, W = 4, 5
    Wo = W // 2 + 1 if onesided else W
    A = _x(2, H, Wo, dtype=torch.float64).abs().add(0.1).requires_grad_()
    P = _x(2, H, Wo, dtype=torch.float64, seed=1).requires_grad_()
    fn = lambda a, p: sdekernels.fourier_merge(a, p, onesided=onesided, centered=centered, norm=norm,  # noqa: E731
                                               size=(H, W) if onesided else None)
    assert torch.autograd.gradcheck(fn, (A, P), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("value", [0.0, 1.5])
def test_finite_gradients_on_constant_images(value, path):
    """All but the DC coefficient are 0 (up to round-off): the |X| = 0 rule keeps the gradients finite."""
    for kw in OPTIONS[::2]:
        leaves = [torch.full((2, 6, 5), value, dtype=torch.float64, device=DEVICE, requires_grad=True)
                  for _ in range(2)]
        w = torch.randn(2, 6, 5 // 2 + 1 if kw["onesided"] else 5, generator=torch.Generator().manual_seed(3),
                        dtype=torch.float64).to(DEVICE)
        with on_path(path):
            A, P = sdekernels.fourier_split(leaves[0], **kw)
        A0, P0 = ref.fourier_split(leaves[1], **kw)
        g, = torch.autograd.grad(((A + P) * w).sum(), leaves[0])
        g0, = torch.autograd.grad(((A0 + P0) * w).sum(), leaves[1])
        assert torch.isfinite(g).all()
        if value == 0.0:  # exact zeros (a non-zero constant leaves FFT round-off, ill-conditioned phases)
            torch.testing.assert_close(g, g0, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("path", PATHS)
def test_amplitude_mix_properties(path):
    x1, x2 = _x(3, 2, 8, 9, dtype=torch.float64), _x(3, 2, 8, 9, dtype=torch.float64, seed=1)
    with on_path(path):
        torch.testing.assert_close(sdekernels.amplitude_mix(x1, x2, 0.0), x1)
        full = sdekernels.amplitude_mix(x1, x2, 1.0)
        A, P = sdekernels.fourier_split(full)
        torch.testing.assert_close(A, sdekernels.fourier_split(x2)[0])
        _phase_close(P, sdekernels.fourier_split(x1)[1], 1e-8)
        lam = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64, device=DEVICE)
        mixed = sdekernels.amplitude_mix(x1, x2, lam, ratio=0.4)
    torch.testing.assert_close(mixed, ref.amplitude_mix(x1, x2, lam, ratio=0.4))
    torch.testing.assert_close(mixed[0], x1[0])


def test_backward_uses_the_extension_when_built():
    from sdekernels import _ext
    if not _ext.available():
        pytest.skip("C++ extension not built")
    x = _x(1, 6, 7, dtype=torch.float64)
    gA, gP = torch.ones(1, 6, 7, dtype=torch.float64), torch.zeros(1, 6, 7, dtype=torch.float64)
    gx = torch.ops.sdekernels_C.fourier_split_bwd(x, gA, gP, False, "backward", False, False)
    gx0, = torch.autograd.grad(ref.fourier_split(x.requires_grad_())[0].sum(), x)
    torch.testing.assert_close(gx, gx0)


def _quantised_with_zero_bins(B, H, W, seed=0):
    """Images k/255 whose (H/2, W/2) coefficient Σ (−1)^(m+n) x[m, n] is exactly 0 (the integers are
    balanced), as happens with quantised photos; an FFT returns round-off of either sign there."""
    k = torch.randint(0, 256, (B, H, W), generator=torch.Generator().manual_seed(seed)).double()
    sign = (-1.0) ** (torch.arange(H)[:, None] + torch.arange(W)[None, :])
    k[:, 0, 0] -= (k * sign).sum((-2, -1))
    return k / 255


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_zero_coefficients_have_phase_zero_on_every_path(path, dtype):
    # the phase of a coefficient that is 0 up to round-off would otherwise be the sign of that
    # round-off (0 or π), which differs between paths: amplitude_mix would then put lam·A2 there
    # with either sign, and FARL's phase maps would flip
    x1 = _quantised_with_zero_bins(4, 28, 28).to(DEVICE, dtype)
    x2 = _quantised_with_zero_bins(4, 28, 28, seed=1).flip(0).to(DEVICE, dtype)
    with on_path(path):
        A, P = sdekernels.fourier_split(x1)
        mixed = sdekernels.amplitude_mix(x1, x2, 0.5)
    assert (A[:, 14, 14] < 1e-3 if dtype == torch.float32 else A[:, 14, 14] < 1e-12).all()
    assert (P[:, 14, 14] == 0).all()
    assert (ref.fourier_split(x1)[1][:, 14, 14] == 0).all()
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(mixed, ref.amplitude_mix(x1, x2, 0.5), atol=tol, rtol=0)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("W", [8, 9])
def test_merge_phases_of_every_magnitude(path, W):
    # Phases near 0, ±π, up to the fast sin/cos range of the CPU kernel, beyond it, and a NaN
    # (rows take the library's sin/cos there): every option against the float64 reference.
    g = torch.Generator().manual_seed(3)
    for o, c, n in itertools.product((False, True), (False, True), ("backward", "ortho", "forward")):
        Wo = W // 2 + 1 if o else W
        A = (torch.rand(3, 6, Wo, generator=g) + 0.1).to(DEVICE)
        P = (torch.rand(3, 6, Wo, generator=g) * 2 - 1).to(DEVICE) * torch.tensor([math.pi, 8000.0, 1e6])[
            torch.arange(6) % 3].to(DEVICE)[:, None]
        P[0, 2, 1] = float("nan")
        kw = dict(onesided=o, centered=c, norm=n, size=(6, W) if o else None)
        with on_path(path):
            x = sdekernels.fourier_merge(A, P, **kw)
        want = ref.fourier_merge(A.double(), P.double(), **kw)
        assert x[0].isnan().any()
        torch.testing.assert_close(x[1:].double(), want[1:], atol=2e-5, rtol=1e-4)


# -- SPEC §8's branch cut: one phase on every path, equal (not modulo 2π) to the reference's -----
CUT_OPTIONS = [dict(), dict(centered=True, log_amplitude=True), dict(onesided=True, norm="ortho"),
               dict(onesided=True, centered=True, norm="forward")]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def _cut_truth(x, onesided=False, norm="backward", centered=False, **_):
    """The float64 spectrum of x as the op sees it (in its work dtype), in the op's layout, and
    each image's zero floor 4·√(HW)·eps·‖x‖₂ and cut width 2·√(H + W)·eps·‖x‖₂, scaled like X by
    norm (SPEC §8; eps of the work dtype)."""
    xw = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    X = (torch.fft.rfft2 if onesided else torch.fft.fft2)(xw.double(), norm=norm)
    if centered:
        X = torch.fft.fftshift(X, dim=(-2,) if onesided else (-2, -1))
    H, W = x.shape[-2:]
    scale = {"backward": 1.0, "ortho": (H * W) ** -0.5, "forward": 1.0 / (H * W)}[norm]
    unit = torch.finfo(xw.dtype).eps * scale * torch.linalg.vector_norm(xw.double(), dim=(-2, -1), keepdim=True)
    return X, 4 * math.sqrt(H * W) * unit, 2 * math.sqrt(H + W) * unit


def _assert_one_phase(P, Pr, X, tol, width):
    """P and the reference's Pr agree without reduction modulo 2π: to the phase error of a coefficient
    of magnitude |X| whose round-off is below the cut width (width/|X|), plus the output dtype's
    rounding; only coefficients within round-off of the rule's own thresholds (|Im X| ≈ width on
    the negative side, |X| ≈ tol) may be classified differently, and they must be rare."""
    eps = torch.finfo(P.dtype).eps
    atol = width / X.abs().clamp_min(1e-300) + 4 * eps * math.pi + 1e-6
    ambiguous = (((X.imag.abs() - width).abs() <= 0.5 * width) & (X.real < 0)) | ((X.abs() - tol).abs() <= 0.5 * tol)
    d = (P.double() - Pr.double()).abs()
    bad = (d > atol) & ~ambiguous
    assert not bad.any(), (f"{int(bad.sum())} phases differ, e.g. at {bad.nonzero()[0].tolist()}: "
                           f"{P[bad][0].item()} vs the reference's {Pr[bad][0].item()}")
    assert ambiguous.double().mean() < 1e-3, "too many coefficients at the thresholds for the test to mean much"


@pytest.fixture(scope="module")
def fashion_images():
    """Fashion-MNIST images, raw (FACT mixes these) and normalised (the models' input), [2, N, 28, 28]:
    the first 48 of the 2000 first of each kind, then every other one with a coefficient on the
    negative real axis besides the self-conjugate frequencies (exact cancellations of quantised
    pixels; images 123, 567 and 828 among them, which had −π on one path and π on the other)."""
    from sdekernels import data

    if not data.have_fashion_mnist():
        pytest.skip("Fashion-MNIST is not installed")
    raw = data.fashion_mnist("train", limit=2000, dtype=torch.float64, normalize=False)[0][:, 0]
    x = torch.stack([raw, data.normalize_fashion(raw)])
    X, _, width = _cut_truth(x.float())
    conj = torch.zeros(28, 28, dtype=torch.bool)
    conj[::14, ::14] = True  # the self-conjugate frequencies
    on_cut = ((X.real < 0) & (X.imag.abs() <= 0.5 * width) & ~conj).flatten(-2).any(-1).any(0)
    on_cut[:48] = True
    assert int(on_cut.sum()) > 48 + 5
    return x[:, on_cut]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_one_phase_on_fashion_mnist(fashion_images, path, dtype):
    x = fashion_images.to(DEVICE, dtype)
    for kw in CUT_OPTIONS if path == "aten" or DEVICE.type == "cuda" else CUT_OPTIONS[:2]:  # the interpreter is slow
        with on_path(path):
            _, P = sdekernels.fourier_split(x, **kw)
        _, Pr = ref.fourier_split(x, **kw)
        _assert_one_phase(P, Pr, *_cut_truth(x, **kw))


def _on_the_cut_images(H, W, dtype):
    """Point-symmetric images, x[n] = x[−n mod (H, W)], whose spectra are real, in pixels k/255, with a
    negative DC, and two whose (H/2, 0), (0, W/2), (H/2, W/2) are real and negative where those
    frequencies exist (the patterns (−1)^n are symmetric only along an even dim)."""
    g = torch.Generator().manual_seed(H * W)
    k = torch.randint(0, 256, (6, H, W), generator=g).double()
    k = k + torch.roll(k.flip(-2, -1), (1, 1), dims=(-2, -1))  # k[n] + k[−n]: exactly symmetric integers
    n1, n2 = torch.arange(H)[:, None], torch.arange(W)[None, :]
    k[1] = 100.0 * (-1.0) ** n1 - 300.0  # Nyquist row real, DC negative
    k[2] = 100.0 * (-1.0) ** (n1 + n2) - 30.0 * (-1.0) ** n2 - 1.0
    x = k / 255 - 1.0  # negative DC in every image
    return x.to(DEVICE, dtype)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("size", [(8, 6), (7, 6), (6, 9), (5, 5)])
def test_one_phase_on_the_negative_real_axis(path, dtype, size):
    # every coefficient is real; the negative ones get exactly π on every path, in every option
    x = _on_the_cut_images(*size, dtype)
    pi = torch.tensor(math.pi, dtype=dtype).item()
    for kw in CUT_OPTIONS:
        with on_path(path):
            _, P = sdekernels.fourier_split(x, **kw)
        _, Pr = ref.fourier_split(x, **kw)
        X, tol, width = _cut_truth(x, **kw)
        _assert_one_phase(P, Pr, X, tol, width)
        real = X.imag.abs() <= 0.5 * width
        negative = real & (X.real < -1.5 * tol)
        assert negative.sum() > 20
        assert (P[negative] == pi).all() and (Pr[negative] == pi).all()
        positive = real & (X.real > 1.5 * tol)  # atan2 of round-off: near 0
        assert (P.double().abs() <= width / X.abs() + 4 * torch.finfo(dtype).eps + 1e-6)[positive].all()


@pytest.mark.parametrize("path", PATHS)
def test_phase_gradient_on_the_cut_is_atan2s(path):
    # on the cut the value is π and the gradient atan2's (continuous across the cut) on every path
    x = _on_the_cut_images(8, 6, torch.float64)
    for kw in CUT_OPTIONS:
        onesided, centered = kw.get("onesided", False), kw.get("centered", False)
        w = _x(6, 8, 4 if onesided else 6, dtype=torch.float64, seed=1)
        xg = x.clone().requires_grad_()
        with on_path(path):
            g, = torch.autograd.grad((sdekernels.fourier_split(xg, **kw)[1] * w).sum(), xg)
        g0, = torch.autograd.grad((ref.fourier_split(xg, **kw)[1] * w).sum(), xg)
        X = (torch.fft.rfft2 if onesided else torch.fft.fft2)(xg, norm=kw.get("norm", "backward"))
        if centered:
            X = torch.fft.fftshift(X, dim=(-2,) if onesided else (-2, -1))
        want, = torch.autograd.grad((torch.atan2(X.imag, X.real) * w).sum(), xg)
        torch.testing.assert_close(g0, want, atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(g, want, atol=1e-9, rtol=1e-9)
