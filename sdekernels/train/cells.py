"""A study of training runs as cells: one (variant, seed) per cell, each with the exact command that
reproduces it (benchmarks/sde_ablation.py, farl_study.py and esm_study.py are studies; their
records are in benchmarks/results/training/).

A study names the driver, its variants' arguments, the arguments every cell shares, and the keys of
the run's summary.json it records. Each cell names the commit it was measured at; a record may hold
cells of several commits where the library's code is the same at all of them, and names the CPU
capability and torch they ran on. A prerequisite run (FARL's trained SDE model) is a command of its
own, trained once per study folder; the record keeps its command and the SHA-256 of its output.
On that CPU capability and torch, `--threads 1` repeats a cell bit for bit:
`--verify VARIANT:SEED` reruns one and compares every recorded number.
"""
import argparse
import concurrent.futures as cf
import hashlib
import json
import math
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"  # a source checkout's
RESULTS = BENCHMARKS / "results" / "training"
REPORT = BENCHMARKS / "training.md"


def platform() -> dict:
    """What a bit-for-bit repeat depends on besides the code: the CPU kernels torch dispatches to."""
    import torch
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}


def lookup(summary: dict, key: str):
    """summary["after"]["probe_mse_0.1"] for the key "after.probe_mse_0.1"."""
    if key in summary:
        return summary[key]
    head, _, rest = key.partition(".")
    return lookup(summary[head], rest)


def mean_std(xs):
    xs = list(xs)
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)


def same_code(commit, head: str) -> bool:
    """Whether the library's code (what a cell runs) is the same at both commits."""
    diff = subprocess.run(["git", "diff", "--quiet", str(commit), head, "--", "sdekernels", "csrc", "reference",
                           ":(exclude)sdekernels/train/cells.py"], cwd=BENCHMARKS.parent, capture_output=True)
    return bool(commit) and diff.returncode == 0


def train(cmd: list) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, *cmd[1:]], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed:\n{proc.stderr[-2000:]}")


@dataclass
class Study:
    name: str                 # benchmarks/<name>.py, its record benchmarks/results/training/<name>.json
    driver: str               # python -m sdekernels train <driver>
    variants: dict            # variant -> its arguments (before the shared ones)
    shared: list              # every cell's arguments
    metric: str               # the main key of summary.json (the cell's "value")
    extra: dict               # recorded name -> key of summary.json
    steps: int                # --steps of every cell, unless its variant is in `own_steps`
    seeds: tuple = (0, 1, 2)
    own_steps: dict = field(default_factory=dict)  # variant -> its --steps
    late: dict = field(default_factory=dict)    # variant -> arguments after the shared ones (the last wins)
    needs: dict = field(default_factory=dict)   # prerequisite -> (its arguments of `train`, its output file)
    folder: str = ""          # the runs' folder (default runs/<name>)

    @property
    def record(self) -> Path:
        return RESULTS / f"{self.name}.json"

    @property
    def runs(self) -> Path:
        return Path(self.folder or f"runs/{self.name}")

    def need(self, name: str) -> tuple:
        args, output = self.needs[name]
        out = self.runs / name
        return ["python", "-m", "sdekernels", "train", *args, "--out", str(out)], out / output

    def command(self, variant: str, seed: int, steps=None) -> list:
        """The cell's command; `steps` overrides every variant's."""
        steps = steps or self.own_steps.get(variant, self.steps)
        args = [a.format(runs=self.runs) for a in
                [*self.variants[variant], "--steps", str(steps), "--seed", str(seed), *self.shared,
                 *self.late.get(variant, [])]]
        return ["python", "-m", "sdekernels", "train", self.driver, *args,
                "--out", str(self.runs / f"{variant}_s{seed}")]

    def head(self) -> str:
        """HEAD's commit, refusing a tree whose code differs from it (the record must name its code)."""
        from ..bench import commit

        at = commit(("sdekernels", "csrc", "reference", f"benchmarks/{self.name}.py"))
        if not at or at.endswith("+dirty"):
            raise SystemExit(f"the record names the commit it was measured at: commit the code first "
                             f"({at or 'no git'})")
        return at

    def prerequisites(self) -> dict:
        """Train the prerequisites this study folder lacks; their commands and outputs' SHA-256."""
        out = {}
        for name in self.needs:
            cmd, output = self.need(name)
            if not output.exists():
                print(f"training the prerequisite {name}: {shlex.join(cmd)}", flush=True)
                train(cmd)
            out[name] = {"command": shlex.join(cmd), "sha256": sha256(output)}
        return out

    def run_cell(self, variant: str, seed: int, steps=None) -> dict:
        return self.measure(self.command(variant, seed, steps), variant, seed)

    def measure(self, cmd: list, variant: str, seed: int) -> dict:
        """Train `cmd` and read the cell's numbers from its summary.json."""
        train(cmd)
        summary = json.loads((Path(cmd[cmd.index("--out") + 1]) / "summary.json").read_text())
        return {"variant": variant, "seed": seed, "steps": int(cmd[cmd.index("--steps") + 1]),
                "command": shlex.join(cmd),
                "metric": self.metric, "value": lookup(summary, self.metric),
                **{k: lookup(summary, key) for k, key in self.extra.items()},
                "train_seconds": summary["train_seconds_this_process"]}

    def load_record(self) -> dict:
        return json.loads(self.record.read_text()) if self.record.exists() else {"cells": []}

    def save(self, cells: list, meta: dict) -> None:
        order = {v: i for i, v in enumerate(self.variants)}
        cells = sorted(cells, key=lambda c: (order.get(c["variant"], 99), c["seed"]))
        self.record.parent.mkdir(parents=True, exist_ok=True)
        self.record.write_text(json.dumps({**meta, "cells": cells}, indent=1) + "\n")

    def run(self, jobs: int, variants, seeds, fresh: bool = False, steps=None) -> None:
        """Train the cells the record lacks, and those it holds from other code: a recorded cell stays
        only with today's command (`steps` overrides the study's), on the same platform and
        prerequisites, and measured at a commit whose library code (sdekernels, csrc, reference) is
        HEAD's. `fresh`: every cell again. A run never drops a recorded cell it does not measure again."""
        head = self.head()
        meta = {"commit": head, **platform(),
                "verify": f"python benchmarks/{self.name}.py --verify VARIANT:SEED (on the same CPU capability "
                          "and torch)"}
        old = self.load_record()
        meta["needs"] = self.prerequisites()
        same = not fresh and all(old.get(k) == meta[k] for k in ("cpu_capability", "torch", "needs"))
        cells = [{"commit": old.get("commit"), **c} for c in old["cells"]]  # a cell without one: the record's
        keep = [c for c in cells if same and same_code(c["commit"], head)
                and c["command"] == shlex.join(self.command(c["variant"], c["seed"], steps))]
        done = {(c["variant"], c["seed"]) for c in keep}
        todo = [(v, s) for v in variants for s in seeds if (v, s) not in done]
        dropped = sorted({(c["variant"], c["seed"]) for c in cells} - done - set(todo))
        if dropped:
            raise SystemExit(f"{self.record} holds {len(dropped)} cells this run would drop without measuring "
                             f"them again (e.g. {dropped[0]}): run every variant and seed of it, or record "
                             "elsewhere")
        failed = []
        with cf.ThreadPoolExecutor(jobs) as pool, tqdm(total=len(todo), desc=f"{self.name} cells") as bar:
            futures = {pool.submit(self.run_cell, v, s, steps): (v, s) for v, s in todo}
            for f in cf.as_completed(futures):
                bar.update()
                try:
                    cell = {**f.result(), "commit": head}
                except RuntimeError as exc:  # the others go on; the record keeps what succeeded
                    failed.append(f"{futures[f]}: {exc}")
                    continue
                keep = [c for c in keep if (c["variant"], c["seed"]) != (cell["variant"], cell["seed"])] + [cell]
                self.save(keep, meta)  # after every cell: an interrupted run keeps what it has
        if failed:
            raise SystemExit(f"{len(failed)} cells failed:\n" + "\n".join(failed))

    def differences(self, cell: dict, again: dict) -> list:
        """The measured keys on which a repeat differs from the record (bit for bit)."""
        return [k for k in ("value", *self.extra) if again[k] != cell[k]]

    def verify(self, spec: str) -> int:
        variant, _, seed = spec.partition(":")
        record = self.load_record()
        cell = next((c for c in record["cells"] if c["variant"] == variant and str(c["seed"]) == seed), None)
        if cell is None:
            raise SystemExit(f"--verify: no cell {spec!r} in {self.record} (VARIANT:SEED, e.g. "
                             f"{next(iter(self.variants))}:0)")
        here = platform()
        if any(record.get(k) != v for k, v in here.items()):
            print(f"the record was measured on {[record.get(k) for k in here]}, this machine is "
                  f"{list(here.values())}: torch dispatches to other kernels, expect other numbers")
        needs = self.prerequisites()
        if needs != record.get("needs", {}):
            print(f"the prerequisites differ from the record's: {needs} vs {record.get('needs')}")
            return 1
        again = self.measure(shlex.split(cell["command"]), variant, int(seed))  # the recorded command
        diff = self.differences(cell, again)
        print(f"{spec}: recorded {cell['value']!r}, reproduced {again['value']!r}: "
              + ("identical" if not diff else "DIFFERENT in " + ", ".join(diff)))
        return 0 if not diff else 1

    def by_variant(self, cells: list) -> dict:
        out = {}
        for c in cells:
            out.setdefault(c["variant"], []).append(c)
        return {v: out[v] for v in self.variants if v in out}

    def write_report(self, text: str) -> None:
        """Put `text` between the study's markers in training.md."""
        begin, end = f"<!-- {self.name}:begin -->", f"<!-- {self.name}:end -->"
        doc = REPORT.read_text()
        if begin in doc and end in doc:
            REPORT.write_text(doc[:doc.index(begin) + len(begin)] + "\n" + text + "\n" + doc[doc.index(end):])

    def report(self, table, *plots) -> None:
        """training.md's table `table(cells)` and the plots `plot(cells)` from the record."""
        cells = self.load_record()["cells"]
        if not cells:
            raise SystemExit(f"no cells in {self.record}: run with --run first")
        text = table(cells)
        self.write_report(text)
        for plot in plots:
            plot(cells)
        print(text)

    def main(self, table, *plots, argv=None) -> int:
        """The study's command line; its report is `table(cells)` in training.md and the plots."""
        p = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__.split("\n")[0])
        p.add_argument("--run", action="store_true", help="train the missing cells, then report")
        p.add_argument("--report", action="store_true", help="tables and plots from the record")
        p.add_argument("--verify", metavar="VARIANT:SEED", help="rerun one recorded cell and compare")
        p.add_argument("--list", action="store_true", help="print every cell's command")
        p.add_argument("--fresh", action="store_true", help="with --run: measure every cell again")
        p.add_argument("--steps", type=int, default=None, help=f"override every cell's steps (default {self.steps})")
        p.add_argument("-j", "--jobs", type=int, default=2, help="cells trained at once (each on one thread)")
        p.add_argument("--variants", nargs="+", default=list(self.variants), choices=list(self.variants))
        p.add_argument("--seeds", nargs="+", type=int, default=list(self.seeds))
        args = p.parse_args(argv)
        if (args.steps is not None and args.steps < 1) or args.jobs < 1:
            p.error("--steps and --jobs must be >= 1")
        if args.list:
            for name in self.needs:
                print(shlex.join(self.need(name)[0]))
            for v in args.variants:
                for s in args.seeds:
                    print(shlex.join(self.command(v, s, args.steps)))
            return 0
        if args.verify:
            return self.verify(args.verify)
        if args.run:
            self.run(args.jobs, args.variants, args.seeds, args.fresh, args.steps)
        if args.run or args.report:
            self.report(table, *plots)
        if not (args.run or args.report):
            p.print_help()
        return 0
