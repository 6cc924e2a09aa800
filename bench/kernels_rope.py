"""RoPE (engine.kernels.rope) and RMSNorm without a residual (engine.kernels.norm, as
engine.kernels.patch_norm calls it) against transformers' own code, forward + backward; cases for
bench/kernels.py.

bf16, packed batches of 16384 tokens. "torch" is what runs without our patches: transformers
5.17's apply_rotary_pos_emb of that family (Qwen3 computes in bf16; ModernBERT upcasts q and k to
fp32 and back) on q and k laid out as the attention layer passes them (transposed views of the
projections), and the Qwen3RMSNorm / Gemma3RMSNorm modules with the weight as an input.
"""

from __future__ import annotations

import torch

from engine.kernels.norm import add_rms_norm
from engine.kernels.rope import apply_rope

TOKENS = 16384
SEQUENCE = 512  # packed: sequences of this many tokens back to back, positions restarting


def rotary(head_dim: int, theta: float):
    """(cos, sin) of shape (1, TOKENS, head_dim) in bf16, as transformers' rotary embedding makes them."""
    positions = (torch.arange(TOKENS) % SEQUENCE).float()
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    freqs = positions[:, None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)[None].cuda()
    return emb.cos().bfloat16(), emb.sin().bfloat16()


def transformers_norm(module_class, hidden: int, eps: float):
    """module_class's forward, as transformers writes it, with its weight taken as an argument."""
    module = module_class(hidden, eps=eps).cuda()
    return lambda x, weight: torch.func.functional_call(module, {"weight": weight}, (x,))


def cases() -> list:
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm
    from transformers.models.modernbert.modeling_modernbert import apply_rotary_pos_emb as modernbert_rope
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm
    from transformers.models.qwen3.modeling_qwen3 import apply_rotary_pos_emb as qwen3_rope

    from bench.kernels import Case  # here, not at the top: bench.kernels imports this module

    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).cuda().bfloat16().requires_grad_()

    out = []
    # Qwen3-0.6B: 16 q heads, 8 kv heads, head_dim 128; q_norm/k_norm hand rope (tokens, heads, dim) views
    q = rand(1, TOKENS, 16, 128).transpose(1, 2)
    k = rand(1, TOKENS, 8, 128).transpose(1, 2)
    out.append(Case("RoPE q + k (Qwen3-0.6B, GQA)", f"q 1x16x{TOKENS}x128, k 1x8x{TOKENS}x128",
                    [q, k, *rotary(128, 1e6)], apply_rope, qwen3_rope))
    # ModernBERT-base: 12 heads, head_dim 64, q and k unbound from one Wqkv projection
    q, k, _ = rand(1, TOKENS, 3, 12, 64).unbind(dim=2)
    out.append(Case("RoPE q + k (ModernBERT-base)", f"q, k 1x12x{TOKENS}x64 from one qkv",
                    [q.transpose(1, 2), k.transpose(1, 2), *rotary(64, 160000.0)], apply_rope, modernbert_rope))

    for name, module_class, hidden, offset in (("Qwen3", Qwen3RMSNorm, 1024, 0.0), ("Gemma3", Gemma3RMSNorm, 768, 1.0)):
        out.append(Case(f"RMSNorm, no residual ({name})", f"{TOKENS} x {hidden}", [rand(TOKENS, hidden), rand(hidden)],
                        lambda x, w, offset=offset: add_rms_norm(x, None, w, 1e-6, offset)[0],
                        transformers_norm(module_class, hidden, 1e-6)))
    return out
