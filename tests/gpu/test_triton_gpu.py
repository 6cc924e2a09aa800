"""The Triton kernels on CUDA at real sizes, bf16 and fp32: `pytest -m gpu tests/gpu/test_triton_gpu.py`.

The same checks as tests/test_triton_kernels.py (forward and every gradient against a float64
reference, NaN-poisoned memory), plus what only a GPU shows: bf16 `tl.dot`, each op captured
and replayed in a CUDA graph (no host sync), and the contrastive loss's memory against the full
(B, C) matrix.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

from test_triton_kernels import (  # noqa: E402
    check_add_norm,
    check_contrastive,
    check_mean_pool,
    generator,
    nan_filled_empty_memory,
    rel_error,
)

from engine.kernels.contrastive import contrastive_loss, contrastive_loss_reference  # noqa: E402
from engine.kernels.norm import add_rms_norm  # noqa: E402
from engine.kernels.pooling import mean_pool  # noqa: E402

poisoned_memory = pytest.fixture(autouse=True)(nan_filled_empty_memory)
DTYPES = [torch.bfloat16, torch.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4096, 384), (8, 512, 768), (4096, 1024), (2048, 2048), (64, 8192)])
@pytest.mark.parametrize("kind", ["layer", "rms-gemma"])
def test_add_norm_on_cuda(dtype, shape, kind):
    check_add_norm(dtype, shape, kind, residual=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sequences,longest,hidden", [(256, 128, 768), (64, 512, 1024), (200, 160, 384)])
def test_mean_pool_on_cuda(dtype, sequences, longest, hidden):
    gen = generator(sequences, longest)
    lengths = torch.randint(0, longest + 1, (sequences,), generator=gen)
    lengths[::37] = 0  # a few empty sequences
    check_mean_pool(dtype, lengths.tolist(), hidden, normalize=True, fillers=61)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(64, 64, 384), (100, 300, 768), (1024, 2048, 1024), (4096, 4096, 768)])
def test_contrastive_loss_on_cuda(dtype, shape):
    check_contrastive(dtype, shape, scale=20.0)


def _norm_step(x, residual, weight):
    normed, summed = add_rms_norm(x, residual, weight, 1e-6, 1.0)
    return (normed, summed), (x, residual, weight)


def _pool_step(hidden, cu_seqlens):
    return (mean_pool(hidden, cu_seqlens),), (hidden,)


def _contrastive_step(anchors, candidates):
    return (contrastive_loss(anchors, candidates),), (anchors, candidates)


def _inputs(op, gen):
    if op is _pool_step:
        cu = torch.tensor([0, 5, 5, 90, 91, 300], dtype=torch.int32).cuda()
        return [torch.randn(320, 768, generator=gen).cuda().bfloat16().requires_grad_(), cu]
    if op is _norm_step:
        return [torch.randn(*shape, generator=gen).cuda().bfloat16().requires_grad_()
                for shape in ((1000, 768), (1000, 768), (768,))]
    embeddings = torch.nn.functional.normalize(torch.randn(600, 384, generator=gen), dim=-1)
    return [embeddings[:200].cuda().bfloat16().requires_grad_(), embeddings[200:].cuda().bfloat16().requires_grad_()]


def capture(step):
    """Run `step` once on a side stream (Triton compiles there, outside any capture), then capture it
    in a CUDA graph; returns the graph and the captured step's outputs (refreshed by each replay)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    return graph, captured


@pytest.mark.parametrize("op", [_norm_step, _pool_step, _contrastive_step])
def test_forward_and_backward_replay_in_a_cuda_graph(op):
    """Captured once, replayed on new inputs: same results as eager on those inputs."""
    gen = generator(op.__name__)
    static = _inputs(op, gen)

    def step():
        outs, wrt = op(*static)
        grads = torch.autograd.grad(outs, wrt, [torch.ones_like(o) for o in outs])
        return [o.detach() for o in outs] + list(grads)

    graph, captured = capture(step)

    fresh = _inputs(op, gen)
    with torch.no_grad():
        for tensor, value in zip(static, fresh):
            tensor.copy_(value)
    graph.replay()
    torch.cuda.synchronize()
    for replayed, eager in zip(captured, step()):
        assert rel_error(replayed, eager) < 1e-6


def _peak_bytes(loss_fn, anchors, candidates) -> int:
    """Device memory beyond the inputs at the peak of loss_fn's forward and backward."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    loss_fn(anchors, candidates).backward()
    torch.cuda.synchronize()
    anchors.grad = candidates.grad = None
    return torch.cuda.max_memory_allocated() - before


def test_contrastive_kernel_never_holds_the_full_matrix():
    gen = generator("memory")
    embeddings = torch.nn.functional.normalize(torch.randn(16384, 1024, generator=gen), dim=-1).cuda().bfloat16()
    anchors, candidates = embeddings[:8192].requires_grad_(), embeddings[8192:].requires_grad_()
    ours = _peak_bytes(contrastive_loss, anchors, candidates)
    reference = _peak_bytes(contrastive_loss_reference, anchors, candidates)
    gradients = 2 * anchors.numel() * anchors.element_size()
    assert reference > 8192 * 8192 * 4  # the fp32 logits alone
    assert ours < gradients + 8 * 2**20, (ours, reference)
