"""The C++/CUDA extension (csrc/): ahead-of-time `sdekernels._C` if setup.py built it, else a
just-in-time ninja build on first use, cached by torch in its extensions folder.

If neither works, every op falls back to autograd through its reference for the backward,
and a single warning says so. SDEKERNELS_NO_EXT=1 skips the extension on purpose.
"""
import functools
import glob
import os
import warnings

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
# at::parallel_for is a header template: without OpenMP in this build it runs on one thread.
# -fno-math-errno lets sqrt vectorise (nothing reads errno).
# Tuples: cpp_extension appends to the lists it is given, and a changed list is a new build.
CFLAGS = ("-O3", "-fopenmp", "-fno-math-errno")
LDFLAGS = ("-fopenmp",)
NVCC_FLAGS = ("-O3",)
CUDA_MACRO = "SDEKERNELS_CUDA"  # defined in a CUDA build: compiles cuda_bridge.cpp and the CUDA twins in


def csrc_dir() -> str:
    for d in (os.path.join(_HERE, "csrc"), os.path.join(os.path.dirname(_HERE), "csrc")):
        if os.path.isfile(os.path.join(d, "bindings.cpp")):
            return d
    raise FileNotFoundError("csrc/ not found beside the package")


def sources(cuda: bool) -> list[str]:
    d = csrc_dir()
    files = sorted(glob.glob(os.path.join(d, "*.cpp")) + glob.glob(os.path.join(d, "cpu", "*.cpp")))
    return files + (sorted(glob.glob(os.path.join(d, "cuda", "*.cu"))) if cuda else [])


@functools.cache
def status() -> str:
    """'aot', 'jit', 'disabled' or 'failed: <reason>'; builds on first call."""
    if os.environ.get("SDEKERNELS_NO_EXT") == "1":
        return "disabled"
    try:
        import sdekernels._C  # noqa: F401  (registers the ops on import)
        return "aot"
    except ImportError:
        pass
    try:
        from torch.utils import cpp_extension

        cuda = torch.cuda.is_available() and torch.version.cuda is not None
        cpp_extension.load(
            name="sdekernels_C" + ("_cuda" if cuda else ""),
            sources=sources(cuda),
            extra_cflags=[*CFLAGS, *([f"-D{CUDA_MACRO}"] if cuda else [])],
            extra_ldflags=list(LDFLAGS),
            extra_cuda_cflags=[*NVCC_FLAGS, f"-D{CUDA_MACRO}"],
            is_python_module=False,
            verbose=os.environ.get("SDEKERNELS_VERBOSE") == "1",
        )
        return "jit"
    except Exception as e:  # a missing compiler, headers or ninja
        msg = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
        warnings.warn(f"sdekernels: C++ extension unavailable ({msg}); backward passes use autograd "
                      "through the reference instead", RuntimeWarning, stacklevel=2)
        return "failed: " + msg


def available() -> bool:
    return status() in ("aot", "jit")


def has_cuda_kernels() -> bool:
    return available() and hasattr(torch.ops.sdekernels_C, "cuda_built") and bool(torch.ops.sdekernels_C.cuda_built())
