"""Padding-free (packed) attention for a loaded SentenceTransformer (and the switch-over that lets the packed loop
score a CrossEncoder's or a classifier's rows packed, `enable`).

sentence-transformers 6 already knows how to train and encode without padding: its `Transformer`
module can flatten a batch into one token stream (`DataCollatorWithFlattening`: position ids that
restart per sequence, `cu_seq_lens_q/k`, `max_length_q/k`), pass the boundaries to the model, and
pool straight from the flat output. It turns that on only for flash-attention implementations,
which need the flash-attn or kernels packages. `enable` does the same switch-over with an attention
function of our own, registered with transformers' attention interface under the name
`lacker_varlen`, that runs `torch.nn.attention.varlen.varlen_attn` (window rules in `.varlen`). Where a
family's row names its attention class (`packed_attention`), that class's forward is replaced on packed calls
by one that keeps q, k and v in varlen attention's layout from the projections on (`.packed_forward`).

    from engine.attention import enable
    enable(model, family)  # -> "packed varlen attention with q, k, v in its layout in 6 layers (positions
    #     from 0); ..." or None, logged once

Calls that arrive with padded inputs and a mask (anything that bypasses the flattening collator)
go to transformers' SDPA function unchanged, so the switch never gives wrong answers, only slower ones.
"""

from __future__ import annotations

import logging

import torch

from .packed_forward import ATTN_IMPLEMENTATION, attend, patch_packed_attention
from .varlen import varlen_attention, varlen_available

logger = logging.getLogger(__name__)

_FLASH_KWARGS = {"cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx"}
_logged: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        logger.info(message)


def packed_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention-interface signature: q/k/v (batch, heads, tokens, head_dim) in,
    (batch, tokens, heads, head_dim) out. Packed inputs have batch 1 and carry `cu_seq_lens_q`. (Attention
    classes at a family's `packed_attention` sites skip it on packed calls: `.packed_forward`.)"""
    if kwargs.get("cu_seq_lens_q") is None or query.shape[0] != 1:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (tokens, heads, head_dim)
    return attend(module, q, k, v, kwargs, scaling, sliding_window, is_causal).unsqueeze(0), None


def packed_attention_mask(*args, **kwargs):
    """Mask interface: packed batches need no mask (the boundaries travel as cu_seq_lens); padded
    batches get the SDPA mask that `packed_attention_forward` hands on to SDPA."""
    if kwargs.get("attention_mask") is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, **kwargs)


def register() -> None:
    """Make `lacker_varlen` a known attention implementation (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, packed_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, packed_attention_mask)


def _use_varlen(hf_model, family) -> str:
    """`lacker_varlen` attention, and the packed forwards at the row's `packed_attention` sites; says where
    those went (" with q, k, v in its layout in N layers") or ""."""
    register()
    _set_attn_implementation(hf_model, ATTN_IMPLEMENTATION)
    covered = patch_packed_attention(hf_model, family.packed_attention)
    return f" with q, k, v in its layout in {covered} layers" if covered else ""


def _set_attn_implementation(hf_model, name: str) -> None:
    # Every sub-config (e.g. a text_config) must agree, which set_attn_implementation takes care of.
    base = hf_model.get_base_model() if hasattr(hf_model, "get_base_model") else hf_model
    base.set_attn_implementation(name)


def _fallback(reason: str) -> None:
    _log_once(f"{reason}; using padded SDPA")
    return None


def enable(st_model, family, *, compile: bool = False, allow_cpu: bool = False, packing: bool = True,
           steps: int | None = None) -> str | None:
    """Switch a loaded SentenceTransformer, CrossEncoder or sequence classifier to the GPU fast path where it
    applies; say what was done.

    - a cross-encoder's or classifier's model (`scoring_model`) gets `lacker_varlen` attention, which the packed
      loop (engine.loop.scoring) calls with each (query, document) pair or text as one packed sequence; padded
      calls (the stock trainers', prediction) go to SDPA as before;
    - a bi-encoder gets packed (padding-free) batches through `lacker_varlen` attention, for families whose row lists
      the "varlen" fast path (its `packed_attention` sites keeping q, k and v in varlen's layout, `.packed_forward`),
      or through FlexAttention with relative position bias for a "flex" row,
      at its `relative_bias` site (`.relative`);
    - PEFT LoRA layers through the fused LoRA function (`engine.kernels.lora`);
    - with `compile=True`, torch.compile per transformer layer (`engine.kernels.compile`).

    Returns a short description, or None after logging once why nothing applies (on CPU, say).
    A family without a packed path still gets the fused LoRA and compile, and the reason is logged.
    Call it after adapters are added and before the trainer builds its DataLoader (workers copy the
    collator when they start). `allow_cpu=True` runs the packed path on CPU through the PyTorch
    reference attention: for tests. `packing=False` keeps padded batches (the fused LoRA and compile still apply).
    `steps`, the run's planned optimizer steps, lets a short run skip a packed path whose compile
    would not pay for itself (FlexAttention on CUDA: `relative.PAYS_OFF_FROM_STEPS`).

    This is the model surgery of the fast path (with the packed loop's `engine.loop.surgery.prepare_model`),
    and saving is unaffected: the attention implementation is not written to config.json,
    sentence-transformers saves `unpad_inputs` only when set by hand, and patched forwards are instance
    attributes (engine.kernels.patching), so the LoRA layers keep PEFT's classes and parameter names and
    state dicts do not change. `disable` goes back to padded batches and the model's own forwards.
    """
    scorer = scoring_model(st_model)
    transformer = None if scorer is not None else st_model[0]
    hf_model = scorer if scorer is not None else getattr(transformer, "model", None)
    if hf_model is None or scorer is None and not hasattr(transformer, "_infer_flatten_position_offset"):
        return _fallback(f"first module {type(transformer).__name__} is not a sentence-transformers Transformer")
    device = next(hf_model.parameters()).device
    unavailable = varlen_available(device)
    if unavailable is not None and not allow_cpu:
        return _fallback(unavailable)

    done = []
    if not packing or _short_run_stays_padded(family, device, steps):
        pass
    elif scorer is not None:
        if (reason := scoring_unavailable(family)) is not None:
            _fallback(reason)
        else:
            done.append(f"packed varlen attention{_use_varlen(hf_model, family)} for the packed loop's pairs")
    elif (reason := _packing_unavailable(transformer, family)) is not None:
        _fallback(reason)
    else:
        done.append(_enable_packing(transformer, hf_model, family))
    if device.type == "cuda":
        from engine.kernels import patch_peft_lora

        if patched := patch_peft_lora(hf_model):
            done.append(f"fused LoRA in {patched} layers")
    if compile:
        from engine.kernels import compile_layers

        if compiled := compile_layers(hf_model):
            done.append(f"torch.compile over {compiled} layers")
    if not done:
        return None
    description = "; ".join(done)
    _log_once(f"{family.name if family else 'model'}: {description}")
    return description


def scoring_model(model):
    """The transformers sequence-classification model that a cross-encoder (its first module's) or a classifier
    (the model itself) scores with; None for a bi-encoder."""
    first = model[0] if isinstance(model, torch.nn.Sequential) and len(model) else model
    hf_model = getattr(first, "model", None) if first is not model else model
    if hf_model is not None and type(hf_model).__name__.endswith("ForSequenceClassification"):
        return hf_model
    return None


def scoring_unavailable(family) -> str | None:
    """Why the packed loop cannot score a family's sequences (engine.loop.heads), or None."""
    if family is None:
        return "architecture not in the family table, so no packed path"
    if "varlen" not in family.fast_paths:
        return f"{family.name} has no varlen packed path, so its pairs stay padded"
    if family.sequence_head is None:
        return f"{family.name} has no sequence head the packed loop reads"
    return None


def _short_run_stays_padded(family, device: torch.device, steps: int | None) -> bool:
    """The relative-bias packed path first compiles FlexAttention (~14 s on an H100): a short run is done
    sooner padded."""
    from .relative import PAYS_OFF_FROM_STEPS

    if family is None or steps is None or steps >= PAYS_OFF_FROM_STEPS or device.type != "cuda" \
            or "flex" not in family.fast_paths:
        return False
    _log_once(f"{family.name}: a {steps}-step run stays padded; compiling FlexAttention for packed batches pays "
              f"off from about {PAYS_OFF_FROM_STEPS} steps")
    return True


def _packing_unavailable(transformer, family) -> str | None:
    if family is None:
        return "architecture not in the family table, so no packed path"
    if "varlen" not in family.fast_paths and "flex" not in family.fast_paths:
        return f"{family.name} has no packed path"
    if transformer.transformer_task not in ("feature-extraction", "fill-mask") or "text" not in transformer.modality_config:
        return f"task {transformer.transformer_task!r} cannot take flattened inputs"
    return None


def _enable_packing(transformer, hf_model, family) -> str:
    from transformers import DataCollatorWithFlattening

    if "varlen" in family.fast_paths:
        description = f"packed varlen attention{_use_varlen(hf_model, family)} ("
    else:  # relative position bias
        from .relative import patch_relative_bias

        if not patch_relative_bias(hf_model, family.relative_bias):
            raise ValueError(f"{family.name}: no {family.relative_bias.self_attention} layers found to patch")
        description = "packed attention with relative position bias (FlexAttention on CUDA, "
    # What sentence-transformers' own `_can_flatten_inputs` sets up for flash attention.
    transformer.data_collator = DataCollatorWithFlattening(
        return_seq_idx=True, return_flash_attn_kwargs=True, return_position_ids=True
    )
    if transformer.model_forward_params is not None:
        transformer.model_forward_params |= _FLASH_KWARGS
    # The model's own first position (padding_idx + 1 for RoBERTa-likes, 2 as most are released, but a
    # checkpoint with another pad id counts from elsewhere), as sentence-transformers reads it.
    offset = transformer._infer_flatten_position_offset()
    transformer._flatten_position_offset = offset
    transformer.can_flatten_inputs = True
    return f"{description}positions from {offset})"


def disable(st_model) -> None:
    """Back to padded SDPA batches and the model's own forwards (e.g. before handing the model to code
    that needs masks)."""
    from engine.kernels.patching import remove_patches

    hf_model = scoring_model(st_model)
    if hf_model is None:
        transformer = st_model[0]
        transformer.can_flatten_inputs = False
        hf_model = transformer.model
    remove_patches(hf_model)
    if getattr(hf_model.config, "_attn_implementation", None) == ATTN_IMPLEMENTATION:
        _set_attn_implementation(hf_model, "sdpa")


__all__ = ["ATTN_IMPLEMENTATION", "enable", "disable", "register", "packed_attention_forward", "scoring_model",
           "varlen_attention"]
