"""The shared Triton policy (sdekernels/ops/_triton.py): the tensor-core dot and its emulated
rounding in the interpreter, the CUDA launch choices run on CPU (emulate_cuda), and loops with
runtime bounds under every supported Triton's interpreter."""
import collections
import math

import pytest
import torch

import sdekernels as sdk
from sdekernels._core import HAS_TRITON, INTERPRET, cuda_like, emulate_cuda, triton_on_cpu
from sdekernels.registry import all_ops

from helpers import DTYPES, assert_paths_agree, launches, run_op

pytestmark = pytest.mark.skipif(not (HAS_TRITON and INTERPRET), reason="needs Triton's interpreter")
OPS = all_ops()

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


# Every op at its GPU-sized shape (OpInfo.gpu_shape) in every dtype, on the CUDA launch choices
# (tiles, warps, dot precision, grid splits, the GPU's host code): outputs and gradients agree with
# the CPU path's to within the op's `cond` epsilons, the same bound the GPU tests hold CUDA to.
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(OPS))
def test_cuda_launch_choices_on_cpu(name, dtype):
    info = OPS[name]
    assert info.gpu_shape, f"{name} has no gpu_shape"
    s = info.make(info.gpu_shape, torch.device("cpu"), dtype, torch.Generator().manual_seed(0)).bare()
    with triton_on_cpu(), emulate_cuda(), launches() as log:
        emulated = run_op(info, s)
    # the interpreter costs ~2 ms a program and more per tile op: each grid stays small
    assert max((math.prod(grid) for _, grid, _ in log), default=0) <= 256, f"{name}: a grid over 256 programs"
    assert_paths_agree(info, dtype, emulated, run_op(info, s), f"{info.gpu_shape} emulated CUDA vs CPU")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)  # float64's tiles: gpu_shape's
def test_local_info_nce_on_cuda_launch_choices(dtype):
    """open_clip's local loss (a rank's 40 rows against 120 gathered columns, labels offset by 40) at
    d = 200: the offset labels and the column-split backward, emulated CUDA vs the CPU path."""
    from sdekernels.ops.contrastive import local_info_nce

    info, g = OPS["info_nce"], torch.Generator().manual_seed(0)
    all_a, all_b = (torch.randn(120, 200, generator=g, dtype=torch.float64).to(dtype) for _ in range(2))
    scale = torch.tensor(14.0, dtype=dtype)

    def run():
        leaves = [t.detach().requires_grad_(True) for t in (all_a, all_b, scale)]
        a, b, s = leaves
        loss = local_info_nce(a[40:80], b[40:80], a, b, s, 40)
        return [loss], list(torch.autograd.grad(loss, leaves))

    with triton_on_cpu(), emulate_cuda():
        emulated = run()
    assert_paths_agree(info, dtype, emulated, run(), "local loss, emulated CUDA vs CPU")


def _cuda_config(x):
    """The tiles contrastive._config gives a CUDA tensor of x's shape and dtype (a fake one: no GPU needed)."""
    from sdekernels._torch import fake_mode
    from sdekernels.ops import contrastive

    with fake_mode():
        cfg = contrastive._config(torch.empty(x.shape, dtype=x.dtype, device="cuda"))
    return {k: str(v) for k, v in cfg.items()}


@pytest.mark.parametrize("d", [200, 520])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_contrastive_emulation_takes_the_cuda_tiles(dtype, d):
    """Under emulation every contrastive launch has the tiles, warps and precision of a CUDA tensor,
    and the gradient kernel splits d into column blocks (kb > 0 runs, the last block partial)."""
    from sdekernels.ops import contrastive

    x = torch.randn(2, 70, d, dtype=torch.float64).to(dtype)
    with emulate_cuda():
        cfg = contrastive._config(x)
    want = _cuda_config(x)
    assert {k: str(v) for k, v in cfg.items()} == want
    seen = collections.Counter()
    for name in ("info_nce", "siglip_loss"):  # launched, not run: the tiles, not the values, are checked
        s = OPS[name].leaves(OPS[name].make({"batch": 2, "B": 70, "d": d}, torch.device("cpu"), dtype,
                                            torch.Generator().manual_seed(0)))
        with triton_on_cpu(), emulate_cuda(), launches(run=False) as log:
            s.call(OPS[name].op).backward()
        for kernel, grid, meta in log:
            seen[kernel] += 1
            meta = dict(meta)
            wanted = {k: v for k, v in want.items() if k != "BD" or kernel == "_grad_kernel"}
            assert {k: meta.get(k) for k in wanted} == wanted, f"{name} {kernel}: {meta}, CUDA takes {wanted}"
            if kernel == "_grad_kernel":  # several column blocks, the last one partial
                assert grid[2] == triton.cdiv(d, int(want["BD"])) >= 2 and d % int(want["BD"])
    assert seen == {"_fwd_kernel": 3, "_grad_kernel": 4}  # info_nce: 2 + 2 (symmetric), siglip: 1 + 2


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
