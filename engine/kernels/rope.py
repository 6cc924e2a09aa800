"""Rotary position embedding (RoPE) of queries and keys in one pass, forward and backward (Triton),
and `patch_rope`, which puts it into the attention layers a family row lists (its `rope` sites).

transformers rotates q and k with `apply_rotary_pos_emb` in the `rotate_half` convention:

    q_embed = q * cos + rotate_half(q) * sin,    rotate_half(x) = cat(-x[..., D/2:], x[..., :D/2])

which in PyTorch is a slice, a negation, a concatenation, two products and a sum for each of q
and k, each a kernel writing a full tensor. Here one program reads the cos/sin rows of a block of
tokens and rotates a block of those tokens' heads of q or of k; one launch covers both. The
backward of the rotation is the rotation by -sin (with the halves of sin swapped, which differ
only when cos/sin do not repeat their halves), so nothing is saved but cos and sin.

Layout, as transformers calls it (unsqueeze_dim=1):
    q (batch, q_heads, tokens, head_dim), k (batch, k_heads, tokens, head_dim): any strides (the
        transposed views of (batch, tokens, heads, head_dim) projections are read in place);
        q_heads may differ from k_heads (grouped-query attention); packed batches have batch 1.
    or, with unsqueeze_dim=2, q (batch, tokens, q_heads, head_dim) and k likewise: the layout the packed
        attention forwards keep (engine.attention.packed_forward), rotated in place of the same views.
    cos, sin (batch or 1, tokens, head_dim); head_dim even. They get no gradient (transformers
        makes them under no_grad): if one requires grad, the PyTorch reference runs instead.
Math in fp32 (fp64 stays fp64 in the reference); outputs in `out_dtype`, by default each in its
input's dtype, laid out like their inputs (torch.empty_like). The gradient of q and of k comes
back in q's and k's dtype. No host syncs: forward and backward can be captured in a CUDA graph.

`apply_rope_reference` is plain PyTorch and defines the meaning; `apply_rope` runs Triton on CUDA
(or under TRITON_INTERPRET=1) and the reference elsewhere.
"""

from __future__ import annotations

import functools
import logging

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the reference serves
    triton = None

from .patching import install, installed, modules_at, with_globals
from .runtime import log_once, triton_runs_on, why_not

logger = logging.getLogger(__name__)


def apply_rope_reference(q, k, cos, sin, out_dtype: torch.dtype | None = None, unsqueeze_dim: int = 1):
    """Plain PyTorch: (q_embed, k_embed) as transformers' apply_rotary_pos_emb, computed in fp32
    (or the inputs' dtype if wider), each returned in `out_dtype` or its input's dtype."""
    compute = torch.promote_types(torch.promote_types(cos.dtype, sin.dtype), torch.float32)

    def rotate(x):
        x = x.to(torch.promote_types(x.dtype, compute))
        c, s = cos.unsqueeze(unsqueeze_dim).to(x.dtype), sin.unsqueeze(unsqueeze_dim).to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * c + torch.cat((-x2, x1), dim=-1) * s

    return rotate(q).to(out_dtype or q.dtype), rotate(k).to(out_dtype or k.dtype)


if triton is not None:

    @triton.jit
    def _rotate_heads(X, O, x_base, o_base, x_token_stride, o_token_stride, x_head_stride, o_head_stride,
                      tokens, token_mask, first_head, n_heads, half, cos1, cos2, sin1, sin2,
                      BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
        """Heads [first_head, first_head + BLOCK_H) of a block of tokens (cos1... hold a row per
        token): O = X * cos + rotate_half(X) * sin, each half of head_dim on its own."""
        heads = (first_head + tl.arange(0, BLOCK_H)).to(tl.int64)
        cols = tl.arange(0, BLOCK_HALF)
        mask = token_mask[:, None, None] & (heads < n_heads)[None, :, None] & (cols < half)[None, None, :]
        x1_at = X + x_base + tokens[:, None, None] * x_token_stride + heads[None, :, None] * x_head_stride \
            + cols[None, None, :]
        o1_at = O + o_base + tokens[:, None, None] * o_token_stride + heads[None, :, None] * o_head_stride \
            + cols[None, None, :]
        x1 = tl.load(x1_at, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(x1_at + half, mask=mask, other=0.0).to(tl.float32)
        o1 = x1 * cos1[:, None, :] - x2 * sin1[:, None, :]
        o2 = x2 * cos2[:, None, :] + x1 * sin2[:, None, :]
        tl.store(o1_at, o1.to(O.dtype.element_ty), mask=mask)
        tl.store(o1_at + half, o2.to(O.dtype.element_ty), mask=mask)

    @triton.jit
    def _rope_kernel(Q, K, COS, SIN, QO, KO, n_tokens, n_q_heads, n_k_heads, half,
                     q_sb, q_sh, q_st, k_sb, k_sh, k_st, qo_sb, qo_sh, qo_st, ko_sb, ko_sh, ko_st, c_sb, c_st,
                     BACKWARD: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_HQ: tl.constexpr,
                     BLOCK_HK: tl.constexpr, BLOCK_HALF: tl.constexpr):
        """Program (i, j): tokens [i * BLOCK_T, ...) of one batch row; block j of q's heads, or past
        those, block j - q_blocks of k's heads. Strides in elements; head_dim stride 1 everywhere;
        cos and sin share strides."""
        token_blocks = tl.cdiv(n_tokens, BLOCK_T)
        b = (tl.program_id(0) // token_blocks).to(tl.int64)
        tokens = (tl.program_id(0) % token_blocks) * BLOCK_T + tl.arange(0, BLOCK_T)
        token_mask = tokens < n_tokens
        tokens = tokens.to(tl.int64)
        block = tl.program_id(1)
        cols = tl.arange(0, BLOCK_HALF)
        c_mask = token_mask[:, None] & (cols < half)[None, :]
        c_at = b * c_sb + tokens[:, None] * c_st + cols[None, :]
        cos1 = tl.load(COS + c_at, mask=c_mask, other=0.0).to(tl.float32)
        cos2 = tl.load(COS + c_at + half, mask=c_mask, other=0.0).to(tl.float32)
        sin1 = tl.load(SIN + c_at, mask=c_mask, other=0.0).to(tl.float32)
        sin2 = tl.load(SIN + c_at + half, mask=c_mask, other=0.0).to(tl.float32)
        if BACKWARD:
            # out1 = x1 c1 - x2 s1, out2 = x2 c2 + x1 s2, so dx1 = g1 c1 + g2 s2, dx2 = g2 c2 - g1 s1:
            # the same map with (s1, s2) -> (-s2, -s1)
            sin1, sin2 = -sin2, -sin1
        q_blocks = tl.cdiv(n_q_heads, BLOCK_HQ)
        if block < q_blocks:
            _rotate_heads(Q, QO, b * q_sb, b * qo_sb, q_st, qo_st, q_sh, qo_sh, tokens, token_mask,
                          block * BLOCK_HQ, n_q_heads, half, cos1, cos2, sin1, sin2, BLOCK_HQ, BLOCK_HALF)
        else:
            _rotate_heads(K, KO, b * k_sb, b * ko_sb, k_st, ko_st, k_sh, ko_sh, tokens, token_mask,
                          (block - q_blocks) * BLOCK_HK, n_k_heads, half, cos1, cos2, sin1, sin2,
                          BLOCK_HK, BLOCK_HALF)


_ROPE_KERNEL = "__lacker_rope_kernel__"  # set on the forwards `_patched_forward` makes
_TILE = 2048  # elements of half of head_dim a program takes from a tensor: 8 a thread at 8 warps


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _rotate(q, k, cos, sin, q_out_dtype, k_out_dtype, backward: bool):
    """Launch: (q rotated, k rotated) into new tensors laid out like q and k."""
    batch, q_heads, tokens, head_dim = q.shape
    k_heads = k.shape[1]
    q, k = _unit_last_stride(q), _unit_last_stride(k)
    cos, sin = cos.expand(batch, tokens, head_dim), sin.expand(batch, tokens, head_dim)
    if cos.stride() != sin.stride() or cos.stride(-1) != 1:
        cos, sin = cos.contiguous(), sin.contiguous()
    q_out = torch.empty_like(q, dtype=q_out_dtype)
    k_out = torch.empty_like(k, dtype=k_out_dtype)
    half = head_dim // 2
    block_half = triton.next_power_of_2(half)
    heads_per_tile = max(1, _TILE // block_half)
    block_hq = min(triton.next_power_of_2(q_heads), heads_per_tile)
    block_hk = min(triton.next_power_of_2(k_heads), heads_per_tile)
    block_t = min(triton.next_power_of_2(tokens), max(1, heads_per_tile // max(block_hq, block_hk)))
    grid = (batch * triton.cdiv(tokens, block_t), triton.cdiv(q_heads, block_hq) + triton.cdiv(k_heads, block_hk))
    _rope_kernel[grid](
        q, k, cos, sin, q_out, k_out, tokens, q_heads, k_heads, half,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        q_out.stride(0), q_out.stride(1), q_out.stride(2), k_out.stride(0), k_out.stride(1), k_out.stride(2),
        cos.stride(0), cos.stride(1),
        BACKWARD=backward, BLOCK_T=block_t, BLOCK_HQ=block_hq, BLOCK_HK=block_hk, BLOCK_HALF=block_half,
        num_warps=max(1, min(8, block_t * max(block_hq, block_hk) * block_half // 256)),
    )
    return q_out, k_out


class RopeFunction(torch.autograd.Function):
    """(q, k, cos, sin, out_dtype or None) -> (q_embed, k_embed); cos and sin get no gradient."""

    @staticmethod
    def forward(ctx, q, k, cos, sin, out_dtype):
        ctx.save_for_backward(cos, sin)
        ctx.dtypes = q.dtype, k.dtype
        return _rotate(q, k, cos, sin, out_dtype or q.dtype, out_dtype or k.dtype, backward=False)

    @staticmethod
    def backward(ctx, grad_q, grad_k):
        cos, sin = ctx.saved_tensors
        dq, dk = _rotate(grad_q, grad_k, cos, sin, *ctx.dtypes, backward=True)
        return dq, dk, None, None, None


def _triton_runs_on(t: torch.Tensor) -> bool:
    if triton_runs_on(t):
        return True
    _log_fallback(why_not(t))
    return False


def _log_fallback(why: str) -> None:
    log_once(logger, f"{why}; RoPE runs in plain PyTorch")


def _check_shapes(q, k, cos, sin) -> None:
    fits = q.dim() == 4 and k.dim() == 4 and cos.dim() == 3 and cos.shape == sin.shape
    if fits:
        batch, _, tokens, head_dim = q.shape
        fits = (head_dim % 2 == 0 and (k.shape[0], k.shape[2], k.shape[3]) == (batch, tokens, head_dim)
                and cos.shape[0] in (1, batch) and tuple(cos.shape[1:]) == (tokens, head_dim))
    if not fits:
        raise ValueError(
            f"apply_rope: expected q (batch, q_heads, tokens, head_dim) and k (batch, k_heads, tokens, head_dim) "
            f"with an even head_dim, and cos, sin (batch or 1, tokens, head_dim); got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, cos {tuple(cos.shape)}, sin {tuple(sin.shape)}"
        )


def apply_rope(q, k, cos, sin, out_dtype: torch.dtype | None = None, unsqueeze_dim: int = 1):
    """(q_embed, k_embed): q and k rotated by cos/sin as transformers' apply_rotary_pos_emb with
    `unsqueeze_dim` 1 (heads before tokens) or 2 (tokens before heads; shapes in the module docstring).
    out_dtype: of both outputs; None: each output in its input's dtype."""
    if unsqueeze_dim not in (1, 2):
        raise ValueError(f"apply_rope: unsqueeze_dim must be 1 or 2, got {unsqueeze_dim}")
    tokens_first = unsqueeze_dim == 2
    heads_first = (q.transpose(1, 2), k.transpose(1, 2)) if tokens_first and q.dim() == k.dim() == 4 else (q, k)
    _check_shapes(*heads_first, cos, sin)
    if cos.requires_grad or sin.requires_grad:
        _log_fallback("cos or sin requires grad (the kernel gives them none)")
        return apply_rope_reference(q, k, cos, sin, out_dtype, unsqueeze_dim)
    if not _triton_runs_on(q):
        return apply_rope_reference(q, k, cos, sin, out_dtype, unsqueeze_dim)
    q_embed, k_embed = RopeFunction.apply(*heads_first, cos, sin, out_dtype)
    # The kernel lays its outputs out like its inputs, so transposing back gives q's and k's own layout
    return (q_embed.transpose(1, 2), k_embed.transpose(1, 2)) if tokens_first else (q_embed, k_embed)


# ---- patching transformers models ---------------------------------------------------------------


def _kernel_in_place_of(original, upcasts: bool):
    """A drop-in for transformers' apply_rotary_pos_emb that runs apply_rope where it computes the
    same thing, and `original` elsewhere (CPU, an unsqueeze_dim other than 1 or 2, q and k promoting apart)."""

    def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
        if unsqueeze_dim not in (1, 2) or not _triton_runs_on(q):
            return original(q, k, cos, sin, unsqueeze_dim)
        if upcasts:
            return apply_rope(q, k, cos, sin, out_dtype=q.dtype, unsqueeze_dim=unsqueeze_dim)
        angles = torch.promote_types(cos.dtype, sin.dtype)
        out_dtype = torch.promote_types(q.dtype, angles)
        if torch.promote_types(k.dtype, angles) != out_dtype:
            return original(q, k, cos, sin, unsqueeze_dim)
        return apply_rope(q, k, cos, sin, out_dtype=out_dtype, unsqueeze_dim=unsqueeze_dim)

    return apply_rotary_pos_emb


@functools.cache
def _patched_forward(forward, upcasts: bool):
    """`forward` (an attention class's, or a packed attention forward of engine.attention installed in its
    place), its code unchanged, reading apply_rotary_pos_emb as `_kernel_in_place_of` the one it reads now;
    `forward` itself if it already does. None if it does not call apply_rotary_pos_emb itself (a wrapped or
    rewritten forward)."""
    if getattr(forward, _ROPE_KERNEL, False):
        return forward
    code = getattr(forward, "__code__", None)
    if code is None or "apply_rotary_pos_emb" not in code.co_names or "apply_rotary_pos_emb" not in forward.__globals__:
        return None
    original = forward.__globals__["apply_rotary_pos_emb"]
    patched = with_globals(forward, apply_rotary_pos_emb=_kernel_in_place_of(original, upcasts))
    setattr(patched, _ROPE_KERNEL, True)
    return patched


def patch_rope(hf_model, sites) -> int:
    """Make every attention module inside `hf_model` (PEFT wrappers included) whose class is one of
    `sites` (a family row's `rope`: the class, and whether its apply_rotary_pos_emb upcasts) rotate q
    and k with `apply_rope`; returns how many attention modules are covered.

    Each module gets its own `forward` (engine.kernels.patching): its class's forward code (or, where the
    packed path has put a forward of engine.attention.packed_forward on it, that one's), reading
    apply_rotary_pos_emb from a private copy of its globals, taken when that forward is first patched
    (names the modeling module rebinds later do not reach patched modules). The modeling
    module itself is untouched, so other models in the process keep transformers' code. Where Triton does
    not run (CPU without TRITON_INTERPRET=1) patched modules call transformers' own function, so
    their outputs do not change there. A site that does not upcast computes in the inputs' promoted
    dtype, which the outputs keep; the kernel rounds once where transformers rounds three times, so bf16
    outputs can differ from transformers' by a unit in the last place. Patching twice is harmless; a
    module whose forward someone else has already replaced is left alone and not counted.
    """
    covered = 0
    for module, site in modules_at(hf_model, sites):
        ours = installed(module)  # a packed attention forward (engine.attention.packed_forward), say
        patched = _patched_forward(ours or type(module).forward, site.upcasts)
        if patched is None:
            _log_fallback(f"{type(module).__name__}.forward does not call apply_rotary_pos_emb")
            continue
        covered += install(module, patched, over=ours)
    return covered
