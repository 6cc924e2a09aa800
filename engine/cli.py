"""`lacker` / `python -m engine`: the studio's scriptable twin.

    lacker train --model M --data FILE_OR_HF_ID --columns anchor=COL,positive=COL --max-steps 200 --output DIR
    lacker eval --model M --data FILE --columns anchor=COL,positive=COL
    lacker studio [--host H] [--port P] [--auth USER:PASS]
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from engine.families import DEFAULT_MODEL


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="CSV/TSV/JSON/JSONL/Parquet file, or a Hugging Face dataset id")
    parser.add_argument("--data-config", help="the dataset's configuration (Hugging Face datasets)")
    parser.add_argument("--split", help="the dataset split to read (Hugging Face datasets)")
    parser.add_argument("--columns", help="role=column pairs: anchor=COL,positive=COL[,negative=COL][,score=COL]; "
                                          "guessed from the column names when left out")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lacker", description="Fine-tune embedding models (Lacker Studio).")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="fine-tune a model and save the adapter, the merged model and metrics")
    train.add_argument("--model", default=DEFAULT_MODEL, help=f"hub id or local folder (default {DEFAULT_MODEL})")
    _add_data_arguments(train)
    train.add_argument("--eval-data", help="a separate held-out file (default: split --eval-size off --data)")
    train.add_argument("--extra-corpus", help="a file of more documents to search among when evaluating")
    train.add_argument("--eval-size", type=float, default=0.1, help="held-out fraction, or row count when >= 1")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--max-steps", type=int)
    length.add_argument("--epochs", type=float, default=1.0)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--lora-r", type=int, default=16)
    train.add_argument("--lora-alpha", type=int, default=16)
    train.add_argument("--lora-dropout", type=float, default=0.0)
    train.add_argument("--target-modules", help="comma-separated LoRA targets (default: the family's projections)")
    train.add_argument("--learning-rate", type=float, default=2e-4)
    train.add_argument("--max-seq-length", type=int, default=256)
    train.add_argument("--warmup-ratio", type=float, default=0.1)
    train.add_argument("--loss", help="loss class name (default: from the column roles)")
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--save-steps", type=int, help="checkpoint every N steps")
    train.add_argument("--eval-steps", type=int, help="also evaluate every N steps")
    train.add_argument("--resume", nargs="?", const="latest", help="resume from a checkpoint (default: the latest in --output)")
    method = train.add_mutually_exclusive_group()
    method.add_argument("--full-finetune", action="store_true", help="train every weight instead of LoRA")
    method.add_argument("--load-in-4bit", action="store_true", help="QLoRA: a 4-bit NF4 base (bitsandbytes)")
    train.add_argument("--gradient-checkpointing", action="store_true")
    train.add_argument("--no-eval", action="store_true", help="skip the base / trained retrieval metrics")
    train.add_argument("--no-fast", action="store_true", help="use the stock padded path even on a GPU")
    train.add_argument("--output", required=True, help="run folder: adapter/, merged/, events.jsonl, metrics.json")

    evaluate = commands.add_parser("eval", help="print a model's retrieval metrics on a data set as JSON")
    evaluate.add_argument("--model", default=DEFAULT_MODEL)
    _add_data_arguments(evaluate)
    evaluate.add_argument("--max-queries", type=int, default=1000)
    evaluate.add_argument("--max-seq-length", type=int)

    studio = commands.add_parser("studio", help="start the web studio")
    studio.add_argument("studio_args", nargs=argparse.REMAINDER, help="passed to the studio (see `lacker studio --help`)")
    return parser


def _config_from_args(args) -> dict:
    from engine.data import parse_column_spec

    return {
        "model": args.model,
        "data": args.data,
        "data_config": args.data_config,
        "data_split": args.split,
        "eval_data": args.eval_data,
        "eval_size": args.eval_size if args.eval_size < 1 else int(args.eval_size),
        "extra_corpus": args.extra_corpus,
        "columns": parse_column_spec(args.columns) if args.columns else None,
        "method": "full" if args.full_finetune else "qlora" if args.load_in_4bit else "lora",
        "lora_r": args.lora_r,
        "lora_alpha": args.lora_alpha,
        "lora_dropout": args.lora_dropout,
        "target_modules": args.target_modules.split(",") if args.target_modules else None,
        "learning_rate": args.learning_rate,
        "epochs": args.epochs,
        "max_steps": args.max_steps,
        "batch_size": args.batch_size,
        "max_seq_length": args.max_seq_length,
        "warmup_ratio": args.warmup_ratio,
        "loss": args.loss,
        "seed": args.seed,
        "evaluate": not args.no_eval,
        "eval_steps": args.eval_steps,
        "save_steps": args.save_steps,
        "resume_from_checkpoint": args.resume,
        "gradient_checkpointing": args.gradient_checkpointing,
        "fast": not args.no_fast,
    }


def _train(args) -> int:
    from engine.worker import run

    config = _config_from_args(args)
    for key in ("data", "eval_data", "extra_corpus"):
        if config[key] and Path(config[key]).exists():
            config[key] = str(Path(config[key]).resolve())
    run_dir = Path(args.output)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config, indent=2))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    code = run(run_dir, stop)
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    errors = [e for e in events if e["event"] == "error"]
    if errors:
        print(f"error: {errors[-1]['error']}\n  fix: {errors[-1]['hint']}", file=sys.stderr)
        return code
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists():
        print(json.dumps(json.loads(metrics_path.read_text()), indent=2))
    print(f"saved to {run_dir}/ (merged/ loads in plain sentence-transformers)")
    return code


def _evaluate(args) -> int:
    from engine import data as data_layer
    from engine.evaluate import retrieval_metrics
    from engine.models import FastSentenceTransformer
    from engine.train import relevant_pairs

    table = data_layer.read_table(args.data, config=args.data_config, split=args.split)
    mapping = data_layer.parse_column_spec(args.columns) if args.columns else data_layer.guess_columns(list(table.columns))
    summary = data_layer.validate(table, mapping, source_name=Path(args.data).name)
    rows = data_layer.prepare(table, mapping)
    queries, documents, extra = relevant_pairs(rows, summary.task, args.max_queries, seed=42)
    model = FastSentenceTransformer.from_pretrained(args.model, max_seq_length=args.max_seq_length, for_inference=True)
    print(json.dumps(retrieval_metrics(model, queries, documents, extra), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "studio":
        import studio

        return studio.main(args.studio_args) or 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from engine.data import DataError
    from engine.resolve import ModelNotAvailable

    try:
        return _train(args) if args.command == "train" else _evaluate(args)
    except (DataError, ModelNotAvailable, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
