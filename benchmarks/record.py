"""Merge bench runs into the CPU record and redraw what is made from it.

    python benchmarks/record.py RUN.json [RUN.json ...] [--commit REV]

Each RUN.json is a `python -m sdekernels bench --json` file. Its rows replace the record's rows of
the same (op, shape, pass) in results/cpu-bench.json, tagged with the commit they were measured at
(the run's own, or --commit), and the run is listed in environment.records. The bench tables of
results/cpu.md and of the README (between the `bench-table` markers) and results/cpu-speedup.png are
then regenerated from the whole record, so that no figure is copied by hand.
"""
import argparse
import json
import os
import re

from sdekernels import bench

HERE = os.path.dirname(os.path.abspath(__file__))
RECORD = os.path.join(HERE, "results", "cpu-bench.json")
TABLES = [os.path.join(HERE, "results", "cpu.md"), os.path.join(HERE, "..", "README.md")]
PLOT = os.path.join(HERE, "results", "cpu-speedup.png")
MARKED = re.compile(r"(<!-- bench-table -->\n).*?(\n<!-- /bench-table -->)", re.S)


def case(row) -> tuple:
    return row["op"], row["shape"], row["pass"]


def merge(record: dict, run: dict, commit: str | None = None) -> dict:
    """The record with the run's cases replaced by its rows, ordered by op (then as first seen)."""
    env = run["environment"]
    commit = commit or env.get("commit")
    new = [dict(r, commit=commit) for r in run["rows"]]
    cases = {case(r) for r in new}
    rows = [r for r in record["rows"] if case(r) not in cases]
    rows += new
    order = list(dict.fromkeys(case(r) for r in record["rows"] + new))
    rows.sort(key=lambda r: (r["op"], order.index(case(r))))
    entry = {"commit": commit, "time": env.get("time"), "ops": sorted({r["op"] for r in new}),
             "limits": env.get("limits")}
    environment = dict(record["environment"], records=record["environment"].get("records", []) + [entry])
    return {"environment": environment, "rows": rows}


def redraw(rows, paths=TABLES) -> None:
    """Replace the table between the markers of each file with the one made from `rows`."""
    table = bench.markdown(rows)
    for path in paths:
        with open(path) as f:
            text = f.read()
        if not MARKED.search(text):
            raise SystemExit(f"{path}: no <!-- bench-table --> ... <!-- /bench-table --> markers")
        with open(path, "w") as f:
            f.write(MARKED.sub(lambda m: m.group(1) + table + m.group(2), text))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--commit", help="the commit the runs measured (default: the one each run recorded)")
    args = p.parse_args(argv)
    with open(RECORD) as f:
        record = json.load(f)
    for path in args.runs:
        with open(path) as f:
            record = merge(record, json.load(f), args.commit)
    with open(RECORD, "w") as f:
        json.dump(record, f, indent=1, default=str)
    redraw(record["rows"])
    bench.plot(record["rows"], PLOT, "sdekernels vs reference (CPU, one thread, CPU time)")


if __name__ == "__main__":
    main()
