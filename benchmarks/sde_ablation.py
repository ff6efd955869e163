"""Which part of SDE helps and which hurts: an ablation of SDELoss on the Fashion-MNIST CLIP driver.

Each variant trains the same model (`python -m sdekernels train sde`) with 3 seeds; one cell per
(variant, seed) lands in benchmarks/results/training/sde_ablation.json with the exact command that
reproduces it, the name of its clean-accuracy key in that run's summary.json, the corruption
accuracies and the energy fractions. The record names the commit its cells were measured at and the
CPU and torch they ran on: on the same CPU capability and torch, `--threads 1` reproduces a cell bit for
bit at that commit, and python_tests/test_ablation.py re-verifies one cell at HEAD, so a change of
the numerics fails there until the record is measured again (`--run --fresh`).

    python benchmarks/sde_ablation.py --run            # train every missing cell (2 at a time), then report
    python benchmarks/sde_ablation.py --run --fresh    # measure every cell again at HEAD (a clean tree)
    python benchmarks/sde_ablation.py --report         # table (training.md) and plot from the JSON
    python benchmarks/sde_ablation.py --verify infonce:0   # rerun one cell, compare with the record
"""
import argparse
import concurrent.futures as cf
import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

from tqdm import tqdm

HERE = Path(__file__).resolve().parent
RECORD = HERE / "results" / "training" / "sde_ablation.json"
PLOT = HERE / "results" / "training" / "sde_ablation.png"
REPORT = HERE / "training.md"
RUNS = Path("runs") / "ablation"

# variant -> its arguments of `train sde` (everything else is shared, below)
VARIANTS = {
    "infonce": ["--loss", "infonce"],
    "sde": ["--loss", "sde"],
    "no_enhance": ["--loss", "sde", "--no-enhance"],
    "no_hellinger": ["--loss", "sde", "--spectral-terms", "subspace"],
    "no_subspace": ["--loss", "sde", "--spectral-terms", "hellinger"],
    "const_lambda": ["--loss", "sde", "--lambda-start", "0.275", "--lambda-end", "0.275"],
    "augment": ["--loss", "sde", "--mode", "augment"],
    "center": ["--loss", "sde", "--center"],
    # the setting of the earlier runs: 128-d features from a width-16 encoder, rank <= 65 of 128
    "infonce_dim128": ["--loss", "infonce"],
    "sde_dim128": ["--loss", "sde"],
    "no_hellinger_dim128": ["--loss", "sde", "--spectral-terms", "subspace"],
}
LATE = {v: ["--dim", "128"] for v in VARIANTS if v.endswith("_dim128")}  # after SHARED: the last --dim wins
SEEDS = (0, 1, 2)
STEPS = 300
# --dim 64: the width-16 CNN's image features have rank <= 4·16 + 1 = 65, so a wider projection would
# make the spectrum (and the reference SVD gradient) degenerate.
SHARED = ["--batch-size", "128", "--width", "16", "--dim", "64", "--test-limit", "2000", "--ckpt-every", "100000",
          "--threads", "1", "--no-progress"]
METRIC = "after.acc_clean"  # the clean zero-shot accuracy in summary.json
EXTRA = ("acc_noise", "acc_blur", "acc_contrast", "energy_strong", "energy_weak", "energy_noise",
         "centered_energy_strong", "centered_energy_weak", "centered_energy_noise")


def command(variant: str, seed: int, steps: int) -> list:
    out = RUNS / f"{variant}_s{seed}"
    return ["python", "-m", "sdekernels", "train", "sde", *VARIANTS[variant], "--steps", str(steps),
            "--seed", str(seed), *SHARED, *LATE.get(variant, []), "--out", str(out)]


def platform() -> dict:
    """What a bit-for-bit repeat depends on besides the code: the CPU kernels torch dispatches to."""
    import torch
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}


def head() -> str:
    """HEAD's commit, refusing a tree whose code differs from it (the record must name its code)."""
    from sdekernels.bench import commit

    at = commit(("sdekernels", "csrc", "reference", "benchmarks/sde_ablation.py"))
    if not at or at.endswith("+dirty"):
        raise SystemExit(f"the record names the commit it was measured at: commit the code first ({at or 'no git'})")
    return at


def lookup(summary: dict, key: str):
    for part in key.split("."):
        summary = summary[part]
    return summary


def run_cell(variant: str, seed: int, steps: int) -> dict:
    cmd = command(variant, seed, steps)
    out = Path(cmd[cmd.index("--out") + 1])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, *cmd[1:]], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    after = summary["after"]
    return {"variant": variant, "seed": seed, "steps": steps, "command": shlex.join(cmd), "metric": METRIC,
            "value": lookup(summary, METRIC), **{k: after[k] for k in EXTRA},
            "train_seconds": summary["train_seconds_this_process"]}


def load_record() -> dict:
    return json.loads(RECORD.read_text()) if RECORD.exists() else {"cells": []}


def load() -> list:
    return load_record()["cells"]


def save(cells: list, meta: dict) -> None:
    order = {v: i for i, v in enumerate(VARIANTS)}
    cells = sorted(cells, key=lambda c: (order.get(c["variant"], 99), c["seed"]))
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    RECORD.write_text(json.dumps({**meta, "cells": cells}, indent=1) + "\n")


def run(steps: int, jobs: int, variants, seeds, fresh: bool = False) -> None:
    """Train the cells the record lacks (every cell with `fresh`). All cells of a record come from one
    commit and platform: a record measured elsewhere is measured again whole."""
    meta = {"commit": head(), **platform(),
            "verify": "python benchmarks/sde_ablation.py --verify VARIANT:SEED (on the same CPU capability and torch)"}
    old = load_record()
    same = all(old.get(k) == meta[k] for k in ("commit", "cpu_capability", "torch"))
    keep = [c for c in old["cells"] if c["steps"] == steps] if same and not fresh else []
    done = {(c["variant"], c["seed"]) for c in keep}
    todo = [(v, s) for v in variants for s in seeds if (v, s) not in done]
    with cf.ThreadPoolExecutor(jobs) as pool, tqdm(total=len(todo), desc="ablation cells") as bar:
        futures = [pool.submit(run_cell, v, s, steps) for v, s in todo]
        for f in cf.as_completed(futures):
            cell = f.result()
            keep = [c for c in keep if (c["variant"], c["seed"]) != (cell["variant"], cell["seed"])] + [cell]
            save(keep, meta)  # after every cell: an interrupted run keeps what it has
            bar.update()


def mean_std(xs):
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0)


def table(cells: list) -> str:
    by = {}
    for c in cells:
        by.setdefault(c["variant"], []).append(c)
    cols = [("clean", "value"), ("noise", "acc_noise"), ("blur", "acc_blur"), ("contrast", "acc_contrast")]
    lines = ["| variant | seeds | " + " | ".join(f"{n} %" for n, _ in cols)
             + " | strong / weak / noise energy % | centred strong / weak / noise % |",
             "|---|---|" + "---|" * (len(cols) + 2)]
    for v in VARIANTS:
        cs = by.get(v)
        if not cs:
            continue
        acc = [mean_std([100 * c[k] for c in cs]) for _, k in cols]
        en = [mean_std([100 * c[k] for c in cs])[0] for k in ("energy_strong", "energy_weak", "energy_noise")]
        cen = [mean_std([100 * c[f"centered_{k}"] for c in cs])[0]
               for k in ("energy_strong", "energy_weak", "energy_noise")]
        lines.append(f"| {v} | {len(cs)} | " + " | ".join(f"{m:.1f} ± {s:.1f}" for m, s in acc)
                     + " | " + " / ".join(f"{e:.1f}" for e in en) + " | " + " / ".join(f"{e:.1f}" for e in cen) + " |")
    return "\n".join(lines)


def plot(cells: list) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [v for v in VARIANTS if any(c["variant"] == v for c in cells)]
    keys = [("clean", "value"), ("noise", "acc_noise"), ("blur", "acc_blur"), ("contrast", "acc_contrast")]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.6), sharey=False)
    for ax, (label, k) in zip(axes, keys):
        stats = [mean_std([100 * c[k] for c in cells if c["variant"] == v]) for v in names]
        ax.barh(range(len(names)), [m for m, _ in stats], xerr=[s for _, s in stats],
                color=["tab:grey" if v == "infonce" else "tab:blue" for v in names])
        for i, v in enumerate(names):
            seeds = [100 * c[k] for c in cells if c["variant"] == v]
            ax.plot(seeds, [i] * len(seeds), "k.", ms=3)
        ax.set_yticks(range(len(names)), names if ax is axes[0] else [""] * len(names))
        ax.set_title(f"{label} zero-shot accuracy %")
        ax.set_xlim(max(0, min(100 * c[k] for c in cells) - 5), None)
    fig.suptitle("SDELoss ablation, Fashion-MNIST CLIP (mean ± std over seeds; dots: seeds)")
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)


def report() -> None:
    cells = load()
    if not cells:
        raise SystemExit(f"no cells in {RECORD}: run with --run first")
    text = table(cells)
    begin, end = "<!-- sde_ablation:begin -->", "<!-- sde_ablation:end -->"
    doc = REPORT.read_text()
    if begin in doc and end in doc:
        doc = doc[:doc.index(begin) + len(begin)] + "\n" + text + "\n" + doc[doc.index(end):]
        REPORT.write_text(doc)
    plot(cells)
    print(text)


def verify(spec: str) -> int:
    variant, _, seed = spec.partition(":")
    cell = next((c for c in load() if c["variant"] == variant and str(c["seed"]) == seed), None)
    if cell is None:
        raise SystemExit(f"--verify: no cell {spec!r} in {RECORD} (VARIANT:SEED, e.g. sde:0)")
    again = run_cell(variant, int(seed), cell["steps"])
    diff = differences(cell, again)
    print(f"{spec}: recorded {cell['value']!r}, reproduced {again['value']!r}: "
          + ("identical" if not diff else "DIFFERENT in " + ", ".join(diff)))
    return 0 if not diff else 1


def differences(cell: dict, again: dict) -> list:
    """The measured keys on which a repeat differs from the record (bit for bit)."""
    return [k for k in ("value", *EXTRA) if again[k] != cell[k]]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", action="store_true", help="train the missing cells, then report")
    p.add_argument("--report", action="store_true", help="table and plot from the record")
    p.add_argument("--verify", metavar="VARIANT:SEED", help="rerun one recorded cell and compare")
    p.add_argument("--fresh", action="store_true", help="with --run: measure every cell again")
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("-j", "--jobs", type=int, default=2, help="cells trained at once (each on one thread)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    args = p.parse_args(argv)
    if args.steps < 1 or args.jobs < 1:
        p.error("--steps and --jobs must be >= 1")
    if args.verify:
        return verify(args.verify)
    if args.run:
        run(args.steps, args.jobs, args.variants, args.seeds, args.fresh)
    if args.run or args.report:
        report()
    if not (args.run or args.report):
        p.print_help()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
