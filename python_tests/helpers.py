"""What the generic tests share: the device under test, the kernel paths on it, comparisons."""
import contextlib
import importlib
import itertools
import os
import socket

import pytest
import torch

from sdekernels import _ext
from sdekernels._core import HAS_TRITON, INTERPRET, triton_on_cpu
from sdekernels.registry import flat

# .ci/run exports CI=true: there every tool, package and data set .ci/setup installs is required.
CI = os.environ.get("CI", "").lower() == "true"


def require(present: bool, what: str):
    """Skip the calling test where `what` (a tool, package or data set of .ci/setup) is missing; under
    CI fail instead, naming it: a missing requirement must never pass CI as a skip."""
    if present:
        return
    if CI:
        pytest.fail(f"CI requires {what}, but it is missing (.ci/setup installs it)", pytrace=False)
    pytest.skip(f"{what} is not installed")


def require_module(name: str, what: str | None = None):
    """The module `name` (pytest.importorskip, but a failure under CI)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        pass
    require(False, what or f"the Python package {name}")


DEVICE = torch.device(os.environ.get("SDEKERNELS_TEST_DEVICE", "cuda" if torch.cuda.is_available() else "cpu"))
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
# CUDA tensors always take the Triton kernels; CPU tensors take ATen, or Triton in the interpreter.
PATHS = ["triton"] if DEVICE.type == "cuda" else ["aten"] + (["triton"] if HAS_TRITON and INTERPRET else [])


def on_path(path: str):
    """The op's `path` for the tests' device. On CPU the "aten" path needs the C++ extension: without it
    some ops run the reference's own code there, and a parity test would compare the reference with itself."""
    if path == "aten" and DEVICE.type == "cpu":
        require(_ext.available(), f"the C++ extension ({_ext.status()}), without which the aten path is the reference")
    return triton_on_cpu() if path == "triton" and DEVICE.type == "cpu" else contextlib.nullcontext()


def assert_close(actual, expected, atol, rtol, what=""):
    a, e = flat(actual), flat(expected)
    assert len(a) == len(e), f"{what}: {len(a)} outputs, expected {len(e)}"
    for i, (x, y) in enumerate(zip(a, e)):
        assert x.shape == y.shape, f"{what} output {i}: shape {tuple(x.shape)} != {tuple(y.shape)}"
        torch.testing.assert_close(x.double().cpu(), y.double().cpu(), atol=atol, rtol=rtol, equal_nan=True,
                                   msg=lambda m, i=i: f"{what} output {i}: {m}")


def param_id(value) -> str:
    """A readable test id: float32 for a dtype, batch=3,m=40,n=24 for a shape."""
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()).replace(" ", "")
    return str(value)


def param(*values):
    """One pytest parameter set with the id of its values, e.g. svd_topk-float32-triton-batch=3,m=8,n=6,k=3."""
    return pytest.param(*values, id="-".join(map(param_id, values)))


def cases(ops: dict, *axes, shapes=lambda info: info.shapes, where=lambda info: True) -> list:
    """Parameters (name, *one value per axis, shape) for every op (where `where(info)`) × axis values ×
    shape of `shapes(info)`: one test id per shape."""
    return [param(name, *values, shape) for name, info in sorted(ops.items()) if where(info)
            for values in itertools.product(*axes) for shape in shapes(info)]


def weighted_sum(out, gen):
    """A scalar that depends on every output entry with random weights (a generic loss)."""
    total = 0
    for t in flat(out):
        if t.is_floating_point():
            w = torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.device, t.dtype)
            total = total + (t * w).sum()
    return total


def free_port() -> int:
    """A free TCP port on the loopback interface (torch.distributed's rendezvous in the tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def average_over_ranks(grads, world: int) -> None:
    """DDP's gradient averaging, in place: all-reduce, then divide by the world size."""
    import torch.distributed as dist

    for g in grads:
        dist.all_reduce(g)
        g /= world


def run_op(info, sample):
    """(outputs, gradients of a random weighted sum of them) of the op on the sample's tensors as leaves."""
    s = info.leaves(sample)
    out = s.call(info.op)
    grads = ()
    if info.differentiable:
        grads = torch.autograd.grad(weighted_sum(out, torch.Generator().manual_seed(1)),
                                    [t for t in s.tensors() if t.requires_grad])
    return flat(out), list(grads)


def path_error(got, want) -> float:
    """max |got − want| / max(|got|, |want|) over one output (0 for two empty or zero outputs; NaN
    must meet NaN): the normwise relative error the `cond` tolerances bound."""
    a, b = got.detach().double().cpu(), want.detach().double().cpu()
    assert a.shape == b.shape and torch.equal(a.isnan(), b.isnan()), "shapes or NaN positions differ"
    a, b = a.nan_to_num(0.0), b.nan_to_num(0.0)
    scale = float(torch.maximum(a.abs().max(), b.abs().max())) if a.numel() else 0.0
    return float((a - b).abs().max()) / scale if scale else 0.0


def path_tol(info, dtype) -> tuple:
    """(forward, backward) bounds of path_error for the op in `dtype` (registry.OpInfo.cond)."""
    low = dtype in (torch.bfloat16, torch.float16)
    work = torch.finfo(torch.float32 if low else dtype).eps
    return tuple(c * work + (4 * torch.finfo(dtype).eps if low else 0.0)
                 for c in info.cond_by_dtype.get(dtype, info.cond))


def assert_paths_agree(info, dtype, got, want, what=""):
    """Two kernel paths' (outputs, gradients) of one sample agree to within path_tol."""
    for kind, tol, a_list, b_list in zip(("forward", "backward"), path_tol(info, dtype), got, want):
        assert len(a_list) == len(b_list), f"{what} {kind}: {len(a_list)} tensors, expected {len(b_list)}"
        for i, (a, b) in enumerate(zip(a_list, b_list)):
            err = path_error(a, b)
            assert err <= tol, f"{info.name} {what} {kind} {i}: relative error {err:.3g}, allowed {tol:.3g} ({dtype})"


@contextlib.contextmanager
def launches(run: bool = True):
    """Inside, every Triton launch is logged as (kernel, grid, its keyword arguments other than tensors:
    tiles, warps, flags), on a GPU and in the interpreter alike; run=False logs without launching."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    log, originals = [], {cls: cls.run for cls in (JITFunction, InterpretedFunction)}

    def spy(cls):
        def run_(self, *args, grid, **kwargs):
            g = grid(kwargs) if callable(grid) else grid
            meta = tuple(sorted((k, str(v)) for k, v in kwargs.items() if k != "warmup" and not hasattr(v, "data_ptr")))
            log.append((self.fn.__name__, tuple(int(n) for n in g), meta))
            if run:
                return originals[cls](self, *args, grid=grid, **kwargs)
        return run_

    for cls in originals:
        cls.run = spy(cls)
    try:
        yield log
    finally:
        for cls, fn in originals.items():
            cls.run = fn
