"""Every registered op at its bench shapes, against the eager reference, its torch.compile and the
op's named baselines (svd_lowrank at equal accuracy), in each mode: one pytest-benchmark case each.

    pytest benchmarks/ --benchmark-only [--bench-size quick|bench|tiny] [--bench-op OP] [--bench-cpu-time ...]
    pytest benchmarks/ --benchmark-only --benchmark-autosave            # stored under .benchmarks/
    pytest benchmarks/ --benchmark-only --benchmark-compare --benchmark-compare-fail=median:5%
"""
from sdekernels.bench import test_bench  # noqa: F401  (collected here; parametrised by conftest.py)
