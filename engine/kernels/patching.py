"""Per-instance forward swaps, shared by the kernel patches (engine.kernels.rope, .patch_norm)."""

from __future__ import annotations

import types


def install_forward(module, function) -> bool:
    """Give `module` (not its class) a forward running `function(module, ...)`. True when the module
    now runs it (also when it already did); False, and nothing changed, when a forward of someone
    else's is already installed on it."""
    current = vars(module).get("forward")
    if current is None:
        module.forward = types.MethodType(function, module)
        return True
    return getattr(current, "__func__", None) is function
