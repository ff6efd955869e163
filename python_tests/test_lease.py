"""The GPU lease scripts (benchmarks/gpu.sh, gpu_full.sh): valid bash, and every stage's command
runs here in a dry run (tiny settings, CPU), so a typo cannot cost a lease."""
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["benchmarks/gpu.sh", "benchmarks/gpu_full.sh", "benchmarks/lease.sh"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_is_valid_bash(script):
    out = subprocess.run(["bash", "-n", os.path.join(ROOT, script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("script, files", [
    ("benchmarks/gpu.sh", {"versions.json", "tests-1.xml", "tests-2.xml", "bench-quick.json", "maxbatch-gpu.json",
                           "bench-notes.json"}),
    ("benchmarks/gpu_full.sh", {"versions.json", "tests-full.xml", "bench-full.json"}),
])
def test_dry_run_runs_every_stage(script, files, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(LEASE_DRY="1", LEASE_SECONDS="1800")
    out = subprocess.run(["bash", os.path.join(ROOT, script), str(tmp_path / "out")], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=1800)
    log = (tmp_path / "out" / "lease.log").read_text() if (tmp_path / "out" / "lease.log").exists() else ""
    assert out.returncode == 0, out.stdout + out.stderr + log[-6000:]
    stages = (tmp_path / "out" / "stages.tsv").read_text().splitlines()[1:]
    assert stages and all(line.split("\t")[2] == "0" for line in stages), stages
    written = set(os.listdir(tmp_path / "out"))
    assert files | {"lease.log", "stages.tsv"} <= written, written
    assert len(written) <= 8, f"a lease brings back at most 8 files: {sorted(written)}"


def test_a_failing_or_slow_stage_is_reported_and_the_next_still_runs(tmp_path):
    script = tmp_path / "lease_test.sh"
    script.write_text(f'out={tmp_path / "out"}\ntotal=60\nsource {ROOT}/benchmarks/lease.sh\n'
                      'stage one 10 "exit 3"\nstage slow 5 "sleep 60"\nstage two 10 "echo ran > $out/two.txt"\n'
                      'exit $status\n')
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert out.returncode == 1
    rows = [line.split("\t") for line in (tmp_path / "out" / "stages.tsv").read_text().splitlines()[1:]]
    assert [(r[0], r[2]) for r in rows] == [("one", "3"), ("slow", "124"), ("two", "0")]
    assert (tmp_path / "out" / "two.txt").read_text() == "ran\n"


def test_a_gpu_test_stage_that_collects_nothing_fails(tmp_path):
    """pytest's exit 5 (no test collected) is a failed stage, not a clean one."""
    script = tmp_path / "lease_test.sh"
    script.write_text(f'out={tmp_path / "out"}\ntotal=120\nsource {ROOT}/benchmarks/lease.sh\n'
                      'stage tests 110 "gpu_tests none.xml no_test_has_this_name"\nexit $status\n')
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=dict(os.environ, LEASE_DRY="1"))
    rows = [line.split("\t") for line in (tmp_path / "out" / "stages.tsv").read_text().splitlines()[1:]]
    assert out.returncode == 1 and [(r[0], r[2]) for r in rows] == [("tests", "5")], rows
    assert "gpu_tests tests-1.xml" in open(os.path.join(ROOT, "benchmarks/gpu.sh")).read()


def test_roofline_takes_each_case_at_its_slowest_dot_path():
    import sys

    import torch
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from roofline import RATES, path

    fma = {"has_dot": True, "tensor_cores": "", "dot_dtypes": ["f32"], "dot_precision": "ieee", "tc_types": ""}
    x3 = {"has_dot": True, "tensor_cores": "wgmma", "dot_dtypes": ["f32"], "dot_precision": "tf32x3",
          "tc_types": "tf32"}
    bf = {"has_dot": True, "tensor_cores": "wgmma", "dot_dtypes": ["bf16"], "dot_precision": "", "tc_types": "bf16"}
    dmma = {"has_dot": True, "tensor_cores": "mma", "dot_dtypes": ["f64"], "dot_precision": "", "tc_types": "f64"}
    assert path([], torch.float32) == "fp32 FMA" and path([], torch.float64) == "fp64 FMA"
    assert path([bf], torch.bfloat16) == "bf16" and path([bf, x3], torch.float32) == "tf32x3"
    assert path([x3, fma], torch.float32) == "fp32 FMA" and path([dmma], torch.float64) == "f64 tensor"
    assert RATES["tf32x3"] < RATES["tf32"] < RATES["bf16"]
