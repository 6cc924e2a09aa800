"""engine.kernels.activations on CUDA at real sizes, bf16 and fp32:
`pytest -m gpu tests/gpu/test_activations_gpu.py`.

The same checks as tests/test_triton_activations.py (forward and every gradient against a float64
reference, NaN-poisoned memory), plus what only a GPU shows: the compiled kernels at the widths
of BERT, ModernBERT, Qwen3 and EmbeddingGemma MLPs, each op captured and replayed in a CUDA graph
(no host sync), and patched bf16 models no further from fp32 than unpatched ones.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

from test_triton_activations import OPS, check_activation, check_chunked, tiny_model  # noqa: E402
from gpu.test_triton_gpu import capture  # noqa: E402
from test_triton_kernels import generator, nan_filled_empty_memory, rel_error  # noqa: E402

from engine.families import family_of_model  # noqa: E402
from engine.kernels import activations  # noqa: E402

poisoned_memory = pytest.fixture(autouse=True)(nan_filled_empty_memory)
DTYPES = [torch.bfloat16, torch.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(16384, 3072), (8, 512, 1152), (2048, 4096), (64, 8192)])
@pytest.mark.parametrize("op", list(OPS))
def test_activation_on_cuda(op, dtype, shape):
    check_activation(op, dtype, shape)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["geglu", "swiglu"])
def test_gated_activation_reads_strided_halves_on_cuda(op, dtype):
    check_chunked(op, dtype, (16, 1024, 1152))


def _inputs(op, gen):
    n_inputs = 2 if OPS[op][2] else 1
    return [torch.randn(4096, 1152, generator=gen).cuda().bfloat16().requires_grad_() for _ in range(n_inputs)]


@pytest.mark.parametrize("op", list(OPS))
def test_forward_and_backward_replay_in_a_cuda_graph(op):
    """Captured once, replayed on new inputs: same results as eager on those inputs."""
    ours = OPS[op][0]
    gen = generator(op, "graph")
    static = _inputs(op, gen)

    def step():
        out = ours(*static)
        grads = torch.autograd.grad(out, static, torch.ones_like(out))
        return [out.detach(), *grads]

    graph, captured = capture(step)

    with torch.no_grad():
        for tensor, value in zip(static, _inputs(op, gen)):
            tensor.copy_(value)
    graph.replay()
    torch.cuda.synchronize()
    for replayed, eager in zip(captured, step()):
        assert rel_error(replayed, eager) < 1e-6


@pytest.mark.parametrize("family", ["bert", "modernbert", "qwen3", "gemma3"])
def test_patched_bf16_model_is_as_close_to_fp32_as_unpatched(family):
    """bf16 rounds differently with the kernels (act(gate) * up is rounded once, not twice); the
    patched model's outputs and gradients must stay as close to the fp32 model's as stock bf16's."""
    input_ids = torch.randint(1, 1000, (4, 64), generator=generator(family, "cuda")).cuda()
    weights = torch.randn(4, 64, 64, generator=generator(family, "weights")).cuda()

    def run(model):
        model.zero_grad(set_to_none=True)
        out = model(input_ids=input_ids).last_hidden_state.float()
        (out * weights).sum().backward()
        grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
        return out.detach(), grads

    exact = run(tiny_model(family).cuda())
    stock = run(tiny_model(family).cuda().bfloat16())
    model = tiny_model(family).cuda().bfloat16()
    assert activations.patch_activations(model, family_of_model(model).mlps) > 0
    patched = run(model)
    for ours, theirs, reference in zip(patched, stock, exact):
        assert rel_error(ours, reference) < 1.25 * rel_error(theirs, reference) + 1e-3
