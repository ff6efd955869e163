"""Python stages of a GPU lease (benchmarks/gpu.sh): the record of the machine, and the bench at
the shapes benchmarks/NOTES.md predicts, written case by case so that a timeout keeps what ran.

    python benchmarks/lease.py versions OUTDIR          # versions.json: software, device, driver
    python benchmarks/lease.py notes OUTDIR [--dry]     # bench-notes.json: NOTES.md's shapes
"""
import argparse
import json
import os
import platform
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def versions(out: str) -> None:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "commit": os.environ.get("SDEKERNELS_COMMIT")}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["device"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count,
                          "memory_GiB": round(p.total_memory / 2**30, 1),
                          "l2_MB": round(getattr(p, "L2_cache_size", 0) / 2**20, 1)}
    try:
        info["nvidia-smi"] = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        info["nvidia-smi"] = f"not available: {e}"
    with open(os.path.join(out, "versions.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(json.dumps({k: v for k, v in info.items() if k != "nvidia-smi"}, indent=1))
    print(info["nvidia-smi"])


def notes(out: str, dry: bool) -> int:
    """Bench every (op, shape) of NOTES.md's prediction table that --quick leaves out, one case at a
    time through pytest-benchmark (sdekernels.bench: CUDA-event timer, L2 flushed between rounds,
    first call apart), the JSON rewritten after each. --dry: one tiny case on this machine's device."""
    from roofline import notes_cases

    from sdekernels import bench

    path = os.path.join(out, "bench-notes.json")
    todo = [("hellinger", None)] if dry else [(name, bench._label(shape)) for name, shape in notes_cases(quick=False)]
    merged, failed = None, 0
    for name, label in todo:
        try:
            data = bench.run([name], size="tiny" if dry else "bench", shapes=[label] if label else None,
                             compile_ref=not dry)
        except Exception as e:  # one case that breaks must not lose the others
            print(f"{name} {label}: {type(e).__name__}: {e}", flush=True)
            failed += 1
            continue
        merged = data if merged is None else {**merged, "benchmarks": merged["benchmarks"] + data["benchmarks"]}
        print(bench.table(bench.rows(data)), flush=True)
        with open(path, "w") as f:
            json.dump(merged, f, indent=1, default=str)
    print(f"wrote {path}: {len(merged['benchmarks']) if merged else 0} benchmarks")
    return 1 if failed else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=["versions", "notes"])
    p.add_argument("out")
    p.add_argument("--dry", action="store_true", help="one small case (CI's check of this script)")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.stage == "versions":
        versions(args.out)
        return 0
    return notes(args.out, args.dry)


if __name__ == "__main__":
    sys.exit(main())
