"""Build the starter reranker: a LoRA adapter and a trained score head over the bundled all-MiniLM-L6-v2, so that
the studio's reranker demo starts from a cross-encoder that already ranks, rather than from a random head.

    python assets/build_starter_reranker.py                       # on a GPU: a few minutes; on a CPU: an hour
    python assets/build_starter_reranker.py --out assets/starter-reranker --steps 600

It is one `lacker train --task reranker` run on the Debian pairs' training split (assets/debian-pairs/train.jsonl:
hard negatives mined with the bundled MiniLM, BinaryCrossEntropyLoss), LoRA r=16 on MiniLM's attention and MLP
layers with the head trained in full, measured on the Debian pairs' fixed test split (reranking the retriever's top
20) and on the acronym sample's test split (assets/vera-pairs, which the demo preset then trains on: it never saw
those). The run's adapter/ folder (adapter_config.json, adapter_model.safetensors, the tokenizer) is copied to
--out with a README that gives these numbers. Nothing but this script writes that folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

SETTINGS = {"task": "reranker", "model": "sentence-transformers/all-MiniLM-L6-v2", "method": "lora", "lora_r": 16,
            "lora_alpha": 32, "learning_rate": 5e-4, "batch_size": 64, "max_seq_length": 128, "negatives": 3,
            "warmup_ratio": 0.1, "seed": 42, "max_eval_queries": 300, "merged_dtype": "float32"}


def measure(adapter: Path, test: Path) -> dict:
    """NDCG@10 / MRR@10 of the retriever's order and of the starter's reranking of it, on `test`'s pairs."""
    from engine.data import read_table
    from engine.models import FastCrossEncoder
    from engine.tasks import reranker

    mapping = {"anchor": "query", "positive": "document"}
    rows = reranker.prepare(read_table(str(test)), mapping)
    config = SimpleNamespace(max_eval_queries=SETTINGS["max_eval_queries"], mine_with=None, seed=SETTINGS["seed"])
    evaluation = reranker.held_out_evaluation(rows, "pairs", config)
    model = FastCrossEncoder.from_pretrained(str(adapter), max_seq_length=SETTINGS["max_seq_length"],
                                             for_inference=True)
    return {"retriever": evaluation.retriever_order_metrics(), "starter": evaluation.measure(model)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "starter-reranker")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: --epochs passes)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--learning-rate", type=float, default=SETTINGS["learning_rate"])
    parser.add_argument("--model", default=SETTINGS["model"],
                        help="a local copy of all-MiniLM-L6-v2 to train over (the adapter still names the hub id)")
    parser.add_argument("--no-measure", action="store_true", help="build only (where the hub id does not resolve)")
    parser.add_argument("--measure-only", action="store_true", help="measure --out again and rewrite its README")
    args = parser.parse_args(argv)
    SETTINGS.update(epochs=args.epochs, learning_rate=args.learning_rate)
    if not args.measure_only:
        build(args)
    if not args.no_measure:
        write_readme(args.out)


def build(args) -> None:
    from engine.train import train

    with tempfile.TemporaryDirectory() as scratch:
        run = Path(scratch) / "run"
        settings = {**SETTINGS, "model": args.model, "mine_with": args.model,
                    "data": str(HERE / "debian-pairs" / "train.jsonl"),
                    "eval_data": str(HERE / "debian-pairs" / "test.jsonl"),
                    "columns": {"anchor": "query", "positive": "document"}, "output_dir": str(run)}
        if args.steps:
            settings["max_steps"] = args.steps
        result = train(settings)
        if args.out.exists():
            shutil.rmtree(args.out)
        shutil.copytree(run / "adapter", args.out, ignore=shutil.ignore_patterns("README.md", "checkpoint-*"))
        adapter_config = json.loads((args.out / "adapter_config.json").read_text())
        adapter_config["base_model_name_or_path"] = SETTINGS["model"]  # the hub id, found offline as the bundled copy
        (args.out / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
        made = {"settings": SETTINGS, "steps": result.steps, "while_training": result.metrics}
    (args.out / "metrics.json").write_text(json.dumps(made, indent=1))
    print(json.dumps(result.metrics))


def write_readme(out: Path) -> None:
    made = json.loads((out / "metrics.json").read_text())
    numbers = {name: measure(out, HERE / name / "test.jsonl") for name in ("debian-pairs", "vera-pairs")}
    (out / "metrics.json").write_text(json.dumps({**made, **numbers}, indent=1))
    lines = [f"| {name} | {m['retriever']['ndcg@10']:.4f} | {m['starter']['ndcg@10']:.4f} | "
             f"{m['retriever']['mrr@10']:.4f} | {m['starter']['mrr@10']:.4f} |" for name, m in numbers.items()]
    (out / "README.md").write_text(README.format(settings=json.dumps(made["settings"]), steps=made["steps"],
                                                 table="\n".join(lines)))
    print("\n".join(lines))


README = """# Starter reranker (lacker-studio/minilm-l6-starter-reranker)

A LoRA adapter (r=16) and a trained score head over the bundled sentence-transformers/all-MiniLM-L6-v2: a
cross-encoder that already ranks, which the studio's reranker demo preset fine-tunes. Built by
`python assets/build_starter_reranker.py` (its docstring says how) from assets/debian-pairs/train.jsonl with
mined hard negatives and BinaryCrossEntropyLoss; {steps} steps with {settings}.

Reranking the bundled all-MiniLM-L6-v2's top 20 on each sample's fixed test split (up to 300 queries), pairs cut
at the 128 tokens it was trained on (at the model's 512 it scores the Debian split lower, 0.930 on 2026-12-03):

| test split | retriever NDCG@10 | starter NDCG@10 | retriever MRR@10 | starter MRR@10 |
|---|---|---|---|---|
{table}

It loads with `engine.FastCrossEncoder.from_pretrained("lacker-studio/minilm-l6-starter-reranker")` (the name
resolves to this folder) or with its path; the data it learned from is Debian's (see assets/debian-pairs/README.md).
"""

if __name__ == "__main__":
    main()
