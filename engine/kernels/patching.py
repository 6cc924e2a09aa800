"""The one way the fast path patches a model: a method of one module instance (not its class) replaced
by a function of ours, marked so that it can be recognised, kept from being patched twice, and taken off.

Every patch site goes through `install`: the RoPE, RMSNorm, MLP and LoRA patches of engine.kernels and
the packed attention and relative-position-bias forwards of engine.attention. Only instance attributes
change, so classes, other models in the process, parameter names, state dicts and saved models are
untouched. A patched function reaches the module's own code as `type(self).<method>(self, ...)`: `install`
only patches a method that no one else has replaced on the instance, so the class's method is the original.
One patch may build on another of ours (the RoPE kernel inside a packed attention forward): `install(...,
over=...)` puts it in the other's place.
"""

from __future__ import annotations

import types

import torch

MARKER = "__lacker_patch__"  # set on every function `install` puts on a module


def install(module: torch.nn.Module, function, method: str = "forward", over=None) -> bool:
    """Make `module.<method>` run `function(module, ...)`. True when the module now runs it (also when it
    already did); False, and nothing changed, when someone else's method is already installed on it.
    `over`: a function of ours that `function` is built on, whose place it takes where it is installed."""
    current = vars(module).get(method)
    if current is None or over is not None and installed(module, method) is over:
        setattr(function, MARKER, True)
        setattr(module, method, types.MethodType(function, module))
        return True
    return getattr(current, "__func__", None) is function


def is_patched(module: torch.nn.Module, method: str = "forward") -> bool:
    return getattr(vars(module).get(method), MARKER, False)


def installed(module: torch.nn.Module, method: str = "forward"):
    """The function `install` put in place of `module.<method>`, or None."""
    current = vars(module).get(method)
    return current.__func__ if getattr(current, MARKER, False) else None


def with_globals(function, **names):
    """A copy of `function`, its code unchanged, that reads its globals from a copy of its own with `names`
    rebound: how a patch swaps the helper a forward calls (transformers' apply_rotary_pos_emb) without touching
    the module that defines it, so other models in the process keep it."""
    scope = {**function.__globals__, **names}
    # Without a module name torch.compile guards these globals as this dict, not as the module's
    # attributes (which still hold the original names)
    scope.pop("__name__", None)
    copy = types.FunctionType(function.__code__, scope, function.__name__, function.__defaults__,
                              function.__closure__)
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__qualname__ = function.__qualname__
    copy.__doc__ = function.__doc__
    return copy


def remove_patches(model: torch.nn.Module) -> int:
    """Take every method `install` put on `model`'s modules off again; returns how many."""
    removed = 0
    for module in model.modules():
        for method in [name for name, value in vars(module).items() if getattr(value, MARKER, False)]:
            delattr(module, method)
            removed += 1
    return removed


def class_path(module: torch.nn.Module) -> str:
    """"module.path.ClassName": how the family table names a patch site's class."""
    return f"{type(module).__module__}.{type(module).__name__}"


def modules_at(model: torch.nn.Module, sites):
    """(module, site) for every module inside `model` (PEFT wrappers included) whose class is the `cls`
    of one of `sites` (a family row's patch sites)."""
    by_class = {site.cls: site for site in sites}
    for module in model.modules():
        site = by_class.get(class_path(module))
        if site is not None:
            yield module, site
