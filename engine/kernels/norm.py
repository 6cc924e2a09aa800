"""Residual add + LayerNorm or RMSNorm in one pass over the tokens, forward and backward (Triton).

A transformer layer ends with `norm(x + residual)`, and the sum is the next layer's residual.
Unfused that is an add kernel writing the sum, a norm kernel reading it back, and as many passes
again backward. Here one program reads a row (a token) of x and residual, writes the sum and the
normed row; backward writes the gradient of x (= of residual) in one pass and sums weight and bias
gradients per program before one small reduction.

Layout: x and residual (..., hidden), leading dims flattened to rows; weight, bias (hidden,).
    summed = x + residual                           (rounded to x.dtype: what the next layer gets)
    LayerNorm: normed = (summed - mean) / sqrt(var + eps) * weight + bias
    RMSNorm:   normed = summed / sqrt(mean(summed^2) + eps) * (offset + weight)   (Gemma: offset 1)
Statistics and gradients accumulate in fp32; `normed` and `summed` come back in x.dtype, each
gradient in its input's dtype. The gradient reaching `summed` (used as the next residual) is
added to that of x and residual. One row per program: ptxas (sm_90) reports no register spills
up to hidden 8192; larger rows run, slower.

`add_layer_norm_reference` / `add_rms_norm_reference` are plain PyTorch and define the meaning;
`add_layer_norm` / `add_rms_norm` run Triton on CUDA (or under TRITON_INTERPRET=1) and the
references elsewhere.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # the references serve
    triton = None

from .runtime import log_once, triton_runs_on, why_not

logger = logging.getLogger(__name__)


def _upcast(t: torch.Tensor | None) -> torch.Tensor | None:
    """fp16/bf16 -> fp32; fp32 and fp64 stay (so a float64 reference stays float64)."""
    return None if t is None else t.to(torch.promote_types(t.dtype, torch.float32))


def add_layer_norm_reference(x, residual, weight, bias, eps: float = 1e-5):
    """Plain PyTorch: (layer_norm(x + residual), x + residual); residual None: plain LayerNorm."""
    summed = x if residual is None else (x + residual).to(x.dtype)
    s = _upcast(summed)
    normed = F.layer_norm(s, s.shape[-1:], _upcast(weight).to(s.dtype),
                          None if bias is None else _upcast(bias).to(s.dtype), eps)
    return normed.to(x.dtype), summed


def add_rms_norm_reference(x, residual, weight, eps: float = 1e-6, offset: float = 0.0):
    """Plain PyTorch: (rms_norm(x + residual) * (offset + weight), x + residual)."""
    summed = x if residual is None else (x + residual).to(x.dtype)
    s = _upcast(summed)
    normed = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps) * (offset + _upcast(weight).to(s.dtype))
    return normed.to(x.dtype), summed


if triton is not None:

    @triton.jit
    def _add_norm_fwd_kernel(X, R, S, W, B, Y, MEAN, RSTD, n_cols, eps, offset,
                             HAS_RESIDUAL: tl.constexpr, HAS_BIAS: tl.constexpr, IS_RMS: tl.constexpr,
                             BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        offs = row * n_cols + cols
        s = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            s += tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)
            s = s.to(S.dtype.element_ty)  # normalise the sum as stored, as the reference does
            tl.store(S + offs, s, mask=mask)
            s = s.to(tl.float32)
        if IS_RMS:
            centred = s
        else:
            mean = tl.sum(s, 0) / n_cols
            centred = tl.where(mask, s - mean, 0.0)
            tl.store(MEAN + row, mean)
        rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, 0) / n_cols + eps)
        tl.store(RSTD + row, rstd)
        y = centred * rstd * (tl.load(W + cols, mask=mask, other=0.0).to(tl.float32) + offset)
        if HAS_BIAS:
            y += tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _add_norm_bwd_kernel(DY, DS, S, W, MEAN, RSTD, DX, DW, DB, n_rows, n_cols, rows_per_program, offset,
                             HAS_DSUM: tl.constexpr, HAS_BIAS: tl.constexpr, IS_RMS: tl.constexpr,
                             BLOCK: tl.constexpr):
        """Rows [pid * rows_per_program, ...) of dx; this program's share of dw and db in row pid."""
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32) + offset
        dw = tl.zeros((BLOCK,), tl.float32)
        db = tl.zeros((BLOCK,), tl.float32)
        first = pid.to(tl.int64) * rows_per_program  # int64 row numbers, so row * n_cols cannot overflow
        for row in range(first, tl.minimum(first + rows_per_program, n_rows)):
            offs = row * n_cols + cols
            s = tl.load(S + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + row)
            if IS_RMS:
                xhat = s * rstd
            else:
                xhat = tl.where(mask, s - tl.load(MEAN + row), 0.0) * rstd
            wdy = w * dy
            dx = wdy - xhat * (tl.sum(wdy * xhat, 0) / n_cols)
            if not IS_RMS:
                dx -= tl.sum(wdy, 0) / n_cols
            dx *= rstd
            if HAS_DSUM:
                dx += tl.load(DS + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
            dw += dy * xhat
            db += dy
        tl.store(DW + pid * n_cols + cols, dw, mask=mask)
        if HAS_BIAS:
            tl.store(DB + pid * n_cols + cols, db, mask=mask)


def _num_warps(block: int) -> int:
    """About 8 elements of a row per thread: ptxas (sm_90) reports no spills up to 8192 this way."""
    return min(32, max(4, block // 256))


def _programs_for(device: torch.device, n_rows: int, block: int) -> int:
    """Backward programs: on CUDA, as many per multiprocessor as keep about 8192 of a row's elements in flight on it
    (two for rows of 4096 and more, 64 for Qwen3's q / k norms over head_dim 128, whose rows one program walks one
    at a time: at two a multiprocessor those were latency-bound, 17% of a Qwen3-0.6B step), and their dw rows
    about 4 MB to sum."""
    if device.type == "cuda":
        per_multiprocessor = max(2, 8192 // block)
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        return max(1, min(n_rows, per_multiprocessor * sms))
    return max(1, min(n_rows, 4))


class AddNormFunction(torch.autograd.Function):
    """(x, residual or None, weight, bias or None, eps, offset, is_rms) -> (normed, summed), or
    normed alone without a residual (summed would be x itself)."""

    @staticmethod
    def forward(ctx, x, residual, weight, bias, eps: float, offset: float, is_rms: bool):
        n_cols = x.shape[-1]
        x2 = x.reshape(-1, n_cols).contiguous()
        summed = x2 if residual is None else torch.empty_like(x2)
        normed = torch.empty_like(x2)
        stats = torch.empty(2, x2.shape[0], dtype=torch.float32, device=x.device)  # mean, rstd
        block = triton.next_power_of_2(n_cols)
        _add_norm_fwd_kernel[(x2.shape[0],)](
            x2, x2 if residual is None else residual.reshape(-1, n_cols).contiguous(), summed, weight,
            weight if bias is None else bias, normed, stats[0], stats[1], n_cols, eps, offset,
            HAS_RESIDUAL=residual is not None, HAS_BIAS=bias is not None, IS_RMS=is_rms, BLOCK=block,
            num_warps=_num_warps(block),
        )
        ctx.save_for_backward(summed, weight, bias, stats)
        ctx.offset, ctx.is_rms = offset, is_rms
        ctx.residual_dtype = None if residual is None else residual.dtype
        if residual is None:
            return normed.view(x.shape)
        return normed.view(x.shape), summed.view(x.shape)

    @staticmethod
    def backward(ctx, grad_normed, grad_summed=None):
        summed, weight, bias, stats = ctx.saved_tensors
        n_rows, n_cols = summed.shape
        dy = grad_normed.reshape(n_rows, n_cols).contiguous()
        ds = None if grad_summed is None else grad_summed.reshape(n_rows, n_cols).contiguous()
        block = triton.next_power_of_2(n_cols)
        programs = _programs_for(summed.device, n_rows, block)
        dx = torch.empty_like(summed)
        dw = torch.empty(programs, n_cols, dtype=torch.float32, device=summed.device)
        db = torch.empty_like(dw) if bias is not None else dw
        _add_norm_bwd_kernel[(programs,)](
            dy, dy if ds is None else ds, summed, weight, stats[0], stats[1], dx, dw, db, n_rows, n_cols,
            triton.cdiv(n_rows, programs), ctx.offset, HAS_DSUM=ds is not None, HAS_BIAS=bias is not None,
            IS_RMS=ctx.is_rms, BLOCK=block, num_warps=_num_warps(block),
        )
        dx = dx.view(grad_normed.shape)
        grad_residual = None if ctx.residual_dtype is None else dx.to(ctx.residual_dtype)
        grad_bias = db.sum(0).to(bias.dtype) if bias is not None else None
        return dx, grad_residual, dw.sum(0).to(weight.dtype), grad_bias, None, None, None


def _triton_runs_on(t: torch.Tensor) -> bool:
    if triton_runs_on(t):
        return True
    log_once(logger, f"{why_not(t)}; add_layer_norm / add_rms_norm use the PyTorch reference")
    return False


def add_layer_norm(x, residual, weight, bias, eps: float = 1e-5):
    """(normed, summed): LayerNorm of x + residual, and that sum. residual None: plain LayerNorm
    (summed is x). bias may be None."""
    if not _triton_runs_on(x):
        return add_layer_norm_reference(x, residual, weight, bias, eps)
    out = AddNormFunction.apply(x, residual, weight, bias, eps, 0.0, False)
    return out if residual is not None else (out, x)


def add_rms_norm(x, residual, weight, eps: float = 1e-6, offset: float = 0.0):
    """(normed, summed): RMSNorm of x + residual scaled by (offset + weight), and that sum."""
    if not _triton_runs_on(x):
        return add_rms_norm_reference(x, residual, weight, eps, offset)
    out = AddNormFunction.apply(x, residual, weight, None, eps, offset, True)
    return out if residual is not None else (out, x)
