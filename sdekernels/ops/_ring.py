"""Ring-exchanged contrastive losses (SPEC §6, gather="ring"): per-rank memory O(B_local·d), whatever
the number of ranks.

Rank r keeps its rows a_r and passes the other modality's blocks around the ring (to r + 1, from
r − 1): at step k it holds block q = r − k, and the transfer of the next block (batch_isend_irecv)
overlaps the tile a_r·b_qᵀ. What a block gathers on its way (info_nce's column log-sum-exps in the
forward, its gradient in the backward) travels one step behind it, is updated by each
rank in turn and ends at the block's owner. So every rank holds only its own rows' statistics, and
the only labels are on the diagonal of each rank's own tile (no offsets: the batch sizes may differ).

Each rank's loss is its own terms: its rows' log-sum-exps (and its columns' for the symmetric
info_nce), divided by its rows (local_loss: open_clip's per-rank loss) or by the global batch and
summed over the ranks (the global loss, on every rank). Backward: the tiles are recomputed and the
gradient of block q is sent on with it until it reaches q's owner; dL/dlogits of a tile takes the
weight of each loss it enters (the row term's rank, the column term's owner), so the feature
gradients are those of gather=True (the sum over the ranks' losses). siglip needs no statistics: its
tiles belong to their rows' rank. Tiles are ATen matmuls over row chunks (the ops' CPU path).
"""
import math

import torch
from torch import Tensor

from .. import dist as D
from .._core import grad_like, work_dtype
from .contrastive import _chunk, _lse_cpu, _norm_parts, _normalize_backward, _rowdot, _siglip_cpu


def _round(held: list[Tensor], sizes: list[int], tile, acc_like=None, combine=None):
    """One round of the ring over this rank's blocks `held` ([R, n_r, ...], travelling unchanged).
    tile(q, blocks of rank q) runs once per rank q and returns this rank's contribution to q's
    accumulator (acc_like(n_q)); the accumulator of each block is combined rank after rank, one step
    behind the block, and the one of this rank's own block is returned once it is home."""
    r, w = D.rank(), D.world()
    sent = []  # the previous accumulator's send (its tensor stays referenced until it is waited on)
    for k in range(w):
        q = (r - k) % w
        last = k == w - 1
        nxt = [] if last else [t.new_empty((t.shape[0], sizes[(q - 1) % w], *t.shape[2:])) for t in held]
        moves = [] if last else D.ring_post(held, nxt, D.TAG_BLOCK)
        acc_in = acc_like(sizes[q]) if k and acc_like else None
        arrives = D.ring_post([], [acc_in], D.TAG_STATS) if acc_in is not None else []
        contrib = tile(q, held)
        if acc_like:
            D.wait(arrives)
            D.wait(sent)
            acc = (contrib if acc_in is None else combine(acc_in, contrib)).contiguous()
            sent = D.ring_post([acc], [], D.TAG_STATS)
        D.wait(moves)
        held = nxt
    if not acc_like:
        return None
    home = acc_like(sizes[r])
    D.wait(D.ring_post([], [home], D.TAG_STATS))
    D.wait(sent)
    return home


def _unit(z: Tensor, normalize: bool):
    """_norm_parts of z [..., n, d] as [R, n, d], also for a rank without rows (n = 0)."""
    if z.shape[-2]:
        return _norm_parts(z, normalize)
    return z.reshape(math.prod(z.shape[:-2]), 0, z.shape[-1]).to(work_dtype(z.dtype)), None


def _unit_backward(z: Tensor, zh: Tensor, g: Tensor, normalize: bool, parts) -> Tensor:
    return _normalize_backward(z, zh, g, normalize, parts).reshape(z.shape) if z.shape[-2] else g.reshape(z.shape)


def _weight(n: int, sizes: list[int], R: int, local: bool, w: float) -> float:
    """The factor of a rank's summed terms in its loss: a mean over its own rows (local) or the global batch."""
    m = R * (n if local else sum(sizes))
    return w / m if m else 0.0


def _loss_of_ranks(own: Tensor, local: bool) -> Tensor:
    """This rank's terms (local) or their sum over the ranks (the global loss)."""
    return own if local else D.all_reduce_sum(own)


def _grad_weights(g: Tensor, local: bool) -> list[float]:
    """The loss gradient of each rank's loss as seen by the terms of rank q: its own (local), or the sum
    over the ranks (every rank's loss is the global one, and each term enters each of them)."""
    gs = D.all_gather_scalar(g)
    return gs if local else [sum(gs)] * len(gs)


def _nce_tile_grad(a, b, s, lse_r, lse_c, u: float, v: float, diag: bool, da):
    """Adds s·D·b to da and returns (s·Dᵀa, P_row, P_col) for the tile l = s·a·bᵀ, with
    D = u·softmax_row(l) + v·softmax_col(l) − (u + v)·[labels] (labels on the tile's diagonal when
    `diag`) and P = Σ (softmax − labels)·a·bᵀ per direction (the unit-weight ∂/∂s of the tile's terms)."""
    db, p_row, p_col = torch.zeros_like(b), a.new_zeros(()), a.new_zeros(())
    s_val = float(s)
    step = _chunk(b.shape[1])
    for i in range(0, a.shape[1], step):
        a_i = a[:, i:i + step]
        qk = torch.matmul(a_i, b.mT)
        logits = qk * s
        G = (logits - lse_r[:, i:i + step, None]).exp_()
        p_row += (G * qk).sum()
        G.mul_(u)
        if lse_c is not None:
            C = (logits - lse_c[:, None, :]).exp_()
            p_col += (C * qk).sum()
            G.add_(C, alpha=v)
        del logits
        if diag:
            on = torch.diagonal(qk, offset=i, dim1=-2, dim2=-1).sum()
            p_row -= on
            p_col -= on if lse_c is not None else 0.0
            torch.diagonal(G, offset=i, dim1=-2, dim2=-1).sub_(u + v)
        da[:, i:i + step].baddbmm_(G, b, alpha=s_val)
        db.baddbmm_(G.mT, a_i)
    return db.mul_(s_val), p_row, p_col


class _RingInfoNCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z_a, z_b, scale, normalize: bool, symmetric: bool, local: bool, sizes: list[int]):
        with torch.autocast(z_a.device.type, enabled=False):
            (a, parts_a), (b, parts_b) = _unit(z_a, normalize), _unit(z_b, normalize)
            s = scale.reshape(1).to(a.dtype)
            R, n, _ = a.shape
            lse_r = a.new_full((R, n), float("-inf"))

            def tile(q, held):
                nonlocal lse_r
                (b_q,) = held
                if not n or not b_q.shape[1]:
                    return a.new_full((R, b_q.shape[1] if symmetric else 0), float("-inf"))
                lr, lc, _ = _lse_cpu(a, b_q, s, symmetric, False)
                lse_r = torch.logaddexp(lse_r, lr)
                return lc if symmetric else a.new_empty((R, 0))

            lse_c = _round([b.contiguous()], sizes, tile, lambda m: a.new_empty((R, m if symmetric else 0)),
                           torch.logaddexp)
            w = 0.5 if symmetric else 1.0
            alpha = _weight(n, sizes, R, local, w)
            diag = s * _rowdot(a, b)
            own = alpha * (lse_r - diag).sum() + (alpha * (lse_c - diag).sum() if symmetric else 0.0)
            loss = _loss_of_ranks(own, local)
        ctx.save_for_backward(z_a, z_b, scale, a, b, lse_r, lse_c)
        ctx.parts, ctx.normalize, ctx.symmetric, ctx.local, ctx.sizes = (parts_a, parts_b), normalize, symmetric, \
            local, sizes
        return loss.to(z_a.dtype)

    @staticmethod
    def backward(ctx, g):
        z_a, z_b, scale, a, b, lse_r, lse_c = ctx.saved_tensors
        symmetric, local, sizes = ctx.symmetric, ctx.local, ctx.sizes
        with torch.autocast(z_a.device.type, enabled=False):
            s = scale.reshape(1).to(a.dtype)
            R, n, d = a.shape
            w = 0.5 if symmetric else 1.0
            alphas = [_weight(m, sizes, R, local, w) for m in sizes]
            G = _grad_weights(g, local)
            r = D.rank()
            da, p_row = torch.zeros_like(a), a.new_zeros(())

            def tile(q, held):
                nonlocal p_row
                b_q, lc_q = held if symmetric else (*held, None)
                m = b_q.shape[1]
                out = a.new_zeros(R * m * d + 1)
                if n and m:
                    db_q, pr, pc = _nce_tile_grad(a, b_q, s, lse_r, lc_q, G[r] * alphas[r],
                                                  G[q] * alphas[q] if symmetric else 0.0, q == r, da)
                    p_row += pr
                    out[:-1] = db_q.reshape(-1)
                    out[-1] = pc
                return out

            blocks = [b.contiguous(), lse_c.contiguous()] if symmetric else [b.contiguous()]
            home = _round(blocks, sizes, tile, lambda m: a.new_empty(R * m * d + 1),
                          torch.add)
            db = home[:-1].reshape(R, n, d)
            ds_own = alphas[r] * (p_row + (home[-1] if symmetric else 0.0))
            ds = g.to(a.dtype) * (ds_own if local else D.all_reduce_sum(ds_own))
            (parts_a, parts_b) = ctx.parts
            ga = _unit_backward(z_a, a, da, ctx.normalize, parts_a)
            gb = _unit_backward(z_b, b, db, ctx.normalize, parts_b)
        return grad_like(ga, z_a), grad_like(gb, z_b), grad_like(ds.reshape(scale.shape), scale), None, None, None, None


class _RingSigLIP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z_a, z_b, scale, bias, normalize: bool, local: bool, sizes: list[int]):
        with torch.autocast(z_a.device.type, enabled=False):
            (a, parts_a), (b, parts_b) = _unit(z_a, normalize), _unit(z_b, normalize)
            s, t = scale.reshape(1).to(a.dtype), bias.reshape(1).to(a.dtype)
            R, n, _ = a.shape
            r = D.rank()
            total = a.new_zeros(())

            def tile(q, held):
                nonlocal total
                (b_q,) = held
                if n and b_q.shape[1]:  # labels only on this rank's own tile
                    total = total + _siglip_cpu(a, b_q, s, t, 0 if q == r else b_q.shape[1], 1.0, False)[0]

            _round([b.contiguous()], sizes, tile)
            loss = _loss_of_ranks(_weight(n, sizes, R, local, 1.0) * total, local)
        ctx.save_for_backward(z_a, z_b, scale, bias, a, b)
        ctx.parts, ctx.normalize, ctx.local, ctx.sizes = (parts_a, parts_b), normalize, local, sizes
        return loss.to(z_a.dtype)

    @staticmethod
    def backward(ctx, g):
        z_a, z_b, scale, bias, a, b = ctx.saved_tensors
        local, sizes = ctx.local, ctx.sizes
        with torch.autocast(z_a.device.type, enabled=False):
            s, t = scale.reshape(1).to(a.dtype), bias.reshape(1).to(a.dtype)
            R, n, d = a.shape
            r = D.rank()
            c, G = _weight(n, sizes, R, local, 1.0), _grad_weights(g, local)[r]
            da, st = torch.zeros_like(a), a.new_zeros(2)  # st: ∂/∂(s, b) of this rank's terms

            def tile(q, held):
                (b_q,) = held
                m = b_q.shape[1]
                if not (n and m):
                    return a.new_zeros((R, m, d))
                _, (da_t, db_t, gs_t, gb_t) = _siglip_cpu(a, b_q, s, t, 0 if q == r else m, c, True)
                da.add_(da_t, alpha=G)
                st[0] += gs_t
                st[1] += gb_t
                return db_t.mul_(G)

            db = _round([b.contiguous()], sizes, tile, lambda m: a.new_empty((R, m, d)), torch.add)
            st = g.to(a.dtype) * (st if local else D.all_reduce_sum(st))
            (parts_a, parts_b) = ctx.parts
            ga = _unit_backward(z_a, a, da, ctx.normalize, parts_a)
            gb = _unit_backward(z_b, b, db, ctx.normalize, parts_b)
        return (grad_like(ga, z_a), grad_like(gb, z_b), grad_like(st[0].reshape(scale.shape), scale),
                grad_like(st[1].reshape(bias.shape), bias), None, None, None)


def ring_info_nce(z_a: Tensor, z_b: Tensor, scale: Tensor, normalize: bool, symmetric: bool, local: bool) -> Tensor:
    """info_nce with gather="ring" under a process group of more than one rank (see the module docstring)."""
    return _RingInfoNCE.apply(z_a, z_b, scale, normalize, symmetric, local, D.batch_sizes(z_a))


def ring_siglip(z_a: Tensor, z_b: Tensor, scale: Tensor, bias: Tensor, normalize: bool, local: bool) -> Tensor:
    """siglip_loss with gather="ring" under a process group of more than one rank."""
    return _RingSigLIP.apply(z_a, z_b, scale, bias, normalize, local, D.batch_sizes(z_a))
