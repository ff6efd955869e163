"""sentence-transformers losses on the fused kernels (SPEC §6, §7).

Drop-ins for sentence-transformers' loss classes: the constructor and ``forward(sentence_features,
labels)`` follow them, so a ``SentenceTransformerTrainer`` takes them as they are.

- `MultipleNegativesRankingLoss`: (anchor, positive, negative_1…K) columns; every anchor ranks
  every positive and negative of the batch (`info_nce` with ``negatives``).
  directions ("query_to_doc",) or ("query_to_doc", "doc_to_query"), the latter with
  partition_mode="per_direction" (the symmetric loss); gather_across_devices as
  sentence-transformers does it (this rank's rows against the gathered columns).
- `MultipleNegativesSymmetricRankingLoss`: the symmetric form.
- `CachedMultipleNegativesRankingLoss`: the same loss through `sdekernels.gradcache`, with
  mini_batch_size rows of encoder activations at a time.
- `SDELoss`: the SDE loss (SPEC §7) on the (anchor, positive) columns, optionally cached.

What the fused path does not carry (a ValueError names the option): the "query_to_query" and
"doc_to_doc" directions and partition_mode="joint" with "doc_to_query" (each needs a softmax over
a second similarity matrix), and hardness_mode with a positive hardness_strength (a per-entry
detached penalty in the logits).
The ``labels`` argument of forward is the dataset's label column, which these losses ignore, as
sentence-transformers' do; ``mask_duplicates=True`` masks in-batch duplicates: a positive whose
tokens equal those of another row's positive is not a negative of that row (SPEC §6's labels
with mask_duplicates).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from . import functional as F
from .gradcache import grad_cache
from .nn import SDELoss as _SDELoss

__all__ = ["MultipleNegativesRankingLoss", "MultipleNegativesSymmetricRankingLoss",
           "CachedMultipleNegativesRankingLoss", "SDELoss"]


def _similarity(fct) -> str:
    """'cos' or 'dot' for sentence-transformers' similarity functions (or those names)."""
    if fct in ("cos", "cosine", "dot"):
        return "dot" if fct == "dot" else "cos"
    from sentence_transformers import util

    if fct is util.cos_sim:
        return "cos"
    if fct is util.dot_score:
        return "dot"
    raise ValueError(f"similarity_fct must be sentence_transformers.util.cos_sim or dot_score, got {fct!r}")


def _embed(model, features: Iterable[dict[str, Tensor]]) -> list[Tensor]:
    """The columns' embeddings as sentence-transformers' own losses compute them (one merged
    forward where it merges columns; one forward per column before 6.x)."""
    try:
        from sentence_transformers.base.losses.merged_forward import embed_columns
    except ImportError:
        return [model(f)["sentence_embedding"] for f in features]
    return embed_columns(model, features)


def _duplicate_labels(features: dict[str, Tensor]) -> Tensor:
    """Rows of identical token ids get one label (the first such row's index)."""
    ids = features["input_ids"]
    same = (ids[:, None, :] == ids[None, :, :]).all(-1)
    return same.to(torch.int8).argmax(1)


class MultipleNegativesRankingLoss(nn.Module):
    """sentence-transformers' MultipleNegativesRankingLoss on the fused info_nce (SPEC §6)."""

    def __init__(self, model, scale: float = 20.0, similarity_fct: Callable | str | None = None,
                 gather_across_devices: bool = False, directions: tuple[str, ...] = ("query_to_doc",),
                 partition_mode: str = "joint", hardness_mode: str | None = None, hardness_strength: float = 0.0,
                 mask_duplicates: bool = False):
        super().__init__()
        self.model = model
        if not (isinstance(scale, (int, float)) and scale > 0 and scale < float("inf")):
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        self.scale = float(scale)
        if similarity_fct is None:
            from sentence_transformers import util

            similarity_fct = util.cos_sim
        self.similarity_fct = similarity_fct
        self.normalize = _similarity(similarity_fct) == "cos"
        directions = tuple(directions)
        if "query_to_doc" not in directions or not set(directions) <= {"query_to_doc", "doc_to_query"}:
            raise ValueError(f"directions must be ('query_to_doc',) or ('query_to_doc', 'doc_to_query') on the "
                             f"fused path, got {directions!r}")
        if partition_mode not in ("joint", "per_direction"):
            raise ValueError(f"partition_mode must be 'joint' or 'per_direction', got {partition_mode!r}")
        if partition_mode == "joint" and "doc_to_query" in directions:
            raise ValueError("partition_mode='joint' with 'doc_to_query' is not on the fused path: use "
                             "partition_mode='per_direction' (the symmetric loss)")
        self.directions, self.partition_mode = directions, partition_mode
        if hardness_mode is not None and hardness_strength > 0:
            raise ValueError(f"hardness_mode={hardness_mode!r} with hardness_strength > 0 is not on the fused path")
        if hardness_strength < 0:
            raise ValueError(f"hardness_strength must be non-negative, got {hardness_strength!r}")
        self.hardness_mode, self.hardness_strength = hardness_mode, float(hardness_strength)
        self.gather_across_devices = bool(gather_across_devices)
        self.mask_duplicates = bool(mask_duplicates)

    @property
    def temperature(self) -> float:
        return 1.0 / self.scale

    def _labels(self, sentence_features) -> Tensor | None:
        if not self.mask_duplicates:
            return None
        return _duplicate_labels(list(sentence_features)[1])

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        sentence_features = list(sentence_features)
        return self.compute_loss_from_embeddings(_embed(self.model, sentence_features), labels,
                                                 self._labels(sentence_features))

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None = None,
                                     row_labels: Tensor | None = None) -> Tensor:
        """The loss of the columns' embeddings [anchor, positive, negative_1, …] (each [B, d])."""
        if len(embeddings) < 2:
            raise ValueError(f"expected at least 2 embedding columns, got {len(embeddings)}")
        anchor, positive, *negatives = embeddings
        neg = torch.stack(negatives, dim=1) if negatives else None  # [B, K, d]
        return F.info_nce(anchor, positive, logit_scale=self.scale, normalize=self.normalize,
                          symmetric="doc_to_query" in self.directions, negatives=neg, labels=row_labels,
                          mask_duplicates=row_labels is not None, gather=self.gather_across_devices,
                          local_loss=self.gather_across_devices)

    def get_config_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "similarity_fct": "cos_sim" if self.normalize else "dot_score",
                "gather_across_devices": self.gather_across_devices, "directions": self.directions,
                "partition_mode": self.partition_mode, "hardness_mode": self.hardness_mode,
                "hardness_strength": self.hardness_strength, "mask_duplicates": self.mask_duplicates}


class MultipleNegativesSymmetricRankingLoss(MultipleNegativesRankingLoss):
    """The symmetric MNRL: directions ("query_to_doc", "doc_to_query"), one softmax per direction."""

    def __init__(self, model, scale: float = 20.0, similarity_fct: Callable | str | None = None,
                 gather_across_devices: bool = False, mask_duplicates: bool = False):
        super().__init__(model, scale, similarity_fct, gather_across_devices,
                         directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction",
                         mask_duplicates=mask_duplicates)


def _encoder(model) -> Callable[[dict[str, Tensor]], Tensor]:
    return lambda features: model(features)["sentence_embedding"]


class CachedMultipleNegativesRankingLoss(MultipleNegativesRankingLoss):
    """MultipleNegativesRankingLoss through gradient caching: the encoder holds the activations of
    mini_batch_size rows at a time (sentence-transformers' CachedMultipleNegativesRankingLoss)."""

    def __init__(self, model, scale: float = 20.0, similarity_fct: Callable | str | None = None,
                 mini_batch_size: int = 32, gather_across_devices: bool = False,
                 directions: tuple[str, ...] = ("query_to_doc",), partition_mode: str = "joint",
                 hardness_mode: str | None = None, hardness_strength: float = 0.0, mask_duplicates: bool = False,
                 show_progress_bar: bool = False):
        super().__init__(model, scale, similarity_fct, gather_across_devices, directions, partition_mode,
                         hardness_mode, hardness_strength, mask_duplicates)
        if isinstance(mini_batch_size, bool) or not isinstance(mini_batch_size, int) or mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be a positive int, got {mini_batch_size!r}")
        self.mini_batch_size = mini_batch_size
        self.show_progress_bar = show_progress_bar

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        sentence_features = list(sentence_features)
        row_labels = self._labels(sentence_features)
        return grad_cache(_encoder(self.model), sentence_features,
                          lambda *emb: self.compute_loss_from_embeddings(list(emb), labels, row_labels),
                          chunk_size=self.mini_batch_size)

    def get_config_dict(self) -> dict[str, Any]:
        return {**super().get_config_dict(), "mini_batch_size": self.mini_batch_size}


class SDELoss(nn.Module):
    """The SDE loss (SPEC §7) as a sentence-transformers loss: (anchor, positive) columns, logits
    scaled by `scale`, every other argument that of `sdekernels.nn.SDELoss` (total_steps: the
    trainer's optimizer steps; the step is counted from the calls made with gradients).
    mini_batch_size: run through gradient caching with that many rows per encoder pass."""

    def __init__(self, model, total_steps: int | None = None, scale: float = 20.0,
                 mini_batch_size: int | None = None, **sde_kwargs):
        super().__init__()
        self.model = model
        if not (isinstance(scale, (int, float)) and 0 < scale < float("inf")):
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        self.scale = float(scale)
        self.mini_batch_size = mini_batch_size
        self.sde = _SDELoss(total_steps, **sde_kwargs)

    def _loss(self, anchor: Tensor, positive: Tensor, *rest: Tensor) -> Tensor:
        if rest:
            raise ValueError(f"SDELoss takes (anchor, positive) columns, got {2 + len(rest)}")
        return self.sde(anchor, positive, self.scale)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        sentence_features = list(sentence_features)
        if self.mini_batch_size:
            return grad_cache(_encoder(self.model), sentence_features, self._loss, chunk_size=self.mini_batch_size)
        return self._loss(*_embed(self.model, sentence_features))

    @property
    def last_stats(self) -> dict:
        return self.sde.last_stats

    def get_config_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "mini_batch_size": self.mini_batch_size, "total_steps": self.sde.total_steps,
                "center": self.sde.center}
