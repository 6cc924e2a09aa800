"""The RoPE kernel and the RoPE / RMSNorm patches on CUDA at real sizes, bf16 and fp32:
`pytest -m gpu tests/gpu/test_rope_gpu.py`.

The same checks as tests/test_triton_rope.py (forward and every gradient against a float64
reference, NaN-poisoned memory; patched tiny models against unpatched ones), plus what only a GPU
shows: compiled kernels at Qwen3-0.6B, ModernBERT-base and EmbeddingGemma sizes, bf16 models, and
forward and backward captured and replayed in a CUDA graph (no host sync).
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

import test_triton_rope  # noqa: E402
from gpu.test_triton_gpu import capture  # noqa: E402
from test_triton_kernels import generator, nan_filled_empty_memory, rel_error  # noqa: E402
from test_triton_rope import ROTARY_FAMILIES, angles, check_patched_model, check_rope, rope_inputs  # noqa: E402

from engine.kernels.rope import apply_rope  # noqa: E402

poisoned_memory = pytest.fixture(autouse=True)(nan_filled_empty_memory)
kernel_calls = test_triton_rope.kernel_calls
DTYPES = [torch.bfloat16, torch.float32]

# (batch, q_heads, k_heads, tokens, head_dim, layout, angles) as in test_triton_rope.CASES
CUDA_CASES = {
    "qwen3-0.6b-packed": (1, 16, 8, 16384, 128, "tokens", "packed"),
    "modernbert-base-packed": (1, 12, 12, 16384, 64, "qkv", "packed"),
    "embeddinggemma-padded": (8, 3, 1, 512, 256, "tokens", "rotary"),
    "odd-head-dim": (2, 40, 8, 1000, 80, "heads", "random"),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CUDA_CASES))
def test_rope_on_cuda(dtype, case):
    check_rope(dtype, CUDA_CASES[case])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", ROTARY_FAMILIES)
def test_patched_model_on_cuda(family, dtype, kernel_calls):
    check_patched_model(family, dtype, kernel_calls)


def test_rope_forward_and_backward_replay_in_a_cuda_graph():
    """Captured once, replayed on new inputs: same results as eager on those inputs."""
    case = CUDA_CASES["qwen3-0.6b-packed"]
    gen = generator("graph")

    def inputs():
        leaves, _, _, _ = rope_inputs(gen, torch.bfloat16, case)  # (1, tokens, heads, head_dim)
        return [t.detach() for t in leaves] + list(angles(gen, "packed", 1, case[3], case[4], torch.bfloat16))

    static = [t.requires_grad_(i < 2) for i, t in enumerate(inputs())]

    def step():
        q, k = (t.transpose(1, 2) for t in static[:2])
        outs = apply_rope(q, k, *static[2:])
        grads = torch.autograd.grad(outs, static[:2], [torch.ones_like(o) for o in outs])
        return [o.detach() for o in outs] + list(grads)

    graph, captured = capture(step)

    with torch.no_grad():
        for tensor, value in zip(static, inputs()):
            tensor.copy_(value)
    graph.replay()
    torch.cuda.synchronize()
    for replayed, eager in zip(captured, step()):
        assert rel_error(replayed, eager) < 1e-6
