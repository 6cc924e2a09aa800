"""Where a training step's time goes: cProfile over the trainer's steps plus a torch.profiler table.

    python -m bench.profile minilm-l6 ours --seq 256 --batch 64 --steps 30

Prints the top Python functions by own time and the top CUDA/CPU ops; for deciding what to speed
up next, not for reporting speed (profiling slows the run).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
from pathlib import Path
from unittest import mock


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("method")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--top", type=int, default=35)
    args = parser.parse_args()

    import torch
    from transformers import Trainer

    from bench.models import build
    from bench.speed import load_pairs, run_one

    original_train = Trainer.train
    profiler = cProfile.Profile()

    def profiled_train(self, *a, **k):
        profiler.enable()
        try:
            return original_train(self, *a, **k)
        finally:
            profiler.disable()

    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(Trainer, "train", profiled_train):
        checkpoint = build(args.model, Path(tmp) / args.model)
        queries, documents = load_pairs(args.seq, max(1, args.seq // 256))
        result = run_one(args.model, checkpoint, args.seq, args.batch, args.method, args.steps, "cuda",
                         queries, documents, 42, Path(tmp) / "run")
    print(f"pairs/s under cProfile: {result.pairs_per_s:.0f}")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
