"""The README's "Where things are" table stays true: one row per registered op, and every file and
name it points to exists, so a newcomer following it never lands on a moved or renamed thing."""
import json
import os
import re
import subprocess

import pytest

from sdekernels import bench
from sdekernels.registry import all_ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = ["op", "kernels", "backward", "reference", "tests", "bench"]


def _rows():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text.split("### Where things are", 1)[1].split("\n## ", 1)[0]
    head = "| " + " | ".join(COLUMNS) + " |"
    assert head in section, f"the per-op table (header {head!r}) is missing from README's 'Where things are'"
    lines = section.split(head, 1)[1].strip().splitlines()[1:]  # after the |---| line
    rows = {}
    for line in lines:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0].strip("`")] = dict(zip(COLUMNS, cells))
    return rows


ROWS = _rows()


def test_one_row_per_registered_op():
    assert sorted(ROWS) == sorted(all_ops()), "README's per-op table and the registry disagree"


def _refs(cell):
    """(path, names) for each `path` or `path::name1,name2` in a cell."""
    for ref in re.findall(r"`([^`]+)`", cell):
        if "/" not in ref.split("::")[0] and not ref.endswith(".py"):
            continue  # a command or a plain name, not a file
        path, _, names = ref.partition("::")
        yield path, [n for n in names.split(",") if n]


@pytest.mark.parametrize("op", sorted(ROWS))
def test_every_pointer_exists(op):
    for column in COLUMNS[1:]:
        for path, names in _refs(ROWS[op][column]):
            full = os.path.join(ROOT, path)
            assert os.path.isfile(full), f"{op} / {column}: no file {path}"
            source = open(full, encoding="utf-8").read()
            for name in names:
                assert re.search(rf"\b{re.escape(name)}\b", source), f"{op} / {column}: {path} has no {name}"


@pytest.mark.parametrize("op", sorted(ROWS))
def test_bench_column_names_the_op(op):
    assert f"--op {op}" in ROWS[op]["bench"], f"{op}: the bench column should give `bench --op {op}`"


def _record():
    with open(os.path.join(ROOT, "benchmarks", "results", "cpu-bench.json")) as f:
        return json.load(f)["rows"]


@pytest.mark.parametrize("path, make", [("README.md", lambda rows: bench.markdown(bench.headline(rows))),
                                        ("benchmarks/results/cpu.md", bench.markdown)])
def test_bench_table_is_the_record(path, make):
    """The measured table is the one benchmarks/record.py draws from results/cpu-bench.json: no
    figure is edited by hand or left behind when the record changes."""
    text = open(os.path.join(ROOT, path), encoding="utf-8").read()
    found = re.search(r"<!-- bench-table -->\n(.*?)\n<!-- /bench-table -->", text, re.S)
    assert found, f"{path}: no bench-table markers"
    assert found.group(1) == make(_record())


def _git(*args):
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT)


def test_no_bench_row_is_older_than_its_op_code():
    """Each row of the record was measured at a commit that has its op's current code: no commit
    since it changed any of the op's files (OpInfo.sources: its module, the sdekernels modules it
    uses, the C++ it calls, the reference). A stale row is re-measured, not explained away."""
    if _git("rev-parse", "--is-shallow-repository").stdout.strip() != "false":
        pytest.skip("needs the git history (a full clone)")
    ops, stale = all_ops(), []
    for r in _record():
        if r["impl"] != "sdekernels":
            continue
        files = ops[r["op"]].sources()
        changed = _git("log", "--format=%h %s", f"{r['commit']}..HEAD", "--", *files)
        assert changed.returncode == 0, f"{r['op']}: commit {r['commit']} is not in this history: {changed.stderr}"
        if changed.stdout.strip():
            stale.append(f"{r['op']} {r['shape']} {r['mode']} (measured at {r['commit'][:7]}): "
                         + "; ".join(changed.stdout.strip().splitlines()[:3]))
    assert not stale, "bench rows older than their op's code, re-measure them:\n" + "\n".join(stale)


def test_install_section_runs_as_written():
    """README's "Install" gives the wheel route, then the source route, each as one marked bash
    block that python_tests/test_wheel.py runs as written (readme_block); no other command block."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text.split("\n## Install\n", 1)[1].split("\n## ", 1)[0]
    marks = re.findall(r"<!-- install: (\w+) -->\n```bash\n", section)
    assert marks == ["wheel", "source"], marks
    assert section.count("```bash") == 2
    tests = open(os.path.join(ROOT, "python_tests", "test_wheel.py"), encoding="utf-8").read()
    assert all(f'readme_block("{m}")' in tests for m in marks)
