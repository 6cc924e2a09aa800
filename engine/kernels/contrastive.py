"""In-batch contrastive loss (sentence-transformers' MultipleNegativesRankingLoss) without the B x C matrix.

Inputs: anchors (B, d) and candidates (C, d), C >= B, both L2-normalized (so a dot product is the
cosine similarity); candidates[i] is anchor i's positive and every other row is a negative (the
other positives, then any hard negatives).
    loss = mean_i [ logsumexp_j(scale * a_i . c_j) - scale * a_i . c_i ]
         = F.cross_entropy(scale * anchors @ candidates.T, arange(B))

The (B, C) logits cost B * C * 4 bytes and more again for softmax and its gradient (1 GiB at
B = C = 8192). The Triton forward keeps, per block of anchor rows, a running max and sum over
blocks of candidates (the online softmax of flash attention) and writes one logsumexp per row.
Backward recomputes each block of logits from the saved logsumexp and accumulates
    grad_anchors    = scale * sum_j (softmax_ij - [i = j]) * g_i * c_j
    grad_candidates = scale * sum_i (softmax_ij - [i = j]) * g_i * a_i
in two launches of one kernel, each program owning a block of output rows and a slice of d (no
atomics, deterministic). Products accumulate in fp32 (tl.dot); fp32 inputs use tf32 only where
torch.backends.cuda.matmul.allow_tf32 allows it.

`contrastive_loss_reference` (the full matrix, plain PyTorch) defines the meaning;
`chunked_contrastive_loss_torch` computes it in blocks of anchor rows with recomputation in
backward, for devices without Triton; `contrastive_loss` picks among them.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

try:
    import triton
    import triton.language as tl
except ImportError:  # the PyTorch versions serve
    triton = None

from .runtime import log_once, triton_runs_on, why_not

logger = logging.getLogger(__name__)


def _row_losses(anchors, candidates, scale: float, first: int = 0) -> torch.Tensor:
    """Per-row loss of anchors that are rows first, first + 1, ... of the batch."""
    logits = scale * anchors @ candidates.T
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # autocast runs CE in fp32 too
    targets = torch.arange(first, first + anchors.shape[0], device=anchors.device)
    return F.cross_entropy(logits, targets, reduction="none")


def contrastive_loss_reference(anchors, candidates, scale: float = 20.0) -> torch.Tensor:
    """Plain PyTorch over the full (B, C) matrix: what MultipleNegativesRankingLoss computes."""
    return _row_losses(anchors, candidates, scale).mean()


def chunked_contrastive_loss_torch(anchors, candidates, scale: float = 20.0, chunk: int = 1024) -> torch.Tensor:
    """The same loss in blocks of `chunk` anchor rows, each block's logits recomputed in backward
    (torch.utils.checkpoint): memory (chunk, C) instead of (B, C)."""
    if anchors.shape[0] <= chunk:
        return contrastive_loss_reference(anchors, candidates, scale)
    losses = [checkpoint(_row_losses, anchors[first : first + chunk], candidates, scale, first, use_reentrant=False)
              for first in range(0, anchors.shape[0], chunk)]
    return torch.cat(losses).mean()


if triton is not None:

    @triton.jit
    def _scaled_dots(X, Y, x_rows, y_rows, n_x, n_y, dim, scale,
                     BLOCK_X: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
        """scale * X[x_rows] @ Y[y_rows].T in fp32, (BLOCK_X, BLOCK_Y); rows out of range read as zeros."""
        acc = tl.zeros((BLOCK_X, BLOCK_Y), tl.float32)
        for k0 in range(0, dim, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(X + x_rows[:, None] * dim + k[None, :], mask=(x_rows[:, None] < n_x) & (k[None, :] < dim),
                        other=0.0)
            y = tl.load(Y + y_rows[:, None] * dim + k[None, :], mask=(y_rows[:, None] < n_y) & (k[None, :] < dim),
                        other=0.0)
            acc = tl.dot(x, tl.trans(y), acc, input_precision=PRECISION)
        return acc * scale

    @triton.jit
    def _contrastive_fwd_kernel(A, C, LSE, POS, n_anchors, n_cands, dim, scale,
                                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                                PRECISION: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        running_max = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        running_sum = tl.zeros((BLOCK_M,), tl.float32)
        positive = tl.zeros((BLOCK_M,), tl.float32)
        for n0 in range(0, n_cands, BLOCK_N):
            cols = n0 + tl.arange(0, BLOCK_N)
            s = _scaled_dots(A, C, rows, cols, n_anchors, n_cands, dim, scale, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)
            s = tl.where(cols[None, :] < n_cands, s, float("-inf"))
            new_max = tl.maximum(running_max, tl.max(s, 1))
            running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(s - new_max[:, None]), 1)
            running_max = new_max
            positive += tl.sum(tl.where(rows[:, None] == cols[None, :], s, 0.0), 1)
        tl.store(LSE + rows, running_max + tl.log(running_sum), mask=rows < n_anchors)
        tl.store(POS + rows, positive, mask=rows < n_anchors)

    @triton.jit
    def _contrastive_bwd_kernel(OWN, OTHER, LSE, GRAD, D_OWN, n_own, n_other, dim, scale,
                                OWN_IS_ANCHORS: tl.constexpr, BLOCK_OWN: tl.constexpr, BLOCK_OTHER: tl.constexpr,
                                BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
        """D_OWN[own rows, d slice] = scale * sum over OTHER rows of dlogits * OTHER[row, d slice].

        OWN is anchors (then logits are (own, other)) or candidates (logits transposed: the
        logsumexp and row gradient GRAD belong to the other side)."""
        own = tl.program_id(0) * BLOCK_OWN + tl.arange(0, BLOCK_OWN)
        d_cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        acc = tl.zeros((BLOCK_OWN, BLOCK_D), tl.float32)
        if OWN_IS_ANCHORS:
            lse = tl.load(LSE + own, mask=own < n_own, other=0.0)[:, None]
            g = tl.load(GRAD + own, mask=own < n_own, other=0.0)[:, None]
        for o0 in range(0, n_other, BLOCK_OTHER):
            other = o0 + tl.arange(0, BLOCK_OTHER)
            s = _scaled_dots(OWN, OTHER, own, other, n_own, n_other, dim, scale,
                             BLOCK_OWN, BLOCK_OTHER, BLOCK_K, PRECISION)
            if not OWN_IS_ANCHORS:  # rows past B have g = 0, so hard negatives get only their softmax terms
                lse = tl.load(LSE + other, mask=other < n_other, other=0.0)[None, :]
                g = tl.load(GRAD + other, mask=other < n_other, other=0.0)[None, :]
            dlogits = (tl.exp(s - lse) - tl.where(own[:, None] == other[None, :], 1.0, 0.0)) * g
            dlogits = tl.where(other[None, :] < n_other, dlogits, 0.0)
            x = tl.load(OTHER + other[:, None] * dim + d_cols[None, :],
                        mask=(other[:, None] < n_other) & (d_cols[None, :] < dim), other=0.0)
            acc = tl.dot(dlogits.to(x.dtype), x, acc, input_precision=PRECISION)
        tl.store(D_OWN + own[:, None] * dim + d_cols[None, :], (acc * scale).to(D_OWN.dtype.element_ty),
                 mask=(own[:, None] < n_own) & (d_cols[None, :] < dim))


# Launch settings by input element size. 64-row blocks give B = 8192 a grid of 128 programs. The
# backward accumulator (64, BLOCK_D) in fp32 sets BLOCK_D: the logits are recomputed once per
# BLOCK_D columns of d. ptxas (sm_90) reports no spills with these (fp32: 40 bytes in backward).
FWD_BLOCKS = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 8, "num_stages": 3}
BWD_BLOCKS = {
    2: {"BLOCK_OWN": 64, "BLOCK_OTHER": 64, "BLOCK_K": 64, "BLOCK_D": 256, "num_warps": 8, "num_stages": 2},
    4: {"BLOCK_OWN": 64, "BLOCK_OTHER": 64, "BLOCK_K": 64, "BLOCK_D": 128, "num_warps": 8, "num_stages": 3},
}


def _dot_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"  # ignored for 16-bit inputs


class ContrastiveRowLossFunction(torch.autograd.Function):
    """(anchors (B, d), candidates (C, d), scale) -> per-row losses (B,) in fp32."""

    @staticmethod
    def forward(ctx, anchors, candidates, scale: float):
        (n_anchors, dim), n_cands = anchors.shape, candidates.shape[0]
        if n_cands < n_anchors or candidates.shape[1] != dim or candidates.dtype != anchors.dtype:
            raise ValueError(f"contrastive loss needs candidates (C >= {n_anchors}, {dim}) in {anchors.dtype}; "
                             f"got {tuple(candidates.shape)} in {candidates.dtype}")
        if anchors.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"the Triton contrastive loss takes fp32, bf16 or fp16 embeddings, not {anchors.dtype}; "
                             "use contrastive_loss_reference")
        if n_cands * dim >= 2**31:
            raise ValueError(f"candidates {tuple(candidates.shape)} exceed the kernel's int32 offsets")
        anchors, candidates = anchors.contiguous(), candidates.contiguous()
        stats = torch.empty(2, n_anchors, dtype=torch.float32, device=anchors.device)  # logsumexp, positive logit
        precision = _dot_precision(anchors.dtype)
        grid = (triton.cdiv(n_anchors, FWD_BLOCKS["BLOCK_M"]),)
        _contrastive_fwd_kernel[grid](anchors, candidates, stats[0], stats[1], n_anchors, n_cands, dim, scale,
                                      PRECISION=precision, **FWD_BLOCKS)
        ctx.save_for_backward(anchors, candidates, stats[0])
        ctx.scale, ctx.precision = scale, precision
        return stats[0] - stats[1]

    @staticmethod
    def backward(ctx, grad_rows):
        anchors, candidates, lse = ctx.saved_tensors
        grad_rows = grad_rows.float().contiguous()
        blocks = BWD_BLOCKS[anchors.element_size()]
        grads = []
        for own, other, own_is_anchors in ((anchors, candidates, True), (candidates, anchors, False)):
            grad = torch.empty_like(own)
            grid = (triton.cdiv(own.shape[0], blocks["BLOCK_OWN"]), triton.cdiv(own.shape[1], blocks["BLOCK_D"]))
            _contrastive_bwd_kernel[grid](own, other, lse, grad_rows, grad, own.shape[0], other.shape[0], own.shape[1],
                                          ctx.scale, OWN_IS_ANCHORS=own_is_anchors, PRECISION=ctx.precision, **blocks)
            grads.append(grad)
        return grads[0], grads[1], None


def contrastive_loss(anchors, candidates, scale: float = 20.0) -> torch.Tensor:
    """MultipleNegativesRankingLoss of normalized embeddings as an fp32 scalar; see the module doc."""
    if triton_runs_on(anchors):
        return ContrastiveRowLossFunction.apply(anchors, candidates, float(scale)).mean()
    log_once(logger, f"{why_not(anchors)}; contrastive_loss computes in PyTorch, in blocks of anchor rows")
    return chunked_contrastive_loss_torch(anchors, candidates, scale)
