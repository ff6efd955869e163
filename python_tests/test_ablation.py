"""The SDE ablation's switches (center=True, spectral_terms, no enhancement) against the reference,
and the ablation script's cells (benchmarks/sde_ablation.py): exact repeats of one command."""
import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import torch
import torch.nn.functional as Fn

import sdekernels as sk
import sdekernels.nn as snn
import sdekernels.reference as ref
from sdekernels.data import FASHION_DIR, have_fashion_mnist
from sdekernels.train.cells import platform

from helpers import require

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = [{}, {"center": True}, {"center": True, "mode": "augment"}, {"spectral_terms": ("subspace",)},
            {"spectral_terms": ("hellinger",)}, {"spectral_terms": ()},
            {"eps_strong": 0.0, "gamma_weak": 0.0, "gamma_noise": 0.0}, {"lambda_start": 0.3, "lambda_end": 0.3}]


def _features(gen, m=48, n=12):
    """Normalised features sharing one mean direction (as a CLIP batch does) plus a rank-3 signal."""
    a = torch.randn(m, n, generator=gen, dtype=torch.float64) * 0.3 + 2.0
    a[:, :3] += torch.randn(m, 3, generator=gen, dtype=torch.float64) * 1.5
    b = a + 0.2 * torch.randn(m, n, generator=gen, dtype=torch.float64)
    return Fn.normalize(a, dim=-1), Fn.normalize(b, dim=-1)


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
def test_sdeloss_variant_matches_reference(kw):
    a, b = _features(torch.Generator().manual_seed(0))
    out = []
    for cls in (snn.SDELoss, ref.SDELoss):
        A, B = a.clone().requires_grad_(), b.clone().requires_grad_()
        loss = cls(10, generator=torch.Generator().manual_seed(3), **kw)
        value = loss(A, B, torch.tensor(10.0, dtype=torch.float64), step=4)
        value.backward()
        out.append((value.detach(), A.grad, B.grad, loss.last_stats))
    (l1, ga1, gb1, s1), (l2, ga2, gb2, s2) = out
    torch.testing.assert_close(l1, l2, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(ga1, ga2, atol=1e-11, rtol=1e-8)
    torch.testing.assert_close(gb1, gb2, atol=1e-11, rtol=1e-8)
    assert s1 == pytest.approx(s2, rel=1e-9, abs=1e-12)
    if kw.get("spectral_terms") == ():
        assert s1["loss_spec"] == 0.0


def test_center_removes_the_mean_direction():
    """Uncentred, the shared mean direction is one more signal value, holding almost all energy;
    centred, the partition sees the planted rank-3 signal alone."""
    a, _ = _features(torch.Generator().manual_seed(1), m=200, n=40)
    plain = sk.spectral_partition(sk.singular_values(a), 200, 40)
    S = sk.singular_values(a - a.mean(0))
    centred = sk.spectral_partition(S, 200, 40, center=True)
    assert float(plain.energy[0]) > 0.9 and int(plain.n_strong + plain.n_weak) == 4
    assert int(centred.n_strong + centred.n_weak) == 3 and float(centred.energy[0]) < float(plain.energy[0])
    want = ref.spectral_partition(S, 200, 40, center=True)
    assert torch.equal(centred.n_strong, want.n_strong) and torch.equal(centred.n_weak, want.n_weak)


def test_center_keeps_the_mean_rows():
    a, _ = _features(torch.Generator().manual_seed(2))
    for op in (sk.spectral_enhance, ref.spectral_enhance):
        out = op(a, 0.5, generator=torch.Generator().manual_seed(0), center=True)
        torch.testing.assert_close(out.mean(0), a.mean(0), atol=1e-12, rtol=0)
        assert not torch.allclose(out, a)


def test_center_argument_checks():
    S = torch.rand(4, 3)
    with pytest.raises(TypeError, match="center"):
        sk.spectral_partition(S, 3, 5, center=1)
    with pytest.raises(ValueError, match="center"):
        sk.spectral_enhance(torch.randn(1, 4), 0.5, center=True)
    with pytest.raises(ValueError, match="spectral_terms"):
        snn.SDELoss(10, spectral_terms=("entropy",))


STUDIES = ("sde_ablation", "farl_study", "esm_study")


def _script(name="sde_ablation"):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", STUDIES)
def test_study_record_is_complete(name):
    """Every (variant, seed) has its cell, with the command the study gives it today, its metric key
    and every recorded measurement; cells of one starting model agree on it."""
    study = _script(name).STUDY
    record = study.load_record()
    cells = record["cells"]
    assert {(c["variant"], c["seed"]) for c in cells} == {(v, s) for v in study.variants for s in study.seeds}
    for c in cells:
        assert c["command"] == shlex.join(study.command(c["variant"], c["seed"], c["steps"]))
        assert c["metric"] == study.metric and all(k in c for k in study.extra)
    assert set(record.get("needs", {})) == set(study.needs)
    for need, entry in record.get("needs", {}).items():
        assert entry["command"] == shlex.join(study.need(need)[0]) and len(entry["sha256"]) == 64


@pytest.mark.parametrize("name", STUDIES)
def test_study_record_names_its_commit(name):
    """The record says at which commit, CPU capability and torch its cells were measured, and how to
    re-verify one; that commit is in this checkout's history."""
    import subprocess

    record = _script(name).STUDY.load_record()
    assert {"commit", "cpu_capability", "torch", "verify"} <= set(record)
    assert len(record["commit"]) == 40 and f"benchmarks/{name}.py --verify" in record["verify"]
    known = subprocess.run(["git", "cat-file", "-e", record["commit"] + "^{commit}"], cwd=ROOT, capture_output=True)
    if known.returncode != 0 and (ROOT / ".git").exists():
        shallow = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=ROOT, capture_output=True,
                                 text=True).stdout.strip()
        assert shallow == "true", f"the {name} record's commit {record['commit']} is not in this history"


def test_ablation_record_values():
    cells = _script().STUDY.load_record()["cells"]
    assert all(0.0 <= c["value"] <= 1.0 for c in cells)


def test_ablation_cell_repeats_exactly(tmp_path, monkeypatch):
    """One short cell (the centred variant, 3 steps) twice: identical accuracies and energies."""
    require(have_fashion_mnist(), f"Fashion-MNIST ({FASHION_DIR})")
    mod = _script()
    monkeypatch.chdir(tmp_path)
    first, second = (mod.run_cell("center", 0, 3) for _ in range(2))
    for k in ("value", *mod.EXTRA):
        assert first[k] == second[k], k


@pytest.mark.parametrize("name, cell", [("sde_ablation", ("sde", 0)), ("esm_study", ("esm", 0))])
def test_study_record_reproduces_at_head(name, cell, tmp_path, monkeypatch):
    """One recorded cell, trained again at HEAD, equals the record bit for bit: full SDE (the SVD,
    partition, enhancement, both spectral terms and info_nce) and ESM (esm_loss, radial_psd and the
    probe). A change of the numerics fails here until the record is measured again
    (`python benchmarks/<study>.py --run --fresh`). Bit-for-bit holds on the CPU capability and
    torch the record names; elsewhere torch dispatches to other kernels, so the test says so and skips.
    (A FARL cell needs its 2000-step prerequisite: `python benchmarks/farl_study.py --verify farl:0`.)"""
    mod = _script(name)
    if name == "sde_ablation":
        require(have_fashion_mnist(), "Fashion-MNIST")
    study, here = mod.STUDY, platform()
    record = study.load_record()
    if any(record.get(k) != here[k] for k in here):
        pytest.skip(f"record measured on {[record.get(k) for k in here]}, this machine is {list(here.values())}")
    want = next(c for c in record["cells"] if (c["variant"], c["seed"]) == cell)
    monkeypatch.chdir(tmp_path)
    again = study.run_cell(*cell, want["steps"])
    assert study.differences(want, again) == [], (want, again)


@pytest.mark.parametrize("name", STUDIES)
def test_report_tables_are_the_records(name):
    """training.md's table of each study is the one its record gives (`--report` wrote it)."""
    mod = _script(name)
    doc = (ROOT / "benchmarks" / "training.md").read_text()
    begin, end = f"<!-- {name}:begin -->\n", f"\n<!-- {name}:end -->"
    assert doc[doc.index(begin) + len(begin):doc.index(end)] == mod.table(mod.STUDY.load_record()["cells"])


@pytest.mark.parametrize("name, row", [("farl_study", "| FARL study"), ("esm_study", "| ESM study")])
def test_readme_figures_come_from_the_records(name, row):
    """Every "mean ± std" of the README's summary row of a study is in the study's table."""
    mod = _script(name)
    line = next(x for x in (ROOT / "README.md").read_text().splitlines() if x.startswith(row))
    figures = re.findall(r"\d+\.\d+ ± \d+\.\d+", line)
    table = mod.table(mod.STUDY.load_record()["cells"])
    assert figures and [f for f in figures if f not in table] == []


def test_study_run_keeps_and_never_drops_cells(tmp_path, monkeypatch):
    """A run keeps the recorded cells of today's commands and code, and refuses to drop a recorded cell
    it would not measure again (a --fresh run of one variant); neither trains anything here."""
    import subprocess

    from sdekernels.train import cells

    monkeypatch.setattr(cells, "RESULTS", tmp_path)
    study = cells.Study("probe_study", "esm", {"a": [], "b": ["--dsm"]}, shared=[], metric="after.psnr",
                        extra={}, steps=5)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    if not head:
        pytest.skip("needs a git checkout")
    monkeypatch.setattr(study, "head", lambda: head)
    recorded = [{"variant": v, "seed": s, "steps": 5, "command": shlex.join(study.command(v, s)), "commit": head}
                for v in "ab" for s in (0, 1)]
    study.save(recorded, {"commit": head, **platform(), "needs": {}})
    with pytest.raises(SystemExit, match="would drop"):
        study.run(1, ["a"], [0], fresh=True)
    with pytest.raises(SystemExit, match="would drop"):
        study.run(1, ["a", "b"], [0], steps=7)
    study.run(1, ["a", "b"], [0, 1])  # every cell current: nothing to train
    assert study.load_record()["cells"] == recorded
