"""GPU-only checks (skipped without CUDA), each op at its GPU-sized shape (OpInfo.gpu_shape): the
compiled Triton forward and CUDA backward agree with the CPU path to within the op's `cond`
epsilons of each dtype (the bound the emulated CUDA launches meet on CPU, test_triton.py), the
emulation launches exactly what CUDA launches, and the CUDA kernels of the extension are built."""
import json
import os
import subprocess
import sys

import pytest
import torch

from sdekernels import _ext
from sdekernels.registry import all_ops

from helpers import DTYPES, assert_paths_agree, launches, run_op

OPS = all_ops()
HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.gpu


def test_extension_has_cuda_kernels():
    assert _ext.available(), _ext.status()
    assert _ext.has_cuda_kernels()


def _sample(info, dtype, device):
    return info.make(info.gpu_shape, torch.device(device), dtype, torch.Generator().manual_seed(0)).bare()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(OPS))
def test_cuda_matches_cpu(name, dtype):
    info = OPS[name]
    cuda = run_op(info, _sample(info, dtype, "cuda"))
    assert_paths_agree(info, dtype, cuda, run_op(info, _sample(info, dtype, "cpu")), f"{info.gpu_shape} CUDA vs CPU")


# The same op and sample on CPU under CUDA emulation (Triton's interpreter, so in a fresh process):
# its launches, as json.
_EMULATED = """
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from sdekernels._core import triton_on_cpu
from sdekernels.registry import all_ops
from helpers import launches, run_op
info, dtype = all_ops()[sys.argv[2]], getattr(torch, sys.argv[3])
s = info.make(info.gpu_shape, torch.device("cpu"), dtype, torch.Generator().manual_seed(0)).bare()
with triton_on_cpu(), launches() as log:
    run_op(info, s)
print(json.dumps(sorted(set(log))))
"""


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", sorted(OPS))
def test_emulation_launches_what_cuda_launches(name, dtype):
    """Every distinct launch (kernel, grid, tiles, warps, flags) of the op on CUDA is one the CPU
    emulation makes, and the other way round."""
    info = OPS[name]
    with launches() as log:
        run_op(info, _sample(info, dtype, "cuda"))
    env = dict(os.environ, TRITON_INTERPRET="1", SDEKERNELS_EMULATE_CUDA="1", CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([sys.executable, "-c", _EMULATED, HERE, name, str(dtype).removeprefix("torch.")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    emulated = {(k, tuple(g), tuple(map(tuple, meta))) for k, g, meta in json.loads(out.stdout.splitlines()[-1])}
    cuda = set(log)
    assert cuda == emulated, f"CUDA only: {sorted(cuda - emulated)}; emulated only: {sorted(emulated - cuda)}"
