"""The package as a user installs it, by README's "Install" commands, run as written.

From source: the sdist, unpacked, built into a wheel in a fresh virtual environment. From a wheel:
that wheel installed into another fresh one, then used from an empty folder with no compiler, no
ninja and no source tree in sight, and an empty torch extension cache that must stay empty: the
compiled extension is the wheel's, nothing is built at run time. Both environments see the
machine's torch (and the other installed packages) but not this tree's editable install. Built
once per run (module fixtures)."""
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile

import pytest
import torch
from helpers import require

import sdekernels
from sdekernels import _ext
from sdekernels.train.common import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = ("g++", "c++", "gcc", "cc", "ninja", "nvcc")
TORCH_RELEASE = ".".join(torch.__version__.split("+")[0].split(".")[:2])


def readme_block(name: str) -> str:
    """The bash block after README's `<!-- install: NAME -->` marker."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    return text.split(f"<!-- install: {name} -->\n```bash\n", 1)[1].split("```", 1)[0]


def _sh(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, **kw)
    assert out.returncode == 0, f"{cmd}: exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out


def _bash(block: str, venv, **kw):
    """A README block in bash, `pip` being the venv's (a venv made --without-pip runs the machine's pip)."""
    script = f'pip() {{ "{venv}/bin/python" -m pip "$@"; }}\n{block}'
    return _sh([shutil.which("bash"), "-euo", "pipefail", "-c", script], **kw)


@pytest.fixture(scope="module")
def machine_site(tmp_path_factory):
    """The machine's installed packages (torch, numpy, triton, pip, ...) as links in one folder,
    without this tree's editable install (its finder, .pth file and metadata)."""
    dest = tmp_path_factory.mktemp("machine_site")
    dirs = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p)]
    for d in reversed(dirs):  # an earlier sys.path entry wins
        for name in os.listdir(d):
            if name.startswith(("sdekernels", "__editable__")) or name.endswith(".pth") or name == "__pycache__":
                continue
            link = dest / name
            if link.is_symlink():
                link.unlink()
            link.symlink_to(os.path.join(d, name))
    return dest


def _venv(path, machine_site):
    _sh([sys.executable, "-m", "venv", "--without-pip", str(path)])
    site = _sh([str(path / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    with open(os.path.join(site.stdout.strip(), "machine_site.pth"), "w") as f:
        f.write(f"{machine_site}\n")
    return path


@pytest.fixture(scope="module")
def dist(machine_site, tmp_path_factory):
    """(sdist, wheel): the wheel built from the unpacked sdist (so the sdist is complete) by
    README's "from source" commands, in a fresh venv with the compilers on PATH."""
    if os.environ.get("SDEKERNELS_BUILD_EXT") == "0":
        pytest.skip("SDEKERNELS_BUILD_EXT=0: no compiled extension to ship")
    tmp = tmp_path_factory.mktemp("dist")
    t0 = time.perf_counter()
    hook = f"from setuptools import build_meta as b; print(b.build_sdist({str(tmp)!r}))"
    sdist = tmp / _sh([sys.executable, "-c", hook], cwd=ROOT).stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp, filter="data")
    src = tmp / sdist.name.removesuffix(".tar.gz")
    venv = _venv(tmp / "venv", machine_site)
    env = {k: v for k, v in os.environ.items() if k not in ("SDEKERNELS_CUDA", "PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv}/bin:{os.environ['PATH']}"
    t1 = time.perf_counter()
    _bash(readme_block("source"), venv, cwd=src, env=env)
    print(f"sdist {t1 - t0:.1f} s; README's source route (the compile) {time.perf_counter() - t1:.1f} s")
    (wheel,) = (src / "dist").glob("sdekernels-*.whl")
    return sdist, wheel


def test_wheel_holds_the_extension_spec_reference_and_cli(dist):
    _, wheel = dist
    # a platform wheel: the compiled module for any CPython >= 3.10 (limited API) on this platform
    assert re.fullmatch(rf"sdekernels-{re.escape(sdekernels.__version__)}-cp310-abi3-linux_\w+\.whl", wheel.name)
    z = zipfile.ZipFile(wheel)
    names = set(z.namelist())
    assert "sdekernels/_C.abi3.so" in names, sorted(names)
    assert {"sdekernels/SPEC.md", "sdekernels/reference/__init__.py", "sdekernels/reference/svd.py",
            "sdekernels/__main__.py", "sdekernels/train/sde.py"} <= names
    assert z.read("sdekernels/SPEC.md") == open(os.path.join(ROOT, "SPEC.md"), "rb").read()
    assert not [n for n in names if "csrc" in n], "the sources ship in the sdist, not in a wheel that has _C"
    info = f"sdekernels-{sdekernels.__version__}.dist-info"
    meta = z.read(f"{info}/METADATA").decode()
    assert f"Requires-Dist: torch=={TORCH_RELEASE}.*" in meta, "the wheel must name the torch release it runs with"
    assert "sdekernels = sdekernels.__main__:main" in z.read(f"{info}/entry_points.txt").decode()


def test_sdist_holds_the_sources(dist):
    sdist, _ = dist
    tracked = subprocess.run(["git", "ls-files", "csrc", "reference", "sdekernels", "SPEC.md", "README.md",
                              "setup.py", "pyproject.toml", "MANIFEST.in"], cwd=ROOT, capture_output=True,
                             text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    assert set(tracked) <= names, sorted(set(tracked) - names)


@pytest.fixture(scope="module")
def user(dist, machine_site, tmp_path_factory):
    """README's "from a wheel" commands in a fresh venv, from a folder holding only the wheel, with
    PATH = the venv's bin/ alone; yields run(*args, extra=env) -> CompletedProcess of its python there."""
    _, wheel = dist
    tmp = tmp_path_factory.mktemp("user")
    venv = _venv(tmp / "venv", machine_site)
    cache, cwd = tmp / "torch_extensions", tmp / "work"
    cache.mkdir()
    cwd.mkdir()
    shutil.copy(wheel, cwd)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "TORCH_EXTENSIONS_DIR", "SDEKERNELS_NO_EXT", "TRITON_INTERPRET", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv}/bin", TORCH_EXTENSIONS_DIR=str(cache), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    block = readme_block("wheel")
    assert wheel.name in block, f"README's wheel command should install {wheel.name}"
    readme_info = _bash(block, venv, cwd=cwd, env=env)

    def run(*args, extra=None):
        out = subprocess.run([str(venv / "bin" / "python"), *map(str, args)], cwd=cwd, env=dict(env, **(extra or {})),
                             capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, f"{args}: exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
        return out

    yield run, venv, cwd, readme_info
    assert not os.listdir(cache), f"something was compiled at run time: {os.listdir(cache)}"


def test_installed_without_the_source_tree_or_a_compiler(user):
    run, venv, _, _ = user
    probe = ("import json, shutil, sys, sdekernels; print(json.dumps({'file': sdekernels.__file__, 'path': sys.path, "
             f"'tools': [t for t in {TOOLS!r} if shutil.which(t)]}}))")
    seen = json.loads(run("-c", probe).stdout)
    assert seen["file"].startswith(str(venv)), seen["file"]
    assert not [p for p in seen["path"] if p.startswith(ROOT)], "the source tree is visible"
    assert seen["tools"] == [], f"{seen['tools']} on PATH"


def test_info_reports_prebuilt_and_the_version(user):
    run, venv, _, readme_info = user
    for out in (readme_info, run("-m", "sdekernels", "info")):
        assert f"sdekernels  {sdekernels.__version__}" in out.stdout
        line = next(x for x in out.stdout.splitlines() if x.startswith("extension"))
        assert line.startswith("extension   prebuilt;") and str(venv) in line, line
        assert "just in time" not in out.stderr and "unavailable" not in out.stderr, out.stderr
    assert run("-c", "import sdekernels; print(sdekernels.__version__)").stdout.strip() == sdekernels.__version__
    assert f"Version: {sdekernels.__version__}" in run("-m", "pip", "show", "sdekernels").stdout


# Run in the installed venv: each op whose backward the extension fuses, its float64 gradients
# against the reference's autograd (`check` holds the forwards).
GRADS = """
import json, sdekernels._C
from sdekernels import _ext
from sdekernels.registry import grad_error
errs = {name: grad_error(name) for name in _ext.FUSED_BACKWARD}
print(json.dumps({"status": _ext.status(), "module": sdekernels._C.__file__, "errors": errs}))
"""


def test_the_compiled_backward_is_what_runs_and_is_right(user):
    """The wheel's module is loaded from the venv, and the fused backwards agree with the reference."""
    run, venv, _, _ = user
    seen = json.loads(run("-c", GRADS).stdout)
    assert seen["status"] == "prebuilt" and seen["module"].startswith(str(venv)), seen
    assert sorted(seen["errors"]) == sorted(_ext.FUSED_BACKWARD)
    bad = {k: e for k, e in seen["errors"].items() if not e <= 1e-9}
    assert not bad, f"gradients off the reference's: {bad}"


def test_check_passes(user):
    out = user[0]("-m", "sdekernels", "check")
    assert "all ops agree with the reference" in out.stdout and "FAIL" not in out.stdout
    assert "unavailable" not in out.stderr, out.stderr


def test_one_step_of_each_driver(user):
    run, _, cwd, _ = user
    # asked where the drivers run (the installed venv), which also names an import that fails there
    have = run("-c", "from sdekernels import data; print(data.have_fashion_mnist(), data.have_minilm())").stdout
    require(have.split() == ["True", "True"], f"Fashion-MNIST and MiniLM where the wheel is installed (found {have!r})")
    drivers = {
        "sde": ("--limit", 64, "--test-limit", 32, "--batch-size", 32, "--dim", 16, "--width", 8, "--templates", 2),
        "farl": ("--init", "sde", "--limit", 200, "--test-limit", 20, "--shots", 2, "--batch-size", 4,
                 "--n-tokens", 2, "--n-ctx", 2),
        "esm": ("--limit", 8, "--test-limit", 4, "--batch-size", 4, "--width", 8, "--probe-steps", 1,
                "--probe-samples", 4, "--esm-weight", 0.1),
    }
    for which, args in drivers.items():  # farl starts from sde's model
        out = run("-m", "sdekernels", "train", which, "--out", which, "--steps", 1, "--no-progress", "--threads", 1,
                  *args)
        assert "unavailable" not in out.stderr and "just in time" not in out.stderr, out.stderr
        assert [m["step"] for m in read_metrics(cwd / which)] == [0], which  # one step, the first
