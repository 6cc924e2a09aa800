"""One function from a config to a trained model: `train(config, events, stop)`, read top to bottom.

It reads and validates the data, loads the model, measures the base model, adds LoRA (or trains all
weights), switches on the fast path, trains (engine.backends: the packed loop or the stock trainer), saves
the adapter and a merged model, measures the trained model, and reports every step as events
(engine.events). What is particular to a kind of model (its class, losses, evaluation) comes from its task
module (engine.tasks).

Started as several ranks (torchrun, `lacker train --gpus N`: engine.distributed) every rank trains its share of
each batch and rank 0 alone measures, saves and reports.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from engine import atomic, distributed
from engine import data as data_layer
from engine.backends import Run, loop_unavailable, train_packed, train_with_trainer
from engine.checkpoints import resume_point
from engine.config import TrainConfig
from engine.events import EventLog
from engine.tasks import task_module

logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "TrainResult", "EventLog", "train"]


@dataclass
class TrainResult:
    model: object
    output_dir: Path
    stopped: bool
    metrics: dict = field(default_factory=dict)
    steps: int = 0


def _read_split(config: TrainConfig, task, events: EventLog):
    """(train rows, held-out rows, data summary) with columns renamed to roles, checked by the task."""
    source_name = Path(str(config.data)).name if isinstance(config.data, (str, os.PathLike)) else "data"
    table = data_layer.read_table(config.data, config=config.data_config, split=config.data_split)
    mapping = config.columns
    if not mapping:
        guess = data_layer.column_guess(table, config.task)
        mapping = guess.mapping
        events.log(f"columns picked from their names: {guess.describe() or 'none'}")
    summary = task.validate(table, mapping, source_name=source_name, loss=config.loss)
    for warning in summary.warnings:
        events.log(f"warning: {warning}")
    rows = task.prepare(table, mapping)
    if config.eval_data is not None:
        held_out_table = data_layer.read_table(config.eval_data)
        eval_name = Path(str(config.eval_data)).name
        task.validate(held_out_table, mapping, source_name=eval_name, loss=config.loss)
        return rows, task.prepare(held_out_table, mapping), summary
    train_rows, held_out = task.split(rows, config.eval_size, config.seed)
    return train_rows, held_out, summary


def train(config: TrainConfig | dict, events: EventLog | None = None, stop: threading.Event | None = None) -> TrainResult:
    """Train one model as `config` says; write adapter/, merged/ and metrics.json under config.output_dir.

    Args:
        config: a TrainConfig, or a dict of its fields (checked: unknown keys, types and bounds raise ValueError).
        events: where progress goes; default RUN_DIR/events.jsonl, echoed to the terminal.
        stop: set it (from another thread, a signal handler) to stop after the current step, saving a checkpoint.

    Example::

        from engine.train import train
        result = train({"data": "assets/debian-pairs/train.jsonl", "max_steps": 200, "batch_size": 64,
                        "output_dir": "runs/first"})
        print(result.metrics)   # {"base": {"ndcg@10": ...}, "trained": {...}}
    """
    import torch
    from transformers import set_seed

    from engine.hub import name_model_in_card
    from engine.models import family_of
    from engine.resolve import download_events, resolve_model

    config = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    config.check()
    world = distributed.setup()  # before the model loads: each rank's GPU is its LOCAL_RANK's
    task = task_module(config.task)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    events = events or EventLog(output_dir / "events.jsonl", echo=True)
    stop = stop or threading.Event()

    events.status("loading", "reading the data")
    train_rows, held_out, summary = _read_split(config, task, events)
    loss_name = config.loss or summary.loss
    events.log(f"{len(train_rows)} training rows, {len(held_out)} held out; task {summary.task}, loss {loss_name}")
    config.check_against(len(train_rows))

    events.status("loading", f"loading {config.model}")
    resolve_model(config.model, progress=download_events(events))  # progress of a download; the loader finds the cache
    set_seed(config.seed)
    model = task.load_model(config, train_rows)
    config.check_against(len(train_rows), *task.model_limits(model))
    if not torch.cuda.is_available():
        events.log("no GPU found: training on the CPU (fine for small models and the demo preset, slow otherwise)")

    extra = data_layer.read_extra_corpus(config.extra_corpus) if config.extra_corpus else []
    evaluation = task.held_out_evaluation(held_out, summary.task, config, extra)
    measuring = config.evaluate and bool(evaluation) and world.main
    metrics: dict = {}
    if measuring:
        events.log(evaluation.describe())
        events.status("evaluating", "measuring the base model on the held-out split")
        metrics["base"] = evaluation.measure_base(model)
        events.emit("eval", step=0, which="base", metrics=metrics["base"])
    train_rows = task.training_rows(train_rows, loss_name, config, events)

    task.add_adapter(model, config)
    not_fast = task.fast_path_unavailable(model)
    if not_fast and config.fast:
        events.log(f"fast path off: {not_fast}")
    elif config.fast or config.loop == "on":
        # On a CPU packing only pays inside the loop (one forward a batch, no trainer), so it comes with it.
        planned = config.max_steps or math.ceil(config.epochs * len(train_rows) / config.batch_size)
        _enable_fast_path(model, family_of(model), events, allow_cpu=config.loop != "off", steps=planned)
    checkpoint_dir = output_dir / "checkpoints"
    resume = resume_point(config.resume_from_checkpoint, checkpoint_dir, events.log)

    run = Run(config=config, task=task, model=model, train_rows=train_rows, loss_name=loss_name,
              evaluation=evaluation, events=events, stop=stop, checkpoint_dir=checkpoint_dir, resume=resume)
    reason = loop_unavailable(run)
    if reason is None:
        steps = train_packed(run)
    else:
        if config.loop == "on" or config.fast:
            events.log(f"training with the stock trainer: {reason}")
        steps = train_with_trainer(run)
    stopped = stop.is_set()
    if not world.main:  # rank 0 measures and saves what every rank trained alike
        return TrainResult(model=model, output_dir=output_dir, stopped=stopped, steps=steps)

    if measuring:
        events.status("evaluating", "measuring the trained model on the held-out split")
        metrics["trained"] = evaluation.measure(model)
        events.emit("eval", step=steps, which="trained", metrics=metrics["trained"])
        atomic.write_text(output_dir / "metrics.json", json.dumps(metrics, indent=2))

    events.status("saving", "saving the adapter and the merged model")
    task.describe(model, {**config.to_json(), "loss": loss_name, "steps": steps}, metrics)
    dtype = None if config.merged_dtype == "auto" else config.merged_dtype
    for name in ("adapter", "merged") if config.method != "full" else ("merged",):
        with atomic.folder(output_dir / name) as folder:  # whole, or not there at all
            task.save(model, folder, merged=name == "merged", dtype=dtype)
            name_model_in_card(folder, str(output_dir / name))  # the card loads the folder's final name

    events.status("stopped" if stopped else "completed", f"{steps} steps")
    return TrainResult(model=model, output_dir=output_dir, stopped=stopped, metrics=metrics, steps=steps)


def _enable_fast_path(model, family, events: EventLog, allow_cpu: bool = False, steps: int | None = None) -> None:
    try:
        from engine.attention import enable
    except ImportError:
        events.log("fast path not installed; using the stock padded path")
        return
    enabled = enable(model, family, allow_cpu=allow_cpu, steps=steps)
    if enabled:
        events.log(f"fast path: {enabled}")
