"""Data-parallel training under torchrun (``python -m torch.distributed.run --nproc-per-node N -m
sdekernels train …``): DistributedDataParallel over gloo (CPU) or NCCL (CUDA).

Every rank builds the global batch of step ``step`` from (seed, step) as one process would and
trains on its shard (``Group.shard``), so N processes × B/N follow one process × B. Two kinds of
loss make that exact:
- a loss of the whole batch (SDELoss, InfoNCE): the features are all-gathered with gradient
  (``Group.gather``, shards of any sizes) and every rank computes the global loss; the gather's
  backward sums the ranks' gradients (world size × one process's), which DDP's averaging undoes;
- a mean of per-sample losses: each rank's mean of an equal shard, averaged by DDP.
BatchNorm in training mode normalises with the global batch's statistics (``SyncBatchNorm``).
A collective that fails (a peer died) or waits longer than ``--dist-timeout`` ends the rank with
one line (``DistributedFailure``), never a hang.
"""
import datetime
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


class DistributedFailure(RuntimeError):
    """A collective failed or timed out: another rank died or stalled."""


# what gloo and NCCL say when a peer is gone or late (they raise plain RuntimeErrors)
_COLLECTIVE_ERROR = re.compile(r"Timed out|timeout|Connection (closed|reset)|peer|gloo|NCCL|ProcessGroup", re.I)


def collective_failure(exc: BaseException) -> bool:
    return isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError) and
                                                bool(_COLLECTIVE_ERROR.search(str(exc))))


def restarts() -> int:
    """How often torchrun (--max-restarts) has restarted this job's workers."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def launched() -> bool:
    """Whether torchrun started this process as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_device(device: torch.device) -> torch.device:
    """Under torchrun, an accelerator without an index is this rank's (LOCAL_RANK)."""
    if launched() and device.type != "cpu" and device.index is None:
        return torch.device(device.type, int(os.environ.get("LOCAL_RANK", "0")))
    return device


@dataclass(frozen=True)
class Group:
    """This process's place in the job: rank, world size, the collectives' timeout (seconds) and
    device (NCCL's collectives take CUDA tensors only)."""

    rank: int = 0
    size: int = 1
    timeout: float = 0.0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes files (metrics, checkpoints, summaries, plots)."""
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's rows of a global batch of n rows: contiguous, sizes differ by at most one."""
        return slice(n * self.rank // self.size, n * (self.rank + 1) // self.size)

    def ddp(self, module: nn.Module) -> nn.Module:
        """The module wrapped for data parallelism, its BatchNorm layers synchronised (itself in one process)."""
        if self.size == 1:
            return module
        return nn.parallel.DistributedDataParallel(sync_batchnorm(module))

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's rows of x [b_r, ...], in rank order, with gradient (the ranks' gradients summed)."""
        if self.size == 1:
            return x
        sizes = torch.tensor([x.shape[0]], device=x.device)
        slots = [torch.empty_like(sizes) for _ in range(self.size)]
        dist.all_gather(slots, sizes)
        return _Gather.apply(x, [int(s) for s in slots], self.rank)

    def mean(self, values: dict) -> dict:
        """The mean over ranks of each number (logging: equal shards make it the global batch's)."""
        if self.size == 1:
            return values
        t = torch.tensor([float(v) for v in values.values()], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return dict(zip(values, (t / self.size).tolist()))

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    @contextmanager
    def main_first(self):
        """Rank 0 runs the block, then the others (e.g. one process fills a cache file, the rest read it)."""
        if not self.main:
            self.barrier()
        yield
        if self.main:
            self.barrier()


ONE = Group()  # one process, no torchrun


def init(timeout: float, device: torch.device) -> Group:
    """Join torchrun's process group (gloo on CPU, NCCL on CUDA) with the collectives' timeout in
    seconds; one process without torchrun."""
    if not launched():
        return ONE
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        wait = datetime.timedelta(seconds=timeout)
        store, rank, size = next(dist.rendezvous("env://", timeout=wait))
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # torchrun's own store outlives restarts: a restarted job must not read the addresses the
            # ranks of an earlier attempt left there (gloo then fails to connect; pytorch/pytorch#135712)
            store = dist.PrefixStore(f"sdekernels/attempt{restarts()}", store)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=rank,
                                world_size=size, timeout=wait)
    return Group(dist.get_rank(), dist.get_world_size(), timeout, device)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sizes, rank):
        ctx.sizes, ctx.rank = sizes, rank
        pad = x.new_zeros((max(sizes), *x.shape[1:]))  # gloo's all_gather needs equal sizes
        pad[:x.shape[0]] = x
        slots = [torch.empty_like(pad) for _ in sizes]
        dist.all_gather(slots, pad)
        return torch.cat([s[:n] for s, n in zip(slots, sizes)])

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every rank's loss depends on these rows
        start = sum(ctx.sizes[:ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None, None


class _AllReduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training-mode statistics (and running statistics) are the global batch's,
    on any device (torch.nn.SyncBatchNorm runs only on accelerators); plain BatchNorm outside a
    process group of several ranks or in eval mode."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x):
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims, shape = [0, *range(2, x.dim())], (1, -1, *[1] * (x.dim() - 2))
        n = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64, device=x.device)
        dist.all_reduce(n)
        count = float(n)
        mean = _AllReduce.apply(x.sum(dims)) / count
        centred = x - mean.view(shape)
        var = _AllReduce.apply(centred.square().sum(dims)) / count
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * count / max(count - 1, 1), m)
        return y


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm layer made a ``SyncBatchNorm`` (same parameters and buffers)."""
    for child in module.children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, SyncBatchNorm):
            child.__class__ = SyncBatchNorm  # its state is a BatchNorm's: only forward changes
        else:
            sync_batchnorm(child)
    return module
