"""The constants that Python, the Triton kernels and the C++/CUDA twins must agree on, in one table.

Python reads them from this module, the Triton kernels as constexprs (ops/_triton.py), and the C++
and CUDA twins from csrc/constants.h, which is generated from `CPP` below: `python -m
sdekernels constants` writes it, `--check` exits 1 where the committed header differs, and
python_tests/test_constants.py holds the two equal. Change a value here, then regenerate.
"""
import os
import sys

HELLINGER_SUM_FLOOR = 1e-30    # max(Σ S^power, floor): the row sum of a Hellinger spectrum (SPEC §5)
HELLINGER_PROB_FLOOR = 1e-12   # entries of the normalised spectrum p clamped to >= this (SPEC §5)
HELLINGER_SCALE_LOG2 = 40.0    # a Hellinger row is divided by its power of two only where its largest
                               # S^power lies outside [2^-this, 2^this] (SPEC §10)
PSD_FLOOR = 1e-12              # an entry of the radial power spectrum is clamped to >= this (SPEC §9)
FOURIER_TINY = 1e-30           # |X|² below this: fourier_split's amplitude and phase gradients are 0 (SPEC §8)
INV_REL = 1e-20                # the SVD backwards' 1/σ -> σ/(σ² + ε'), ε' = INV_REL·σ_1² (SPEC §1)
LORENTZ_REL_F32 = 2.0 ** -23   # the Lorentzian width over σ_1² of float32 rows: float32's machine epsilon
LORENTZ_REL_F64 = 2.0 ** -52   # the same for float64 rows (SPEC §1; ops/_scaling.py lorentz_rel)
# fourier_split's phase: atan on |u| <= tan(π/8) by Cephes' atanf polynomial
# u − C3·u³ + C5·u⁵ − C7·u⁷ + C9·u⁹ (the Triton kernel and the C++ forward evaluate the same one)
ATAN_TAN_PI_8 = 0.41421356237309503
ATAN_C3 = 3.33329491539e-1
ATAN_C5 = 1.99777106478e-1
ATAN_C7 = 1.38776856032e-1
ATAN_C9 = 8.05374449538e-2

# Python name -> the C++ name of csrc/constants.h.
CPP = {
    "HELLINGER_SUM_FLOOR": "kSumFloor",
    "HELLINGER_PROB_FLOOR": "kProbFloor",
    "HELLINGER_SCALE_LOG2": "kHellingerScaleLog2",
    "PSD_FLOOR": "kPowerFloor",
    "FOURIER_TINY": "kFourierTiny",
    "INV_REL": "kInvRel",
    "LORENTZ_REL_F32": "kLorentzRelFloat",
    "LORENTZ_REL_F64": "kLorentzRelDouble",
    "ATAN_TAN_PI_8": "kAtanTanPi8",
    "ATAN_C3": "kAtanC3",
    "ATAN_C5": "kAtanC5",
    "ATAN_C7": "kAtanC7",
    "ATAN_C9": "kAtanC9",
}

HEADER = "constants.h"


def header() -> str:
    """The text of csrc/constants.h from the table: each value as a double literal that parses back
    to the same bits (Python's repr of a float round-trips)."""
    this = sys.modules[__name__]
    lines = [f"constexpr double {cpp} = {float(getattr(this, name))!r};  // sdekernels.constants.{name}"
             for name, cpp in CPP.items()]
    return ("// Generated from sdekernels/constants.py by `python -m sdekernels constants`: edit the table there.\n"
            "// python_tests/test_constants.py fails where this file and the table differ.\n"
            "#pragma once\n\nnamespace sdekernels {\n\n" + "\n".join(lines) + "\n\n}  // namespace sdekernels\n")


def header_path() -> str:
    from ._ext import csrc_dir
    d = csrc_dir()
    if d is None:
        raise FileNotFoundError("csrc/ not found beside the package")
    return os.path.join(d, HEADER)


def stale(path: str | None = None) -> bool:
    """Whether the header at `path` (default csrc/constants.h) differs from the table's."""
    path = path or header_path()
    with open(path, encoding="utf-8") as f:
        return f.read() != header()


def write_header(check: bool = False) -> int:
    """Write csrc/constants.h from the table; with check, write nothing and return 1 where it differs."""
    path = header_path()
    if check:
        bad = stale(path)
        print(f"{path}: {'differs from sdekernels/constants.py' if bad else 'up to date'}")
        return int(bad)
    with open(path, "w", encoding="utf-8") as f:
        f.write(header())
    print(f"wrote {path}")
    return 0
