"""Fused ops for training, each a `torch.autograd.Function` with a plain PyTorch reference that
defines its meaning and serves CPUs.

- `lora.LoraLinearFunction` / `lora.patch_peft_lora`: PEFT LoRA linear layers in one function.
- `compile.compile_layers`: torch.compile per transformer layer (regional), for packed batches.
"""

from .compile import compile_layers
from .lora import LoraLinearFunction, lora_linear_reference, patch_peft_lora

__all__ = ["LoraLinearFunction", "compile_layers", "lora_linear_reference", "patch_peft_lora"]
