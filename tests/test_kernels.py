"""Each op against its plain PyTorch reference, forward and backward, over shapes and dtypes.

The ops here are PyTorch-level autograd functions (cuBLAS matmuls, torch's varlen kernel), so
they run on CPU too; tests/gpu/ repeats the comparisons on CUDA. No Triton kernel ships yet (see
BENCHMARKS.md), so nothing here needs TRITON_INTERPRET.
"""

from __future__ import annotations

import pytest
import torch

from engine.attention.varlen import varlen_attention_reference, window_for
from engine.kernels.lora import LoraLinearFunction, lora_linear_reference, patch_peft_lora

# Relative error ‖out − ref‖ / ‖ref‖ allowed per compute dtype (METHOD.md's ranges).
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2}


def rel_error(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 37, 64, 48, 8), (3, 5, 32, 32, 4), (1, 128, 96, 160, 16)])
@pytest.mark.parametrize("bias", [True, False])
def test_lora_linear_matches_reference(dtype, shape, bias):
    batch, tokens, d_in, d_out, rank = shape
    gen = torch.Generator().manual_seed(hash((shape, bias)) % 2**31)
    x = torch.randn(batch, tokens, d_in, generator=gen, dtype=torch.float64)
    weight = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64) / d_in**0.5
    b = torch.randn(d_out, generator=gen, dtype=torch.float64) if bias else None
    lora_a = torch.randn(rank, d_in, generator=gen, dtype=torch.float64) / d_in**0.5
    lora_b = torch.randn(d_out, rank, generator=gen, dtype=torch.float64)
    grad = torch.randn(batch, tokens, d_out, generator=gen, dtype=torch.float64)
    scaling = 2.0

    def run(fn, compute_dtype):
        leaves = [x.to(compute_dtype, copy=True).requires_grad_(), lora_a.float().clone().requires_grad_(),
                  lora_b.float().clone().requires_grad_()]
        w = weight.to(compute_dtype)
        bb = None if b is None else b.to(compute_dtype)
        if fn is lora_linear_reference:
            out = fn(leaves[0], w, bb, leaves[1].to(compute_dtype), leaves[2].to(compute_dtype), scaling)
        else:
            out = fn(leaves[0], w, bb, leaves[1], leaves[2], scaling)
        out.backward(grad.to(out.dtype))
        return out, [leaf.grad for leaf in leaves]

    ref_out, ref_grads = run(lora_linear_reference, torch.float64)
    out, grads = run(LoraLinearFunction.apply, dtype)
    assert out.dtype == dtype
    assert grads[1].dtype == torch.float32 and grads[2].dtype == torch.float32  # params keep their dtype
    assert rel_error(out, ref_out) < TOLERANCE[dtype]
    for g, r in zip(grads, ref_grads):
        assert torch.isfinite(g).all()
        assert rel_error(g, r) < TOLERANCE[dtype]


def _dense_masked_attention(q, k, v, cu, scale, window):
    """Brute force: one (total x total) score matrix, masked to same-sequence pairs inside the window."""
    seq = torch.repeat_interleave(torch.arange(len(cu) - 1), cu[1:] - cu[:-1])
    pos = torch.arange(q.shape[0]) - cu[:-1].repeat_interleave(cu[1:] - cu[:-1])
    allowed = seq[:, None] == seq[None, :]
    offset = pos[None, :] - pos[:, None]
    if window[0] >= 0:
        allowed &= offset >= -window[0]
    if window[1] >= 0:
        allowed &= offset <= window[1]
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    scores = torch.einsum("qhd,khd->hqk", q, k) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


@pytest.mark.parametrize("window", [(-1, -1), (-1, 0), (3, 3), (4, 0)])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2)])
def test_varlen_reference_matches_dense_block_diagonal(window, heads):
    gen = torch.Generator().manual_seed(0)
    lengths = torch.tensor([5, 1, 12, 7])
    cu = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]).to(torch.int32)
    total = int(lengths.sum())
    q = torch.randn(total, heads[0], 16, generator=gen, dtype=torch.float64)
    k = torch.randn(total, heads[1], 16, generator=gen, dtype=torch.float64)
    v = torch.randn(total, heads[1], 16, generator=gen, dtype=torch.float64)
    out = varlen_attention_reference(q, k, v, cu, cu, scale=0.25, window=window)
    ref = _dense_masked_attention(q, k, v, cu.long(), 0.25, window)
    assert rel_error(out, ref) < 1e-10


def test_window_follows_transformers_flash_convention():
    assert window_for(None, causal=False) == (-1, -1)
    assert window_for(None, causal=True) == (-1, 0)
    assert window_for(65, causal=False) == (64, 64)  # ModernBERT local layers pass local_attention // 2 + 1
    assert window_for(512, causal=True) == (511, 0)


def test_patch_keeps_peft_state_dict_and_cpu_output():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["0", "2"]))
    for module in model.modules():
        if hasattr(module, "lora_B"):
            torch.nn.init.normal_(module.lora_B["default"].weight)
    x = torch.randn(5, 16)
    before, keys = model(x), list(model.state_dict())
    assert patch_peft_lora(model) == 2
    assert patch_peft_lora(model) == 2  # covered already: patching twice is harmless
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(x), before)  # CPU keeps PEFT's own forward


def test_patch_skips_layers_with_lora_dropout():
    from peft import LoraConfig, get_peft_model

    base = torch.nn.Sequential(torch.nn.Linear(16, 16))
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["0"], lora_dropout=0.1))
    assert patch_peft_lora(model) == 0
