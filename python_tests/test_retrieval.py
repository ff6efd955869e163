"""Retrieval losses (SPEC §6): hard negatives and labels in info_nce, the reference against
sentence-transformers' MultipleNegativesRankingLoss math and against the SPEC written out per row,
the fused paths against the reference, memory without the logits."""
import pytest
import torch

import sdekernels
import sdekernels.ops.contrastive as C
import sdekernels.reference as ref

from helpers import PATHS, on_path, require_module
from test_contrastive import _peak_bytes


def _batch(R, B, K, d, dtype=torch.float64, seed=0, n_labels=None):
    g = torch.Generator().manual_seed(seed)
    z_a = torch.randn(R, B, d, generator=g, dtype=torch.float64)
    z_b = 0.7 * z_a + torch.randn(R, B, d, generator=g, dtype=torch.float64)
    neg = 0.4 * z_a[:, :, None] + torch.randn(R, B, K, d, generator=g, dtype=torch.float64)  # hard: near the anchor
    labels = None if n_labels is None else torch.randint(0, n_labels, (B,), generator=g)
    return z_a.to(dtype), z_b.to(dtype), neg.to(dtype), labels


def _loss_and_grads(fn, z_a, z_b, neg, path="aten", **kw):
    leaves = [t.detach().clone().requires_grad_() for t in (z_a, z_b, neg)]
    with on_path(path):
        loss = fn(leaves[0], leaves[1], negatives=leaves[2] if neg.shape[-2] else None, **kw)
        grads = torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)
    return loss.detach(), grads


# ------------------------------------------------------------------ the reference


def _spec_rows(logits, pos, keep):
    """SPEC §6 written out row by row: log Σ_K e^l − log Σ_P e^l."""
    out = []
    for i in range(logits.shape[0]):
        k = [logits[i, j] for j in range(logits.shape[1]) if keep[i][j]]
        p = [logits[i, j] for j in range(logits.shape[1]) if pos[i][j]]
        out.append(torch.logsumexp(torch.stack(k), 0) - torch.logsumexp(torch.stack(p), 0))
    return torch.stack(out).mean()


@pytest.mark.parametrize("mask_duplicates", [False, True])
@pytest.mark.parametrize("symmetric", [False, True])
def test_reference_labels_follow_the_spec_row_by_row(symmetric, mask_duplicates):
    z_a, z_b, neg, y = _batch(1, 9, 2, 5, n_labels=3)
    s = 4.0
    a, b, n = (torch.nn.functional.normalize(t[0].reshape(-1, 5), dim=-1) for t in (z_a, z_b, neg))
    logits = s * a @ torch.cat([b, n]).T  # [9, 9 + 18]
    B, N = 9, 18
    same = [[j < B and bool(y[i] == y[j]) for j in range(B + N)] for i in range(B)]
    own = [[j == i for j in range(B + N)] for i in range(B)]
    if mask_duplicates:
        pos, keep = own, [[own[i][j] or not same[i][j] for j in range(B + N)] for i in range(B)]
    else:
        pos, keep = same, [[True] * (B + N) for _ in range(B)]
    want = _spec_rows(logits, pos, keep)
    if symmetric:
        tr = lambda m: [[m[i][j] for i in range(B)] for j in range(B)]  # noqa: E731
        want = 0.5 * (want + _spec_rows(logits[:, :B].T, tr(pos), tr(keep)))
    got = ref.info_nce(z_a, z_b, logit_scale=s, negatives=neg, labels=y, mask_duplicates=mask_duplicates,
                       symmetric=symmetric)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def test_reference_labels_reduce_to_the_plain_loss():
    """Distinct labels: no other positive and nothing to mask."""
    z_a, z_b, neg, _ = _batch(2, 11, 3, 6)
    y = torch.randperm(11)
    plain = ref.info_nce(z_a, z_b, 0.2, negatives=neg)
    for md in (False, True):
        torch.testing.assert_close(ref.info_nce(z_a, z_b, 0.2, negatives=neg, labels=y, mask_duplicates=md), plain,
                                   atol=1e-14, rtol=1e-14)
    # masking a duplicate pair is removing its columns from the other's candidates by hand
    y = torch.arange(11)
    y[4] = 7
    a, b = (torch.nn.functional.normalize(t[0], dim=-1) for t in (z_a, z_b))
    logits = 5.0 * a @ b.T
    logits[4, 7] = logits[7, 4] = float("-inf")
    want = torch.nn.functional.cross_entropy(logits, torch.arange(11))
    got = ref.info_nce(z_a[:1], z_b[:1], logit_scale=5.0, labels=y, mask_duplicates=True, symmetric=False)
    torch.testing.assert_close(got, want, atol=1e-14, rtol=1e-14)


@pytest.mark.parametrize("K", [0, 1, 3])
@pytest.mark.parametrize("similarity", ["cos", "dot"])
def test_reference_is_sentence_transformers_mnrl(K, similarity):
    """MNRL (query_to_doc) and its symmetric form (per-direction doc_to_query) on (anchor, positive,
    negative_1..K) columns, as sentence-transformers computes them from the embeddings."""
    require_module("sentence_transformers")
    from sentence_transformers import util
    from sentence_transformers.sentence_transformer import losses

    z_a, z_b, neg, _ = _batch(1, 12, K, 16)
    z_a, z_b, neg = z_a[0], z_b[0], neg[0]
    columns = [z_a, z_b] + [neg[:, k] for k in range(K)]
    fct = util.cos_sim if similarity == "cos" else util.dot_score
    scale = 20.0 if similarity == "cos" else 1.0
    normalize = similarity == "cos"
    for directions, symmetric in ((("query_to_doc",), False), (("query_to_doc", "doc_to_query"), True)):
        mode = "per_direction" if symmetric else "joint"
        st = losses.MultipleNegativesRankingLoss(None, scale=scale, similarity_fct=fct, directions=directions,
                                                 partition_mode=mode)
        leaves = [c.clone().requires_grad_() for c in columns]
        want = st.compute_loss_from_embeddings(leaves, None)
        want_g = torch.autograd.grad(want, leaves)
        got, got_g = _loss_and_grads(sdekernels.info_nce, z_a, z_b, neg, logit_scale=scale, normalize=normalize,
                                     symmetric=symmetric)
        got_g = [got_g[0], got_g[1]] + [got_g[2][:, k] for k in range(K)]
        torch.testing.assert_close([got, *got_g], [want.detach(), *want_g], atol=1e-12, rtol=1e-10)


# ------------------------------------------------------------------ the fused paths


CASES = [dict(), dict(labels=True), dict(labels=True, mask_duplicates=True)]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("layout", ["per_row", "shared"])
def test_fused_matches_reference(path, case, layout):
    kw = dict(CASES[case])
    z_a, z_b, neg, y = _batch(2, 37, 2, 11, n_labels=5)  # 37 rows: partial tiles
    if layout == "shared":
        neg = neg[:, :20].flatten(1, 2)  # [R, N, d], N not a multiple of B
    if kw.pop("labels", False):
        kw["labels"] = y if layout == "per_row" else torch.stack([y, y.flip(0)])
    for symmetric in (True, False):
        for scale in (None, 7.0):
            k = dict(kw, symmetric=symmetric, temperature=0.2) if scale is None else dict(kw, logit_scale=scale,
                                                                                           symmetric=symmetric)
            got = _loss_and_grads(sdekernels.info_nce, z_a, z_b, neg, path, **k)
            want = _loss_and_grads(ref.info_nce, z_a, z_b, neg, **k)
            torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("path", PATHS)
def test_float32_and_unnormalised(path):
    z_a, z_b, neg, y = _batch(1, 40, 3, 24, torch.float32, n_labels=6)
    for kw in (dict(), dict(labels=y), dict(labels=y, mask_duplicates=True)):
        for normalize in (True, False):
            k = dict(kw, logit_scale=14.0 if normalize else 1.0, normalize=normalize)
            got = _loss_and_grads(sdekernels.info_nce, z_a, z_b, neg, path, **k)
            want = _loss_and_grads(ref.info_nce, z_a.double(), z_b.double(), neg.double(), **k)
            torch.testing.assert_close([got[0], *got[1]], [want[0].float(), *(g.float() for g in want[1])],
                                       atol=2e-6, rtol=1e-4)


@pytest.mark.parametrize("path", PATHS)
def test_gradcheck(path):
    """Float64 finite differences of the fused op, the logit scale included."""
    z_a, z_b, neg, y = _batch(1, 6, 2, 4, n_labels=3)
    for kw in (dict(), dict(labels=y), dict(labels=y, mask_duplicates=True)):
        leaves = [t.clone().requires_grad_() for t in (z_a, z_b, neg, torch.tensor(3.0, dtype=torch.float64))]
        with on_path(path):
            assert torch.autograd.gradcheck(
                lambda a, b, n, s, kw=kw: sdekernels.info_nce(a, b, logit_scale=s, negatives=n, **kw), leaves)


@pytest.mark.parametrize("keep", [0, 1 << 24])
def test_chunk_boundaries(monkeypatch, keep):
    """Row chunks of the CPU path that do not divide B, with and without the kept logits."""
    monkeypatch.setattr(C, "CHUNK_ELEMS", 7 * 45 * 3)  # a few rows per chunk
    monkeypatch.setattr(C, "KEEP_ELEMS", keep)
    z_a, z_b, neg, y = _batch(2, 45, 2, 6, n_labels=9)
    for kw in (dict(), dict(labels=y), dict(labels=y, mask_duplicates=True)):
        got = _loss_and_grads(sdekernels.info_nce, z_a, z_b, neg, logit_scale=5.0, **kw)
        want = _loss_and_grads(ref.info_nce, z_a, z_b, neg, logit_scale=5.0, **kw)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("labels", [False, True])
def test_memory_without_the_logits(monkeypatch, labels):
    """Forward + backward with B·K negatives hold O(chunk·(B + BK) + (B + BK)·d), never B×B(1+K)."""
    B, K, d = 1024, 3, 8
    monkeypatch.setattr(C, "CHUNK_ELEMS", 1 << 16)
    monkeypatch.setattr(C, "KEEP_ELEMS", 1 << 16)
    z_a, z_b, neg, y = _batch(1, B, K, d, torch.float32, n_labels=B // 2)
    z_a, z_b, neg = (t.requires_grad_() for t in (z_a, z_b, neg))
    kw = dict(labels=y) if labels else {}

    def ours():
        sdekernels.info_nce(z_a, z_b, negatives=neg, **kw).backward()

    def explicit():
        ref.info_nce(z_a, z_b, negatives=neg, **kw).backward()

    logits_bytes = B * B * (1 + K) * 4
    assert _peak_bytes(ours) < logits_bytes / 8
    assert _peak_bytes(explicit) > logits_bytes


def test_bad_arguments():
    z = torch.randn(2, 8, 4)
    for neg in (torch.randn(2, 7, 2, 4), torch.randn(2, 8, 2, 5), torch.randn(3, 5, 4), torch.randn(2, 5, 4).double(),
                [1.0]):
        with pytest.raises(ValueError, match="negatives"):
            sdekernels.info_nce(z, z, negatives=neg)
    for labels in (torch.zeros(8), torch.zeros(7, dtype=torch.long), torch.zeros(3, 8, dtype=torch.long),
                   torch.zeros(8, dtype=torch.bool), [0] * 8):
        with pytest.raises(ValueError, match="labels"):
            sdekernels.info_nce(z, z, labels=labels)


def test_empty_batch():
    z = torch.randn(0, 8, 4, requires_grad=True)
    neg = torch.randn(0, 8, 2, 4, requires_grad=True)
    loss = sdekernels.info_nce(z, z, negatives=neg, labels=torch.zeros(0, 8, dtype=torch.long))
    loss.backward()
    assert float(loss) == 0 and neg.grad is not None and not neg.grad.any()


# ------------------------------------------------------------------ VLM2Vec


def vlm2vec_simple_contrastive_loss(x, y, temperature=0.02):
    """VLM2Vec's SimpleContrastiveLoss, transcribed from TIGER-AI-Lab/VLM2Vec, commit
    6ac33bb7e3049a0054a5952090f02ee5348fc4ed, src/loss.py lines 7-18: queries x [B, d], targets
    y [B·n, d] with query i's positive at row i·n (n = y rows / x rows, its hard negatives after it);
    logits = x yᵀ (no normalisation in the loss), cross-entropy of logits / temperature, mean."""
    n = y.shape[0] // x.shape[0]
    target = torch.arange(0, x.shape[0] * n, n)
    return torch.nn.functional.cross_entropy((x @ y.T) / temperature, target)


@pytest.mark.parametrize("K", [0, 2])
def test_vlm2vec_simple_contrastive_loss(K):
    """Its [B(1+K), d] targets are our z_b = y[:, 0] and negatives = y[:, 1:] of y.view(B, 1 + K, d)."""
    B, d = 10, 8
    g = torch.Generator().manual_seed(4)
    x = torch.nn.functional.normalize(torch.randn(B, d, generator=g, dtype=torch.float64), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(B * (1 + K), d, generator=g, dtype=torch.float64), dim=-1)
    leaves = [x.clone().requires_grad_(), y.clone().requires_grad_()]
    want = vlm2vec_simple_contrastive_loss(*leaves)
    want_g = torch.autograd.grad(want, leaves)
    leaves = [x.clone().requires_grad_(), y.clone().requires_grad_()]
    per_query = leaves[1].view(B, 1 + K, d)
    got = sdekernels.info_nce(leaves[0], per_query[:, 0], 0.02, normalize=False, symmetric=False,
                              negatives=per_query[:, 1:] if K else None)
    got_g = torch.autograd.grad(got, leaves)
    torch.testing.assert_close([got, *got_g], [want, *want_g], atol=1e-12, rtol=1e-10)


# ------------------------------------------------------------------ siglip_loss


@pytest.mark.parametrize("path", PATHS)
def test_siglip_with_negatives(path):
    """Hard negatives are extra y = −1 columns; per row layout [B, K, d] or shared [N, d]."""
    z_a, z_b, neg, _ = _batch(2, 21, 2, 9)
    for negatives in (neg, neg[:, :5].flatten(1, 2)):
        got = _loss_and_grads(sdekernels.siglip_loss, z_a, z_b, negatives, path, logit_scale=8.0, logit_bias=-4.0)
        want = _loss_and_grads(ref.siglip_loss, z_a, z_b, negatives, logit_scale=8.0, logit_bias=-4.0)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)
    # the reference against the explicit ±1 matrix written out for one element
    a, b, n = (torch.nn.functional.normalize(t[0].reshape(-1, 9), dim=-1) for t in (z_a, z_b, neg))
    L = 8.0 * a @ torch.cat([b, n]).T - 4.0
    y = -torch.ones_like(L)
    y[range(21), range(21)] = 1
    want = -torch.nn.functional.logsigmoid(y * L).sum() / 21
    torch.testing.assert_close(ref.siglip_loss(z_a[:1], z_b[:1], 8.0, -4.0, negatives=neg[:1]), want)


def test_opcheck_with_negatives_and_labels():
    """The custom op's fake, autograd and schema registrations with the new arguments."""
    z_a, z_b, neg, y = _batch(1, 8, 2, 4, n_labels=3)
    cols = torch.cat([z_b, neg.flatten(1, 2)], 1)
    s = torch.tensor(5.0, dtype=torch.float64)
    for extra in ((8,), (8, y, y, 1), (8, y, y, 2)):
        for symmetric in (True, False):
            leaves = [t.clone().requires_grad_() for t in (z_a, cols, s)]
            torch.library.opcheck(C._info_nce, (*leaves, 0, True, symmetric, *extra))
