"""The Triton kernels (engine.kernels: norm, pooling, contrastive, activations, rope) against PyTorch,
forward + backward.

    python -m bench.kernels --out kernels.md          # on CUDA
    python -m bench.kernels --no-compile               # without the torch.compile column

bf16 inputs at the shapes a training step sees. Each time is the median of
`triton.testing.do_bench` (which clears L2 between runs) over one forward and one
`torch.autograd.grad`, and of `triton.testing.do_bench_cudagraph` over the same step captured in a
CUDA graph (as the packed loop replays it: the Python-side cost of a call, ~80 us for ours, drops
out). "torch" is what the code does without our kernels: the add and LayerNorm /
RMSNorm as transformers writes them, mean pooling as engine/loop/pooling.py does it (`sequence_means`:
index_add over a precomputed sequence id per token, fp32 out as ours here), MultipleNegativesRankingLoss's full
matrix (and once, chunked_contrastive_loss_torch); "compiled" is the torch function through
torch.compile (compiling is most of the run's time). Peak MiB is the device memory beyond the
inputs at the peak of one forward + backward.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from engine.kernels.contrastive import chunked_contrastive_loss_torch, contrastive_loss, contrastive_loss_reference
from engine.kernels.norm import add_layer_norm, add_rms_norm, add_rms_norm_reference
from engine.kernels.pooling import mean_pool, sequence_means


@dataclass
class Case:
    op: str
    shape: str
    inputs: list  # tensors; those that require grad are differentiated
    ours: Callable
    torch: Callable
    compile: bool = True  # also time torch.compile(torch)


def torch_layer_norm(x, residual, weight, bias):
    summed = x + residual
    return F.layer_norm(summed, summed.shape[-1:], weight, bias, 1e-5), summed


def torch_rms_norm(x, residual, weight):
    return add_rms_norm_reference(x, residual, weight, 1e-6, 1.0)


def torch_mean_pool(hidden, seq_idx, lengths):
    return F.normalize(sequence_means(hidden, seq_idx, lengths), dim=-1)


def cases() -> list[Case]:
    gen = torch.Generator().manual_seed(0)

    def rand(*shape, grad=True):
        return torch.randn(*shape, generator=gen).cuda().bfloat16().requires_grad_(grad)

    out = []
    for hidden in (384, 768, 1024):
        x, residual, weight, bias = rand(16384, hidden), rand(16384, hidden), rand(hidden), rand(hidden)
        out.append(Case("add + LayerNorm", f"16384 x {hidden}", [x, residual, weight, bias],
                        lambda x, r, w, b: add_layer_norm(x, r, w, b, 1e-5), torch_layer_norm))
        out.append(Case("add + RMSNorm (Gemma)", f"16384 x {hidden}", [x, residual, weight],
                        lambda x, r, w: add_rms_norm(x, r, w, 1e-6, 1.0), torch_rms_norm))

    lengths = torch.randint(50, 151, (256,), generator=gen)
    cu_seqlens = F.pad(lengths.cumsum(0), (1, 0)).int().cuda()
    seq_idx = torch.repeat_interleave(torch.arange(256), lengths).cuda()
    out.append(Case("mean pool + normalize", f"256 seqs, {int(lengths.sum())} tokens x 768",
                    [rand(int(lengths.sum()), 768), cu_seqlens, seq_idx, lengths.float().cuda()],
                    lambda h, cu, ids, n: mean_pool(h, cu, out_dtype=torch.float32),
                    lambda h, cu, ids, n: torch_mean_pool(h, ids, n)))

    for batch in (64, 1024, 8192):
        embeddings = F.normalize(torch.randn(2 * batch, 768, generator=gen), dim=-1).cuda().bfloat16()
        anchors, candidates = embeddings[:batch].requires_grad_(), embeddings[batch:].requires_grad_()
        out.append(Case("contrastive (MNRL)", f"B = C = {batch}, d 768", [anchors, candidates],
                        contrastive_loss, contrastive_loss_reference))
    out.append(Case("contrastive vs chunked torch", "B = C = 8192, d 768, chunks of 1024", [anchors, candidates],
                    contrastive_loss, lambda a, c: chunked_contrastive_loss_torch(a, c, 20.0, 1024), compile=False))

    from bench import kernels_activations, kernels_rope

    return out + kernels_activations.cases() + kernels_rope.cases()


def forward_backward(fn: Callable, inputs: list) -> Callable[[], None]:
    # Gradients with respect to the leaf tensors: an input that is a view (RoPE's q and k, transposed
    # out of a projection) gets its gradient through its base, as in a model.
    wrt = []
    for t in inputs:
        leaf = t._base if t.grad_fn is not None and t._base is not None else t
        if t.requires_grad and not any(leaf is w for w in wrt):
            wrt.append(leaf)

    def run():
        outs = fn(*inputs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        torch.autograd.grad(outs, wrt, [torch.ones_like(o) for o in outs])

    return run


def peak_mib(run: Callable[[], None]) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the markdown table here")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile of the torch versions")
    parser.add_argument("--only", help="only the ops whose name contains this text (e.g. RoPE)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench.kernels times CUDA kernels; no CUDA device here")
    from triton.testing import do_bench, do_bench_cudagraph

    def ms(run):
        return do_bench(run, warmup=25, rep=100, return_mode="median")

    def ms_graph(run) -> float:
        try:
            return do_bench_cudagraph(run, rep=100, return_mode="median")
        except RuntimeError as error:  # a step that syncs with the host cannot be captured
            print(f"  not capturable: {str(error).splitlines()[0][:100]}", flush=True)
            return float("nan")

    rows = ["| op | shape | ms ours | ms torch | speedup | graphed: ms ours | ms torch | speedup | ms compiled "
            "| peak MiB ours | peak MiB torch |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for case in cases():
        if args.only and args.only.lower() not in case.op.lower():
            continue
        ours, plain = forward_backward(case.ours, case.inputs), forward_backward(case.torch, case.inputs)
        t_ours, t_torch = ms(ours), ms(plain)
        g_ours, g_torch = ms_graph(ours), ms_graph(plain)
        compiled = ""
        if case.compile and not args.no_compile:
            compiled = f"{ms(forward_backward(torch.compile(case.torch), case.inputs)):.3f}"
        rows.append(f"| {case.op} | {case.shape} | {t_ours:.3f} | {t_torch:.3f} | {t_torch / t_ours:.2f}x "
                    f"| {g_ours:.3f} | {g_torch:.3f} | {g_torch / g_ours:.2f}x | {compiled} "
                    f"| {peak_mib(ours):.0f} | {peak_mib(plain):.0f} |")
        print(rows[-1], flush=True)
    device = torch.cuda.get_device_name()
    table = "\n".join([f"{device}, torch {torch.__version__}, bf16, median of triton.testing.do_bench", "", *rows])
    print("\n" + table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
