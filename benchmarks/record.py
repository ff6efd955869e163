"""The committed CPU record: merge bench runs into results/cpu-bench.json and redraw what is made from it.

    python benchmarks/record.py RUN.json [RUN.json ...]

Each RUN.json is a pytest-benchmark JSON (`pytest benchmarks/ --benchmark-json RUN.json` or
`python -m sdekernels bench --json RUN.json`). Storing and comparing whole runs is pytest-benchmark's
(`--benchmark-autosave`, `--benchmark-compare`); this script keeps only what it does not: one table
made of the latest measurement of each case, whichever run it came from. A run's rows replace the
record's rows of the same (op, shape); each row keeps the commit it was measured at and the commit
that last changed its op's code (python_tests/test_readme.py fails when the code moved on since).
A run made with uncommitted changes is refused. The tables of results/cpu.md (every mode) and of the
README (between the `bench-table` markers; full where a case has a backward, else fwd) and
results/cpu-speedup.png are then regenerated from the whole record, so that no figure is copied by hand.
"""
import argparse
import json
import os
import re

from sdekernels import bench

HERE = os.path.dirname(os.path.abspath(__file__))
RECORD = os.path.join(HERE, "results", "cpu-bench.json")
TABLES = {os.path.join(HERE, "results", "cpu.md"): bench.markdown,
          os.path.join(HERE, "..", "README.md"): lambda rows: bench.markdown(bench.headline(rows))}
PLOT = os.path.join(HERE, "results", "cpu-speedup.png")
MARKED = re.compile(r"(<!-- bench-table -->\n).*?(\n<!-- /bench-table -->)", re.S)


def merge(record: dict, run: dict) -> dict:
    """The record with the run's (op, shape) cases replaced by its rows, ordered by op (then as first seen)."""
    new = bench.rows(run)
    dirty = sorted({r["commit"] for r in new if not r["commit"] or r["commit"].endswith("+dirty")})
    if dirty:
        raise SystemExit(f"a run measured on uncommitted code ({dirty}) cannot be recorded: commit, then re-run")
    cases = {(r["op"], r["shape"]) for r in new}
    rows = [r for r in record["rows"] if (r["op"], r["shape"]) not in cases] + new
    order = list(dict.fromkeys((r["op"], r["shape"]) for r in record["rows"] + new))
    rows.sort(key=lambda r: (r["op"], order.index((r["op"], r["shape"]))))
    env = dict(record.get("environment", {}), **bench.environment(run))
    return {"environment": env, "rows": bench.with_ratios(rows)}


def redraw(rows, tables=TABLES) -> None:
    """Replace the table between the markers of each file with the one made from `rows`."""
    for path, make in tables.items():
        with open(path) as f:
            text = f.read()
        if not MARKED.search(text):
            raise SystemExit(f"{path}: no <!-- bench-table --> ... <!-- /bench-table --> markers")
        table = make(rows)
        with open(path, "w") as f:
            f.write(MARKED.sub(lambda m, table=table: m.group(1) + table + m.group(2), text))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    args = p.parse_args(argv)
    record = {"environment": {}, "rows": []}
    if os.path.exists(RECORD):
        with open(RECORD) as f:
            record = json.load(f)
        record["rows"] = [r for r in record["rows"] if "mode" in r]  # rows of the bench before its modes: gone
    for path in args.runs:
        with open(path) as f:
            record = merge(record, json.load(f))
    with open(RECORD, "w") as f:
        json.dump(record, f, indent=1, default=str)
    redraw(record["rows"])
    bench.plot(bench.headline(record["rows"]), PLOT, "sdekernels vs reference (CPU, one thread, CPU time)")


if __name__ == "__main__":
    main()
