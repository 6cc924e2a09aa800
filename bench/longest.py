"""The longest sequence that trains at a given batch: stock sentence-transformers against ours.

    python -m bench.longest --model modernbert-base --batch 32 --lengths 1024 2048 4096 8192
    python -m bench.longest --methods stock ours stock-cached ours-cached   # with GradCache's mini-batches too

For each method and length, a few LoRA steps (bench.speed.run_one) on documents long enough to
fill the length; a CUDA out-of-memory error ends that method's climb. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="modernbert-base")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--methods", nargs="+", default=["stock", "ours"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--mini-batch", type=int, default=None, help="sequences the -cached methods embed at a time "
                        "(default engine.loop.CACHED_MINI_BATCH)")
    parser.add_argument("--out", default=None, help="also write the table here")
    args = parser.parse_args(argv)

    import torch

    from bench.models import build
    from bench.speed import card, load_pairs, run_one
    from engine.loop import CACHED_MINI_BATCH

    cached = f", cached methods {args.mini_batch or CACHED_MINI_BATCH} sequences at a time" if any(
        m.endswith("-cached") for m in args.methods) else ""
    rows = [f"Longest sequence at batch {args.batch}, {args.model}, LoRA r=16, {args.steps} steps each{cached}, on {card('cuda')}",
            "", "| method | length | result | peak GiB |", "|---|---|---|---|"]
    longest = {}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = build(args.model, Path(tmp) / args.model)
        for method in args.methods:
            for length in args.lengths:
                queries, documents = load_pairs(length, join=max(1, length // 48))
                try:
                    result = run_one(args.model, checkpoint, length, args.batch, method, args.steps, "cuda",
                                     queries, documents, 42, Path(tmp) / "run", mini_batch=args.mini_batch)
                    outcome, peak = "trains", f"{result.peak_gib:.1f}"
                    longest[method] = length
                except torch.cuda.OutOfMemoryError:
                    outcome, peak = "out of memory", ""
                gc.collect()
                torch.cuda.empty_cache()
                rows.append(f"| {method} | {length} | {outcome} | {peak} |")
                print(rows[-1], flush=True)
                if outcome != "trains":
                    break
    rows += ["", "longest that trains: " + ", ".join(f"{m} {longest.get(m, 'none')}" for m in args.methods)]
    text = "\n".join(rows) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
