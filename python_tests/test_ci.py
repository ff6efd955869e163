"""CI is explicit: `.ci/run` itself sets CI=true for the test run (no outside runner has to), and under
CI a tool, package or data set that .ci/setup installs is required: a test missing one fails and names
it, never skips (helpers.require)."""
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Stands in for python3 and apt-get: installs nothing, records what pytest would see of the environment.
_STUB = """#!/usr/bin/env bash
case " $* " in
  *" -m venv "*) mkdir -p "${@: -1}/bin" && cp "$0" "${@: -1}/bin/python" ;;
  *" -m pytest "*) printf 'CI=%s\nTRITON_CACHE_DIR=%s\nTORCHINDUCTOR_CACHE_DIR=%s\n' "${CI-}" \
      "${TRITON_CACHE_DIR-}" "${TORCHINDUCTOR_CACHE_DIR-}" > "$STUB_ENV" ;;
esac
exit 0
"""


def test_ci_run_sets_ci(tmp_path):
    """.ci/run, from a copy of .ci in an empty checkout, with python3 and apt-get stubbed: the test
    run it starts sees CI=true and fresh compile caches, though the caller's environment has no CI."""
    shutil.copytree(os.path.join(ROOT, ".ci"), tmp_path / "repo" / ".ci")
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for name in ("python3", "apt-get"):
        (bin_ / name).write_text(_STUB)
        (bin_ / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR")}
    env.update(PATH=f"{bin_}{os.pathsep}{env.get('PATH', '')}", STUB_ENV=str(tmp_path / "env"))
    run = subprocess.run(["bash", str(tmp_path / "repo" / ".ci" / "run")], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    seen = dict(line.split("=", 1) for line in (tmp_path / "env").read_text().splitlines())
    assert seen["CI"] == "true", "the tests .ci/run starts do not see CI=true"
    assert seen["TRITON_CACHE_DIR"] and seen["TORCHINDUCTOR_CACHE_DIR"]


def test_missing_requirement_fails_under_ci(tmp_path):
    """With CI=true and a requirement hidden (Fashion-MNIST, Triton 3.6's environment, torch-dct,
    scikit-image), each test guarded by it fails naming it; none is skipped."""
    shadow = tmp_path / "shadow"  # importing these raises ImportError
    shadow.mkdir()
    for mod in ("torch_dct", "skimage"):
        (shadow / f"{mod}.py").write_text("raise ImportError('hidden by the test')\n")
    env = dict(os.environ, CI="true", SDEKERNELS_FASHION_MNIST=str(tmp_path / "none"),
               SDEKERNELS_TRITON36_PYTHON=str(tmp_path / "none" / "python"),
               PYTHONPATH=os.pathsep.join([str(shadow), ROOT, os.environ.get("PYTHONPATH", "")]))
    tests = ["python_tests/test_cli.py::test_limits_within_the_data",
             "python_tests/test_ablation.py::test_ablation_cell_repeats_exactly",
             "python_tests/test_aot.py::test_kernels_compile_for_sm90[3.6]",
             "python_tests/test_official.py",
             "python_tests/test_spectrum.py::test_natural_photos_have_a_falling_power_law"]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider",
                          "--continue-on-collection-errors", *tests],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = run.stdout + run.stderr
    assert run.returncode != 0, out[-3000:]
    assert "SKIPPED" not in out, out[-3000:]
    for what in ("Fashion-MNIST", "Triton 3.6", "torch-dct", "scikit-image"):
        assert f"CI requires {what}" in out, f"{what}:\n{out[-3000:]}"
