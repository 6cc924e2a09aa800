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


def in_batch_loss(embeddings: torch.Tensor, batch: int, scale: float) -> torch.Tensor:
    """MultipleNegativesRankingLoss: the first `batch` rows are anchors, the rest candidates (positives
    first), `scale` its multiplier on cosine similarities (sentence-transformers' default 20)."""
    embeddings = F.normalize(embeddings, dim=-1)
    anchors, candidates = embeddings[:batch], embeddings[batch:]
    scores = anchors @ candidates.t() * scale
    return F.cross_entropy(scores, torch.arange(batch, device=scores.device))
