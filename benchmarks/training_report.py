"""The 2000-step SDE runs of benchmarks/training.md: runs the driver, then tabulates them.

    python benchmarks/training_report.py --run            # both runs (CPU, one thread each: ~15 min)
    python benchmarks/training_report.py                  # the tables from runs/ only

(FARL and ESM are studies with seeds: benchmarks/farl_study.py, benchmarks/esm_study.py.)

Each run is one `python -m sdekernels train …` command (listed in RUNS, printed by --list); its
summary.json and plots are copied to benchmarks/results/training/<run>.* and the markdown tables
are printed.
"""
import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

SDE = ["--steps", "2000", "--batch-size", "128", "--width", "16", "--test-limit", "2000", "--ckpt-every", "500"]
RUNS = {
    "sde_sde": ["sde", "--loss", "sde", *SDE],
    "sde_infonce": ["sde", "--loss", "infonce", *SDE],
}
PLOTS = ("curves.png", "accuracy.png", "energy.png")


def command(name: str, runs: str) -> list:
    return ["python", "-m", "sdekernels", "train", *[a.format(runs=runs) for a in RUNS[name]], "--threads", "1",
            "--out", f"{runs}/{name}"]


def load(runs: Path) -> dict:
    files = {n: runs / n / "summary.json" for n in RUNS}
    return {n: json.loads(f.read_text()) for n, f in files.items() if f.exists()}


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def tables(s: dict) -> str:
    out = []
    sde = [n for n in ("sde_sde", "sde_infonce") if n in s]
    if sde:
        out += ["| loss | clean | noise | blur | contrast | strong energy % (before → after) | weak % | noise % |",
                "|---|---|---|---|---|---|---|---|"]
        for n in sde:
            b, a = s[n]["before"], s[n]["after"]
            out.append(f"| {s[n]['loss']} | {pct(a['acc_clean'])} | {pct(a['acc_noise'])} | {pct(a['acc_blur'])} | "
                       f"{pct(a['acc_contrast'])} | {pct(b['energy_strong'])} → {pct(a['energy_strong'])} | "
                       f"{pct(b['energy_weak'])} → {pct(a['energy_weak'])} | "
                       f"{pct(b['energy_noise'])} → {pct(a['energy_noise'])} |")
        out += ["", "| loss | centred: strong energy % (before → after) | weak % | noise % | n_strong | n_weak |",
                "|---|---|---|---|---|---|"]
        for n in sde:
            b, a = s[n]["before"], s[n]["after"]
            c = "centered_"
            out.append(f"| {s[n]['loss']} | {pct(b[c + 'energy_strong'])} → {pct(a[c + 'energy_strong'])} | "
                       f"{pct(b[c + 'energy_weak'])} → {pct(a[c + 'energy_weak'])} | "
                       f"{pct(b[c + 'energy_noise'])} → {pct(a[c + 'energy_noise'])} | "
                       f"{b[c + 'n_strong']} → {a[c + 'n_strong']} | {b[c + 'n_weak']} → {a[c + 'n_weak']} |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default="runs", help="directory of the run outputs")
    p.add_argument("--results", default=str(Path(__file__).parent / "results" / "training"))
    p.add_argument("--run", nargs="*", help="run these (all when no name is given) before reporting")
    p.add_argument("--list", action="store_true", help="print the commands and exit")
    args = p.parse_args()
    if args.list:
        print("\n".join(" ".join(command(n, args.runs)) for n in RUNS))
        return 0
    if args.run is not None:
        for n in args.run or RUNS:
            cmd = command(n, args.runs)
            print("$", " ".join(cmd), flush=True)
            subprocess.run([sys.executable, *cmd[1:]], check=True)
    runs, res = Path(args.runs), Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    s = load(runs)
    for n in s:
        shutil.copy(runs / n / "summary.json", res / f"{n}.summary.json")
        for f in PLOTS:
            if (runs / n / f).exists():
                shutil.copy(runs / n / f, res / f"{n}.{f}")
    print(tables(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
