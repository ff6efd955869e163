"""python -m sdekernels info | check | bench, run as a user would."""
import subprocess
import sys

import pytest

from sdekernels.__main__ import main
from sdekernels.registry import all_ops

from helpers import require


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


def _assert_usage_error(argv, capsys, *words):
    """argv is refused by the parser: exit code 2, one line on stderr naming the problem, no traceback."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and "error" in err, err
    for w in words:
        assert w in err, err


@pytest.mark.parametrize("cmd", ["check", "bench"])
def test_unknown_op_is_an_error_listing_the_known(cmd, capsys):
    _assert_usage_error([cmd, "--op", "hellinger", "--op", "nope"], capsys, "nope", *sorted(all_ops()))


@pytest.mark.parametrize("cmd", ["check", "bench"])
@pytest.mark.parametrize("device", ["cuda:99", "nonsense", "meta"])
def test_device_must_exist(cmd, device, capsys):
    _assert_usage_error([cmd, "--device", device], capsys, "--device", device)


COMMON_BAD = [("--steps", "0"), ("--steps", "-3"), ("--steps", "1.5"), ("--batch-size", "0"), ("--ckpt-every", "0"),
              ("--log-every", "0"), ("--threads", "0"), ("--limit", "0"), ("--test-limit", "0"), ("--stop-after", "0"),
              ("--seed", "-1"), ("--lr", "0"), ("--lr", "-1e-3"), ("--lr", "nan"), ("--lr", "inf"),
              ("--device", "cuda:99"), ("--dtype", "float16")]
DRIVER_BAD = {
    "sde": [("--dim", "0"), ("--width", "0"), ("--templates", "0"), ("--templates", "25")],
    "farl": [("--shots", "0"), ("--n-ctx", "0"), ("--n-tokens", "0"), ("--amp-mix", "-0.1"), ("--amp-mix", "1.5"),
             ("--amp-alpha", "2"), ("--amp-alpha", "nan")],
    "esm": [("--esm-weight", "-1"), ("--esm-weight", "inf"), ("--width", "0"), ("--probe-steps", "-1"),
            ("--probe-samples", "0")],
}


@pytest.mark.parametrize("which,opt,value", [(w, o, v) for w in DRIVER_BAD for o, v in COMMON_BAD + DRIVER_BAD[w]])
def test_train_options_are_validated(which, opt, value, tmp_path, capsys):
    argv = ["train", which, "--out", str(tmp_path / "run"), opt, value]
    if which == "farl":
        argv += ["--init", str(tmp_path)]
    _assert_usage_error(argv, capsys, opt)
    assert not (tmp_path / "run").exists()


def test_limits_within_the_data(tmp_path, capsys):
    from sdekernels import data

    require(data.have_fashion_mnist(), f"Fashion-MNIST ({data.FASHION_DIR})")
    out = str(tmp_path / "run")
    _assert_usage_error(["train", "sde", "--out", out, "--limit", "60001"], capsys, "--limit", "60000")
    _assert_usage_error(["train", "sde", "--out", out, "--test-limit", "10001"], capsys, "--test-limit", "10000")
    # rank-deficient image features (dim > 4·width + 1): the reference's SVD gradient is undefined
    _assert_usage_error(["train", "sde", "--out", out, "--width", "8", "--dim", "64", "--batch-size", "48",
                         "--backend", "reference"], capsys, "--dim", "--width")
    (tmp_path / "model.pt").write_bytes(b"")  # never read: the options are checked first
    _assert_usage_error(["train", "farl", "--out", out, "--init", str(tmp_path), "--limit", "30", "--shots", "16"],
                        capsys, "--shots")
