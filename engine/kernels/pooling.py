"""Mean pooling (then optionally L2 normalize) over a packed token stream, forward and backward (Triton).

Layout: hidden (tokens, d), the sequences back to back; cu_seqlens (n + 1,) int32 on hidden's
device, cu_seqlens[0] = 0, sequence i is hidden[cu_seqlens[i] : cu_seqlens[i + 1]]. Tokens after
cu_seqlens[n] (fillers of a fixed-size buffer) are ignored and get a zero gradient.
    mean_i = sum of sequence i's tokens / its length          (an empty sequence gives a zero row)
    out_i  = mean_i / max(||mean_i||, eps) if normalize else mean_i     (F.normalize's convention)
Sums in fp32; out in `out_dtype` (default hidden's). One program per sequence loops over its
tokens in blocks with bounds read from cu_seqlens on the device: no host sync, so it can run
inside CUDA graph capture. Backward gives each token of sequence i (grad of mean_i) / len_i,
through the normalize Jacobian.

`mean_pool_reference` is plain PyTorch (index_add per sequence) and defines the meaning;
`mean_pool` runs Triton on CUDA (or under TRITON_INTERPRET=1) and the reference elsewhere.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # the reference serves
    triton = None

from .runtime import log_once, triton_runs_on, why_not

logger = logging.getLogger(__name__)


def sequence_means(hidden, seq_idx, lengths):
    """Plain PyTorch, no host sync (the packed loop runs it inside CUDA graphs): (n, d) means, summed in
    fp32 or wider. seq_idx (tokens,) long: each token's sequence, n for fillers (dropped); lengths (n,)."""
    acc_dtype = torch.promote_types(hidden.dtype, torch.float32)
    sums = hidden.new_zeros(lengths.shape[0] + 1, hidden.shape[-1], dtype=acc_dtype)
    sums.index_add_(0, seq_idx, hidden.to(acc_dtype))
    return sums[:-1] / lengths[:, None]


def mean_pool_reference(hidden, cu_seqlens, normalize: bool = True, eps: float = 1e-12, out_dtype=None):
    """Plain PyTorch (host syncs: for CPUs and tests). Same contract as `mean_pool`."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    seq_ids = torch.repeat_interleave(torch.arange(len(lengths), device=hidden.device), lengths)
    means = sequence_means(hidden[: len(seq_ids)], seq_ids, lengths.clamp(min=1))
    out = F.normalize(means, dim=-1, eps=eps) if normalize else means
    return out.to(out_dtype or hidden.dtype)


if triton is not None:

    @triton.jit
    def _mean_pool_fwd_kernel(H, CU, OUT, MEAN, n_cols, eps,
                              NORMALIZE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
        seq = tl.program_id(0)
        start = tl.load(CU + seq)
        end = tl.load(CU + seq + 1)
        cols = tl.arange(0, BLOCK_D)
        col_mask = cols < n_cols
        acc = tl.zeros((BLOCK_T, BLOCK_D), tl.float32)
        for t0 in range(start, end, BLOCK_T):
            tokens = t0 + tl.arange(0, BLOCK_T)
            mask = (tokens < end)[:, None] & col_mask[None, :]
            rows = tl.load(H + tokens.to(tl.int64)[:, None] * n_cols + cols[None, :], mask=mask, other=0.0)
            acc += rows.to(tl.float32)
        mean = tl.sum(acc, 0) / tl.maximum(end - start, 1)
        tl.store(MEAN + seq * n_cols + cols, mean, mask=col_mask)
        if NORMALIZE:
            mean = mean / tl.maximum(tl.sqrt(tl.sum(mean * mean, 0)), eps)
        tl.store(OUT + seq * n_cols + cols, mean.to(OUT.dtype.element_ty), mask=col_mask)

    @triton.jit(do_not_specialize=["n_tokens"])  # a specialised constant 1 would not match `end`'s type
    def _mean_pool_bwd_kernel(DOUT, MEAN, CU, DH, n_seqs, n_tokens, n_cols, eps,
                              NORMALIZE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
        """Program i < n writes sequence i's token gradients; program n zeroes the tokens after the last."""
        seq = tl.program_id(0)
        cols = tl.arange(0, BLOCK_D)
        col_mask = cols < n_cols
        start = tl.load(CU + seq)
        if seq < n_seqs:
            end = tl.load(CU + seq + 1)
            g = tl.load(DOUT + seq * n_cols + cols, mask=col_mask, other=0.0).to(tl.float32)
            if NORMALIZE:
                mean = tl.load(MEAN + seq * n_cols + cols, mask=col_mask, other=0.0)
                norm = tl.sqrt(tl.sum(mean * mean, 0))
                denom = tl.maximum(norm, eps)
                y = mean / denom
                # d(m / max(|m|, eps)) = (g - y (y.g)) / |m| above eps, g / eps below
                g = tl.where(norm > eps, g - y * tl.sum(y * g, 0), g) / denom
            g = g / tl.maximum(end - start, 1)
        else:
            end = n_tokens
            g = tl.zeros((BLOCK_D,), tl.float32)
        grad = tl.broadcast_to(g[None, :], (BLOCK_T, BLOCK_D)).to(DH.dtype.element_ty)
        for t0 in range(start, end, BLOCK_T):
            tokens = t0 + tl.arange(0, BLOCK_T)
            mask = (tokens < end)[:, None] & col_mask[None, :]
            tl.store(DH + tokens.to(tl.int64)[:, None] * n_cols + cols[None, :], grad, mask=mask)


def _blocks(n_cols: int) -> dict:
    block_d = triton.next_power_of_2(n_cols)
    return {"BLOCK_T": max(1, min(16, 8192 // block_d)), "BLOCK_D": block_d, "num_warps": 8 if block_d >= 1024 else 4}


class MeanPoolFunction(torch.autograd.Function):
    """(hidden (tokens, d), cu_seqlens (n + 1,) int32, normalize, eps, out_dtype) -> (n, d)."""

    @staticmethod
    def forward(ctx, hidden, cu_seqlens, normalize: bool, eps: float, out_dtype):
        hidden, cu_seqlens = hidden.contiguous(), cu_seqlens.to(torch.int32)
        n, n_cols = cu_seqlens.shape[0] - 1, hidden.shape[1]
        out = torch.empty(n, n_cols, dtype=out_dtype or hidden.dtype, device=hidden.device)
        means = torch.empty(n, n_cols, dtype=torch.float32, device=hidden.device)
        _mean_pool_fwd_kernel[(n,)](hidden, cu_seqlens, out, means, n_cols, eps, NORMALIZE=normalize,
                                    **_blocks(n_cols))
        ctx.save_for_backward(cu_seqlens, means)
        ctx.normalize, ctx.eps, ctx.hidden_shape, ctx.hidden_dtype = normalize, eps, hidden.shape, hidden.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        cu_seqlens, means = ctx.saved_tensors
        n, n_cols = means.shape
        grad_hidden = torch.empty(ctx.hidden_shape, dtype=ctx.hidden_dtype, device=means.device)
        _mean_pool_bwd_kernel[(n + 1,)](grad_out.contiguous(), means, cu_seqlens, grad_hidden, n, ctx.hidden_shape[0],
                                        n_cols, ctx.eps, NORMALIZE=ctx.normalize, **_blocks(n_cols))
        return grad_hidden, None, None, None, None


def mean_pool(hidden, cu_seqlens, normalize: bool = True, eps: float = 1e-12, out_dtype=None):
    """(n, d) mean of each packed sequence's tokens, L2-normalized if `normalize`; see the module doc."""
    if triton_runs_on(hidden):
        return MeanPoolFunction.apply(hidden, cu_seqlens, normalize, eps, out_dtype)
    log_once(logger, f"{why_not(hidden)}; mean_pool uses the PyTorch reference")
    return mean_pool_reference(hidden, cu_seqlens, normalize, eps, out_dtype)
