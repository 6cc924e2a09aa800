"""Where a training step's time goes: cProfile over the trainer's steps, then torch.profiler.

    python -m bench.profile minilm-l6 ours --seq 256 --batch 64 --steps 30

Prints the top Python functions by own time, then (on CUDA) the top device kernels, the device busy
time per step against the step's wall time, and that busy time by kind of kernel (matmul, attention,
PyTorch elementwise / reductions / copies, Triton, other). With --eager the loop runs without CUDA
graphs and records input shapes, so each kernel's time is listed under the PyTorch op and shapes that
launched it (a graph replay launches its kernels with no op around them). For deciding what to speed
up next, not for reporting speed (profiling slows the run).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import pstats
import tempfile
import time
from pathlib import Path
from unittest import mock


def _run(args, wrap) -> object:
    from transformers import Trainer

    from bench.models import build
    from bench.speed import load_pairs, run_one
    from engine.loop import PackedTrainer

    def wrapped(original):
        def run(self, *a, **k):
            with wrap():
                return original(self, *a, **k)
        return run

    # Stock methods train through the trainer, ours through the packed loop: whichever runs is profiled.
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(Trainer, "train", wrapped(Trainer.train)), \
            mock.patch.object(PackedTrainer, "fit", wrapped(PackedTrainer.fit)):
        checkpoint = build(args.model, Path(tmp) / args.model)
        queries, documents = load_pairs(args.seq, max(1, args.seq // 256))
        return run_one(args.model, checkpoint, args.seq, args.batch, args.method, args.steps, args.device,
                       queries, documents, 42, Path(tmp) / "run", cuda_graphs=not args.eager)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("method")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--eager", action="store_true", help="loop without CUDA graphs: device time by op and shape")
    parser.add_argument("--device-only", action="store_true", help="skip the cProfile run (half the time)")
    args = parser.parse_args()

    import torch

    profiler = cProfile.Profile()

    @contextlib.contextmanager
    def python_profile():
        profiler.enable()
        try:
            yield
        finally:
            profiler.disable()

    if not args.device_only:
        result = _run(args, python_profile)
        print(f"pairs/s under cProfile: {result.pairs_per_s:.0f}")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.top)
    if args.device != "cuda":
        return

    from torch.profiler import ProfilerActivity, profile

    holder = {}

    @contextlib.contextmanager
    def device_profile():
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=args.eager) as prof:
            start = time.perf_counter()
            yield
            torch.cuda.synchronize()
            holder["wall"] = time.perf_counter() - start
        holder["prof"] = prof

    _run(args, device_profile)
    events = holder["prof"].key_averages(group_by_input_shape=args.eager)
    print(events.table(sort_by="self_device_time_total", row_limit=args.top, max_name_column_width=80,
                       max_shapes_column_width=120))
    kernels = [e for e in events if e.device_type.name == "CUDA"]  # ops would count their kernels twice
    busy_us = sum(e.self_device_time_total for e in kernels)
    launches = sum(e.count for e in kernels)
    print(f"device busy {busy_us / 1e3 / args.steps:.1f} ms/step, wall {holder['wall'] * 1e3 / args.steps:.1f} ms/step "
          f"(both under the profiler), {launches / args.steps:.0f} device kernels/step")
    by_kind: dict[str, list] = {}
    for e in kernels:
        kind = by_kind.setdefault(kernel_kind(e.key), [0.0, 0])
        kind[0] += e.self_device_time_total
        kind[1] += e.count
    for kind, (us, count) in sorted(by_kind.items(), key=lambda item: -item[1][0]):
        print(f"  {kind:<40} {us / 1e3 / args.steps:7.1f} ms/step {100 * us / max(busy_us, 1):5.1f}%  "
              f"{count / args.steps:6.0f} kernels/step")


def kernel_kind(name: str) -> str:
    """A device kernel's kind, from its name (cuBLAS / cuDNN / PyTorch / Triton naming)."""
    lowered = name.lower()
    if "#" in name:  # a range the profiler marks on the device (Optimizer.step#AdamW.step), not a kernel
        return "other"
    # Attention first: flash kernels name cutlass types among their template arguments.
    if any(tag in lowered for tag in ("flash", "fmha", "attention", "attn")):
        return "attention"
    if any(tag in lowered for tag in ("gemm", "nvjet", "cutlass", "xmma", "gemv", "splitk")):
        return "matmul"
    if any(tag in lowered for tag in ("memcpy", "memset")):
        return "memory copies"
    if lowered.startswith("void at::native::") or "at_cuda_detail" in lowered:
        return "PyTorch elementwise / reductions"
    if lowered.startswith("triton_") or lowered.startswith("_"):
        return "Triton (ours and Inductor's)"
    return "other"


if __name__ == "__main__":
    main()
