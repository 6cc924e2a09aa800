"""Attention over packed (padding-free) token streams.

A packed batch is one stream of `total` tokens holding `n` sequences back to back; `cu_seqlens`
(int32, length n + 1) gives where each starts. Tensors are (total, heads, head_dim). A window
`(left, right)` limits how far a query looks back and ahead (-1: no limit); causal is `(-1, 0)`.

`varlen_attention` runs `torch.nn.attention.varlen.varlen_attn` on CUDA and the plain PyTorch
reference elsewhere (the reference defines the meaning and serves the CPU tests).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

try:
    from torch.nn.attention.varlen import varlen_attn as _torch_varlen_attn
except ImportError:  # torch < 2.10
    _torch_varlen_attn = None

_VARLEN_HAS_GQA_FLAG = _torch_varlen_attn is not None and "enable_gqa" in inspect.signature(_torch_varlen_attn).parameters


def varlen_available(device: torch.device | str) -> str | None:
    """None when the CUDA varlen kernel can run on `device`, else why not (one short phrase)."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"varlen attention unavailable on {device.type}"
    if _torch_varlen_attn is None:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen (needs >= 2.10)"
    return None


def window_for(sliding_window: int | None, causal: bool) -> tuple[int, int]:
    """transformers' `sliding_window` (tokens seen on each side, inclusive of self) as a varlen window.

    Matches transformers' flash-attention convention: `sliding_window - 1` tokens on each side,
    and nothing ahead when causal.
    """
    left = sliding_window - 1 if sliding_window else -1
    return (left, 0 if causal else left)


def varlen_attention_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    scale: float | None = None,
    window: tuple[int, int] = (-1, -1),
) -> torch.Tensor:
    """Plain PyTorch: per sequence SDPA with an explicit window mask. Same shapes as `varlen_attention`.

    The sequences are cut with one `split` and joined with one `cat`: their backward passes are one
    concatenation and one split, where slicing each sequence out (and writing it back) would add a
    zero-filled gradient of the whole stream per sequence (a fifth of a CPU step on MiniLM)."""
    lengths_q = torch.diff(cu_seqlens_q).tolist()
    lengths_k = torch.diff(cu_seqlens_k).tolist()
    outs = []
    left, right = window
    pieces = zip(query.split(lengths_q), key.split(lengths_k), value.split(lengths_k))
    for q, k, v in pieces:
        # (1, heads, len, head_dim): four dimensions let SDPA take its CPU flash kernel, which is about 2x its
        # math path (what three-dimensional inputs get) forward and backward
        q, k, v = (t.transpose(0, 1)[None] for t in (q, k, v))
        mask, causal = None, False
        if (left, right) == (-1, 0) and q.shape[2] == k.shape[2]:
            causal = True  # SDPA's own causal path, no mask to build
        elif (left, right) != (-1, -1):
            offset = torch.arange(k.shape[2], device=q.device)[None, :] - torch.arange(q.shape[2], device=q.device)[:, None]
            mask = torch.ones_like(offset, dtype=torch.bool)
            if left >= 0:
                mask &= offset >= -left
            if right >= 0:
                mask &= offset <= right
        o = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=k.shape[1] != q.shape[1]
        )
        outs.append(o.squeeze(0).transpose(0, 1))  # not o[0]: a select's backward zero-fills a new tensor
    return torch.cat(outs) if outs else query.new_empty(query.shape)


def varlen_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_q: int,
    max_k: int,
    scale: float | None = None,
    window: tuple[int, int] = (-1, -1),
) -> torch.Tensor:
    """(total, heads, head_dim) -> (total, heads, head_dim). No attention dropout on either path."""
    if query.is_cuda and _torch_varlen_attn is not None:
        kwargs = {"scale": scale, "window_size": window}
        if _VARLEN_HAS_GQA_FLAG and key.shape[1] != query.shape[1]:
            kwargs["enable_gqa"] = True
        return _torch_varlen_attn(query, key, value, cu_seqlens_q, cu_seqlens_k, max_q, max_k, **kwargs)
    return varlen_attention_reference(query, key, value, cu_seqlens_q, cu_seqlens_k, scale=scale, window=window)
