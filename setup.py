"""Packaging: the C++/CUDA extension (csrc/) is compiled ahead of time, as `sdekernels._C`, whenever
torch is importable in the build environment, against that torch:

    pip install --no-build-isolation .                      # or: pip install --no-build-isolation -e .
    pip wheel --no-build-isolation --no-deps -w dist .      # a platform wheel for this torch

With its CUDA kernels when torch is a CUDA build and the CUDA toolkit is found (SDEKERNELS_CUDA=0:
CPU kernels only). SDEKERNELS_BUILD_EXT=0 skips the compile; so does a build environment without
torch (pip's default isolated build), which it says on stderr. Either way csrc/ then ships in the
package and the extension is compiled just in time on first use, which needs ninja and a compiler.

The reference ships as sdekernels.reference, SPEC.md as sdekernels/SPEC.md; the version's one
source is sdekernels/__init__.py (pyproject.toml reads it).
"""
import importlib.util
import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))


class BuildPy(build_py):
    """Also puts SPEC.md, the contract the docstrings cite, into the package (an editable install
    reads it where it is)."""

    def run(self):
        super().run()
        if not self.editable_mode:
            self.copy_file(os.path.join(ROOT, "SPEC.md"), os.path.join(self.build_lib, "sdekernels", "SPEC.md"))


def extension():
    """(the sdekernels._C Extension, its build_ext command, the torch it binds to), or None when it is
    not to be built. The compiled module links libtorch's C++ ABI, which holds within one release."""
    if os.environ.get("SDEKERNELS_BUILD_EXT") == "0":
        return None
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print("sdekernels: torch is not importable in this build environment, so the C++ extension is not "
              "compiled now but just in time on first use (install with --no-build-isolation to compile it "
              "now against the installed torch)", file=sys.stderr)
        return None
    # The JIT build's sources and flags: sdekernels/_ext.py, loaded alone (the package needs more)
    spec = importlib.util.spec_from_file_location("_sdk_ext", os.path.join(ROOT, "sdekernels", "_ext.py"))
    ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ext)
    cuda = (torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
            and os.environ.get("SDEKERNELS_CUDA") != "0")
    # setuptools takes only paths relative to the project
    sources = [os.path.relpath(s, ROOT) for s in ext.sources(cuda)]
    # py_limited_api: the module's only CPython use is its empty init (csrc/module.cpp), so one
    # build serves every CPython >= 3.10 (libtorch_python is not linked)
    common = dict(sources=sources, extra_link_args=list(ext.LDFLAGS), py_limited_api=True)
    cflags = [*ext.CFLAGS, "-g0"]  # no debug information, which Python's own flags ask for
    if cuda:
        module = cpp_extension.CUDAExtension("sdekernels._C", define_macros=[(ext.CUDA_MACRO, None)],
                                             extra_compile_args={"cxx": cflags, "nvcc": list(ext.NVCC_FLAGS)},
                                             **common)
    else:
        module = cpp_extension.CppExtension("sdekernels._C", extra_compile_args=cflags, **common)
    release = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    return module, cpp_extension.BuildExtension, f"torch=={release}.*"


os.chdir(ROOT)
packages = ["sdekernels", "sdekernels.ops", "sdekernels.train", "sdekernels.reference"]
package_dir = {"sdekernels.reference": "reference"}
built = extension()
if built:
    module, build_ext, torch_req = built
    kwargs = {"ext_modules": [module], "cmdclass": {"build_ext": build_ext, "build_py": BuildPy},
              "options": {"bdist_wheel": {"py_limited_api": "cp310"}}}
else:  # csrc/ ships for the just-in-time build
    torch_req = "torch>=2.4"
    packages.append("sdekernels.csrc")
    package_dir["sdekernels.csrc"] = "csrc"
    kwargs = {"cmdclass": {"build_py": BuildPy},
              "package_data": {"sdekernels.csrc": ["*.cpp", "*.h", "cpu/*.cpp", "cuda/*.cu", "cuda/*.h"]}}
setup(packages=packages, package_dir=package_dir, install_requires=[torch_req, "numpy", "tqdm"], **kwargs)
