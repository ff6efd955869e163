"""The C++/CUDA extension: it builds here, every CUDA source compiles for sm_90; a source checkout
without a compiled module (or with a stale one) compiles it just in time and says so once; a failed
build or a compiled module that does not load leaves every op working with one clear warning, and
`info` names what is lost (the compiled wheel itself: test_wheel.py)."""
import glob
import os
import shutil
import subprocess
import sys
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


def _fresh_status(monkeypatch, **patches):
    """ext.status() recomputed with ext's attributes patched (cpp_extension.load never really runs)."""
    import sdekernels._ext as ext
    from torch.utils import cpp_extension

    calls = []
    monkeypatch.setattr(cpp_extension, "load", lambda **kw: calls.append(kw))
    for name, value in patches.items():
        monkeypatch.setattr(ext, name, value)
    ext.status.cache_clear()
    try:
        return ext.status(), calls
    finally:
        ext.status.cache_clear()


def test_source_checkout_without_prebuilt_compiles_just_in_time_and_says_so_once(monkeypatch, capsys):
    status, calls = _fresh_status(monkeypatch, prebuilt_path=lambda: None)
    assert status == "jit" and len(calls) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "just in time" in err[0] and "no compiled sdekernels._C" in err[0], err


def test_source_checkout_whose_module_does_not_load_compiles_just_in_time(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "sdekernels._C", None)  # the import fails as an undefined symbol would
    (tmp_path / "bindings.cpp").write_text("")
    status, calls = _fresh_status(monkeypatch, prebuilt_path=lambda: "/x/_C.abi3.so", csrc_dir=lambda: str(tmp_path),
                                  _stale=lambda path: False)
    assert status == "jit" and len(calls) == 1
    assert "/x/_C.abi3.so does not load with torch" in capsys.readouterr().err


def test_stale_in_place_build_is_not_used(monkeypatch, tmp_path, capsys):
    """csrc/ edited after `pip install -e .` compiled it: the old module must not run the tests."""
    so = tmp_path / "_C.abi3.so"
    so.write_bytes(b"")
    (tmp_path / "csrc").mkdir()
    (tmp_path / "csrc" / "bindings.cpp").write_text("// edited")
    os.utime(so, (0, 0))
    status, calls = _fresh_status(monkeypatch, prebuilt_path=lambda: str(so), csrc_dir=lambda: str(tmp_path / "csrc"))
    assert status == "jit" and len(calls) == 1
    assert "csrc/ changed after _C.abi3.so was compiled" in capsys.readouterr().err


def test_prebuilt_that_does_not_load_says_why(monkeypatch):
    """A wheel's module under another torch release: one warning naming the file and this torch, no JIT."""
    monkeypatch.setitem(sys.modules, "sdekernels._C", None)  # the import fails as an undefined symbol would
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status, calls = _fresh_status(monkeypatch, prebuilt_path=lambda: "/x/_C.abi3.so", csrc_dir=lambda: None)
    assert status.startswith("failed: /x/_C.abi3.so does not load with torch") and not calls
    assert len([w for w in caught if "extension unavailable" in str(w.message)]) == 1


def test_no_extension_every_op_runs_and_info_names_what_is_lost():
    """SDEKERNELS_NO_EXT=1: `check` passes on every op (the no-extension paths), and `info` lists the
    ops that lose their fused backward and CPU forward."""
    env = dict(os.environ, SDEKERNELS_NO_EXT="1")
    info = subprocess.run([sys.executable, "-m", "sdekernels", "info"], capture_output=True, text=True, env=env)
    assert info.returncode == 0, info.stderr
    lines = info.stdout.splitlines()
    at = next(i for i, x in enumerate(lines) if x.startswith("extension   disabled"))
    lost = lines[at + 1]
    assert f"lose their fused backward: {', '.join(_ext.FUSED_BACKWARD)};" in lost, lost
    assert f"fused CPU forward: {', '.join(_ext.FUSED_CPU_FORWARD)}" in lost, lost
    check = subprocess.run([sys.executable, "-m", "sdekernels", "check"], capture_output=True, text=True, env=env,
                           timeout=900)
    assert check.returncode == 0 and "all ops agree with the reference" in check.stdout, check.stdout + check.stderr


def test_fused_lists_are_what_calls_the_extension(monkeypatch):
    """FUSED_BACKWARD / FUSED_CPU_FORWARD are exactly the ops whose CPU forward / backward call
    torch.ops.sdekernels_C (spectral_enhance's backward beyond the Gram path)."""
    import torch

    from sdekernels.ops import _solvers
    from sdekernels.registry import F64, all_ops, flat

    if not _ext.available():
        pytest.skip(f"C++ extension unavailable: {_ext.status()}")
    real = torch.ops.sdekernels_C

    class Recorder:
        def __init__(self):
            self.used = False

        def __getattr__(self, name):
            self.used = True
            return getattr(real, name)

    fwd, bwd, gram = set(), set(), _solvers.GRAM_MAX_R
    for name, info in sorted(all_ops().items()):
        monkeypatch.setattr(_solvers, "GRAM_MAX_R", 0 if name == "spectral_enhance" else gram)
        sample = info.make(info.typical_shape, torch.device("cpu"), F64, torch.Generator().manual_seed(0))
        leaves = [t.detach().requires_grad_(info.differentiable and t.is_floating_point()) for t in sample.tensors()]
        rf, rb = Recorder(), Recorder()
        try:
            monkeypatch.setattr(torch.ops, "sdekernels_C", rf, raising=False)
            outs = [o for o in flat(sample.with_tensors(leaves).call(info.op)) if o.requires_grad]
            monkeypatch.setattr(torch.ops, "sdekernels_C", rb, raising=False)
            if outs:
                torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
        finally:
            monkeypatch.setattr(torch.ops, "sdekernels_C", real, raising=False)
        fwd |= {name} if rf.used else set()
        bwd |= {name} if rb.used else set()
    assert sorted(fwd) == sorted(_ext.FUSED_CPU_FORWARD)
    assert sorted(bwd) == sorted(_ext.FUSED_BACKWARD)
