"""Instruction counts of the C++ CPU kernels, a regression guard that a loaded machine cannot blur.

One process runs under `valgrind --tool=callgrind`, instrumented only once Python and torch are
loaded (client requests from a tiny helper library), collecting only inside the extension's own
functions (--toggle-collect=sdekernels::*: the twins of csrc/cpu/ and the ATen calls they make).
Every registered op runs at its largest test shape (float32, one thread), forward then backward,
each counted on its own (zero the counters, run, dump), three times: the least count is kept. An
op whose code calls no C++ counts 0.

    python benchmarks/callgrind.py            # compare with results/callgrind.json; exit 1 on > 5 % more
                                              # (and > 2,000 instructions: the allocator's spread)
    python benchmarks/callgrind.py --update   # rewrite results/callgrind.json (its diff shows in review)

The counts belong to the build: torch's version and the compiler are in the baseline file, and
a different torch may move them (update the baseline in the same change). python_tests/test_callgrind.py
runs the comparison in CI.
"""
import argparse
import ctypes
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
BASELINE = os.path.join(HERE, "results", "callgrind.json")
TOLERANCE = 0.05
# and more than this many instructions over: the allocator's paths inside the counted functions vary
# by up to ~1,300 instructions from process to process (seen on counts of 7 k to 480 k)
FLOOR = 2000
REPEATS = 3  # the least of three runs: the allocator's paths vary by a few hundred instructions
HELPER = """#include <valgrind/callgrind.h>
void cg_start(void) { CALLGRIND_START_INSTRUMENTATION; }
void cg_zero(void) { CALLGRIND_ZERO_STATS; }
void cg_dump(const char* label) { CALLGRIND_DUMP_STATS_AT(label); }
"""


def largest_shape(info) -> dict:
    """The op's test shape with the most input elements: still small, but large enough that the
    kernels' own work outweighs the allocator's varying paths."""
    import torch

    def size(shape):
        sample = info.make(shape, torch.device("cpu"), torch.float32, torch.Generator().manual_seed(0))
        return sum(t.numel() for t in sample.tensors())
    return max(info.shapes, key=size)


def inner(helper: str) -> None:
    """Under valgrind: every op forward and backward, each between a zero and a dump of the counters."""
    import torch

    from sdekernels import _ext
    from sdekernels.registry import all_ops, flat

    torch.set_num_threads(1)
    if not _ext.available():
        raise SystemExit(f"the C++ extension is not available: {_ext.status()}")
    cg = ctypes.CDLL(helper)
    cg.cg_dump.argtypes = [ctypes.c_char_p]
    ops = all_ops()

    def steps(info):
        sample = info.make(largest_shape(info), torch.device("cpu"), torch.float32, torch.Generator().manual_seed(0))
        leaves = info.leaves(sample)
        with torch.set_grad_enabled(info.differentiable):
            outs = [t for t in flat(leaves.call(info.op)) if t.is_floating_point()]
        yield "fwd"
        if info.differentiable and any(t.requires_grad for t in outs):
            sum(t.sum() for t in outs if t.requires_grad).backward()
            yield "bwd"

    for name in sorted(ops):  # once untimed: first-call work (caches, lazy init) stays out of the counts
        for _ in steps(ops[name]):
            pass
    cg.cg_start()
    for name in sorted(ops):
        for _ in steps(ops[name]):  # a warm-up under instrumentation
            pass
        for rep in range(REPEATS):
            cg.cg_zero()
            for part in steps(ops[name]):
                cg.cg_dump(f"{name} {part} {rep}".encode())
                cg.cg_zero()


def count(workdir: str) -> dict:
    """Run the ops under callgrind; {op: {"fwd": Ir, "bwd": Ir}}."""
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    src = os.path.join(workdir, "cg.c")
    with open(src, "w") as f:
        f.write(HELPER)
    helper = os.path.join(workdir, "cg.so")
    subprocess.run(["gcc", "-O1", "-shared", "-fPIC", "-o", helper, src], check=True)
    # the extension is built (or found) natively first: a build under valgrind would take an age
    subprocess.run([sys.executable, "-c", "from sdekernels import _ext; assert _ext.available(), _ext.status()"],
                   check=True)
    # the same addresses and allocation order in every run: vectorised loops peel by alignment
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    env.pop("TRITON_INTERPRET", None)
    out = os.path.join(workdir, "callgrind.out")
    fixed = ["setarch", platform.machine(), "-R"] if shutil.which("setarch") else []
    run = subprocess.run([*fixed, "valgrind", "--tool=callgrind", "--instr-atstart=no", "--collect-atstart=no",
                          "--toggle-collect=sdekernels::*", f"--callgrind-out-file={out}",
                          sys.executable, os.path.abspath(__file__), "--inner", helper],
                         capture_output=True, text=True, env=env)
    if run.returncode:
        raise SystemExit(f"valgrind run failed ({run.returncode}):\n{run.stderr[-3000:]}")
    counts = {}
    for path in glob.glob(out + ".*"):
        text = open(path).read()
        label = re.search(r"^desc: Trigger: Client Request: (.+)$", text, re.M)
        total = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        if label:
            op, part, _ = label.group(1).split()
            n = int(total.group(1)) if total else 0
            counts.setdefault(op, {})[part] = min(n, counts.get(op, {}).get(part, n))
    return {op: {p: counts[op][p] for p in ("fwd", "bwd") if p in counts[op]} for op in sorted(counts)}


def environment() -> dict:
    import torch

    cc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    return {"torch": torch.__version__, "compiler": cc, "dtype": "float32", "threads": 1,
            "shapes": "each op's test shape with the most input elements (largest_shape)"}


def compare(now: dict, base: dict, tolerance: float = TOLERANCE, floor: int = FLOOR) -> list[str]:
    """One line per (op, part) more than `tolerance` and more than `floor` instructions above its
    baseline, or missing from it."""
    bad = []
    for op, parts in now.items():
        for part, n in parts.items():
            b = base.get(op, {}).get(part)
            if b is None:
                bad.append(f"{op} {part}: {n} instructions, not in the baseline (run --update)")
            elif n > (1 + tolerance) * b and n - b > floor:
                bad.append(f"{op} {part}: {n} instructions, {n / max(b, 1) - 1:+.1%} over the baseline's {b}")
    return bad


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--update", action="store_true", help="write the counts as the new baseline")
    p.add_argument("--baseline", default=BASELINE)
    p.add_argument("--inner", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.inner:
        inner(args.inner)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        now = count(tmp)
    if args.update:
        with open(args.baseline, "w") as f:
            json.dump({"environment": environment(), "counts": now}, f, indent=1)
            f.write("\n")
        print(f"wrote {args.baseline}")
        return 0
    with open(args.baseline) as f:
        base = json.load(f)["counts"]
    for op, parts in now.items():
        for part, n in parts.items():
            b = base.get(op, {}).get(part)
            print(f"{op:20} {part}  {n:>12}  baseline {b if b is not None else '-':>12}"
                  + (f"  {n / b - 1:+.1%}" if b else ""))
    bad = compare(now, base)
    for line in bad:
        print("REGRESSION " + line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
