"""Every private torch API the library relies on, in one place.

torch has no public way to do these; each use is one function here, and python_tests/test_torch.py
calls each of them so that a torch upgrade that moves one fails that test by name, not an op deep
inside a backward pass. `missing()` lists what the installed torch lacks.
"""
import contextlib
import pkgutil

import torch

# (what we need, the private attribute path): checked by `missing()` and the test
PRIVATE = {
    "re-enable autograd inside a custom op's body": (
        "torch._C.DispatchKey", "torch._C._dispatch_tls_local_exclude_set",
        "torch._C._dispatch_tls_local_include_set", "torch._C._ForceDispatchKeyGuard"),
    "fake tensors (the aot compile report)": ("torch._subclasses.fake_tensor.FakeTensorMode",
                                               "torch._subclasses.fake_tensor.FakeTensor"),
    "custom ops' real bodies on fake tensors (the aot compile report)": ("torch._library.custom_ops.OPDEFS",),
    "every operator a namespace defines (the opcheck coverage test)": ("torch._C._dispatch_get_all_op_names",),
}


def missing() -> list[str]:
    """The private attributes of PRIVATE that this torch lacks (empty when all are there)."""
    out = []
    for paths in PRIVATE.values():
        for path in paths:
            try:
                pkgutil.resolve_name(path)
            except (AttributeError, ImportError):
                out.append(path)
    return out


@contextlib.contextmanager
def autograd_on():
    """Record autograd again inside a custom op's body, where the dispatcher has excluded the
    autograd keys: the backward ops differentiate the reference (or a kernel's pullback) there.
    torch.func would do it publicly but does not run under fake tensors or opcheck's modes."""
    C = torch._C
    try:
        K, guard = C.DispatchKey, C._ForceDispatchKeyGuard
        include, exclude = C._dispatch_tls_local_include_set(), C._dispatch_tls_local_exclude_set()
    except AttributeError as e:  # a torch upgrade moved the private API: say so, not a bare AttributeError
        raise RuntimeError(f"sdekernels needs torch's private dispatch-key API ({e}); torch {torch.__version__} "
                           "lacks it: see sdekernels/_torch.py") from e
    for key in (K.AutogradCPU, K.AutogradCUDA, K.AutogradOther, K.ADInplaceOrView):
        exclude = exclude.remove(key)
    with guard(include, exclude), torch.enable_grad():
        yield


def fake_mode(**kwargs):
    """torch's FakeTensorMode: tensors with shapes, strides and dtypes but no storage."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(**kwargs)


def is_fake(t) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


@contextlib.contextmanager
def real_bodies_on_fakes(namespace: str):
    """Inside, every custom op of `namespace` runs its real body on fake tensors too (instead of its
    registered fake): the aot report records the kernel launches the real host code makes."""
    from torch._library.custom_ops import OPDEFS

    ops = [d for name, d in OPDEFS.items() if name.startswith(namespace + "::")]
    fakes = [d._abstract_fn for d in ops]
    for d in ops:
        d._abstract_fn = d._init_fn
    try:
        yield
    finally:
        for d, f in zip(ops, fakes):
            d._abstract_fn = f


def defined_ops(namespace: str) -> set[str]:
    """Qualified names of every operator registered in `namespace` (custom ops and C++ ops alike)."""
    return {n for n in torch._C._dispatch_get_all_op_names() if n.startswith(namespace + "::")}
