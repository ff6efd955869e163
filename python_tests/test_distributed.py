"""gather=True across processes: 2 gloo processes on CPU, each holding half of the batch, give the
loss and the gradients of one process on the whole batch (info_nce and SDELoss).

Gradient convention (open_clip's gather_with_grad): every rank computes the same global loss, and
the backward of the all-gather sums the ranks' gradients, so a rank's local features receive
world_size × their single-process gradient; DDP's averaging of parameter gradients makes that
exact. The test checks both: the local feature gradients / world_size, and the parameters of a
linear encoder after averaging their gradients over the ranks as DDP does.
"""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from helpers import average_over_ranks, free_port

WORLD = 2
B, D_IN, D = 24, 12, 10


def _data():
    g = torch.Generator().manual_seed(0)
    x_a = torch.randn(B, D_IN, generator=g, dtype=torch.float64)
    x_b = torch.randn(B, D_IN, generator=g, dtype=torch.float64)
    w_a = torch.randn(D_IN, D, generator=g, dtype=torch.float64)
    w_b = torch.randn(D_IN, D, generator=g, dtype=torch.float64)
    return x_a, x_b, w_a, w_b


def _losses(gather: bool):
    """(name, fn(F_a, F_b, logit_scale)) of the losses under test."""
    import sdekernels
    from sdekernels.nn import SDELoss

    sde = SDELoss(10, gather=gather, generator=torch.Generator().manual_seed(3))
    return [("info_nce", lambda a, b, s: sdekernels.info_nce(a, b, logit_scale=s, gather=gather)),
            ("sde", lambda a, b, s: sde(a, b, s, step=4))]


def _run(x_a, x_b, w_a, w_b, gather: bool):
    """Per loss: (loss, dL/dF_a, dL/dF_b, dL/dW_a, dL/dW_b, dL/dlogit_scale)."""
    out = {}
    for name, fn in _losses(gather):
        W_a, W_b = w_a.clone().requires_grad_(), w_b.clone().requires_grad_()
        s = torch.tensor(8.0, dtype=torch.float64, requires_grad=True)
        F_a, F_b = x_a @ W_a, x_b @ W_b
        F_a.retain_grad()
        F_b.retain_grad()
        loss = fn(F_a, F_b, s)
        loss.backward()
        out[name] = [loss.detach(), F_a.grad, F_b.grad, W_a.grad, W_b.grad, s.grad]
    return out


def _worker(rank, init, path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        x_a, x_b, w_a, w_b = _data()
        part = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
        out = _run(x_a[part], x_b[part], w_a, w_b, gather=True)
        for res in out.values():
            average_over_ranks(res[3:], WORLD)  # DDP: parameter gradients averaged over the ranks
        torch.save(out, os.path.join(path, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_processes_equal_one_process_on_the_whole_batch(tmp_path):
    mp.spawn(_worker, args=(f"tcp://127.0.0.1:{free_port()}", str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    whole = _run(*_data(), gather=False)
    for name, (loss, dF_a, dF_b, dW_a, dW_b, ds) in whole.items():
        for r, res in enumerate(ranks):
            part = slice(r * B // WORLD, (r + 1) * B // WORLD)
            got_loss, got_dF_a, got_dF_b, got_dW_a, got_dW_b, got_ds = res[name]
            torch.testing.assert_close(got_loss, loss, atol=1e-12, rtol=1e-10, msg=f"{name} loss, rank {r}")
            torch.testing.assert_close(got_dF_a / WORLD, dF_a[part], atol=1e-12, rtol=1e-9, msg=f"{name} dF_a rank {r}")
            torch.testing.assert_close(got_dF_b / WORLD, dF_b[part], atol=1e-12, rtol=1e-9, msg=f"{name} dF_b rank {r}")
            torch.testing.assert_close(got_dW_a, dW_a, atol=1e-12, rtol=1e-9, msg=f"{name} dW_a rank {r}")
            torch.testing.assert_close(got_dW_b, dW_b, atol=1e-12, rtol=1e-9, msg=f"{name} dW_b rank {r}")
            # logit_scale is replicated and not gathered: each rank already has the global gradient
            torch.testing.assert_close(got_ds, ds, atol=1e-12, rtol=1e-9, msg=f"{name} d logit_scale rank {r}")
