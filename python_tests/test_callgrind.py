"""The instruction-count guard (benchmarks/callgrind.py): each op's C++ CPU code, forward and
backward, counted by callgrind and compared with the committed baseline, benchmarks/results/callgrind.json."""
import json
import os
import shutil
import subprocess
import sys

from helpers import require

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import callgrind  # noqa: E402


def test_compare_names_the_op_over_the_tolerance():
    base = {"hellinger": {"fwd": 100000, "bwd": 200000}, "radial_psd": {"fwd": 500, "bwd": 10000}}
    now = {"hellinger": {"fwd": 104900, "bwd": 210100}, "radial_psd": {"fwd": 400, "bwd": 11500, "x": 7}}
    bad = callgrind.compare(now, base)
    assert len(bad) == 2  # radial_psd bwd: +15 % but 1,500 instructions, within the allocator's spread
    assert bad[0].startswith("hellinger bwd: 210100 instructions, +5.0% over")
    assert bad[1].startswith("radial_psd x: 7 instructions, not in the baseline")


def test_baseline_covers_every_op_with_a_cpu_twin():
    from sdekernels.registry import all_ops

    with open(callgrind.BASELINE) as f:
        counts = json.load(f)["counts"]
    assert set(counts) == set(all_ops())
    for op, info in all_ops().items():
        if any(s.startswith("csrc/cpu/") for s in info.sources()) and op in ("hellinger", "radial_psd", "svd_topk",
                                                                             "fourier_split", "fourier_merge"):
            assert counts[op].get("fwd", 0) + counts[op].get("bwd", 0) > 0, f"{op}: no C++ instructions counted"


def test_instruction_counts_within_5_percent_of_the_baseline():
    require(shutil.which("valgrind") is not None and os.path.isfile("/usr/include/valgrind/callgrind.h"),
            "valgrind and its callgrind.h (apt-get install valgrind)")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "callgrind.py")], capture_output=True,
                         text=True, cwd=ROOT, timeout=1800)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-3000:]
