"""Packaging. The reference ships as sdekernels.reference and csrc as package data for the JIT build.

Ahead-of-time build of the C++/CUDA extension (against the torch already installed):
    SDEKERNELS_BUILD_EXT=1 pip install . --no-build-isolation
"""
import os

from setuptools import setup

package_dir = {"sdekernels.reference": "reference", "sdekernels.csrc": "csrc"}
packages = ["sdekernels", "sdekernels.ops", "sdekernels.train", "sdekernels.reference", "sdekernels.csrc"]
package_data = {"sdekernels.csrc": ["*.cpp", "*.h", "cpu/*.cpp", "cuda/*.cu", "cuda/*.h"]}
kwargs = {}

if os.environ.get("SDEKERNELS_BUILD_EXT") == "1":
    import importlib.util

    import torch
    from torch.utils import cpp_extension

    # The JIT build's sources and flags (sdekernels/_ext.py, loaded alone: the package needs more).
    spec = importlib.util.spec_from_file_location("_sdk_ext", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                         "sdekernels", "_ext.py"))
    _ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(_ext)
    cuda = torch.cuda.is_available() or os.environ.get("SDEKERNELS_CUDA") == "1"
    if cuda:
        ext = cpp_extension.CUDAExtension("sdekernels._C", _ext.sources(True), define_macros=[(_ext.CUDA_MACRO, None)],
                                          extra_compile_args={"cxx": list(_ext.CFLAGS), "nvcc": list(_ext.NVCC_FLAGS)},
                                          extra_link_args=list(_ext.LDFLAGS))
    else:
        ext = cpp_extension.CppExtension("sdekernels._C", _ext.sources(False), extra_compile_args=list(_ext.CFLAGS),
                                         extra_link_args=list(_ext.LDFLAGS))
    kwargs = {"ext_modules": [ext], "cmdclass": {"build_ext": cpp_extension.BuildExtension}}

setup(packages=packages, package_dir=package_dir, package_data=package_data, **kwargs)
