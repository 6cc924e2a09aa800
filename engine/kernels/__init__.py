"""Fused ops for training, each a `torch.autograd.Function` with a plain PyTorch reference that
defines its meaning and serves CPUs.

- `lora.LoraLinearFunction` / `lora.patch_peft_lora`: PEFT LoRA linear layers in one function.
- `compile.compile_layers`: torch.compile per transformer layer (regional), for packed batches.
- `norm.add_layer_norm` / `norm.add_rms_norm`: residual add + LayerNorm / RMSNorm (Triton).
- `pooling.mean_pool`: mean pooling + L2 normalize over a packed token stream (Triton).
- `contrastive.contrastive_loss`: in-batch contrastive loss in blocks, never the B x C matrix (Triton).

The Triton ones import triton only when called, and fall back to their references without it.
bench/kernels.py times them against PyTorch; BENCHMARKS.md says where each wins. The training
loop (engine.loop) does not use them yet.
"""

from .compile import compile_layers
from .lora import LoraLinearFunction, lora_linear_reference, patch_peft_lora

__all__ = ["LoraLinearFunction", "compile_layers", "lora_linear_reference", "patch_peft_lora"]
