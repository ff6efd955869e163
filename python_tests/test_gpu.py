"""GPU-only checks (skipped without CUDA): every op's compiled Triton forward and CUDA backward
agree with its CPU path on the same inputs, and the CUDA kernels of the extension are built."""
import pytest
import torch

from sdekernels import _ext
from sdekernels.registry import all_ops

from helpers import assert_close, weighted_sum

OPS = all_ops()
pytestmark = pytest.mark.gpu


def test_extension_has_cuda_kernels():
    assert _ext.available(), _ext.status()
    assert _ext.has_cuda_kernels()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", sorted(OPS))
def test_cuda_matches_cpu(name, dtype):
    info = OPS[name]
    results = []
    for device in ("cpu", "cuda"):
        s = info.make(info.shapes[-1], torch.device(device), dtype, torch.Generator().manual_seed(0)).bare()
        s = info.leaves(s)
        out = s.call(info.op)
        grads = ()
        if info.differentiable:
            grads = torch.autograd.grad(weighted_sum(out, torch.Generator().manual_seed(1)),
                                        [t for t in s.tensors() if t.requires_grad])
        results.append((out, grads))
    atol, rtol = info.tol[dtype]
    assert_close(results[1][0], results[0][0], atol, rtol, f"{name} forward cuda vs cpu")
    assert_close(results[1][1], results[0][1], 10 * atol, 10 * rtol, f"{name} backward cuda vs cpu")
