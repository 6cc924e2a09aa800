"""Quality check: does `lacker train` reach what stock sentence-transformers reaches on the same budget?

    python -m bench.quality [--max-steps 200] [--batch-size 64] [--out FILE.json]

Trains all-MiniLM-L6-v2 on the bundled Debian pairs twice with the same data, seed and settings
(LoRA r=16, alpha 16, lr 2e-4, MultipleNegativesRankingLoss, no-duplicates batches): once the way a
sentence-transformers user writes it by hand, once through `engine.train.train` (which takes the fast
path on a GPU), and prints held-out NDCG@10 / MRR@10 / Recall for the base model and both.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from engine.data import SAMPLE_DIR

TRAIN = SAMPLE_DIR / "train.jsonl"
TEST = SAMPLE_DIR / "test.jsonl"


def stock_run(args, queries, documents, output_dir: Path) -> dict:
    """Plain sentence-transformers + PEFT, as its documentation shows."""
    from datasets import load_dataset
    from peft import LoraConfig
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import set_seed

    from engine.evaluate import retrieval_metrics
    from engine.resolve import resolve_model

    set_seed(args.seed)
    on_gpu = torch.cuda.is_available()
    model = SentenceTransformer(str(resolve_model(args.model)),
                                model_kwargs={"dtype": torch.bfloat16} if on_gpu else {})
    model.max_seq_length = args.max_seq_length
    model.add_adapter(LoraConfig(r=16, lora_alpha=16, target_modules=["query", "key", "value", "dense"],
                                 task_type="FEATURE_EXTRACTION"))
    train = load_dataset("json", data_files=str(TRAIN), split="train").select_columns(["query", "document"])
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(output_dir), max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        learning_rate=2e-4, warmup_ratio=0.1, seed=args.seed, data_seed=args.seed, batch_sampler="no_duplicates",
        bf16=on_gpu, use_cpu=not on_gpu, report_to=[], save_strategy="no", logging_steps=10)
    started = time.time()
    SentenceTransformerTrainer(model=model, args=training_args, train_dataset=train,
                               loss=MultipleNegativesRankingLoss(model)).train()
    seconds = time.time() - started
    return {"seconds": round(seconds, 1), **retrieval_metrics(model, queries, documents)}


def lacker_run(args, output_dir: Path) -> tuple[dict, dict]:
    from engine.train import train

    started = time.time()
    result = train({"model": args.model, "data": str(TRAIN), "eval_data": str(TEST), "max_steps": args.max_steps,
                    "batch_size": args.batch_size, "max_seq_length": args.max_seq_length, "learning_rate": 2e-4,
                    "lora_r": 16, "lora_alpha": 16, "seed": args.seed, "max_eval_queries": 10_000,
                    "output_dir": str(output_dir)})
    seconds = time.time() - started
    return result.metrics["base"], {"seconds_with_evals": round(seconds, 1), **result.metrics["trained"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2", help="hub id or local folder")
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--work-dir", default="/tmp/lacker-quality")
    parser.add_argument("--out", help="also write the results to this JSON file")
    args = parser.parse_args()

    from engine import data as data_layer

    test = data_layer.load_sample("test")
    queries, documents = test["query"].tolist(), test["document"].tolist()
    work = Path(args.work_dir)
    base, ours = lacker_run(args, work / "lacker")
    stock = stock_run(args, queries, documents, work / "stock")
    results = {"settings": vars(args), "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               "base": base, "stock": stock, "lacker": ours,
               "ndcg@10 lacker - stock": round(ours["ndcg@10"] - stock["ndcg@10"], 4)}
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
