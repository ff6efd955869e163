"""Spectrum-matching ops (SPEC §9) beyond the generic registry tests: parity at latent and image
shapes, the physics of the spectra (white noise flat, natural photos a falling power law), the
projector's algebra, esm_loss at matching spectra, gradients of esm_loss and dog."""
import pytest
import torch

import sdekernels
from sdekernels import reference as ref
from sdekernels._core import HAS_TRITON, INTERPRET

from helpers import DEVICE, PATHS, assert_close, on_path, require_module

F64 = torch.float64


def _randn(*shape, dtype=torch.float32, seed=0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=F64) + shift).to(DEVICE, dtype)


def _rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


# ---------------------------------------------------------------- radial_psd parity


@pytest.mark.parametrize("shape", [(4, 4, 32, 32), (3, 16, 16, 16), (2, 64, 8, 8), (2, 3, 24, 40)])
@pytest.mark.parametrize("transform", ["dct", "fft"])
def test_radial_psd_latent_shapes(shape, transform):
    x = _randn(*shape, shift=2.0)
    expected = ref.radial_psd(x.double(), transform=transform)
    for path in PATHS:
        with on_path(path):
            out = sdekernels.radial_psd(x, transform=transform)
        assert out.dtype == x.dtype
        assert_close(out, expected, 1e-6, 1e-4, f"{shape} {transform} {path}")


@pytest.mark.parametrize("transform", ["dct", "fft"])
def test_radial_psd_image_shapes(transform):
    """3×256×256 on ATen; a non-square image on every path (small enough for the interpreter)."""
    x = _randn(2, 3, 256, 256, shift=0.5)
    expected = ref.radial_psd(x.double(), transform=transform, bins=32)
    assert_close(sdekernels.radial_psd(x, transform=transform, bins=32), expected, 1e-6, 1e-4, "aten 256")
    y = _randn(1, 3, 48, 80, seed=1)
    expected_y = ref.radial_psd(y.double(), transform=transform, channel_reduce="none")
    for path in PATHS:
        with on_path(path):
            got = sdekernels.radial_psd(y, transform=transform, channel_reduce="none")
        assert_close(got, expected_y, 1e-6, 1e-4, f"48x80 {path}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_radial_psd_dtypes_and_batch_shapes(dtype):
    x = _randn(2, 3, 4, 16, 16, dtype=dtype)
    out = sdekernels.radial_psd(x, bins=8, channel_reduce="none")
    assert out.shape == (2, 3, 4, 8) and out.dtype == dtype
    expected = ref.radial_psd(x.double(), bins=8, channel_reduce="none")
    tol = 1e-12 if dtype == F64 else 2e-2
    assert_close(out, expected, tol, tol, str(dtype))


def test_centering_is_exact_and_keeps_fp32_accurate():
    """Mean removal changes only P[0, 0] (which is 0): center=None is the same op; and a large mean
    does not cost fp32 accuracy (the fused paths centre before the products)."""
    x = _randn(2, 3, 32, 32, shift=100.0)
    for transform in ("dct", "fft"):
        truth = ref.radial_psd(x.double(), transform=transform)
        assert_close(ref.radial_psd(x.double(), transform=transform, center=None), truth, 1e-9, 1e-9, "center=None")
        for path in PATHS:
            with on_path(path):
                assert _rel(sdekernels.radial_psd(x, transform=transform), truth) < 2e-5, (transform, path)


def test_white_noise_is_flat():
    x = _randn(16, 4, 64, 64, seed=3)
    for transform in ("dct", "fft"):
        p = sdekernels.radial_psd(x, bins=16, transform=transform).mean(0)
        assert (p[1:] - 1).abs().max() < 0.1, (transform, p)  # unit variance per coefficient


def _photo_crops(size=128):
    data = require_module("skimage.data", "scikit-image")
    crops = []
    for img in (data.astronaut(), data.chelsea(), data.coffee()):
        t = torch.as_tensor(img, dtype=torch.float64).permute(2, 0, 1) / 255.0
        crops.append(t[:, :size, :size])
    return torch.stack(crops).float().to(DEVICE)


def test_natural_photos_have_a_falling_power_law():
    x = _photo_crops()
    for transform in ("dct", "fft"):
        p = sdekernels.radial_psd(x, bins=16, transform=transform).double().cpu()
        logf, logp = torch.arange(1, 16, dtype=F64).log(), p[:, 1:].log()
        A = torch.stack([logf, torch.ones_like(logf)], 1)
        slope = torch.linalg.lstsq(A, logp.T).solution[0]  # log-log slope per image
        assert (slope < -1.0).all() and (slope > -4.5).all(), (transform, slope)
        assert (p[:, 1] > 10 * p[:, -1]).all()


# ---------------------------------------------------------------- block_dct_lowpass


@pytest.mark.parametrize("k", [1, 8, 10, 12])
def test_lowpass_is_a_symmetric_idempotent_projector(k):
    x, y = _randn(2, 3, 16, 24, dtype=F64), _randn(2, 3, 16, 24, dtype=F64, seed=1)
    for path in PATHS:
        with on_path(path):
            px, py = sdekernels.block_dct_lowpass(x, k), sdekernels.block_dct_lowpass(y, k)
            assert_close(sdekernels.block_dct_lowpass(px, k), px, 1e-12, 1e-12, f"idempotent {path}")
        assert abs((px * y).sum() - (x * py).sum()) < 1e-10, "symmetric"
        assert_close(px, ref.block_dct_lowpass(x, k), 1e-12, 1e-12, f"parity {path}")


def test_lowpass_shapes_and_edge_k():
    x = _randn(64, 3, 64, 64)
    assert_close(sdekernels.block_dct_lowpass(x, 8), ref.block_dct_lowpass(x.double(), 8), 1e-5, 1e-5, "images")
    assert torch.equal(sdekernels.block_dct_lowpass(x, 0), x)
    assert sdekernels.block_dct_lowpass(x, 15).abs().max() == 0
    z = _randn(256, 16, 16, 16)
    assert_close(sdekernels.block_dct_lowpass(z, 12), ref.block_dct_lowpass(z.double(), 12), 1e-5, 1e-5, "latents")
    # k = 14 keeps only the DC term: the block means
    m = sdekernels.block_dct_lowpass(z, 14)
    means = z.reshape(256, 16, 2, 8, 2, 8).mean((3, 5), keepdim=True).expand(256, 16, 2, 8, 2, 8).reshape(z.shape)
    assert_close(m, means, 1e-5, 1e-5, "k=14")


# ---------------------------------------------------------------- esm_loss and dog


def test_esm_loss_is_zero_when_spectra_match():
    z = _randn(3, 4, 16, 16, dtype=F64)
    # No blur, same size, delta = 0: the target is z's own spectrum.
    loss = sdekernels.esm_loss(z, z.clone(), delta=0.0, blur=None)
    assert abs(loss.item()) < 1e-12
    other = sdekernels.esm_loss(z, _randn(3, 4, 16, 16, dtype=F64, seed=5).mul(3).cumsum(-1), delta=0.0, blur=None)
    assert other.item() > 1e-3


@pytest.mark.parametrize("path", PATHS)
def test_esm_loss_gradient(path):
    z = _randn(2, 2, 6, 6, dtype=F64, seed=2).requires_grad_()
    x = _randn(2, 3, 16, 16, dtype=F64, seed=4, shift=0.5)
    if path == "aten":  # numerical differences cost hundreds of forward calls: not in the interpreter
        assert torch.autograd.gradcheck(lambda t: sdekernels.esm_loss(t, x), (z,), eps=1e-6, atol=1e-7, rtol=1e-5)
    with on_path(path):
        g = torch.autograd.grad(sdekernels.esm_loss(z, x), z)[0]
    g_ref = torch.autograd.grad(ref.esm_loss(z, x), z)[0]
    assert_close(g, g_ref, 1e-10, 1e-8, "esm grad")
    x.requires_grad_()
    sdekernels.esm_loss(z, x).backward()
    assert x.grad is None  # the target side is detached


@pytest.mark.parametrize("variant", ["library", "official"])
@pytest.mark.parametrize("path", PATHS)
def test_esm_loss_keep_dc_gradient(path, variant):
    # keep_dc: both spectra of the uncentred inputs, the DC entry H·W·mean² in bin 0 (and its gradient 2·mean)
    z = _randn(2, 2, 6, 6, dtype=F64, seed=3, shift=0.3).requires_grad_()
    x = _randn(2, 3, 18, 18, dtype=F64, seed=6, shift=0.5)
    kw = {"variant": variant, "keep_dc": True, "delta": 0.5}
    if path == "aten":
        assert torch.autograd.gradcheck(lambda t: sdekernels.esm_loss(t, x, **kw), (z,), eps=1e-6, atol=1e-7,
                                        rtol=1e-5)
    with on_path(path):
        loss = sdekernels.esm_loss(z, x, **kw)
        g = torch.autograd.grad(loss, z)[0]
    loss_ref = ref.esm_loss(z, x, **kw)
    g_ref = torch.autograd.grad(loss_ref, z)[0]
    assert_close(loss, loss_ref, 1e-10, 1e-8, f"esm keep_dc {variant}")
    assert_close(g, g_ref, 1e-10, 1e-8, f"esm keep_dc grad {variant}")


@pytest.mark.parametrize("variant", ["library", "official"])
def test_esm_loss_keep_dc_is_live(variant):
    # Nonzero means: bin 0 gains H·W·mean², a different loss.
    z, x = _randn(3, 4, 16, 16, dtype=F64, seed=1, shift=0.4), _randn(3, 3, 32, 32, dtype=F64, seed=2, shift=-0.3)
    for impl in (sdekernels.esm_loss, ref.esm_loss):
        off, on = (float(impl(z, x, variant=variant, keep_dc=k)) for k in (False, True))
        assert abs(on - off) > 1e-2 * abs(off), (impl, off, on)
    assert_close(sdekernels.esm_loss(z, x, variant=variant, keep_dc=True),
                 ref.esm_loss(z, x, variant=variant, keep_dc=True), 1e-10, 1e-8, "keep_dc parity")
    # Zero means, no blur, x of z's size (the target is x itself): P[0, 0] holds only the floor
    # (1e-12·c² in the library, 1e-8 in the official variant) instead of 0, so the loss moves by
    # about that much and no more.
    z0, x0 = (t - t.mean((-2, -1), keepdim=True) for t in (z, _randn(3, 3, 16, 16, dtype=F64, seed=2)))
    off, on = (float(sdekernels.esm_loss(z0, x0, variant=variant, blur=None, keep_dc=k)) for k in (False, True))
    assert abs(on - off) <= (1e-12 if variant == "library" else 1e-9) * max(abs(off), 1.0), (off, on)
    # ... but the default blur (reflect or zero padding) and the bicubic resize do not preserve the mean
    # at the borders: a zero-mean x gives a target with a nonzero mean, and keep_dc is live again.
    xb = x - x.mean((-2, -1), keepdim=True)
    off, on = (float(sdekernels.esm_loss(z0, xb, variant=variant, keep_dc=k)) for k in (False, True))
    assert abs(on - off) > 1e-6 * abs(off), (off, on)


def test_esm_loss_latent_image_shapes():
    z, x = _randn(4, 4, 32, 32), _randn(4, 3, 256, 256, seed=1, shift=0.5)
    assert_close(sdekernels.esm_loss(z, x), ref.esm_loss(z.double(), x.double()), 1e-6, 1e-4, "esm 256")
    assert sdekernels.esm_loss(z.bfloat16(), x.bfloat16()).dtype == torch.bfloat16


def test_dog_normalised_and_finite_gradient():
    z = _randn(3, 4, 32, 32, dtype=F64)
    d = sdekernels.dog(z)
    assert_close(d.flatten(1).std(1, unbiased=False), torch.ones(3, dtype=F64, device=DEVICE), 1e-5, 1e-5, "unit std")
    c = torch.ones(2, 3, 16, 16, dtype=F64, device=DEVICE).requires_grad_()  # constant input: d = 0, std = 0
    out = sdekernels.dog(c)
    g = torch.autograd.grad(out.sum(), c)[0]
    assert torch.isfinite(out).all() and torch.isfinite(g).all()


# ---------------------------------------------------------------- radial_psd gradients


@pytest.mark.parametrize("transform", ["dct", "fft"])
@pytest.mark.parametrize("reduce", ["mean", "none"])
def test_radial_psd_gradcheck(transform, reduce):
    x = _randn(2, 2, 6, 9, dtype=F64, shift=1.0).requires_grad_()
    for path in PATHS:
        if path == "triton":  # a smaller input in the interpreter (one forward per perturbed entry)
            x = x[:1, :1, :4, :5].detach().requires_grad_()
        with on_path(path):
            fn = lambda t: sdekernels.radial_psd(t, bins=6, transform=transform, channel_reduce=reduce)  # noqa: E731
            assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_radial_psd_forward_only_keeps_no_spectrum():
    x = _randn(2, 3, 16, 16)
    with torch.no_grad():
        out = sdekernels.radial_psd(x)
    assert out.shape == (2, 16) and not out.requires_grad


@pytest.mark.skipif(not (HAS_TRITON and (INTERPRET or torch.cuda.is_available())), reason="needs Triton")
def test_fused_kernel_saves_the_spectrum_for_the_backward():
    """With grad the Triton path stores the spectrum; the C++/CUDA backward starts from it."""
    x = _randn(2, 3, 40, 24, shift=1.0, dtype=F64).requires_grad_()
    g = _randn(2, 16, dtype=F64, seed=9)
    for transform in ("dct", "fft"):
        with on_path("triton"):
            got = torch.autograd.grad((sdekernels.radial_psd(x, transform=transform) * g).sum(), x)[0]
        want = torch.autograd.grad((ref.radial_psd(x, transform=transform) * g).sum(), x)[0]
        assert_close(got, want, 1e-10, 1e-8, transform)


def test_modules():
    from sdekernels.nn import BlockDCTLowpass, DoG, ESMLoss

    z, x = _randn(2, 4, 16, 16), _randn(2, 3, 32, 32, seed=1)
    assert torch.equal(ESMLoss(bins=8)(z, x), sdekernels.esm_loss(z, x, bins=8))
    assert torch.equal(BlockDCTLowpass(8)(z), sdekernels.block_dct_lowpass(z, 8))
    assert torch.equal(BlockDCTLowpass(8)(z, k=10), sdekernels.block_dct_lowpass(z, 10))
    assert torch.equal(DoG(0.5, 1.5)(z), sdekernels.dog(z, 0.5, 1.5))


@pytest.mark.parametrize("H,W,h,w,blur,official", [(64, 48, 16, 16, (7, 1.2), False), (20, 30, 8, 12, (5, 0.8), True),
                                                   (12, 12, 12, 12, (3, 0.5), False), (10, 14, 16, 20, None, False),
                                                   (64, 64, 32, 32, (7, 1.2), True)])
def test_esm_target_as_two_gemms(H, W, h, w, blur, official):
    """esm_loss's target side (blur, then bicubic resize) as per-axis matrices equals the convolution
    and interpolate of the reference, down- and upsampling, reflect and zero padding."""
    from sdekernels.ops.spectrum import _esm_target
    from sdekernels.reference.spectrum import esm_target_images

    x = torch.randn(2, 3, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(H * W))
    got, want = _esm_target(x, (h, w), blur, official), esm_target_images(x, (h, w), blur, official)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-13, rtol=0)
