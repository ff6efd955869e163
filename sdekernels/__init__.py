"""sdekernels: fused GPU kernels for spectral representation learning (SDE, FARL, spectrum matching).

Functional API in `sdekernels` / `sdekernels.functional`, modules in `sdekernels.nn`, the pure
PyTorch reference of every op in `sdekernels.reference`, the op registry in `sdekernels.registry`.
"""
from . import schedules
from .functional import *  # noqa: F401,F403
from .functional import __all__ as _functional_all

__version__ = "0.1.0"
__all__ = list(_functional_all) + ["schedules"]
