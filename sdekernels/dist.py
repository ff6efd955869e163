"""The collectives of the distributed losses (SPEC §6): every rank's batch size, an all-gather with
gradient for batches of unequal size, label offsets from the gathered sizes, and the ring's
neighbour exchange. Without an initialised process group (or with one rank) every helper is the
one-process identity. Collectives go through torch.distributed's supported API: the gradient of
the gather is that of the functional collectives' all_gather_single_autograd (a reduce-scatter).
"""
import torch
import torch.distributed as dist
from torch import Tensor

GATHER = (False, True, "ring")
TAG_BLOCK, TAG_STATS, TAG_GRAD = 0, 1, 2  # the ring's streams between two neighbours, each in step order


def check_gather(gather):
    """gather as given (False, True or "ring"; None is False); anything else is a ValueError naming it."""
    if gather is None:
        return False
    if isinstance(gather, bool) or (isinstance(gather, str) and gather == "ring"):
        return gather
    raise ValueError(f"gather must be False, True or 'ring', got {gather!r}")


def world() -> int:
    """Ranks of the default process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world() > 1 else 0


def batch_sizes(z: Tensor) -> list[int]:
    """z.shape[-2] of every rank, in rank order (one all-gather of one integer per rank)."""
    if world() == 1:
        return [z.shape[-2]]
    n = torch.tensor([z.shape[-2]], dtype=torch.int64, device=z.device)
    out = n.new_empty(world())
    dist.all_gather_single(out, n)
    return out.tolist()


def rank_offset(z: Tensor, sizes: list[int] | None = None) -> int:
    """Where this rank's rows z [..., B, d] start in gather_batch's result (0 without a process group)."""
    if world() == 1:
        return 0
    return sum((sizes or batch_sizes(z))[:rank()])


def gather_batch(z: Tensor, with_grad: bool = True, sizes: list[int] | None = None) -> Tensor:
    """z [..., B, d] of every rank concatenated along the batch dim in rank order (z itself without a
    process group of more than one rank); the ranks' B may differ (each block is padded to the
    largest for the collective). with_grad: the backward sums every rank's gradient of each slot
    (so the features of a global loss receive world_size × the one-process gradient, which DDP's
    averaging undoes: open_clip's gather_with_grad); else the other ranks' slots are constants and
    this rank's slot is z itself."""
    if world() == 1:
        return z
    sizes = sizes or batch_sizes(z)
    top = max(sizes)
    x = z.movedim(-2, 0)  # the batch dim first: the collective concatenates along dim 0
    if x.shape[0] < top:
        x = torch.cat([x, x.new_zeros((top - x.shape[0], *x.shape[1:]))])
    x = x.contiguous()
    if with_grad:
        from torch.distributed._functional_collectives import all_gather_single_autograd

        slots = all_gather_single_autograd(x, 0, dist.group.WORLD)
    else:
        slots = x.new_empty((world() * top, *x.shape[1:]))
        dist.all_gather_single(slots, x.detach())
    parts = [slots[q * top:q * top + n].movedim(0, -2) for q, n in enumerate(sizes)]
    if not with_grad:
        parts[rank()] = z
    return torch.cat(parts, dim=-2)


def all_gather_scalar(x: Tensor) -> list[float]:
    """A one-element tensor of every rank, as floats in rank order (no gradient)."""
    out = x.detach().reshape(1).new_empty(world())
    dist.all_gather_single(out, x.detach().reshape(1).contiguous())
    return out.tolist()


def all_reduce_sum(x: Tensor) -> Tensor:
    """The sum of x over the ranks (a copy; no gradient)."""
    out = x.detach().clone()
    dist.all_reduce(out)
    return out


def ring_post(send: list[Tensor], recv: list[Tensor], tag: int) -> list:
    """Post the sends of `send` to the next rank and the receives into `recv` from the previous one
    (empty tensors are skipped: both ends know every size); the works to wait on."""
    r, w = rank(), world()
    ops = [dist.P2POp(dist.isend, t, (r + 1) % w, tag=tag) for t in send if t.numel()]
    ops += [dist.P2POp(dist.irecv, t, (r - 1) % w, tag=tag) for t in recv if t.numel()]
    return dist.batch_isend_irecv(ops) if ops else []


def wait(works: list) -> None:
    for work in works:
        work.wait()
