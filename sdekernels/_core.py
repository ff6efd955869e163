"""Shared plumbing of every op: argument checks, dtype policy, and the choice of kernel path."""
import contextlib
import math
import numbers
import os
import sys
import threading

import torch

from ._torch import autograd_on

FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
DEBUG = os.environ.get("SDEKERNELS_DEBUG") == "1"

try:  # Triton is optional: without it every op runs on its ATen path.
    import triton  # noqa: F401
    HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the install
    HAS_TRITON = False

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# SDEKERNELS_EMULATE_CUDA=1: under the interpreter, CPU tensors take the launch choices of CUDA
# tensors (tiles, warps, dot precision, grid splits), so CPU tests run the host code the GPU runs.
EMULATE_CUDA = os.environ.get("SDEKERNELS_EMULATE_CUDA") == "1"
_state = threading.local()


@contextlib.contextmanager
def _scoped(name: str, value: bool, default: bool):
    """Set the thread-local flag `name` for the duration of a with-block."""
    old = getattr(_state, name, default)
    setattr(_state, name, value)
    try:
        yield
    finally:
        setattr(_state, name, old)


def triton_on_cpu(enabled: bool = True):
    """Run the Triton kernels on CPU tensors (needs TRITON_INTERPRET=1): how tests reach them."""
    if enabled and not (HAS_TRITON and INTERPRET):
        raise RuntimeError("triton_on_cpu needs triton and TRITON_INTERPRET=1 set before import")
    return _scoped("cpu", enabled, False)


def emulate_cuda(enabled: bool = True):
    """Inside, `cuda_like` holds for CPU tensors too (the scoped form of SDEKERNELS_EMULATE_CUDA=1)."""
    return _scoped("cuda", enabled, EMULATE_CUDA)


def cuda_like(x: torch.Tensor) -> bool:
    """Does x take the launch choices made for a GPU: a CUDA tensor, or any tensor when emulating."""
    return x.is_cuda or getattr(_state, "cuda", EMULATE_CUDA)


def use_triton(x: torch.Tensor) -> bool:
    """Triton on CUDA tensors; on CPU tensors only inside `triton_on_cpu()`."""
    if not HAS_TRITON:
        return False
    return x.is_cuda or (x.device.type == "cpu" and getattr(_state, "cpu", False))


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Low precision is computed in float32 and returned in the input dtype (SPEC §10)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def check(x, name: str, *, min_dim: int = 1, ndim: int | None = None, like: torch.Tensor | None = None):
    """ValueError naming `name` for a non-tensor, a wrong dtype/rank/device, a zero-size dim among the
    last `min_dim` (the op's own dims; the leading batch dims may be empty) or (debug) a non-finite value."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOATS:
        raise ValueError(f"{name} must be float32, float64, bfloat16 or float16, got {x.dtype}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s), got shape {tuple(x.shape)}")
    if min_dim and 0 in x.shape[x.dim() - min_dim:]:
        raise ValueError(f"{name} must have non-empty last {min_dim} dimension(s), got shape {tuple(x.shape)}")
    if like is not None:
        if x.device != like.device:
            raise ValueError(f"{name} is on {x.device}, expected {like.device}")
        if x.dtype != like.dtype:
            raise ValueError(f"{name} has dtype {x.dtype}, expected {like.dtype}")
    if DEBUG and not torch.compiler.is_compiling() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return x


def check_int(v, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """TypeError naming `name` for a non-integer (bool and 2.0 included), ValueError outside [lo, hi]."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {v!r} ({type(v).__name__})")
    v = int(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        span = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        raise ValueError(f"{name} must be an int in {span}, got {v}")
    return v


def check_real(v, name: str, lo: float = -math.inf, hi: float = math.inf, *, open_lo: bool = False) -> float:
    """ValueError naming `name` for a non-number, a non-finite number or one outside [lo, hi]
    ((lo, hi] when open_lo)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ValueError(f"{name} must be a number, got {v!r} ({type(v).__name__})")
    v = float(v)
    if not math.isfinite(v) or v < lo or v > hi or (open_lo and v == lo):
        raise ValueError(f"{name} must be a finite number in {'(' if open_lo else '['}{lo:g}, {hi:g}], got {v!r}")
    return v


def check_choice(v, name: str, choices: tuple):
    """v if it is one of `choices`; else a ValueError naming `name`."""
    if not any(v is c or (isinstance(v, str) and v == c) for c in choices):
        raise ValueError(f"{name} must be one of {choices}, got {v!r}")
    return v


def check_flag(v, name: str) -> bool:
    """v if it is a bool; else a TypeError naming `name` (1 or "yes" are not flags)."""
    if not isinstance(v, bool):
        raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
    return v


def check_domain(x: torch.Tensor, name: str, ok, what: str):
    """Debug mode only (a value check costs a device sync): ValueError naming `name` unless ok(x) holds
    for every entry."""
    if DEBUG and not torch.compiler.is_compiling() and not bool(ok(x).all()):
        raise ValueError(f"{name} must be {what}")


def check_shape(x: torch.Tensor, name: str, shape, what: str = ""):
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}{what}, got {tuple(x.shape)}")


def rows(x: torch.Tensor, inner: int) -> torch.Tensor:
    """x with the batch dims flattened, [..., *inner dims] -> [R, *inner dims]: a view where one exists
    and the innermost dim has unit stride (the kernels take the other strides), else a contiguous copy."""
    r = x.reshape((-1,) + tuple(x.shape[x.dim() - inner:]))
    return r if r.stride(-1) == 1 or r.shape[-1] <= 1 else r.contiguous()


def ref_vjp(fn, tensors, grad, **kwargs):
    """Backward by autograd through the reference: the path used when the C++ extension is absent."""
    with autograd_on():
        leaves = [None if t is None else t.detach().requires_grad_(True) for t in tensors]
        out = fn(*leaves, **kwargs)
        used = [t for t in leaves if t is not None]
        grads = iter(torch.autograd.grad(out, used, grad, allow_unused=True))
        return tuple(None if t is None else next(grads) for t in leaves)


def vjp(fn, *primals):
    """(fn(*primals), pullback) as torch.func.vjp, by autograd: usable inside a custom op's body under
    any dispatch mode (fake tensors, torch.library.opcheck), where functorch's wrappers are not."""
    with autograd_on():
        leaves = [p.detach().requires_grad_(True) for p in primals]
        out = fn(*leaves)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]

    def pullback(cotangents):
        cots = list(cotangents) if isinstance(cotangents, (tuple, list)) else [cotangents]
        with autograd_on():
            grads = torch.autograd.grad(outs, leaves, cots, allow_unused=True)
        return tuple(torch.zeros_like(p) if g is None else g for p, g in zip(leaves, grads))

    detached = tuple(o.detach() for o in outs)
    return (detached if isinstance(out, (tuple, list)) else detached[0]), pullback


def without_autocast(device_type: str, *tensors):
    """(context, tensors) for code outside the custom ops that combines several of them (a loss):
    under torch.autocast, autocast off and fp16/bf16 tensors up-cast to float32 (the custom ops'
    policy); otherwise no change."""
    if not torch.is_autocast_enabled(device_type):
        return contextlib.nullcontext(), tensors
    up = tuple(t.float() if isinstance(t, torch.Tensor) and t.dtype in (torch.float16, torch.bfloat16) else t
               for t in tensors)
    return torch.autocast(device_type, enabled=False), up


def autocast_float32(package: str = "sdekernels"):
    """Autocast policy of every custom op defined in `package`'s loaded modules, as torch's numerically
    sensitive ops: under torch.autocast they run with autocast off, fp16/bf16 inputs up-cast to
    float32 (float64 kept)."""
    for name, module in list(sys.modules.items()):
        if name == package or name.startswith(package + "."):
            for op in vars(module).values():
                if isinstance(op, torch.library.CustomOpDef):
                    for device in ("cpu", "cuda"):
                        torch.library.register_autocast(op, device, torch.float32)


def max_abs(x: torch.Tensor, dims) -> torch.Tensor:
    """max|x| per slice of x over `dims` (kept as size-1 dims), in the work dtype: by amax and amin,
    without a temporary of x's size (NaN propagates as through abs)."""
    x = x.detach()
    if x.is_complex() or not x.numel():
        a = x.abs().amax(dims, keepdim=True)
    else:
        a = torch.maximum(x.amax(dims, keepdim=True), x.amin(dims, keepdim=True).neg())
    return a.to(work_dtype(a.dtype))


def pow2_of(a: torch.Tensor) -> torch.Tensor:
    """The power of two c with a / c in [1, 2) for a >= 0 (1 where a is zero or not finite); c and
    1/c stay normal numbers."""
    fi = torch.finfo(a.dtype)
    e = torch.frexp(a).exponent - 1
    e = torch.where(torch.isfinite(a) & (a > 0), e, 0)
    return torch.exp2(e.clamp(round(math.log2(fi.tiny)) + 1, math.floor(math.log2(fi.max)) - 1).to(a.dtype))


def pow2_scale(x: torch.Tensor, dims) -> torch.Tensor:
    """Per slice of x over `dims` (kept as size-1 dims): the power of two c with max|x| / c in [1, 2),
    or 1 where the slice is zero or not finite. x / c is exact, so a Gram, an eigensolver or a
    stabiliser can work on entries of order 1 whatever the scale of x (SPEC §10: results are
    correct at every scale); the results then scale back by c. In the work dtype."""
    return pow2_of(max_abs(x, dims))


def next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def grad_like(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A gradient in x's dtype and memory layout (what the fake kernels promise torch.compile)."""
    if g.dtype == x.dtype and g.stride() == x.stride():
        return g
    return torch.empty_like(x).copy_(g)
