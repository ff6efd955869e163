"""Packaging. The reference ships as sdekernels.reference and csrc as package data for the JIT build.

Ahead-of-time build of the C++/CUDA extension (against the torch already installed):
    SDEKERNELS_BUILD_EXT=1 pip install . --no-build-isolation
"""
import glob
import os

from setuptools import setup

package_dir = {"sdekernels.reference": "reference", "sdekernels.csrc": "csrc"}
packages = ["sdekernels", "sdekernels.ops", "sdekernels.train", "sdekernels.reference", "sdekernels.csrc"]
package_data = {"sdekernels.csrc": ["*.cpp", "*.h", "cpu/*.cpp", "cuda/*.cu", "cuda/*.h"]}
kwargs = {}

if os.environ.get("SDEKERNELS_BUILD_EXT") == "1":
    import torch
    from torch.utils import cpp_extension

    here = os.path.dirname(os.path.abspath(__file__))
    sources = sorted(glob.glob(os.path.join(here, "csrc", "*.cpp")) + glob.glob(os.path.join(here, "csrc", "cpu", "*.cpp")))
    cuda = torch.cuda.is_available() or os.environ.get("SDEKERNELS_CUDA") == "1"
    if cuda:
        sources += sorted(glob.glob(os.path.join(here, "csrc", "cuda", "*.cu")))
        ext = cpp_extension.CUDAExtension("sdekernels._C", sources, define_macros=[("SDEKERNELS_CUDA", None)],
                                          extra_compile_args={"cxx": ["-O3", "-fopenmp", "-fno-math-errno"], "nvcc": ["-O3"]},
                                          extra_link_args=["-fopenmp"])
    else:
        ext = cpp_extension.CppExtension("sdekernels._C", sources, extra_compile_args=["-O3", "-fopenmp", "-fno-math-errno"],
                                         extra_link_args=["-fopenmp"])
    kwargs = {"ext_modules": [ext], "cmdclass": {"build_ext": cpp_extension.BuildExtension}}

setup(packages=packages, package_dir=package_dir, package_data=package_data, **kwargs)
