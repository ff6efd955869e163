"""The shared Triton policy (sdekernels/ops/_triton.py): the tensor-core dot and its emulated
rounding in the interpreter, the CUDA launch choices run on CPU (emulate_cuda), and loops with
runtime bounds under every supported Triton's interpreter."""
import pytest
import torch

import sdekernels as sdk
from sdekernels._core import HAS_TRITON, INTERPRET, cuda_like, emulate_cuda, triton_on_cpu
from sdekernels.registry import all_ops, parity

pytestmark = pytest.mark.skipif(not (HAS_TRITON and INTERPRET), reason="needs Triton's interpreter")

if HAS_TRITON:
    import triton
    import triton.language as tl

    from sdekernels.ops import _triton as kt

    @triton.jit
    def _dot_kernel(A, B, C, K, PRECISION: tl.constexpr, N: tl.constexpr, BK: tl.constexpr):
        # C = A @ B for A [N, K], B [K, N], over a runtime-bounded K loop.
        r = tl.arange(0, N)
        acc = tl.zeros([N, N], tl.float64 if A.dtype.element_ty == tl.float64 else tl.float32)
        for k0 in range(0, K, BK):
            k = k0 + tl.arange(0, BK)
            a = tl.load(A + r[:, None] * K + k[None, :], mask=k[None, :] < K, other=0)
            b = tl.load(B + k[:, None] * N + r[None, :], mask=k[:, None] < K, other=0)
            acc = kt.mma(acc, a, b, PRECISION)
        tl.store(C + r[:, None] * N + r[None, :], acc)


def _dot(a, b, precision):
    out = torch.empty(a.shape[0], b.shape[1], dtype=torch.float64 if a.dtype == torch.float64 else torch.float32)
    _dot_kernel[(1,)](a.contiguous(), b.contiguous(), out, a.shape[1], PRECISION=precision, N=a.shape[0], BK=16)
    return out


def _rel(out, a, b):
    ref = a.double() @ b.double()
    return float((out.double() - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("K", [40, 16, 1])
def test_mma_rounds_as_tensor_cores(K):
    """TF32 keeps 10 mantissa bits (~1e-3 relative), tf32x3 fp32 accuracy; bf16/fp16 products are
    exact with fp32 accumulation; fp64 is exact to fp64 round-off. K = 40 also runs a loop whose
    bound is a runtime argument (Triton 3.6's interpreter needs `_fix_interpreter_index` there)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, K, generator=g), torch.randn(K, 16, generator=g)
    tf32, tf32x3 = _rel(_dot(a, b, "tf32"), a, b), _rel(_dot(a, b, "tf32x3"), a, b)
    assert 1e-5 < tf32 < 4e-3
    assert tf32x3 < 2e-6
    for low in (torch.bfloat16, torch.float16):
        al, bl = a.to(low), b.to(low)
        assert _rel(_dot(al, bl, "ieee"), al, bl) < 2e-6
    assert _rel(_dot(a.double(), b.double(), "ieee"), a, b) < 1e-14


def test_precision_policy():
    assert kt.precision(torch.float32) == "tf32x3"
    assert {kt.precision(d) for d in (torch.float64, torch.bfloat16, torch.float16)} == {"ieee"}
    with kt.fp32_dots("tf32"):
        assert kt.precision(torch.float32) == "tf32"
    assert kt.operand(torch.bfloat16, torch.bfloat16) == torch.bfloat16
    assert kt.operand(torch.bfloat16, torch.float32) == torch.float32
    assert kt.operand(torch.float32, torch.float32, out=torch.float64) == torch.float64


def test_emulate_cuda_scope():
    x = torch.zeros(1)
    with emulate_cuda():
        assert cuda_like(x) and kt.sm_count(x) == kt.EMULATED_SMS
    with emulate_cuda(False):
        assert not cuda_like(x)


# The CUDA launch choices on CPU, one small shape per op (the interpreter costs ~2 ms per program):
# cross-Gram split over n (3 splits here), tensor-core tiles, tf32x3 in the DFT stages.
EMULATED = [("subspace_distance", {"batch": 0, "n": 600, "k": 20}),
            ("subspace_distance", {"batch": 2, "n": 300, "k": 17, "weighted": True}),
            ("svd_topk", {"batch": 2, "m": 40, "n": 24, "k": 4}),
            ("spectral_enhance", {"batch": 2, "m": 16, "n": 20, "s": 5}),
            ("fourier_split", {"batch": 2, "H": 12, "W": 10, "centered": 1}),
            ("radial_psd", {"batch": 2, "C": 2, "H": 20, "W": 12, "transform": "fft"}),
            ("block_dct_lowpass", {"batch": 1, "C": 2, "H": 16, "W": 16, "k": 5})]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("name,shape", EMULATED, ids=[f"{n}-{i}" for i, (n, _) in enumerate(EMULATED)])
def test_cuda_launch_choices_on_cpu(name, shape, dtype):
    info = all_ops()[name]
    with triton_on_cpu(), emulate_cuda():
        _, ratio, msg = parity(info, shape, dtype, "cpu")
    assert ratio <= 1.0, f"{name} {shape} {dtype}: {msg}"


def test_cross_gram_splits_on_emulated_gpu():
    """Few matrices and a long n: the emulated GPU launch splits n (the plain interpreter does not)."""
    from sdekernels.ops import distances

    calls = []
    kernel = distances._cross_gram_kernel
    V = torch.linalg.qr(torch.randn(600, 20, dtype=torch.float64))[0]

    class Spy:
        def __getitem__(self, grid):
            calls.append(grid)
            return kernel[grid]

    distances._cross_gram_kernel = Spy()
    try:
        with triton_on_cpu():
            with emulate_cuda(False):  # the plain interpreter, also under SDEKERNELS_EMULATE_CUDA=1
                plain = distances._cross_gram_triton(V, V)
            with emulate_cuda():
                split = distances._cross_gram_triton(V, V)
    finally:
        distances._cross_gram_kernel = kernel
    assert calls[0][2] == 1 and calls[1][2] == 3
    torch.testing.assert_close(split, plain, atol=1e-13, rtol=0)
    torch.testing.assert_close(split, V.mT @ V, atol=1e-13, rtol=0)


# Row-strided views (a column slice, a batch-transposed stack) with a unit inner stride: the kernels
# take the strides, so they read the caller's memory in place and give bit-identical results.
def _col_slice(shape, keep, seed=0, positive=False):
    """A view of shape[:-1] + (keep,) cut from a wider tensor: row stride shape[-1], not keep."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return (x.abs() if positive else x)[..., :keep]


def _batch_transposed(shape, seed=0):
    """[b, n, d] stored as [n, b, d]: a dense view whose batch stride is d and row stride b·d."""
    b, n, d = shape
    return torch.randn(n, b, d, generator=torch.Generator().manual_seed(seed)).transpose(0, 1)


def _orthonormal(shape, keep):
    q = torch.linalg.qr(torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64))[0]
    return q.contiguous()[..., :keep]


def _images():
    """[2, 3, 16, 16] crops of [2, 3, 20, 24] images: row stride 24."""
    return torch.randn(2, 3, 20, 24, generator=torch.Generator().manual_seed(2))[..., 2:18, 3:19]


STRIDED = {  # name: (op on the inputs, inputs, whether the kernels read the inputs themselves)
    "info_nce": (lambda a, b: sdk.info_nce(a, b, normalize=False),
                 lambda: (_batch_transposed((2, 40, 24)), _col_slice((2, 40, 40), 24, seed=1)), True),
    "siglip_loss": (lambda a, b: sdk.siglip_loss(a, b, 10.0, -5.0, normalize=False),
                    lambda: (_col_slice((40, 40), 24), _batch_transposed((2, 40, 24), seed=1)[0]), True),
    "subspace_distance": (sdk.subspace_distance, lambda: (_orthonormal((2, 70, 70), 9), _orthonormal((2, 70, 70), 9)),
                          True),
    "hellinger": (sdk.hellinger, lambda: (_col_slice((3, 30), 20, 0, True), _col_slice((3, 30), 20, 1, True)), False),
    "fourier_merge": (lambda a, p: sdk.fourier_merge(a, p, onesided=True, size=(12, 10)),
                      lambda: tuple(_col_slice((2, 12, 9), 6, seed=s) for s in (0, 1)), True),
    "block_dct_lowpass": (lambda x: sdk.block_dct_lowpass(x, 5), lambda: (_images(),), True),
    "radial_psd": (lambda x: sdk.radial_psd(x, bins=8), lambda: (_images(),), False),
}


@pytest.mark.parametrize("name", sorted(STRIDED))
def test_strided_views_are_read_in_place(name, monkeypatch):
    from triton.runtime.interpreter import InterpretedFunction

    op, make, in_place = STRIDED[name]
    views = make()
    assert all(v.stride(-1) == 1 and not v.is_contiguous() for v in views)
    pointers = []
    run = InterpretedFunction.run

    def spy(self, *args, **kwargs):
        pointers.extend(a.data_ptr() for a in args if isinstance(a, torch.Tensor))
        return run(self, *args, **kwargs)

    monkeypatch.setattr(InterpretedFunction, "run", spy)
    with triton_on_cpu():
        out = op(*views)
        assert pointers, "the op did not launch a Triton kernel"
        if in_place:
            assert all(v.data_ptr() in pointers for v in views), "a kernel was given a copy of a strided input"
        expected = op(*(v.contiguous() for v in views))
    if in_place:
        assert torch.equal(out, expected)
    else:  # ATen scales or centres the input first, and its reductions round by layout
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=0)
