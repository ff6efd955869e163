"""benchmarks/maxbatch.py: its measurement at a tiny size (in this process and in a capped one),
the fit and the derived batch on data whose answer is known, the GPU stage's search on the CPU
with a fake budget, and the README's and results' tables against the committed record."""
import json
import math
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
maxbatch = pytest.importorskip("maxbatch")
MiB = 2**20


def _needs_open_clip():
    from sdekernels.bench import load_open_clip_loss
    if load_open_clip_loss() is None:
        pytest.skip("open-clip-torch is not installed")


def test_explicit_logits_peak_holds_both_logit_matrices_and_ours_does_not():
    """Above the forward's kept-logits budget our peak is below one B×B matrix (a fixed chunk
    workspace and O(B·d)); open_clip's ClipLoss holds at least its two (logits per image, per text)."""
    _needs_open_clip()
    from sdekernels.ops.contrastive import KEEP_ELEMS
    B = int(math.isqrt(KEEP_ELEMS)) + 128
    ours = maxbatch.measure("info_nce", B, 16)
    theirs = maxbatch.measure("open_clip ClipLoss", B, 16)
    assert ours["ok"] and theirs["ok"] and ours["seconds"] > 0
    assert theirs["peak_bytes"] >= 2 * B * B * 4
    assert ours["peak_bytes"] < B * B * 4 and ours["peak_bytes"] < theirs["peak_bytes"] / 3


def test_a_point_in_its_own_process_and_a_capped_one_fails_cleanly():
    _needs_open_clip()
    row = maxbatch.measure_in_process("siglip_loss", 512, 32, "float32")
    assert row["ok"] and row["peak_bytes"] > 2 * 512 * 32 * 4 and row["B"] == 512, row  # at least the two grads
    capped = maxbatch.measure_in_process("open_clip ClipLoss", 4096, 16, "float32", budget=16 * MiB)
    assert not capped["ok"] and re.match(r"(MemoryError|RuntimeError)", capped["error"]), capped


def test_fit_recovers_a_known_model_and_its_largest_batch():
    Bs = [2048, 4096, 8192, 16384]
    quad = {"a": 3e6, "b": 5e3, "c": 16.0}
    got = maxbatch.fit(Bs, [maxbatch.predict(quad, B) for B in Bs])
    for k in "abc":
        assert got[k] == pytest.approx(quad[k], rel=1e-6)
    assert got["order"] == "O(B²)" and 1.9 < got["exponent"] < 2
    kink = maxbatch.fit(Bs, [max(1.6e7 + 8e3 * B, 1e4 * B) for B in Bs])  # two linear phases: O(B)
    assert kink["order"] == "O(B)" and kink["exponent"] == pytest.approx(1.0)
    lin = maxbatch.fit(Bs, [(2e7 + 12e3 * B) * (1 + 0.01 * (-1) ** i) for i, B in enumerate(Bs)])
    assert lin["c"] == 0 and lin["order"] == "O(B)" and lin["b"] == pytest.approx(12e3, rel=0.05)
    for model in (quad, lin):
        for budget in (2**30, 80 * 2**30):
            B = maxbatch.max_batch(model, budget)
            assert maxbatch.predict(model, B) <= budget < maxbatch.predict(model, B + 1)
    assert maxbatch.max_batch(quad, 1e6) == 0
    assert maxbatch.max_batch({"a": 0, "b": 0, "c": 16.0}, 16 * 2**20) == 1024


def test_search_finds_the_boundary():
    calls = []

    def fits(B):
        calls.append(B)
        return B <= 5000, False

    B, why, tries = maxbatch.search(fits, 1024, 2**20, 256)
    assert (B, why) == (4864, "memory") and tries[0] == (1024, True)
    assert maxbatch.search(lambda B: (True, B >= 4096), 1024, 2**20, 256)[:2] == (4096, "time")
    assert maxbatch.search(lambda B: (True, False), 1024, 8192, 256)[:2] == (8192, "hi")
    assert maxbatch.search(lambda B: (False, False), 1024, 8192, 256)[:2] == (0, "memory")


def test_gpu_stage_on_the_cpu_with_a_fake_budget(tmp_path):
    """The GPU stage's code path (measure, then search, the JSON rewritten per loss) on this CPU
    with a 16 MiB budget: each found B fits, B + one step does not."""
    _needs_open_clip()
    maxbatch.gpu(str(tmp_path), dry=True, limit_s=60.0)
    data = json.loads((tmp_path / "maxbatch-gpu.json").read_text())
    budget = data["environment"]["total_memory_bytes"]
    rows = {r["loss"]: r for r in data["rows"]}
    assert set(rows) == set(maxbatch.LOSSES)
    assert "skipped" in rows[maxbatch.INF_CL] or "max_B" in rows[maxbatch.INF_CL]
    for loss in ("info_nce", "open_clip ClipLoss"):
        r = rows[loss]
        assert r["stopped_by"] == "memory" and 64 <= r["max_B"] < 4096, r
        assert maxbatch.measure(loss, r["max_B"], 32)["peak_bytes"] <= budget
        assert maxbatch.measure(loss, r["max_B"] + 64, 32)["peak_bytes"] > budget


def _record():
    if not os.path.exists(maxbatch.RECORD):
        pytest.fail("benchmarks/results/maxbatch-cpu.json is missing: python benchmarks/maxbatch.py --run")
    with open(maxbatch.RECORD) as f:
        return json.load(f)


def test_fits_and_derived_table_follow_from_the_recorded_points():
    record = _record()
    again = maxbatch.fits_and_table(record["points"])
    assert [(f["loss"], f["d"], f["dtype"]) for f in again] == [(f["loss"], f["d"], f["dtype"]) for f in record["fits"]]
    for new, old in zip(again, record["fits"]):
        assert new["max_B_derived"] == old["max_B_derived"]
        assert new["model"]["order"] == old["model"]["order"]
    orders = {f["loss"]: f["model"]["order"] for f in record["fits"] if f["dtype"] == "float32"}
    assert orders == {"info_nce": "O(B)", "siglip_loss": "O(B)", "open_clip ClipLoss": "O(B²)",
                      "open_clip SigLipLoss": "O(B²)"}
    for c in record["confirmations"]:
        assert c["ok"] == c["expected_ok"], c


def test_readme_and_results_tables_are_the_record():
    record = _record()
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    found = re.search(r"<!-- maxbatch-table -->\n(.*?)\n<!-- /maxbatch-table -->", readme, re.S)
    assert found and found.group(1) == maxbatch.readme_table(record)
    assert open(maxbatch.TABLE, encoding="utf-8").read() == maxbatch.markdown(record)
    assert os.path.exists(maxbatch.PLOT)
    env = record["environment"]
    assert re.fullmatch(r"[0-9a-f]{40}", env["commit"]) and env["torch"] and env["machine"]["cpu"]
