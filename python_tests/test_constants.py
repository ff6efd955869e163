"""One source for the constants that Python, the Triton kernels and the C++/CUDA twins share
(sdekernels/constants.py): the committed csrc/constants.h is the table's, a changed value makes that
check fail, the compiled header and the Triton constexprs carry the table's bits, and no kernel keeps
a copy of its own."""
import ast
import pathlib
import re
import shutil
import subprocess

import pytest
import torch

from sdekernels import _ext, constants
from sdekernels.__main__ import main
from sdekernels.ops import _scaling
from sdekernels.ops import _triton as kt

CSRC = pathlib.Path(_ext.csrc_dir())
OPS = pathlib.Path(_scaling.__file__).parent


def test_committed_header_is_the_tables():
    assert not constants.stale(), "csrc/constants.h is out of date: run `python -m sdekernels constants`"
    assert main(["constants", "--check"]) == 0


@pytest.mark.parametrize("name", sorted(constants.CPP))
def test_a_changed_value_fails_the_check(name, monkeypatch):
    monkeypatch.setattr(constants, name, getattr(constants, name) * 2)
    assert constants.stale()
    assert main(["constants", "--check"]) == 1


def test_header_compiles_to_the_tables_bits(tmp_path):
    """Each constexpr of the header, printed exactly (%a) by a compiled program, is the table's double."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    prints = "\n".join(f'  std::printf("{n} %a\\n", sdekernels::{c});' for n, c in constants.CPP.items())
    src = tmp_path / "print.cpp"
    src.write_text(f'#include <cstdio>\n#include "constants.h"\nint main() {{\n{prints}\n}}\n')
    exe = tmp_path / "print"
    subprocess.run([cxx, "-std=c++17", f"-I{CSRC}", str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    got = dict(zip(out[::2], map(float.fromhex, out[1::2])))
    assert got == {n: float(getattr(constants, n)) for n in constants.CPP}


def test_no_twin_defines_its_own_copy():
    """The header's names are defined there alone (spectral_math.h and the twins include it)."""
    names = "|".join(constants.CPP.values())
    defined = {str(p.relative_to(CSRC)) for p in CSRC.rglob("*") if p.suffix in (".h", ".cpp", ".cu")
               and re.search(rf"\b(?:{names})\s*=", p.read_text())}
    assert defined == {constants.HEADER}, defined


@pytest.mark.skipif(not hasattr(kt, "PSD_FLOOR"), reason="Triton not installed")
def test_triton_reads_the_table():
    read = [n for n in constants.CPP if hasattr(kt, n)]
    assert {"HELLINGER_SUM_FLOOR", "PSD_FLOOR", "ATAN_C9"} <= set(read), read
    for name in read:
        assert getattr(kt, name).value == getattr(constants, name), name


def _kernel_literals(source: str) -> list:
    """(kernel, value) of each float literal of a @triton.jit function equal to one of the table's values."""
    values = {float(getattr(constants, n)) for n in constants.CPP}
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and any("jit" in ast.unparse(d) for d in node.decorator_list):
            found += [(node.name, c.value) for c in ast.walk(node) if isinstance(c, ast.Constant)
                      and isinstance(c.value, float) and c.value in values]
    return found


@pytest.mark.parametrize("path", sorted(OPS.glob("*.py")), ids=lambda p: p.name)
def test_no_kernel_keeps_a_bare_copy(path):
    assert _kernel_literals(path.read_text()) == []


def test_bare_copy_rule_catches_one():
    src = "@triton.jit\ndef k(X):\n    x = tl.maximum(tl.load(X), 1e-30)\n\ndef host():\n    return 1e-30\n"
    assert _kernel_literals(src) == [("k", 1e-30)]


def test_lorentz_width_is_the_machine_epsilon():
    """The table's Lorentzian widths are the working dtypes' machine epsilons, as SPEC §1 defines them."""
    assert _scaling.lorentz_rel(torch.float32) == torch.finfo(torch.float32).eps == constants.LORENTZ_REL_F32
    assert _scaling.lorentz_rel(torch.bfloat16) == constants.LORENTZ_REL_F32
    assert _scaling.lorentz_rel(torch.float64) == torch.finfo(torch.float64).eps == constants.LORENTZ_REL_F64
