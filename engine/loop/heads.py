"""Sequence-classification heads read straight from a packed token stream: the logits a transformers
`*ForSequenceClassification` model gives each sequence, computed from its base model's packed output with the
model's own head modules (no copied weights), as its forward reads them from a padded batch.

How a family's head reads a sequence is its row's `sequence_head` (engine.families):

    pooler           BERT: base_model.pooler (dense + tanh) on the first token, dropout, classifier
    first_token      a classification head that takes the first token itself (RoBERTa's, XLM-R's, MPNet's)
    pre_classifier   DistilBERT: pre_classifier, ReLU, dropout, classifier on the first token
    prediction_head  ModernBERT: the first token or the mean (config.classifier_pooling), head, drop, classifier
    last_token       decoders (Qwen3): the score layer on each sequence's last token

No host syncs: these run inside the packed loop's CUDA graphs. tests/test_packed_tasks.py checks each against
the model's own padded forward.
"""

from __future__ import annotations

import torch

from engine.kernels.pooling import sequence_means

READINGS = ("pooler", "first_token", "pre_classifier", "prediction_head", "last_token")


def sequence_logits(hf_model, reading: str, hidden: torch.Tensor, cu_seqlens: torch.Tensor, seq_idx: torch.Tensor,
                    lengths: torch.Tensor, n: int) -> torch.Tensor:
    """(n, num_labels) logits of the first `n` sequences of a packed stream. hidden (tokens, d) is the base model's
    last hidden state; cu_seqlens (sequences + 1,) int32; seq_idx (tokens,) long, n for fillers; lengths (n,)."""
    first = hidden[cu_seqlens[:n].long()]
    if reading == "pooler":
        pooler = hf_model.base_model.pooler
        pooled = pooler(first[:, None]) if pooler is not None else first
        return hf_model.classifier(hf_model.dropout(pooled))
    if reading == "first_token":
        return hf_model.classifier(first[:, None])
    if reading == "pre_classifier":
        return hf_model.classifier(hf_model.dropout(torch.relu(hf_model.pre_classifier(first))))
    if reading == "prediction_head":
        if hf_model.config.classifier_pooling == "mean":
            pooled = sequence_means(hidden, seq_idx, lengths).to(hidden.dtype)
        else:
            pooled = first
        return hf_model.classifier(hf_model.drop(hf_model.head(pooled)))
    if reading == "last_token":
        return hf_model.score(hidden[(cu_seqlens[1 : n + 1] - 1).long()])
    raise ValueError(f"no sequence head reading {reading!r}; the readings are {', '.join(READINGS)}")
