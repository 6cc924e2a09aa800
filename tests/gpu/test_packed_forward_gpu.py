"""The packed attention forwards (engine.attention.packed_forward) on CUDA:
`pytest -m gpu tests/gpu/test_packed_forward_gpu.py`.

tests/test_attention_layout.py's comparisons with the CUDA varlen kernel: each family's tiny model with LoRA, in
bf16 and in fp32 under bf16 autocast (as bench.speed loads it), through the packed forwards and through the path
before them (transformers' forward and `lacker_varlen`), plain and with what the loop patches in on a GPU (fused
LoRA, the Triton RoPE / RMSNorm / activations): outputs and LoRA gradients within bf16 tolerance, and the copies
of q, k and v each path makes.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

from test_attention_layout import (  # noqa: E402
    FAMILIES,
    count_copies,
    packed_inputs,
    tiny_lora_model,
    with_packed_forwards,
)

from engine.families import family_by_name  # noqa: E402
from engine.kernels import patch_layers, patch_peft_lora  # noqa: E402
from engine.kernels.patching import class_path  # noqa: E402


def rel_error(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def on_cuda(inputs: dict) -> dict:
    return {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def pair(family_name: str, dtype: torch.dtype, kernels: bool):
    """(before, after): the same LoRA model on CUDA in `dtype`, without and with the packed forwards; with
    `kernels`, both patched as the loop patches them on a GPU (the RoPE kernel goes inside the packed forward)."""
    before = tiny_lora_model(family_name).to("cuda", dtype)
    after = with_packed_forwards(before, family_name)
    if kernels:
        family = family_by_name(family_name)
        for model in (before, after):
            patch_peft_lora(model)
            patch_layers(model, family)
    return before, after


def output_and_grads(model, inputs, autocast: bool):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        out = model(**inputs).last_hidden_state.float()
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).cuda()
    (out * weights).sum().backward()
    return out.detach(), {n: p.grad.float() for n, p in model.named_parameters() if "lora_" in n and p.grad is not None}


@pytest.mark.parametrize("kernels", [False, True])
@pytest.mark.parametrize("dtype, autocast", [(torch.bfloat16, False), (torch.float32, True)])
@pytest.mark.parametrize("family_name", FAMILIES)
def test_packed_forward_matches_the_earlier_path_on_cuda(family_name, dtype, autocast, kernels):
    before, after = pair(family_name, dtype, kernels)
    inputs = on_cuda(packed_inputs(family_name))
    (ref, ref_grads), (out, grads) = (output_and_grads(m.eval(), inputs, autocast) for m in (before, after))
    assert rel_error(out, ref) < 1e-2
    assert grads.keys() == ref_grads.keys() and grads
    for name, grad in grads.items():
        assert rel_error(grad, ref_grads[name]) < 2e-2, name


@pytest.mark.parametrize("family_name", ["bert", "qwen3", "modernbert"])
def test_packed_forward_copies_fewer_q_k_v_on_cuda(family_name, monkeypatch):
    """In bf16 (no casts to count): the path before the packed forwards copies each of q's, k's and v's gradients
    twice more per layer (ModernBERT once); the packed forwards do not."""
    before, after = pair(family_name, torch.bfloat16, kernels=False)
    layers = sum(class_path(m) == family_by_name(family_name).packed_attention[0].cls for m in before.modules())
    inputs = on_cuda(packed_inputs(family_name))
    old, new = (count_copies(m, family_name, inputs, monkeypatch) for m in (before, after))
    print(f"{family_name}: copies of q, k, v before {dict(old)}, with the packed forwards {dict(new)}")
    saved = 3 * layers if family_name == "modernbert" else 6 * layers
    assert sum(new.values()) + saved <= sum(old.values())


def test_packed_forward_at_qwen3_sizes_matches_in_bf16():
    """Qwen3-0.6B's attention shapes (16 q heads, 8 kv heads, head_dim 128) over a 4,000-token stream, with the
    Triton kernels: the kernels' tokens-first RoPE at a real size."""
    before = tiny_lora_model("qwen3", hidden_size=1024, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                             intermediate_size=512, num_hidden_layers=2, max_position_embeddings=2048
                             ).to("cuda", torch.bfloat16)
    after = with_packed_forwards(before, "qwen3")
    family = family_by_name("qwen3")
    for model in (before, after):
        patch_peft_lora(model)
        patch_layers(model, family)
    lengths = [1000, 37, 963, 1024, 512, 464]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    inputs = dict(input_ids=torch.randint(1000, 2000, (1, sum(lengths)), device="cuda"),
                  position_ids=torch.cat([torch.arange(n) for n in lengths])[None].cuda(),
                  cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths), max_length_k=max(lengths),
                  use_cache=False)
    (ref, ref_grads), (out, grads) = (output_and_grads(m.train(), inputs, False) for m in (before, after))
    assert rel_error(out, ref) < 1e-2
    for name, grad in grads.items():
        assert rel_error(grad, ref_grads[name]) < 2e-2, name
