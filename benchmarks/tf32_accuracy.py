"""Accuracy of the tensor-core dot precisions, measured on CPU before any GPU run.

Runs each op's Triton path in Triton's interpreter, where `ops._triton.mma` rounds the operands
as the tensor cores do (TF32: 10 mantissa bits; tf32x3: hi·hi + hi·lo + lo·hi), at shapes with the
bench shapes' contraction lengths (batch cut to fit the interpreter), against the float64
reference. Prints, per op, shape, dtype and fp32 dot precision, the worst error as a share of the
registry's tolerance (<= 1 passes), and exits non-zero when a precision the ops use fails.

    python benchmarks/tf32_accuracy.py [--quick] [--ops svd_topk,fourier_split]
"""
import argparse
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("SDEKERNELS_EMULATE_CUDA", "1")  # the launch choices (tiles, splits) of a GPU

import torch  # noqa: E402

from sdekernels._core import triton_on_cpu  # noqa: E402
from sdekernels.ops import _triton as kt  # noqa: E402
from sdekernels.registry import all_ops, parity  # noqa: E402

# The bench shapes' contraction lengths (K of every dot) with the batch cut to 1.
SHAPES = {
    "svd_topk": [{"batch": 0, "m": 1024, "n": 768, "k": 16}, {"batch": 0, "m": 256, "n": 1024, "k": 64}],
    "singular_values": [{"batch": 0, "m": 1024, "n": 768}],
    "spectral_enhance": [{"batch": 0, "m": 1024, "n": 512}, {"batch": 0, "m": 256, "n": 512}],
    "subspace_distance": [{"batch": 0, "n": 4096, "k": 64}, {"batch": 1, "n": 4096, "k": 64, "weighted": True}],
    "fourier_split": [{"batch": 1, "H": 224, "W": 224}, {"batch": 1, "H": 64, "W": 64, "log": 1}],
    "amplitude_mix": [{"batch": 1, "H": 224, "W": 224, "ratio": 0.5}],
    "radial_psd": [{"batch": 1, "C": 4, "H": 32, "W": 32}, {"batch": 1, "C": 1, "H": 256, "W": 256},
                   {"batch": 1, "C": 1, "H": 64, "W": 64, "transform": "fft"}],
    "block_dct_lowpass": [{"batch": 1, "C": 3, "H": 256, "W": 256, "k": 8}],
}
QUICK = {"svd_topk": [{"batch": 0, "m": 256, "n": 128, "k": 16}],
         "subspace_distance": [{"batch": 0, "n": 1024, "k": 64}],
         "fourier_split": [{"batch": 1, "H": 64, "W": 64}], "radial_psd": [{"batch": 1, "C": 2, "H": 32, "W": 32}],
         "spectral_enhance": [{"batch": 0, "m": 128, "n": 256}],
         "block_dct_lowpass": [{"batch": 1, "C": 1, "H": 64, "W": 64, "k": 8}]}


def measure(name: str, shape: dict, dtype: torch.dtype, precision: str | None) -> float:
    """Worst error / tolerance of op `name` on the Triton path with fp32 dots at `precision` (None: the op's choice)."""
    info = all_ops()[name]
    with triton_on_cpu(), torch.no_grad():
        if precision is None:
            return parity(info, shape, dtype, "cpu")[1]
        with kt.fp32_dots(precision):
            return parity(info, shape, dtype, "cpu")[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small shapes (a CI-sized run)")
    p.add_argument("--ops", default="", help="comma-separated op names (default: all measured ops)")
    args = p.parse_args(argv)
    table = QUICK if args.quick else SHAPES
    names = [n for n in table if not args.ops or n in args.ops.split(",")]
    failed = False
    print(f"{'op':18s} {'shape':55s} {'dtype':9s} {'used':>7s} {'tf32':>7s} {'tf32x3':>7s}  (error / tolerance)")
    for name in names:
        for shape in table[name]:
            for dtype in (torch.float32, torch.bfloat16):
                used = measure(name, shape, dtype, None)
                alt = [measure(name, shape, dtype, pr) for pr in ("tf32", "tf32x3")] if dtype == torch.float32 else []
                failed |= not used <= 1.0
                cols = " ".join(f"{r:7.3f}" for r in alt) if alt else f"{'-':>7s} {'-':>7s}"
                print(f"{name:18s} {str(shape):55s} {str(dtype)[6:]:9s} {used:7.3f} {cols}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
