"""Regional torch.compile: compile each transformer layer, not the whole model.

All layers of a model share one compiled graph (same code, same shapes), so the compile cost is
one layer's, and `dynamic=True` keeps packed batches (whose token count changes every step) from
recompiling. `nn.Module.compile` compiles in place: parameter names, state dicts and saving are
unchanged.
"""

from __future__ import annotations

import torch


def transformer_layers(model: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The model's stack of transformer layers: the longest ModuleList whose entries share one class."""
    best = None
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
            if len({type(layer) for layer in module}) == 1 and (best is None or len(module) > len(best)):
                best = module
    return best


def compile_layers(model: torch.nn.Module) -> int:
    """Compile every transformer layer of `model` in place; returns how many were compiled."""
    layers = transformer_layers(model)
    if layers is None:
        return 0
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)
