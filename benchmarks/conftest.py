"""pytest benchmarks/ --benchmark-only: the bench's options (--bench-size, --bench-op, ...) and its cases,
from sdekernels.bench (the same code `python -m sdekernels bench` runs)."""
from sdekernels.bench import Plugin

pytest_addoption = Plugin.pytest_addoption
pytest_generate_tests = Plugin.pytest_generate_tests
