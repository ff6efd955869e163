"""python -m sdekernels info | check | bench, run as a user would."""
import json
import subprocess
import sys

import pytest

from sdekernels.__main__ import main
from sdekernels.registry import all_ops


def _run(*args):
    return subprocess.run([sys.executable, "-m", "sdekernels", *args], capture_output=True, text=True, timeout=600)


def test_info_names_paths_and_ops():
    out = _run("info")
    assert out.returncode == 0, out.stderr
    for word in ("torch", "triton", "extension", "hellinger", "subspace_distance"):
        assert word in out.stdout


def test_check_passes_and_reports_each_dtype():
    out = _run("check", "--op", "hellinger")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("hellinger") == 4 and "FAIL" not in out.stdout


def test_check_exits_1_on_a_wrong_op(monkeypatch, capsys):
    info = all_ops()["hellinger"]
    monkeypatch.setattr(info, "op", lambda S_a, S_b, **kw: info.ref(S_a, S_b, **kw) * 1.01)
    assert main(["check", "--op", "hellinger"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_bench_quick_json(tmp_path):
    path = tmp_path / "bench.json"
    out = _run("bench", "--quick", "--op", "subspace_distance", "--json", str(path), "--no-progress")
    assert out.returncode == 0, out.stderr
    record = json.loads(path.read_text())
    assert {"torch", "commit", "limits", "extension"} <= set(record["environment"])
    impls = {r["impl"] for r in record["rows"]}
    assert {"reference", "sdekernels"} <= impls
    for r in record["rows"]:
        assert r["ms"] > 0 and r["peak_MB"] >= 0 and r["GBs"] > 0
        assert r["ms_q1"] <= r["ms"] <= r["ms_q3"]
    # vs best alternative: against the fastest of every other implementation timed
    ours = next(r for r in record["rows"] if r["impl"] == "sdekernels")
    others = {r["impl"]: r["ms"] for r in record["rows"] if r["impl"] != "sdekernels"}
    assert ours["best_alternative"] == min(others, key=others.get)
    assert ours["vs_best_q1"] <= ours["vs_best"] <= ours["vs_best_q3"]


def test_bench_markdown(tmp_path):
    path = tmp_path / "bench.md"
    out = _run("bench", "--op", "hellinger", "--markdown", str(path), "--no-progress")
    assert out.returncode == 0, out.stderr
    lines = path.read_text().splitlines()
    assert "vs best alternative" in lines[0] and len(lines) == 3  # header, rule, one quick case
    assert lines[2].startswith("| hellinger | batch=1024,r=512 | fwd+bwd |")


def test_bench_rejects_unknown_op():
    with pytest.raises(ValueError, match="unknown op"):
        main(["bench", "--op", "nope", "--no-progress"])
