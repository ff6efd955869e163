"""Test set-up: on a machine without a GPU the Triton kernels run in Triton's interpreter on CPU
tensors; this must be decided before anything imports triton."""
import os
import zlib

import pytest

try:
    import torch
    _cuda = torch.cuda.is_available()
except Exception:  # pragma: no cover
    _cuda = False
if not _cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

# Under pytest-xdist (.ci/run: two workers) each worker takes one core.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed(request):
    """Every test draws from torch's global generator seeded by its own name (plus
    SDEKERNELS_TEST_SEED, default 0, to try other seeds): a result does not depend on which
    tests ran before it on the same worker."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()) + int(os.environ.get("SDEKERNELS_TEST_SEED", "0")))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
