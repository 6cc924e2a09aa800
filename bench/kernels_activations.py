"""Bench cases for engine.kernels.activations (GELU, GeGLU, SwiGLU), timed by bench/kernels.py.

bf16 at the MLP widths of the models we train, 16384 tokens (8192 for Qwen3-0.6B). "torch" is the
MLP's activation as transformers writes it: `act(x)` for BERT's intermediate, `act(input) * gate`
on the chunked `Wi` output for ModernBERT (the chunk, and its backward's copy, is in both
columns), `act_fn(gate) * up` for Qwen3 and Gemma3.

These ops are short (0.1-0.2 ms on an H100), and each of ours costs about 80 us of Python and
launch overhead per call, so an eager `do_bench` loop that leaves the GPU waiting on the CPU
times that overhead; `triton.testing.do_bench_cudagraph` times the kernels alone, as a captured
or GPU-bound training step sees them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.kernels.activations import geglu, gelu, swiglu


def torch_modernbert_glu(wi_out):
    input, gate = wi_out.chunk(2, dim=-1)
    return F.gelu(input) * gate


def cases() -> list:
    from bench.kernels import Case  # here, not at the top: bench.kernels imports this module

    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).cuda().bfloat16().requires_grad_()

    gate, up = rand(16384, 1152), rand(16384, 1152)
    return [
        Case("GELU (BERT intermediate)", "16384 x 3072", [rand(16384, 3072)], gelu, F.gelu),
        Case("GeGLU on chunked Wi (ModernBERT)", "16384 x 2 x 1152", [rand(16384, 2304)],
             lambda wi_out: geglu(*wi_out.chunk(2, dim=-1)), torch_modernbert_glu),
        Case("SwiGLU (Qwen3-0.6B)", "8192 x 3072", [rand(8192, 3072), rand(8192, 3072)],
             swiglu, lambda g, u: F.silu(g) * u),
        Case("GeGLU tanh (EmbeddingGemma)", "16384 x 1152", [gate, up],
             lambda g, u: geglu(g, u, "tanh"), lambda g, u: F.gelu(g, approximate="tanh") * u),
    ]
