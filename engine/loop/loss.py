"""The packed loop's losses: sentence-transformers' MultipleNegativesRankingLoss over a batch's
embeddings, and its cached form (CachedMultipleNegativesRankingLoss: the same loss, the batch embedded
`CACHED_MINI_BATCH` sequences at a time, GradCache's way; the trainer's `_cached_step`).

    inputs          | anchor, positive (, negative_1, ...) columns
    embeddings      | (anchors + candidates, d): all anchors first, then each candidate column
    loss            | cross-entropy of scale x cosine(anchor i, every candidate), target candidate i

tests/test_loop.py checks `in_batch_loss` against `MultipleNegativesRankingLoss` on the same embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("MultipleNegativesRankingLoss", "CachedMultipleNegativesRankingLoss")
CACHED_MINI_BATCH = 32  # sequences embedded at a time by the cached loss (its mini_batch_size)


def in_batch_loss(embeddings: torch.Tensor, batch: int, scale: float, sizes: list[int] | None = None,
                  rank: int = 0) -> torch.Tensor:
    """MultipleNegativesRankingLoss: the first `batch` rows are anchors, the rest candidates (positives
    first), `scale` its multiplier on cosine similarities (sentence-transformers' default 20).

    On several ranks, `sizes` (every rank's anchor count, engine.distributed.share) and this `rank`: every rank's
    candidates are gathered with their gradients, so each anchor sees the whole global batch's, and the result
    is this rank's anchors' part of the global batch's mean loss: the ranks' results sum to the loss of one
    process on the whole batch, and so do their gradients (engine.distributed.all_reduce_sum)."""
    embeddings = F.normalize(embeddings, dim=-1)
    anchors, candidates = embeddings[:batch], embeddings[batch:]
    first, total = 0, batch
    if sizes is not None:
        from engine.distributed import gather_columns

        columns = candidates.shape[0] // batch
        candidates = gather_columns(candidates.view(columns, batch, -1), sizes).reshape(-1, candidates.shape[-1])
        first, total = sum(sizes[:rank]), sum(sizes)
    scores = anchors @ candidates.t() * scale
    targets = torch.arange(first, first + batch, device=scores.device)
    return F.cross_entropy(scores, targets, reduction="sum") / total
