"""Can csrc/ move to torch's stable ABI, so that one wheel loads in several torch releases? The
evidence behind NOTES.md's "One wheel across torch releases":

    python benchmarks/stable_abi.py --so sdekernels/_C.abi3.so      # 1 and 2
    python benchmarks/stable_abi.py --build-probe DIR                # 3: DIR/probe.so
    OTHER_TORCH_PYTHON benchmarks/stable_abi.py --load PATH.so ...   # 4: under another torch

1. each csrc .cpp file compiled in the stable-only mode (-DTORCH_TARGET_VERSION): its first error;
2. the ATen operators the compiled module calls (its undefined at::_ops symbols), each marked by
   whether torch/csrc/stable/ops.h of this torch wraps it, and its count of libtorch C++ symbols;
3. benchmarks/stable_abi_probe.cpp (one op in csrc's style on the stable API alone) built against
   this torch with TORCH_TARGET_VERSION = this release;
4. --load: each library loaded into this python's torch, the probe's ops checked against ATen;
   --grads: the gradients of the installed sdekernels' ops against the reference's autograd
   (float64; with a wheel installed under another torch, its compiled backward there).
"""
import argparse
import glob
import os
import re
import subprocess
import sys
import sysconfig

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INCLUDE = cpp_extension.include_paths()[0]
SAME = {"mT": "transpose", "zeros": "new_zeros", "zeros_like": "new_zeros"}  # a stable op that does the same


def target_version() -> str:
    major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    return f"0x{major:02x}{minor:02x}000000000000"


def stable_only_errors():
    files = glob.glob(os.path.join(ROOT, "csrc", "*.cpp")) + glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp"))
    includes = [*cpp_extension.include_paths(), sysconfig.get_paths()["include"]]
    for f in sorted(files):
        out = subprocess.run(["g++", "-std=c++20", "-fsyntax-only", f"-DTORCH_TARGET_VERSION={target_version()}",
                              *[f"-I{p}" for p in includes], "-I", os.path.dirname(f), f],
                             capture_output=True, text=True)
        first = next((ln for ln in out.stderr.splitlines() if "error" in ln), "compiles")
        print(f"{os.path.relpath(f, ROOT)}: {first.replace(INCLUDE + '/', '')}")


def aten_calls(so: str):
    syms = subprocess.run(["nm", "-D", "--undefined-only", so], capture_output=True, text=True).stdout.split()
    names = subprocess.run(["c++filt"], input="\n".join(syms), capture_output=True, text=True).stdout.splitlines()
    ops = sorted({m.group(1) for n in names if (m := re.match(r"at::_ops::(\w+)::call", n))})
    stable = open(os.path.join(INCLUDE, "torch", "csrc", "stable", "ops.h")).read()
    wrapped = set(re.findall(r'aoti_torch_call_dispatcher\(\s*"aten::(\w+)"', stable))
    wrapped |= set(re.findall(r"^inline [\w:<> ]+ (\w+)\(", stable, re.M))
    cxx = [n for n in names if re.match(r"(at|c10|torch)::", n)]
    print(f"{so}: {len(cxx)} libtorch C++ symbols, {len(ops)} ATen operators")
    for op in ops:
        name = op
        while not hasattr(torch.ops.aten, name) and "_" in name:  # the overload's op: mul_Tensor -> mul
            name = name.rsplit("_", 1)[0]
        name = SAME.get(name, name)
        print(f"  {op:20} {f'stable: {name}' if name in wrapped else 'no stable wrapper (dispatcher call by name)'}")


def build_probe(out_dir: str):
    os.makedirs(out_dir, exist_ok=True)
    so = os.path.join(out_dir, "probe.so")
    lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    subprocess.run(["g++", "-std=c++20", "-O2", "-shared", "-fPIC", f"-DTORCH_TARGET_VERSION={target_version()}",
                    f"-I{INCLUDE}", os.path.join(ROOT, "benchmarks", "stable_abi_probe.cpp"), f"-L{lib}",
                    "-ltorch_cpu", "-lc10", "-o", so], check=True)
    print(so)


def load(paths):
    for path in paths:
        try:
            torch.ops.load_library(path)
        except OSError as e:
            print(f"torch {torch.__version__}: {path} does not load: {str(e).splitlines()[-1]}")
            continue
        print(f"torch {torch.__version__}: {path} loads")
        if hasattr(torch.ops, "sdk_stable_probe") and hasattr(torch.ops.sdk_stable_probe, "gram"):
            a, b = torch.rand(64, 32, dtype=torch.float64), torch.rand(64, 32, dtype=torch.float64)
            e1 = (torch.ops.sdk_stable_probe.hellinger_rows(a, b) - ((a.sqrt() - b.sqrt()) ** 2).sum(-1)).abs().max()
            e2 = (torch.ops.sdk_stable_probe.gram(a) - a.T @ a).abs().max()
            print(f"  probe ops: max error {e1.item():.1e} (rows), {e2.item():.1e} (gram)")


def grads():
    from sdekernels import _ext
    from sdekernels.registry import grad_error

    print(f"torch {torch.__version__}, extension {_ext.status()}")
    for name in _ext.FUSED_BACKWARD:
        print(f"  {name:20} max relative gradient difference {grad_error(name):.1e}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--so", help="a compiled sdekernels._C: list the ATen operators it calls")
    p.add_argument("--build-probe", metavar="DIR")
    p.add_argument("--load", nargs="+", metavar="PATH")
    p.add_argument("--grads", action="store_true")
    a = p.parse_args()
    if a.grads:
        grads()
        sys.exit()
    if a.load:
        load(a.load)
        sys.exit()
    if a.build_probe:
        build_probe(a.build_probe)
        sys.exit()
    print(f"torch {torch.__version__}, TORCH_TARGET_VERSION={target_version()}")
    stable_only_errors()
    if a.so:
        aten_calls(a.so)
