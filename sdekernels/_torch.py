"""Every private torch API the library relies on, in one place.

torch has no public way to do these; each use is one function here, and python_tests/test_torch.py
calls each of them so that a torch upgrade that moves one fails that test by name, not an op deep
inside a backward pass. `missing()` lists what the installed torch lacks.
"""
import contextlib

import torch

# (what we need, the private attribute path): checked by `missing()` and the test
PRIVATE = {
    "re-enable autograd inside a custom op's body": (
        "torch._C.DispatchKey", "torch._C._dispatch_tls_local_exclude_set",
        "torch._C._dispatch_tls_local_include_set", "torch._C._ForceDispatchKeyGuard"),
}


def _resolve(path: str):
    obj = torch
    for part in path.split(".")[1:]:
        obj = getattr(obj, part)
    return obj


def missing() -> list[str]:
    """The private attributes of PRIVATE that this torch lacks (empty when all are there)."""
    out = []
    for paths in PRIVATE.values():
        for path in paths:
            try:
                _resolve(path)
            except AttributeError:
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
