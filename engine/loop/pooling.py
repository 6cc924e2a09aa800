"""The packed loop's pooling: one embedding a sequence from the model's token embeddings, as the
sentence-transformers `Pooling` module that follows the model's Transformer computes it (mean, cls or
lasttoken; tests/test_loop.py checks both forms against `Pooling` itself). No host syncs: these run
inside CUDA graphs."""

from __future__ import annotations

import torch

from engine.kernels.pooling import sequence_means

POOLING_MODES = ("mean", "cls", "lasttoken")


def pool_packed(hidden: torch.Tensor, mode: str, cu_seqlens: torch.Tensor, seq_idx: torch.Tensor,
                lengths: torch.Tensor, n_real: int) -> torch.Tensor:
    """hidden (tokens, d) of a packed stream -> (n_real, d). cu_seqlens (sequences + 1,) int32; seq_idx
    (tokens,) long, each token's sequence (n_real for fillers); lengths (n_real,) float."""
    if mode == "cls":
        return hidden[cu_seqlens[:n_real].long()]
    if mode == "lasttoken":
        return hidden[(cu_seqlens[1 : n_real + 1] - 1).long()]
    return sequence_means(hidden, seq_idx, lengths)


def pool_padded(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """hidden (rows, length, d) of right-padded rows, mask (rows, length) 0/1 -> (rows, d)."""
    if mode == "cls":
        return hidden[:, 0]
    if mode == "lasttoken":  # right padding: the last real token
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), mask.sum(1) - 1]
    weights = mask.unsqueeze(-1).to(torch.float32)
    return (hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
