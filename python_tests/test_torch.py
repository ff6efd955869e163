"""The private torch API behind sdekernels/_torch.py: each use still exists and still works, so a
torch upgrade that moves one fails here, by name, before it fails an op's backward."""
import torch

from sdekernels import _torch
from sdekernels._core import vjp


def test_private_api_is_there():
    assert not _torch.missing(), (f"torch {torch.__version__} lacks {_torch.missing()}: "
                                  "sdekernels/_torch.py needs a new mechanism for it")


@torch.library.custom_op("sdekernels_test::cube_grad", mutates_args=())
def _cube_grad(x: torch.Tensor) -> torch.Tensor:
    # a custom op's body runs below autograd: autograd_on (through vjp) must record it anyway
    _, pullback = vjp(lambda t: t ** 3, x)
    return pullback(torch.ones_like(x))[0]


@_cube_grad.register_fake
def _(x):
    return torch.empty_like(x)


def test_autograd_records_inside_a_custom_op():
    x = torch.randn(5, dtype=torch.float64)
    torch.testing.assert_close(_cube_grad(x), 3 * x ** 2, rtol=0, atol=1e-12)
    torch.library.opcheck(_cube_grad, (x,), test_utils=("test_schema", "test_faketensor"))


def test_autograd_on_restores_the_dispatch_state():
    before = torch._C._dispatch_tls_local_exclude_set()
    with _torch.autograd_on():
        assert torch.is_grad_enabled()
    assert torch._C._dispatch_tls_local_exclude_set() == before


def test_every_custom_op_is_float32_under_autocast():
    import sdekernels.ops  # noqa: F401  (defines the ops and registers their autocast policy)
    from sdekernels.ops.distances import hellinger

    a = torch.rand(3, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = hellinger(a, a.flip(-1))
    assert out.dtype == torch.float32


_ran = []


@torch.library.custom_op("sdekernels_test::twice", mutates_args=())
def _twice(x: torch.Tensor) -> torch.Tensor:
    _ran.append("real")
    return x * 2


@_twice.register_fake
def _(x):
    _ran.append("fake")
    return torch.empty_like(x)


def test_fake_tensors_and_real_bodies_on_them():
    _ran.clear()
    with _torch.fake_mode():
        x = torch.rand(3, 8)
        assert _torch.is_fake(x)
        _twice(x)
        with _torch.real_bodies_on_fakes("sdekernels_test"):
            out = _twice(x)
        _twice(x)
    assert _ran == ["fake", "real", "fake"]
    assert _torch.is_fake(out) and out.shape == (3, 8)
    assert not _torch.is_fake(torch.rand(2))
