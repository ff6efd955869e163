"""The C++/CUDA extension: it builds here, every CUDA source compiles for sm_90, and a failed
build leaves the library working with one clear warning."""
import glob
import os
import shutil
import subprocess
import warnings

import pytest

from sdekernels import _ext
from sdekernels.aot import SHARED_LIMIT, nvcc_command, ptxas_usage

from helpers import require


def test_extension_builds():
    if os.environ.get("SDEKERNELS_NO_EXT") == "1":
        pytest.skip("extension disabled on purpose")
    require(shutil.which("ninja") is not None, "ninja")
    assert _ext.available(), _ext.status()


def _nvcc():
    return shutil.which("nvcc") or next(iter(glob.glob("/usr/local/cuda*/bin/nvcc")), None)


@pytest.mark.parametrize("source", sorted(glob.glob(os.path.join(_ext.csrc_dir(), "cuda", "*.cu"))),
                         ids=os.path.basename)
def test_cuda_source_compiles_for_sm90_without_spills(source, tmp_path):
    nvcc = _nvcc()
    require(nvcc is not None, "nvcc (the CUDA toolkit)")
    out = subprocess.run(nvcc_command(nvcc, source, str(tmp_path / "k.o")), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-4000:]
    kernels = ptxas_usage(out.stdout + out.stderr)  # nvcc -Xptxas -v: per kernel registers, spills, smem
    assert kernels, "ptxas reported no kernel"
    for k in kernels:
        print(f"{k['kernel']}: {k['regs']} registers, {k['shared_bytes']} B shared, {k['stack_bytes']} B stack")
    assert not [k for k in kernels if k["spill_bytes"]], f"register spills: {[k for k in kernels if k['spill_bytes']]}"
    assert all(k["shared_bytes"] <= SHARED_LIMIT for k in kernels)


def test_failed_build_warns_once_and_falls_back(monkeypatch):
    import sdekernels._ext as ext
    from torch.utils import cpp_extension

    def broken(*a, **k):
        raise RuntimeError("compiler not found")

    monkeypatch.setattr(cpp_extension, "load", broken)
    monkeypatch.setitem(__import__("sys").modules, "sdekernels._C", None)  # no ahead-of-time build either
    ext.status.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert not ext.available() and not ext.available()
        assert ext.status().startswith("failed: RuntimeError: compiler not found")
        assert len([w for w in caught if "extension unavailable" in str(w.message)]) == 1
    finally:
        ext.status.cache_clear()
