"""`lacker` / `python -m engine`: the studio's scriptable twin.

    lacker train --model M --data FILE_OR_HF_ID --columns anchor=COL,positive=COL --max-steps 200 --output DIR
    lacker eval --model M --data FILE --columns anchor=COL,positive=COL
    lacker export --model RUN_DIR_OR_MODEL --format gguf|onnx [--quantize f16|q8_0|fp32|int8] [--output PATH]
    lacker studio [--host H] [--port P] [--auth USER:PASS]

`lacker train`'s flags are derived from the fields of engine.config.TrainConfig (one flag per setting).
`lacker train --gpus N` starts itself again as N ranks under torchrun (`torchrun --nproc-per-node N -m engine
train ...`, which also works by hand, as does `accelerate launch -m engine train ...`); rank 0 prints.
Expected failures (bad data, bad settings, a model that cannot be had) print `error:` and `fix:` lines and exit
2 for bad input, 1 for other failures; `--debug` shows the traceback as well.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from engine.config import add_train_arguments, config_from_args
from engine.families import DEFAULT_MODEL


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lacker-studio")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lacker", description="Fine-tune embedding models (Lacker Studio).")
    parser.add_argument("--version", action="version", version=f"lacker-studio {_version()}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of a failure")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="fine-tune a model and save the adapter, the merged model and metrics")
    add_train_arguments(train)

    evaluate = commands.add_parser("eval", help="print a model's retrieval metrics on a data set as JSON")
    evaluate.add_argument("--model", default=DEFAULT_MODEL, help=f"hub id or local folder (default {DEFAULT_MODEL})")
    evaluate.add_argument("--data", required=True, help="CSV/TSV/JSON/JSONL/Parquet file, or a Hugging Face dataset id")
    evaluate.add_argument("--data-config", help="the dataset's configuration (Hugging Face datasets)")
    evaluate.add_argument("--split", help="the dataset split to read (Hugging Face datasets)")
    evaluate.add_argument("--columns", help="role=column pairs: anchor=COL,positive=COL; guessed when left out")
    evaluate.add_argument("--max-queries", type=int, default=1000)
    evaluate.add_argument("--max-seq-length", type=int)

    export = commands.add_parser("export", help="write a model as GGUF or ONNX and check it against the PyTorch model",
                                 description="Write a model as GGUF (llama.cpp, Ollama) or ONNX (onnxruntime) and "
                                             "check it against the PyTorch model in that runtime (parity.json).")
    export.add_argument("--model", help="a run folder, a model folder or a hub id")
    export.add_argument("--format", choices=("gguf", "onnx"))
    export.add_argument("--quantize", choices=("f16", "q8_0", "fp32", "int8"),
                        help="gguf: f16 (default) or q8_0; onnx: fp32 (default) or int8")
    export.add_argument("--output", help="where to write (default: RUN/export/FORMAT-QUANTIZE, or ./MODEL-FORMAT-QUANTIZE)")
    export.add_argument("--install-llama-cpp", action="store_true",
                        help="install the llama.cpp runtime the GGUF check runs in (npm; once), then exit")

    import studio

    studio.add_arguments(commands.add_parser("studio", help="start the web studio",
                                             description="Start the Lacker Studio web app."))
    return parser


def _train(args, argv: list[str], whole_process: bool = False) -> int:
    from engine import atomic, distributed
    from engine.worker import go_without_bitsandbytes, run, run_on_ranks

    config = config_from_args(args)
    if whole_process:
        go_without_bitsandbytes(config.get("method"))
    world = distributed.current()
    if config.get("gpus", 1) > 1 and not world.distributed:  # this same command on each rank; rank 0 prints
        return run_on_ranks(config["gpus"], ["engine", *argv], Path(config["output_dir"]) / "events.jsonl")
    for key in ("data", "eval_data", "extra_corpus"):
        if config.get(key) and Path(config[key]).exists():
            config[key] = str(Path(config[key]).resolve())
    run_dir = Path(config.pop("output_dir"))
    run_dir.mkdir(parents=True, exist_ok=True)
    if world.main:
        atomic.write_text(run_dir / "config.json", json.dumps(config, indent=2))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    log = run_dir / "events.jsonl"
    before = log.stat().st_size if log.exists() else 0  # a resumed run's folder holds the earlier runs' events
    code = run(run_dir, stop, echo=True, values=config)
    if not world.main:
        return code
    with log.open("rb") as handle:
        handle.seek(before)
        events = [json.loads(line) for line in handle.read().splitlines() if line.strip()]
    errors = [e for e in events if e["event"] == "error"]
    if errors:
        print(f"error: {errors[-1]['error']}\n  fix: {errors[-1]['hint']}", file=sys.stderr)
        return 2 if errors[-1].get("bad_input") else code
    last = next((e for e in reversed(events) if e["event"] == "status"), {})
    if last.get("status") == "stopped" and not (run_dir / "merged").is_dir():
        print(f"stopped: {last.get('message')}; run the same command with --resume to go on", file=sys.stderr)
        return 1
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists():
        print(json.dumps(json.loads(metrics_path.read_text()), indent=2))
    print(f"saved to {run_dir}/ (merged/ loads without Lacker Studio: in plain sentence-transformers, or transformers "
          "for a classifier)")
    return code


def _evaluate(args) -> int:
    from engine import data as data_layer
    from engine.models import FastSentenceTransformer
    from engine.tasks import embedding

    table = data_layer.read_table(args.data, config=args.data_config, split=args.split)
    mapping = data_layer.parse_column_spec(args.columns) if args.columns else data_layer.column_guess(table).mapping
    summary = data_layer.validate(table, mapping, source_name=Path(args.data).name)
    rows = data_layer.prepare(table, mapping)
    evaluation = embedding.retrieval_evaluation(rows, summary.task, args.max_queries, seed=42)
    model = FastSentenceTransformer.from_pretrained(args.model, max_seq_length=args.max_seq_length, for_inference=True)
    print(json.dumps(evaluation.measure(model), indent=2))
    return 0


def _export(args) -> int:
    from engine.export import export, llama_cpp

    if args.install_llama_cpp:
        print(f"llama.cpp runtime installed in {llama_cpp.install()}")
        return 0
    if not args.model or not args.format:
        raise ValueError("lacker export needs --model and --format (or --install-llama-cpp alone)")
    result = export(args.model, args.format, args.quantize, args.output,
                    progress=lambda message, fraction: print(f"{message}...", file=sys.stderr, flush=True))
    print(result.describe())
    if not result.passed:
        print("the file is kept beside its parity.json for a look; it does not match the model", file=sys.stderr)
    return 0 if result.passed else 1


def main(argv: list[str] | None = None) -> int:
    """The command line (`argv`, default sys.argv); without `argv` it is this process's one command (`lacker`,
    `python -m engine`), so a train command may leave out what its run does not use."""
    whole_process = argv is None
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.command == "studio":
        import studio

        return studio.main(args) or 0
    if args.command == "train":  # its own progress lines replace the libraries' bars (set before tqdm loads)
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    quiet = logging.WARNING if args.command == "train" else logging.INFO  # train prints its own progress
    logging.basicConfig(level=logging.DEBUG if args.debug else quiet,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from engine.worker import explain, is_bad_input

    try:
        if args.command == "train":
            return _train(args, argv, whole_process)
        return {"eval": _evaluate, "export": _export}[args.command](args)
    except KeyboardInterrupt:
        print("error: interrupted\n  fix: run the same command again (with --resume to go on from a checkpoint)",
              file=sys.stderr)
        return 1
    except Exception as error:  # every failure is worded for the user; --debug adds the traceback
        if args.debug:
            raise
        message, hint = explain(error, None)
        print(f"error: {message}\n  fix: {hint}", file=sys.stderr)
        return 2 if is_bad_input(error) else 1
