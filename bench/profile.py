"""Where a training step's time goes: cProfile over the trainer's steps, then torch.profiler.

    python -m bench.profile minilm-l6 ours --seq 256 --batch 64 --steps 30

Prints the top Python functions by own time, then (on CUDA) the top device kernels and the device
busy time per step against the step's wall time. For deciding what to speed up next, not for
reporting speed (profiling slows the run).
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
                       queries, documents, 42, Path(tmp) / "run")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("method")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--device", default="cuda")
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
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            start = time.perf_counter()
            yield
            torch.cuda.synchronize()
            holder["wall"] = time.perf_counter() - start
        holder["prof"] = prof

    _run(args, device_profile)
    events = holder["prof"].key_averages()
    print(events.table(sort_by="self_device_time_total", row_limit=args.top))
    kernels = [e for e in events if e.device_type.name == "CUDA"]  # ops would count their kernels twice
    busy_us = sum(e.self_device_time_total for e in kernels)
    launches = sum(e.count for e in kernels)
    print(f"device busy {busy_us / 1e3 / args.steps:.1f} ms/step, wall {holder['wall'] * 1e3 / args.steps:.1f} ms/step "
          f"(both under the profiler), {launches / args.steps:.0f} device kernels/step")


if __name__ == "__main__":
    main()
