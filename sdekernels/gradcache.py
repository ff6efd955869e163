"""Gradient caching (GradCache, Gao et al. 2021) for any loss over embeddings.

A contrastive loss couples every row of the batch, so the batch cannot simply be split into
micro-batches. GradCache splits the encoder instead: (1) embed the batch in chunks without
autograd, (2) evaluate the loss on the detached embeddings and take its gradient g with respect
to them, (3) re-embed each chunk with autograd and back-propagate g's rows into the encoder. The
encoder's activations are held for one chunk at a time; the loss sees the whole batch. Step (3)
replays each chunk's random state of step (1), so dropout draws the same masks and the parameter
gradients equal those of the uncached run.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["RandomState", "split", "grad_cache"]


class RandomState:
    """The CPU and CUDA random states at construction; ``with state:`` runs a block from them and
    restores the states found on entry afterwards (so a replay does not disturb the stream)."""

    def __init__(self, devices: Sequence[int] = ()):
        self.devices = list(devices)
        self.cpu = torch.get_rng_state()
        self.cuda = [torch.cuda.get_rng_state(d) for d in self.devices]

    def __enter__(self):
        self._fork = torch.random.fork_rng(devices=self.devices)
        self._fork.__enter__()
        torch.set_rng_state(self.cpu)
        for d, s in zip(self.devices, self.cuda):
            torch.cuda.set_rng_state(s, d)
        return self

    def __exit__(self, *exc):
        return self._fork.__exit__(*exc)


def split(inputs: Any, size: int) -> list:
    """Chunks of `size` rows of a tensor, a dict of tensors (a tokenizer's output; non-tensor values
    are shared) or a list."""
    if isinstance(inputs, Tensor):
        return list(inputs.split(size))
    if isinstance(inputs, Mapping):
        n = next(len(v) for v in inputs.values() if isinstance(v, Tensor))
        return [{k: v[i:i + size] if isinstance(v, Tensor) else v for k, v in inputs.items()}
                for i in range(0, n, size)]
    return [inputs[i:i + size] for i in range(0, len(inputs), size)]


def _cuda_devices(chunk: Any) -> list[int]:
    values = chunk.values() if isinstance(chunk, Mapping) else [chunk]
    return sorted({v.device.index or 0 for v in values if isinstance(v, Tensor) and v.is_cuda})


def grad_cache(encode: Callable[[Any], Tensor], columns: Sequence[Any], loss_fn: Callable[..., Tensor], *,
               chunk_size: int = 32) -> Tensor:
    """loss_fn(encode(columns[0]), encode(columns[1]), …) with the encoder's memory of one chunk.

    encode: maps a chunk of one input column (see `split`) to its embeddings [n, d]. Returns the
    loss, whose ``backward()`` fills the encoder's parameter gradients (and those of any
    parameters of loss_fn) as the uncached computation would: the embeddings' gradient is taken
    in the forward, and the loss's backward hook re-embeds each chunk under its recorded random
    state and back-propagates that gradient's rows (scaled by the incoming gradient). Without
    autograd enabled it is the plain chunked evaluation.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    chunks = [split(col, chunk_size) for col in columns]
    states, reps = [], []
    for col in chunks:
        st, rp = [], []
        for c in col:
            st.append(RandomState(_cuda_devices(c)))
            with torch.no_grad():
                rp.append(encode(c).detach())
        states.append(st)
        reps.append(rp)
    leaves = [torch.cat(r).requires_grad_(torch.is_grad_enabled()) for r in reps]
    loss = loss_fn(*leaves)
    if not (torch.is_grad_enabled() and loss.requires_grad):
        return loss
    grads = torch.autograd.grad(loss, leaves, retain_graph=True, allow_unused=True)

    def replay(grad_out: Tensor):
        for col, st, g in zip(chunks, states, grads):
            if g is None:
                continue
            start = 0
            for c, state in zip(col, st):
                with state, torch.enable_grad():  # backward hooks run with autograd off
                    emb = encode(c)
                torch.autograd.backward(emb, g[start:start + len(emb)] * grad_out)
                start += len(emb)

    loss.register_hook(replay)
    return loss
