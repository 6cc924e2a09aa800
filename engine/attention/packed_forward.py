"""Attention forwards for packed calls that keep q, k and v in varlen attention's layout, and `attend`, the
varlen call both packed routes share.

transformers' attention modules view each projection as (batch, tokens, heads, head_dim) and transpose it to
(batch, heads, tokens, head_dim) for the attention interface; for a packed stream (batch 1) `lacker_varlen`
(engine.attention.packed_attention_forward) takes batch 0 and transposes back to the (tokens, heads, head_dim)
that `varlen_attention` takes. That is all views going forward, not coming back: the backward of taking batch 0
writes each gradient into a new zero-filled (1, heads, tokens, head_dim) tensor, and the projection's view
takes that tensor's transpose only by a copy, so q's, k's and v's gradients are written twice more in every layer
(ModernBERT's once: its fused projection's backward stacks them anyway). The forward installed here on a
family's `packed_attention` sites (engine.families.PackedAttentionSite) never transposes:

    projection -> view (1, tokens, heads, head_dim) -> [q_norm, k_norm] -> [RoPE, unsqueeze_dim=2]
        -> squeeze to (tokens, heads, head_dim) -> varlen_attention -> view (1, tokens, heads * head_dim)
        -> [out projection, dropout]

so q, k and v reach the kernel as views of the projections (of the norm's or RoPE's outputs for q and k, laid
out tokens first), their gradients come back as views, and the output leaves the kernel as a view. It calls the
module's own submodules (PEFT's LoRA layers, the fused LoRA, the Triton RMSNorm where those are patched in) and
its modeling module's apply_rotary_pos_emb, which engine.kernels.rope replaces with the RoPE kernel where the
loop patches kernels in. It takes a call only where `lacker_varlen` would have taken it (a packed stream, no KV
cache to update); any other call runs the class's forward. Like varlen attention, it has no attention dropout
(the packed path never had).
"""

from __future__ import annotations

import functools
import logging
import sys

import torch

from engine.kernels.patching import install, modules_at, with_globals
from engine.kernels.runtime import log_once

from .varlen import varlen_attention, window_for

logger = logging.getLogger(__name__)

ATTN_IMPLEMENTATION = "lacker_varlen"


def attend(module: torch.nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, flash_kwargs: dict,
           scaling: float | None, sliding_window: int | None = None, is_causal: bool | None = None) -> torch.Tensor:
    """varlen attention over the (tokens, heads, head_dim) q, k and v of a packed call, whose keyword arguments
    (`cu_seq_lens_q`, `max_length_q`... as DataCollatorWithFlattening makes them) are `flash_kwargs`;
    (tokens, heads, head_dim) out, in q's dtype. Causal as `is_causal` says, else as the module is."""
    cu_seqlens_q = flash_kwargs["cu_seq_lens_q"]
    cu_seqlens_k = flash_kwargs.get("cu_seq_lens_k", cu_seqlens_q)
    max_q = flash_kwargs.get("max_length_q")
    max_k = flash_kwargs.get("max_length_k", max_q)
    causal = is_causal if is_causal is not None else bool(getattr(module, "is_causal", False))
    dtype = q.dtype
    if q.is_cuda and dtype == torch.float32:
        # The CUDA kernel takes bf16/fp16 only; under autocast the projections are already half.
        half = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else torch.bfloat16
        log_once(logger, f"packed attention got float32 inputs; computing attention in {half}")
        q, k, v = q.to(half), k.to(half), v.to(half)
    out = varlen_attention(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_q, max_k, scale=scaling, window=window_for(sliding_window, causal)
    )
    return out.to(dtype)


def _takes_packed(module: torch.nn.Module, hidden_states: torch.Tensor, kwargs: dict) -> bool:
    """Whether `lacker_varlen` would run this call packed: one stream, its boundaries given, no cache."""
    return (kwargs.get("cu_seq_lens_q") is not None and hidden_states.shape[0] == 1
            and kwargs.get("past_key_values") is None
            and getattr(module.config, "_attn_implementation", None) == ATTN_IMPLEMENTATION)


@functools.cache
def packed_forward(site, attention_class: type):
    """The forward `patch_packed_attention` puts on modules of `attention_class` at `site`."""

    def forward(self, hidden_states, *args, **kwargs):
        if not _takes_packed(self, hidden_states, kwargs):
            return type(self).forward(self, hidden_states, *args, **kwargs)
        tokens = hidden_states.shape[1]
        head_dim = getattr(self, site.head_dim)
        if len(site.qkv) == 1:  # one fused projection: (q, k, v) a token, each (heads, head_dim)
            q, k, v = getattr(self, site.qkv[0])(hidden_states).view(1, tokens, 3, -1, head_dim).unbind(2)
        else:
            q, k, v = (getattr(self, name)(hidden_states).view(1, tokens, -1, head_dim) for name in site.qkv)
        if site.norms is not None:  # per head, over head_dim: the same in this layout
            q, k = getattr(self, site.norms[0])(q), getattr(self, site.norms[1])(k)
        if site.rotary:
            cos, sin = args[0] if args else kwargs["position_embeddings"]
            q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)  # noqa: F821 (the modeling module's)
        scaling = getattr(self, site.scaling) if site.scaling is not None else head_dim**-0.5
        # squeeze, not [0]: the backward of a select writes the gradient into a new zero-filled tensor
        q, k, v = q.squeeze(0), k.squeeze(0), v.squeeze(0)
        out = attend(self, q, k, v, kwargs, scaling, getattr(self, "sliding_window", None), kwargs.get("is_causal"))
        out = out.view(1, tokens, -1)
        if site.out is not None:
            out = getattr(self, site.out)(out)
        if site.out_dropout is not None:
            out = getattr(self, site.out_dropout)(out)
        return out, None

    forward.__qualname__ = f"packed_forward.<{attention_class.__name__}>"
    if not site.rotary:
        return forward
    # RoPE as the class's own forward computes it (ModernBERT's upcasts to fp32, Qwen3's does not)
    return with_globals(forward, apply_rotary_pos_emb=sys.modules[attention_class.__module__].apply_rotary_pos_emb)


def patch_packed_attention(hf_model: torch.nn.Module, sites) -> int:
    """Give every attention module inside `hf_model` (PEFT wrappers included) whose class is one of `sites` (a
    family row's `packed_attention`) the packed forward; returns how many modules are covered. Per instance
    (engine.kernels.patching); patching twice is harmless; a module whose forward someone else has already
    replaced keeps it and is not counted."""
    return sum(install(module, packed_forward(site, type(module))) for module, site in modules_at(hf_model, sites))
