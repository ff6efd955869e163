"""Every distributed path (gather=True, local_loss, gather="ring", SDELoss) in 2 and 4 gloo processes
on CPU, with batches of unequal size (a rank without rows among them), in float64 and float32:
per rank the loss and the gradients of the features, the scale and the bias equal those of one
process on the global batch (the reference's explicit logits), and siglip's ring equals open_clip's
SigLipLoss with its neighbour exchange (bidir and shift). One launch per world size serves every case.

Gradient convention (gather=True, open_clip's gather_with_grad): the features of rank r receive
Σ_q ∂ℓ_q/∂z_r over the ranks' losses ℓ_q (world_size × the one-process gradient for the global
loss); the scale and the bias, replicated, receive ∂ℓ_r/∂s of this rank's loss.
"""
import os
import time
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as Fn

from sdekernels import reference as ref
import sdekernels
from sdekernels.nn import SDELoss, SigLipLoss

from helpers import free_port, require

SIZES = {2: [5, 3], 4: [3, 0, 5, 2]}  # the 5 and 3 rows; a rank without rows
EVEN = 4  # rows per rank for the open_clip comparison (its exchange needs equal shapes)
D = 6
DTYPES = [torch.float64, torch.float32]
TOL = {torch.float64: (1e-12, 1e-10), torch.float32: (2e-6, 1e-5)}
LAUNCH_S = 300


def _features(sizes, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(sum(sizes), D, generator=g, dtype=torch.float64)
    b = 0.6 * a + torch.randn(sum(sizes), D, generator=g, dtype=torch.float64)
    return a.to(dtype), b.to(dtype)


def _cases():
    """(key, fn(z_a, z_b, s, t) -> loss) of every distributed path."""
    out = []
    for gather in (True, "ring"):
        for local in (False, True):
            for sym in (True, False):
                out.append((("info_nce", gather, local, sym), lambda a, b, s, t, g=gather, lo=local, sy=sym:
                            sdekernels.info_nce(a, b, logit_scale=s, gather=g, local_loss=lo, symmetric=sy)))
            out.append((("siglip", gather, local), lambda a, b, s, t, g=gather, lo=local:
                        sdekernels.siglip_loss(a, b, s, t, gather=g, local_loss=lo)))
    return out


def _run(fn, z_a, z_b, s=8.0, t=-3.0):
    """[loss, dz_a, dz_b, ds, dt] of one call on leaves."""
    z_a, z_b = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    s = torch.tensor(s, dtype=z_a.dtype, requires_grad=True)
    t = torch.tensor(t, dtype=z_a.dtype, requires_grad=True)
    loss = fn(z_a, z_b, s, t)
    loss.backward()
    return [loss.detach()] + [torch.zeros_like(x) if x.grad is None else x.grad for x in (z_a, z_b, s, t)]


def _part(sizes, r):
    start = sum(sizes[:r])
    return slice(start, start + sizes[r])


def _worker(rank, world, init, path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        out, caught = {}, []
        sizes = SIZES[world]
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            for dtype in DTYPES:
                a, b = (z[_part(sizes, rank)] for z in _features(sizes, dtype))
                for key, fn in _cases():
                    out[(*key, dtype)] = _run(fn, a, b)
                for gather in (True, "ring"):
                    for local in (False, True):
                        sde = SDELoss(10, gather=gather, local_loss=local, generator=torch.Generator().manual_seed(3))
                        fn = lambda x, y, s, t, sde=sde: sde(x, y, s, step=4)  # noqa: E731
                        out[("sde", gather, local, dtype)] = _run(fn, a, b)
            # leading batch dims: [2, B_local, d]
            a, b = (torch.stack([z, z.flip(-1)])[:, _part(sizes, rank)] for z in _features(sizes, torch.float64))
            for key, fn in _cases():
                if key[0] == "siglip" or key[3]:
                    out[("lead", *key)] = _run(fn, a, b)
            caught = [str(w.message) for w in seen if issubclass(w.category, (FutureWarning, DeprecationWarning))]
        from sdekernels.bench import load_open_clip_loss

        mod = load_open_clip_loss()
        if mod is not None:
            for dtype in DTYPES:
                a, b = (Fn.normalize(z[rank * EVEN:(rank + 1) * EVEN], dim=-1)
                        for z in _features([EVEN] * world, dtype, seed=1))
                call = lambda loss: lambda x, y, s, t: loss(x, y, s, t)  # noqa: E731
                out[("open_clip", "ours", dtype)] = _run(call(SigLipLoss(rank=rank, world_size=world,
                                                                         dist_impl="ring")), a, b)
                for impl in ("bidir", "shift"):
                    out[("open_clip", impl, dtype)] = _run(call(mod.SigLipLoss(rank=rank, world_size=world,
                                                                               dist_impl=impl)), a, b)
        torch.save({"out": out, "warnings": caught}, os.path.join(path, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def spawn(fn, world: int, *args, timeout: float = LAUNCH_S):
    """fn(rank, world, *args) in `world` processes; a failure (or a hang past `timeout`) fails the test."""
    ctx = mp.start_processes(fn, args=(world, *args), nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{world} processes did not finish in {timeout:.0f} s")


@pytest.fixture(scope="module", params=[2, 4], ids=lambda w: f"world{w}")
def ranks(request, tmp_path_factory):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    world = request.param
    path = tmp_path_factory.mktemp(f"ring{world}")
    spawn(_worker, world, f"tcp://127.0.0.1:{free_port()}", str(path))
    return world, [torch.load(path / f"rank{r}.pt") for r in range(world)]


def _explicit_siglip_rows(A, B, s, t, rows):
    """open_clip's per-rank SigLIP loss with explicit logits: the rows `rows` against every column."""
    a, b = Fn.normalize(A, dim=-1), Fn.normalize(B, dim=-1)
    logits = s * a[rows] @ b.mT + t
    labels = -torch.ones_like(logits)
    labels[torch.arange(logits.shape[0]), torch.arange(B.shape[0])[rows]] = 1
    n = logits.shape[0]
    return -Fn.logsigmoid(labels * logits).sum() / n if n else logits.sum() * 0


def _expected(kind, local, sym, sizes, dtype):
    """Per rank [loss, dz_a, dz_b, ds, dt] of one process on the global batch (float64 reference)."""
    A, B = (z.double() for z in _features(sizes, dtype))
    world, out = len(sizes), []

    def loss_of(q, A, B, s, t):
        rows = _part(sizes, q)
        if kind == "siglip":
            if local:
                return _explicit_siglip_rows(A, B, s, t, rows)
            return ref.siglip_loss(A, B, s, t)
        if not local:
            return ref.info_nce(A, B, logit_scale=s, symmetric=sym)
        if not sizes[q]:
            return (A.sum() + B.sum()) * 0
        return ref.local_info_nce(A[rows], B[rows], A, B, rows.start, logit_scale=s, symmetric=sym)

    for r in range(world):
        own = _run(lambda a, b, s, t, r=r: loss_of(r, a, b, s, t), A, B)
        total = own if not local else _run(lambda a, b, s, t: sum(loss_of(q, a, b, s, t) for q in range(world)), A, B)
        rows = _part(sizes, r)
        scale = world if not local else 1  # every rank's global loss
        out.append([own[0], scale * total[1][rows], scale * total[2][rows], own[3], own[4]])
    return out


NAMES = ["loss", "dz_a", "dz_b", "d scale", "d bias"]


def _assert_same(got, want, dtype, what):
    atol, rtol = TOL[dtype]
    for name, g, w in zip(NAMES, got, want):
        torch.testing.assert_close(g.double(), w.double(), atol=atol, rtol=rtol,
                                   msg=lambda m, name=name: f"{what} {name}: {m}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_contrastive_paths_equal_one_process(ranks, dtype):
    world, res = ranks
    sizes = SIZES[world]
    for key, _ in _cases():
        kind, gather, local = key[:3]
        want = _expected(kind, local, key[3] if kind == "info_nce" else True, sizes, dtype)
        for r in range(world):
            got = res[r]["out"][(*key, dtype)]
            assert got[0].dtype == dtype
            _assert_same(got, want[r], dtype, f"world {world} rank {r} {key} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sde_loss_ring_equals_gather(ranks, dtype):
    """SDELoss with uneven batches: gather=True is one process on the global batch; gather="ring"
    equals gather=True on every rank, local_loss both ways."""
    world, res = ranks
    sizes = SIZES[world]
    A, B = _features(sizes, dtype)
    whole = _run(lambda x, y, s, t: SDELoss(10, generator=torch.Generator().manual_seed(3))(x, y, s, step=4), A, B)
    for r in range(world):
        rows = _part(sizes, r)
        want = [whole[0], world * whole[1][rows], world * whole[2][rows], whole[3], whole[4]]
        _assert_same(res[r]["out"][("sde", True, False, dtype)], want, dtype, f"world {world} rank {r} sde gather")
        for local in (False, True):
            _assert_same(res[r]["out"][("sde", "ring", local, dtype)], res[r]["out"][("sde", True, local, dtype)],
                         dtype, f"world {world} rank {r} sde ring local_loss={local}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_siglip_ring_equals_open_clip_neighbour_exchange(ranks, dtype):
    world, res = ranks
    for r in range(world):
        out = res[r]["out"]
        require(("open_clip", "ours", dtype) in out, "open-clip-torch")
        for impl in ("bidir", "shift"):
            _assert_same(out[("open_clip", "ours", dtype)], out[("open_clip", impl, dtype)], dtype,
                         f"world {world} rank {r} SigLipLoss(dist_impl='ring') vs open_clip {impl}")


def test_leading_batch_dims_ring_equals_gather(ranks):
    world, res = ranks
    for r in range(world):
        out = res[r]["out"]
        keys = [k for k in out if k[0] == "lead" and k[2] == "ring"]
        assert len(keys) == 4  # info_nce (symmetric) and siglip, local_loss both ways
        for key in keys:
            gathered = out[(key[0], key[1], True, *key[3:])]
            _assert_same(out[key], gathered, torch.float64, f"world {world} rank {r} {key}")


def test_no_deprecation_warning(ranks):
    world, res = ranks
    for r in range(world):
        assert res[r]["warnings"] == [], f"rank {r}: {res[r]['warnings']}"


def test_unknown_gather_is_a_value_error():
    z = torch.randn(4, 3)
    for call in (lambda: sdekernels.info_nce(z, z, gather="rnig"),
                 lambda: sdekernels.siglip_loss(z, z, 10.0, -5.0, gather="rnig"),
                 lambda: SDELoss(10, gather="rnig")):
        with pytest.raises(ValueError, match="gather.*'rnig'"):
            call()
    with pytest.raises(ValueError, match="dist_impl.*'rnig'"):
        SigLipLoss(dist_impl="rnig")
    # without a process group every gather is the one-process loss
    for gather in (True, "ring"):
        torch.testing.assert_close(sdekernels.info_nce(z, z, gather=gather), sdekernels.info_nce(z, z))
