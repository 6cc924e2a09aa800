"""The packed loop's model surgery, in one step (`prepare_model`), done when the loop is built: what a
model needs so that its training step can be captured in a CUDA graph, and the Triton kernels that pay
off once it is. With engine.attention.enable (packed attention, fused LoRA) this is everything the fast
path changes in a model, and none of it is saved: patched forwards are instance attributes
(engine.kernels.patching), so state dicts, configs and `save_pretrained` output are the stock model's.

Where a model patches, its family row says (engine.families): the relative-bias encoder whose host-side
buckets no graph can hold, and the RMSNorm, RoPE and MLP sites of `engine.kernels.patch_layers`.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

import torch

from engine.families import family_of_model

logger = logging.getLogger(__name__)


@dataclass
class PreparedModel:
    graphs: bool  # whether steps may run from CUDA graphs
    graph_note: str | None  # why they may not, where they were asked for
    kernel_note: str | None  # what engine.kernels.patch_layers patched
    forward_kwargs: dict = field(default_factory=dict)  # what every training forward takes (the row's)


def prepare_model(hf_model: torch.nn.Module, *, cuda: bool, graphs: bool, kernels: bool,
                  cached: bool) -> PreparedModel:
    """Patch `hf_model` for the packed loop and say what its steps can do. `graphs`: CUDA graphs asked
    for; `kernels`: the Triton RoPE / RMSNorm / gated-activation kernels, patched in only where steps
    replay from graphs (each kernel is one launch there; eager, its Python-side cost can exceed the GPU
    time it saves); `cached`: the cached loss, whose mini-batches run eagerly."""
    family = family_of_model(hf_model)
    if cuda and family is not None and family.relative_bias is not None:
        from engine.attention.relative import position_bias_on_device

        position_bias_on_device(hf_model, family.relative_bias)
    note = checkpointing_blocks_graphs(hf_model) if graphs else None
    if graphs and cached:
        note = "CUDA graphs off: the cached loss embeds mini-batches eagerly"
    if note:
        logger.warning(note)
    graphs = graphs and note is None
    kernel_note = None
    if graphs and kernels:
        from engine.kernels import patch_layers

        kernel_note = patch_layers(hf_model, family)
    return PreparedModel(graphs, note, kernel_note, dict(family.forward_kwargs) if family else {})


def draws_random(model: torch.nn.Module) -> bool:
    """Whether a forward of `model` in train mode may draw random numbers: a dropout module with p > 0
    (PEFT's lora_dropout included; PEFT uses nn.Identity for 0), or a config value named *dropout* above
    0 (attention dropouts go to the attention functions as floats, not modules). Conservative: a head's
    dropout in the config counts too."""
    if any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        return True
    config = getattr(model, "config", None)
    return config is not None and _config_has_dropout(config.to_dict())


def _config_has_dropout(values: dict) -> bool:
    for name, value in values.items():
        if isinstance(value, dict) and _config_has_dropout(value):  # a sub-config (text, vision)
            return True
        if "dropout" in str(name) and isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return True
    return False


def checkpointing_blocks_graphs(model: torch.nn.Module) -> str | None:
    """Make gradient checkpointing capturable in a CUDA graph, or say why it cannot be.

    transformers checkpoints each layer through `torch.utils.checkpoint` with preserve_rng_state=True,
    which copies the RNG state to the host before every layer so that the backward's recompute draws
    the same dropout masks; a capture cannot hold that copy. A forward that draws no random numbers
    recomputes the same values without it, so there each module's checkpoint function is rewrapped
    with preserve_rng_state=False (its other arguments, use_reentrant, kept) and None is returned.
    With dropout the saved state is needed: returns the reason graphs must stay off."""
    if not getattr(model, "is_gradient_checkpointing", False):
        return None
    if draws_random(model):
        return ("CUDA graphs off: with gradient checkpointing, a model with dropout copies its RNG state to the "
                "host at every layer, which a CUDA graph cannot capture, so training goes on without graphs "
                "(slower); turn gradient checkpointing off, or set lora_dropout to 0 if it is the only dropout, "
                "to keep them")
    for module in model.modules():
        checkpoint = getattr(module, "_gradient_checkpointing_func", None)
        if checkpoint is not None:
            module._gradient_checkpointing_func = functools.partial(checkpoint, preserve_rng_state=False)
    return None
