"""Fused ops for training, each a `torch.autograd.Function` with a plain PyTorch reference that
defines its meaning and serves CPUs.

- `lora.LoraLinearFunction` / `lora.patch_peft_lora`: PEFT LoRA linear layers in one function.
- `compile.compile_layers`: torch.compile per transformer layer (regional), for packed batches.
- `norm.add_layer_norm` / `norm.add_rms_norm`: residual add + LayerNorm / RMSNorm (Triton).
- `pooling.mean_pool`: mean pooling + L2 normalize over a packed token stream (Triton).
- `contrastive.contrastive_loss`: in-batch contrastive loss in blocks, never the B x C matrix (Triton).
- `activations.gelu` / `geglu` / `swiglu`: MLP activations, gated ones with their multiply (Triton).
- `rope.apply_rope`: rotary embedding of q and k in one kernel (Triton).
- `patch_layers`: puts the RoPE, RMSNorm and gated-activation kernels into a Hugging Face model, at the
  patch sites its family row (engine.families) lists; `patching` is the one way every patch is installed.

The Triton ones import triton only when called, and fall back to their references without it.
bench/kernels.py times them against PyTorch; BENCHMARKS.md says where each wins. The training
loop (engine.loop.surgery) patches them in with `patch_layers` where it replays steps from CUDA graphs:
each kernel is one launch there, where eager its Python-side cost (~80 us a call) can exceed its
GPU time.
"""

from .compile import compile_layers
from .lora import LoraLinearFunction, lora_linear_reference, patch_peft_lora


def patch_layers(hf_model, family) -> str | None:
    """RoPE, RMSNorm and gated MLP activations of `hf_model` through the Triton kernels, at the sites
    `family` (its engine.families row, or None) lists, where the model's own formula is exactly what a
    kernel computes; says what was patched, None if nothing."""
    if family is None:
        return None
    from .activations import patch_activations
    from .patch_norm import patch_rms_norms
    from .rope import patch_rope

    counts = {"RoPE": patch_rope(hf_model, family.rope), "RMSNorm": patch_rms_norms(hf_model, family.rms_norms),
              "gated activation": patch_activations(hf_model, family.mlps, gated_only=True)}
    done = [f"{name} in {count}" for name, count in counts.items() if count]
    return f"Triton {', '.join(done)} layers" if done else None


__all__ = ["LoraLinearFunction", "compile_layers", "lora_linear_reference", "patch_layers", "patch_peft_lora"]
