"""The C++/CUDA extension (csrc/), whose ops register as torch.ops.sdekernels_C.

Installed from a wheel or with `pip install --no-build-isolation`, it is `sdekernels._C`, compiled
ahead of time by setup.py ('prebuilt'). A package that has csrc/ but no compiled module (a source
checkout without that build, or an install built without torch) compiles it just in time on first
use with ninja, cached by torch in its extensions folder ('jit'), and says so in one line on
stderr; so does a source checkout whose csrc/ changed after its in-place build, or whose compiled
module does not load (compiled against another torch release). If neither works, every op still
runs, those of FUSED_BACKWARD without their fused backward (FUSED_CPU_FORWARD's without their
fused CPU forward), and a single warning says so. SDEKERNELS_NO_EXT=1 skips the extension.
"""
import functools
import glob
import importlib.util
import os
import sys
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
# The ops whose passes run in the extension. Without it a backward runs autograd through the
# reference (svd_topk's and spectral_enhance's: the same formula in ATen ops), a CPU forward the
# reference; spectral_enhance's backward only beyond the Gram path (short side > GRAM_MAX_R).
FUSED_BACKWARD = ("amplitude_mix", "esm_loss", "fourier_merge", "fourier_split", "hellinger", "radial_psd",
                  "spectral_enhance", "subspace_distance", "svd_topk")
FUSED_CPU_FORWARD = ("amplitude_mix", "esm_loss", "fourier_merge", "fourier_split", "hellinger", "radial_psd",
                     "spectral_partition")


def csrc_dir() -> str | None:
    """The C++ sources: shipped in the package (an install without the compiled module) or beside it
    (a source checkout); None in an install from a wheel with the compiled module."""
    for d in (os.path.join(_HERE, "csrc"), os.path.join(os.path.dirname(_HERE), "csrc")):
        if os.path.isfile(os.path.join(d, "bindings.cpp")):
            return d
    return None


def sources(cuda: bool) -> list[str]:
    d = csrc_dir()
    if d is None:
        raise FileNotFoundError("csrc/ not found beside the package")
    files = sorted(glob.glob(os.path.join(d, "*.cpp")) + glob.glob(os.path.join(d, "cpu", "*.cpp")))
    return files + (sorted(glob.glob(os.path.join(d, "cuda", "*.cu"))) if cuda else [])


def prebuilt_path() -> str | None:
    """The file of the compiled sdekernels._C, found without loading it; None if there is none."""
    spec = importlib.util.find_spec("sdekernels._C")
    return spec.origin if spec is not None else None


def _stale(path: str) -> bool:
    """A compiled module older than the C++ sources beside it (an in-place build, then csrc/ edited)."""
    d = csrc_dir()
    if d is None:
        return False
    newest = max(os.path.getmtime(f) for pattern in ("*", "*/*") for f in glob.glob(os.path.join(d, pattern)))
    return newest > os.path.getmtime(path)


def _warn_unavailable(msg: str) -> str:
    warnings.warn(f"sdekernels: C++ extension unavailable ({msg}); backward passes use autograd "
                  "through the reference instead", RuntimeWarning, stacklevel=3)
    return "failed: " + msg


def _last_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[-1] if text else ''}"


@functools.cache
def status() -> str:
    """'prebuilt', 'jit', 'disabled' or 'failed: <reason>'; builds on first call in a source checkout."""
    if os.environ.get("SDEKERNELS_NO_EXT") == "1":
        return "disabled"
    path = prebuilt_path()
    why = "no compiled sdekernels._C in this install"
    if path is not None and _stale(path):
        why = f"csrc/ changed after {os.path.basename(path)} was compiled (pip install -e . compiles it again)"
    elif path is not None:
        try:
            import sdekernels._C  # noqa: F401  (registers the ops on import)
            return "prebuilt"
        except ImportError as e:  # compiled against another torch release, most likely
            why = f"{path} does not load with torch {torch.__version__}: {_last_line(e)}"
            if csrc_dir() is None:
                return _warn_unavailable(why)
    if csrc_dir() is None:
        return _warn_unavailable("neither a compiled sdekernels._C nor csrc/ to compile it from")
    try:
        from torch.utils import cpp_extension

        cuda = torch.cuda.is_available() and torch.version.cuda is not None
        cache = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
        print(f"sdekernels: {why}: compiling the C++ extension just in time (once; cached in {cache})",
              file=sys.stderr, flush=True)
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
        return _warn_unavailable(_last_line(e))


def available() -> bool:
    return status() in ("prebuilt", "jit")


def has_cuda_kernels() -> bool:
    return available() and hasattr(torch.ops.sdekernels_C, "cuda_built") and bool(torch.ops.sdekernels_C.cuda_built())
