"""pytest benchmarks/ --benchmark-only: the bench's options (--bench-size, --bench-op, ...) and its cases,
from sdekernels.bench (the same code `python -m sdekernels bench` runs)."""
import os

from sdekernels.bench import Plugin

# Benchmarks never run inside pytest-xdist; a `pytest benchmarks/` started by a test under xdist
# inherits the worker's marker, which pytest-benchmark reads as "xdist is on" (every benchmark off).
os.environ.pop("PYTEST_XDIST_WORKER", None)

pytest_addoption = Plugin.pytest_addoption
pytest_generate_tests = Plugin.pytest_generate_tests
