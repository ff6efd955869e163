"""SDELoss across processes without gathering its features (SPEC §7): with a global batch B >= d the
spectrum, partition and V come from the all-reduced d×d Gram and each rank enhances its own rows.
2 and 4 gloo processes on CPU, each holding a slice of the batch, give the loss and the gradients
of one process on the whole batch: float64 to 1e-10, float32 within its rounding. rho = 0.05 makes
the bound ‖δ‖ ≤ rho‖σ‖ act, which reads ‖X‖² of the whole batch. Gradient convention as in
test_distributed.py (gather_with_grad: a rank's features receive world_size × their single-process
gradient; local_loss: a rank's loss is its rows' share, and the ranks' losses average to the global
loss).
"""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from helpers import free_port

B, D = 36, 8
CASES = [dict(center=c, local_loss=ll) for c in (False, True) for ll in (False, True)]
DTYPES = (torch.float64, torch.float32)


def _features(dtype):
    """A two-dimensional signal over Gaussian noise (most singular values are noise: the enhancement's
    noise scaling, which reads ‖X‖² of the whole batch, is exercised), with a mean row."""
    g = torch.Generator().manual_seed(11)
    signal = torch.randn(B, 2, generator=g, dtype=torch.float64) @ torch.randn(2, D, generator=g, dtype=torch.float64)
    F_a = 3 * signal + torch.randn(B, D, generator=g, dtype=torch.float64) + 0.3
    F_b = 2 * signal + torch.randn(B, D, generator=g, dtype=torch.float64) - 0.2
    return F_a.to(dtype), F_b.to(dtype)


def _run(F_a, F_b, case, gather: bool):
    """(loss, dL/dF_a, dL/dF_b, dL/dlogit_scale, whether the Gram path ran) of SDELoss on these rows."""
    from sdekernels.nn import SDELoss

    loss_fn = SDELoss(10, gather=gather, generator=torch.Generator().manual_seed(5), rho=0.05, **case)
    F_a, F_b = F_a.clone().requires_grad_(), F_b.clone().requires_grad_()
    s = torch.tensor(6.0, dtype=F_a.dtype, requires_grad=True)
    loss = loss_fn(F_a, F_b, s, step=4)
    loss.backward()
    return [loss.detach(), F_a.grad, F_b.grad, s.grad], loss_fn._gram_rows(F_a) is not None


def _signal_values(F_a, case) -> int:
    from sdekernels.nn import SDELoss

    loss_fn = SDELoss(10, generator=torch.Generator().manual_seed(5), **case)
    loss_fn(F_a, F_a.flip(0), step=4)
    return int(loss_fn.last_stats["n_strong_a"] + loss_fn.last_stats["n_weak_a"])


def _worker(rank, world, init, path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        out = {}
        for dtype in DTYPES:
            F_a, F_b = _features(dtype)
            part = slice(rank * B // world, (rank + 1) * B // world)  # even: the gather needs equal sizes
            for i, case in enumerate(CASES):
                out[dtype, i] = _run(F_a[part], F_b[part], case, gather=True)
        torch.save(out, os.path.join(path, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("world", [2, 4])
def test_gram_path_equals_one_process_on_the_whole_batch(tmp_path, world):
    mp.spawn(_worker, args=(world, f"tcp://127.0.0.1:{free_port()}", str(tmp_path)), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    for dtype in DTYPES:
        tol = dict(atol=1e-12, rtol=1e-10) if dtype == torch.float64 else dict(atol=2e-6, rtol=2e-4)
        F_a, F_b = _features(dtype)
        for i, case in enumerate(CASES):
            (loss, dF_a, dF_b, ds), gram = _run(F_a, F_b, case, gather=False)
            assert not gram
            assert _signal_values(F_a, case) < D, "no noise values: the noise scaling goes untested"
            local = case["local_loss"]
            total = torch.zeros(())
            for r, res in enumerate(ranks):
                (got_loss, got_dF_a, got_dF_b, got_ds), got_gram = res[dtype, i]
                what = f"{dtype} {case} rank {r}/{world}"
                assert got_gram, f"{what}: the Gram path did not run"
                part = slice(r * B // world, (r + 1) * B // world)
                if not local:  # every rank computes the global loss
                    torch.testing.assert_close(got_loss, loss, **tol, msg=f"loss, {what}")
                    torch.testing.assert_close(got_ds, ds, **tol, msg=f"d logit_scale, {what}")
                total = total + got_loss.double()
                torch.testing.assert_close(got_dF_a / world, dF_a[part], **tol, msg=f"dF_a, {what}")
                torch.testing.assert_close(got_dF_b / world, dF_b[part], **tol, msg=f"dF_b, {what}")
            if local:  # the ranks' shares of the instance term (the spectral term on each) average to the loss
                torch.testing.assert_close(total / world, loss.double(), **tol, msg=f"mean of the local losses, {case}")


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_local_loss_in_one_process_is_the_global_loss(impl):
    """Without a process group local_loss=True is the loss of every row, gradients included: the columns
    are this process's own features, live (as in open_clip's ClipLoss), never detached."""
    import sdekernels.nn
    import sdekernels.reference

    cls = sdekernels.nn.SDELoss if impl == "fused" else sdekernels.reference.SDELoss
    F_a, F_b = _features(torch.float64)
    out = []
    for local in (False, True):
        a, b = F_a.clone().requires_grad_(), F_b.clone().requires_grad_()
        loss = cls(10, local_loss=local, generator=torch.Generator().manual_seed(5))(a, b, step=4)
        loss.backward()
        out.append((loss.detach(), a.grad, b.grad))
    for x, y in zip(*out):
        torch.testing.assert_close(x, y, atol=1e-14, rtol=1e-12)
