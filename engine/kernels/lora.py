"""LoRA linear layer as one autograd function: y = x W^T + b + s (x A^T) B^T.

PEFT's `lora.Linear` runs the base layer, then `lora_B(lora_A(dropout(x))) * scaling` and an add:
under autocast that is a cast of the frozen weight every call, three matmuls, two elementwise passes
over the (tokens, out) output forward, more backward, and a dozen autograd nodes per layer, which
is what made LoRA slower than full fine-tuning on small encoders (GPU_NOTES.md). Here the update is
accumulated into the base output by `addmm` (no extra passes), backward is five matmuls written
out by hand, and the frozen weight's half-precision copy is made once and reused.

`lora_linear_reference` defines the meaning (it is PEFT's arithmetic); `patch_peft_lora` swaps the
forward of PEFT's layers in place, so state dicts, adapter saving and merging are PEFT's own.
"""

from __future__ import annotations

import logging

import torch

from .patching import install

logger = logging.getLogger(__name__)


def lora_linear_reference(x, weight, bias, lora_a, lora_b, scaling: float) -> torch.Tensor:
    """Plain PyTorch, as PEFT computes it: base(x) + lora_B(lora_A(x)) * scaling."""
    out = torch.nn.functional.linear(x, weight, bias)
    return out + torch.nn.functional.linear(torch.nn.functional.linear(x, lora_a), lora_b) * scaling


class LoraLinearFunction(torch.autograd.Function):
    """x (..., in); weight (out, in) and bias (out,) frozen, already in the compute dtype;
    lora_a (r, in), lora_b (out, r) trainable in any float dtype. Computes in weight.dtype and
    returns that dtype (what autocast would return); gradients come back in each input's dtype."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float):
        dtype = weight.dtype
        x2 = x.reshape(-1, x.shape[-1]).to(dtype)
        a, b = lora_a.to(dtype), lora_b.to(dtype)
        xa = x2 @ a.t()  # (tokens, r)
        out = torch.addmm(bias, x2, weight.t()) if bias is not None else x2 @ weight.t()
        out.addmm_(xa, b.t(), alpha=scaling)
        ctx.save_for_backward(x2, xa, weight, a, b)
        ctx.scaling = scaling
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
        ctx.param_dtypes = (lora_a.dtype, lora_b.dtype)
        return out.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out):
        x2, xa, weight, a, b = ctx.saved_tensors
        s = ctx.scaling
        g = grad_out.reshape(-1, grad_out.shape[-1]).to(weight.dtype)
        grad_xa = (g @ b).mul_(s)  # (tokens, r)
        grad_b = (g.t() @ xa).mul_(s)  # (out, r)
        grad_a = grad_xa.t() @ x2  # (r, in)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ weight).addmm_(grad_xa, a).reshape(ctx.x_shape).to(ctx.x_dtype)
        return grad_x, None, None, grad_a.to(ctx.param_dtypes[0]), grad_b.to(ctx.param_dtypes[1]), None


def _half_weights(base: torch.nn.Linear, dtype: torch.dtype):
    """The frozen base weight and bias in `dtype`, cast once and kept until the weight changes
    (merge/unmerge write into it in place, which bumps its version)."""
    weight = base.weight
    if weight.dtype == dtype or torch.compiler.is_compiling():
        return weight.to(dtype), None if base.bias is None else base.bias.to(dtype)
    key = (dtype, weight.device, weight.data_ptr(), weight._version)
    cache = getattr(base, "_lacker_half", None)
    if cache is None or cache[0] != key:
        bias = None if base.bias is None else base.bias.detach().to(dtype)
        cache = (key, weight.detach().to(dtype), bias)
        base._lacker_half = cache
    return cache[1], cache[2]


def _fast_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    adapters = [name for name in self.active_adapters if name in self.lora_A]
    if args or kwargs or self.disable_adapters or self.merged or len(adapters) != 1 or not x.is_cuda:
        return type(self).forward(self, x, *args, **kwargs)
    name = adapters[0]
    if torch.is_autocast_enabled("cuda"):
        dtype = torch.get_autocast_dtype("cuda")
    else:
        dtype = self.base_layer.weight.dtype
    weight, bias = _half_weights(self.base_layer, dtype)
    return LoraLinearFunction.apply(
        x, weight, bias, self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name]
    )


def patch_peft_lora(model: torch.nn.Module) -> int:
    """Route PEFT LoRA Linear layers (plain LoRA, no dropout, frozen base) through the fused function.

    Returns how many layers are covered (patching twice is harmless). Layers with LoRA dropout, DoRA or other variants, or a
    trainable base weight, keep PEFT's forward.
    """
    try:
        from peft.tuners.lora import Linear as LoraLinear
    except ImportError:
        return 0
    patched = 0
    for module in model.modules():
        if not isinstance(module, LoraLinear):
            continue
        if not isinstance(module.base_layer, torch.nn.Linear) or module.base_layer.weight.requires_grad:
            continue
        if module.lora_variant or any(not isinstance(d, torch.nn.Identity) for d in module.lora_dropout.values()):
            continue
        patched += install(module, _fast_forward)
    return patched
