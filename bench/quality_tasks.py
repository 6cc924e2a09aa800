"""Quality check for rerankers and classifiers: does `lacker train --task ...` reach the stock recipe's quality?

    python -m bench.quality_tasks --task reranker [--data F --test F --columns anchor=A,positive=P]
    python -m bench.quality_tasks --task classifier [--data F --test F --columns text=T,label=L]
        [--method full|lora] [--max-steps 300] [--batch-size 32] [--learning-rate 2e-5] [--out FILE.json]

Trains the same model twice on the same rows with the same steps, batch, learning rate, warm-up and seed: once
through `engine.train.train`, once as the libraries' documentation writes it by hand:

- reranker: sentence-transformers' cross-encoder recipe: hard negatives mined with `mine_hard_negatives` and the
  bundled all-MiniLM-L6-v2 (the same ranks and margin the engine mines with), BinaryCrossEntropyLoss with
  pos_weight = negatives per positive, CrossEncoderTrainer;
- classifier: transformers' AutoModelForSequenceClassification and Trainer, cross-entropy, padded batches.

Both trained models are measured by the same held-out evaluation (the task's own: MRR@10 / NDCG@10 of reranking
the retriever's top 20; accuracy / macro-F1), which prints beside the base's. Defaults: the bundled samples
(reranker: assets/vera-pairs; classifier: assets/debian-sections) and all-MiniLM-L6-v2, fully fine-tuned.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from engine.bundled import ASSETS_DIR

DEFAULTS = {
    "reranker": ("vera-pairs", {"anchor": "query", "positive": "document"}),
    "classifier": ("debian-sections", {"text": "text", "label": "section"}),
}


def _rows(args, task, path):
    """The file's rows with columns named by role, and its data shape, as the engine reads them."""
    from engine import data as data_layer

    table = data_layer.read_table(str(path))
    shape = task.validate(table, args.columns, source_name=Path(path).name).task
    return task.prepare(table, args.columns), shape


def _training_args(args, output_dir: Path, arguments_class):
    on_gpu = torch.cuda.is_available()
    return arguments_class(
        output_dir=str(output_dir), max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate, warmup_steps=0.1, seed=args.seed, data_seed=args.seed,
        bf16=on_gpu and torch.cuda.is_bf16_supported(), use_cpu=not on_gpu, report_to=[], save_strategy="no",
        logging_steps=10, disable_tqdm=True)


def stock_reranker(args, train_rows, output_dir: Path):
    """sentence-transformers' documented cross-encoder recipe: mined hard negatives, BCE, CrossEncoderTrainer."""
    from datasets import Dataset
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    from sentence_transformers.util import mine_hard_negatives
    from transformers import set_seed

    from engine.resolve import resolve_model
    from engine.tasks import reranker

    set_seed(args.seed)
    documents = train_rows["positive"].nunique()
    range_max = min(reranker.MINE_RANGE, documents - 1)
    mined = mine_hard_negatives(
        Dataset.from_pandas(train_rows[["anchor", "positive"]], preserve_index=False), reranker.retriever(None),
        anchor_column_name="anchor", positive_column_name="positive", num_negatives=args.negatives,
        range_min=min(reranker.MINE_SKIP_TOP, max(range_max - 3 * args.negatives, 0)), range_max=range_max,
        relative_margin=reranker.MINE_RELATIVE_MARGIN, sampling_strategy="top", output_format="labeled-pair",
        batch_size=64, verbose=False)
    model = CrossEncoder(str(resolve_model(args.model)), num_labels=1, max_length=args.max_seq_length)
    if args.method == "lora":
        _stock_lora(model[0].auto_model, "SEQ_CLS")
    loss = BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(float(args.negatives)))
    training_args = _training_args(args, output_dir, CrossEncoderTrainingArguments)
    started = time.time()
    CrossEncoderTrainer(model=model, args=training_args, train_dataset=mined, loss=loss).train()
    return model, time.time() - started


def stock_classifier(args, train_rows, output_dir: Path):
    """transformers' documented sequence-classification fine-tune: AutoModelForSequenceClassification, Trainer."""
    from datasets import Dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments, set_seed)

    from engine.resolve import resolve_model

    set_seed(args.seed)
    path = str(resolve_model(args.model))
    labels = sorted(train_rows["label"].unique())
    label2id = {label: i for i, label in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id, dtype=torch.float32)
    if args.method == "lora":
        model = _stock_lora(model, "SEQ_CLS")
    pairs = train_rows["text_pair"].tolist() if "text_pair" in train_rows else None
    encoded = tokenizer(train_rows["text"].tolist(), pairs, truncation=True, max_length=args.max_seq_length)
    dataset = Dataset.from_dict({**encoded, "labels": [label2id[label] for label in train_rows["label"]]})
    started = time.time()
    Trainer(model=model, args=_training_args(args, output_dir, TrainingArguments), train_dataset=dataset,
            data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer).train()
    model.tokenizer = tokenizer  # what the task's evaluation reads, as on the engine's models
    return model, time.time() - started


def _stock_lora(hf_model, task_type: str):
    """PEFT's LoRA as its documentation adds it: r=16, alpha 16 on the attention and MLP projections, the new head
    trained in full (PEFT's SEQ_CLS default)."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(hf_model, LoraConfig(r=16, lora_alpha=16, task_type=task_type,
                                               target_modules=["query", "key", "value", "dense"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(DEFAULTS), required=True)
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2", help="hub id or local folder")
    parser.add_argument("--data", help="training file (default: the task's bundled sample)")
    parser.add_argument("--test", help="held-out file (default: the sample's test split)")
    parser.add_argument("--columns", help="role=column pairs (default: the sample's)")
    parser.add_argument("--method", choices=("full", "lora"), default="full")
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--negatives", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--work-dir", default="/tmp/lacker-quality-tasks")
    parser.add_argument("--out", help="also write the results to this JSON file")
    args = parser.parse_args()

    from engine.config import TrainConfig
    from engine.tasks import task_module
    from engine.train import train

    sample, columns = DEFAULTS[args.task]
    args.data = args.data or str(ASSETS_DIR / sample / "train.jsonl")
    args.test = args.test or str(ASSETS_DIR / sample / "test.jsonl")
    args.columns = dict(pair.split("=", 1) for pair in args.columns.split(",")) if args.columns else columns
    task = task_module(args.task)
    work = Path(args.work_dir)
    config = TrainConfig.from_dict({
        "task": args.task, "model": args.model, "data": args.data, "eval_data": args.test, "columns": args.columns,
        "method": args.method, "max_steps": args.max_steps, "batch_size": args.batch_size,
        "learning_rate": args.learning_rate, "max_seq_length": args.max_seq_length, "negatives": args.negatives,
        "seed": args.seed, "max_eval_queries": 10_000, "output_dir": str(work / "lacker")})
    started = time.time()
    ours = train(config)
    lacker_seconds = time.time() - started

    (train_rows, _), (held_out, shape) = _rows(args, task, args.data), _rows(args, task, args.test)
    evaluation = task.held_out_evaluation(held_out, shape, config)
    stock = stock_reranker if args.task == "reranker" else stock_classifier
    model, stock_seconds = stock(args, train_rows, work / "stock")
    stock_metrics = evaluation.measure(model)

    def headline(metrics: dict) -> dict:
        return {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}

    results = {"settings": {k: v for k, v in vars(args).items()},
               "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               "versions": {"torch": torch.__version__,
                            "sentence_transformers": __import__("sentence_transformers").__version__,
                            "transformers": __import__("transformers").__version__},
               "base": headline(ours.metrics["base"]),
               "stock": {"train_seconds": round(stock_seconds, 1), **headline(stock_metrics)},
               "lacker": {"seconds_command_to_model": round(lacker_seconds, 1), **headline(ours.metrics["trained"])}}
    key = "ndcg@10" if args.task == "reranker" else "macro_f1"
    results[f"{key} lacker - stock"] = round(ours.metrics["trained"][key] - stock_metrics[key], 4)
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
