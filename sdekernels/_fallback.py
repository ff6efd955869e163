"""The library's one door into the reference (reference/, installed as sdekernels.reference).

Two uses pass through it, and only these: an op's plain-PyTorch forward or backward where the C++
extension is not built (the "aten" path then is the reference, so its parity tests are skipped), and
the reference each registry entry is tested and benchmarked against. The training drivers'
``--backend reference`` switch (sdekernels/train/common.py) is the only other module that imports
the reference. Everything else the library computes is its own: helpers that both sides need
(partition, medians, DCT matrices, bin maps, blurs, distances, schedules, gathering) are written once
in each, so the parity tests compare two independent statements (python_tests/test_layout.py).
"""
from . import reference as ref  # noqa: F401  (the fallbacks' and the registry's name for it)
