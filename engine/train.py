"""One function from a config to a trained model: `train(config, events, stop)`.

It reads and validates the data, loads the model, adds LoRA (or trains all weights), measures the base
model, trains with sentence-transformers' own trainer, saves the adapter and a merged model, measures
the trained model, and reports every step to an EventLog (one JSON object a line).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine import data as data_layer
from engine.families import DEFAULT_MODEL

logger = logging.getLogger(__name__)

METHODS = ("lora", "qlora", "full")


@dataclass
class TrainConfig:
    """Everything a run needs; RUN_DIR/config.json holds one of these as a JSON object."""

    model: str = DEFAULT_MODEL
    data: object = None  # a file path, a Hugging Face dataset id, or a pandas DataFrame
    data_config: str | None = None
    data_split: str | None = None
    eval_data: object = None  # a separate held-out set; None splits `eval_size` off `data`
    eval_size: float = 0.1  # a fraction of the rows, or a row count when >= 1
    columns: dict | None = None  # role -> column; None guesses from the column names
    method: str = "lora"  # "lora", "qlora" (4-bit base, GPU only) or "full"
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: list[str] | None = None  # None: the family's attention and MLP projections
    learning_rate: float = 2e-4
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs
    batch_size: int = 32
    max_seq_length: int | None = 256
    warmup_ratio: float = 0.1
    loss: str | None = None  # None: the default for the column roles
    seed: int = 42
    evaluate: bool = True
    eval_steps: int | None = None  # also evaluate every N steps (retrieval metrics on the held-out split)
    save_steps: int | None = None  # checkpoint every N steps; None: only at the end or on stop
    resume_from_checkpoint: str | None = None  # a checkpoint folder, or "latest"
    max_eval_queries: int = 500
    extra_corpus: str | None = None  # a file of more documents to search among at evaluation (distractors)
    gradient_checkpointing: bool = False
    fast: bool = True  # the GPU fast path (packed attention, fused kernels) where it applies
    # The packed training loop (engine.loop) for in-batch-negative losses: "auto" wherever the fast path is
    # on (GPU: CUDA graphs; CPU: eager, packed through PyTorch's attention), "on" even with fast off,
    # "off" always sentence-transformers' trainer.
    loop: str = "auto"
    output_dir: str = "runs/latest"

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}; known keys are: {', '.join(sorted(names))}")
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        if self.loop not in ("auto", "on", "off"):
            raise ValueError(f"loop {self.loop!r} is not one of auto, on, off")
        if self.data is None:
            raise ValueError("no data given: pass a CSV/TSV/JSON/JSONL/Parquet file or a Hugging Face dataset id")
        for name in ("batch_size", "lora_r"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")

    def to_json(self) -> dict:
        values = dataclasses.asdict(self)
        for key in ("data", "eval_data"):
            if values[key] is not None and not isinstance(values[key], (str, os.PathLike)):
                values[key] = f"<{type(values[key]).__name__}>"
            elif values[key] is not None:
                values[key] = str(values[key])
        return values


class EventLog:
    """Appends one JSON object a line to a file, flushed at once so a reader never waits on us."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, event: str, **fields) -> dict:
        record = {"event": event, "time": round(time.time(), 3), **fields}
        if self.path:
            with self._lock, self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        return record

    def status(self, status: str, message: str = "") -> None:
        logger.info("%s%s", status, f": {message}" if message else "")
        self.emit("status", status=status, message=message)

    def log(self, message: str) -> None:
        logger.info(message)
        self.emit("log", message=message)


@dataclass
class TrainResult:
    model: object
    output_dir: Path
    stopped: bool
    metrics: dict = field(default_factory=dict)
    steps: int = 0


def _read_split(config: TrainConfig, events: EventLog):
    """(train rows, held-out rows, data summary) with columns renamed to roles."""
    source_name = Path(str(config.data)).name if isinstance(config.data, (str, os.PathLike)) else "data"
    table = data_layer.read_table(config.data, config=config.data_config, split=config.data_split)
    mapping = config.columns or data_layer.guess_columns(list(table.columns))
    summary = data_layer.validate(table, mapping, source_name=source_name)
    for warning in summary.warnings:
        events.log(f"warning: {warning}")
    rows = data_layer.prepare(table, mapping)
    if config.eval_data is not None:
        held_out_table = data_layer.read_table(config.eval_data)
        eval_name = Path(str(config.eval_data)).name
        data_layer.validate(held_out_table, mapping, source_name=eval_name)
        return rows, data_layer.prepare(held_out_table, mapping), summary
    train_rows, held_out = data_layer.split(rows, eval_size=config.eval_size, seed=config.seed)
    return train_rows, held_out, summary


def relevant_pairs(held_out, task: str, max_queries: int, seed: int):
    """(queries, documents, extra corpus) for retrieval metrics. Scored pairs count as relevant from the
    middle of the score range up; labelled pairs where the label is not 0. Documents of the rows left
    out by `max_queries` stay in the corpus."""
    rows = held_out
    if task == "scored-pairs":
        low, high = rows["score"].min(), rows["score"].max()
        rows = rows[rows["score"] >= (low + high) / 2]
    elif task == "labelled-pairs":
        rows = rows[rows["label"] != 0]
    chosen = rows.sample(n=min(max_queries, len(rows)), random_state=seed) if len(rows) > max_queries else rows
    chosen_documents = set(chosen["positive"])
    extra = [doc for doc in held_out["positive"].tolist() if doc not in chosen_documents]
    for column in held_out.columns:
        if column.startswith("negative"):
            extra += held_out[column].tolist()
    return chosen["anchor"].tolist(), chosen["positive"].tolist(), extra


def read_extra_corpus(source) -> list[str]:
    """Documents from a file: its document / text / passage / positive column, else its first column."""
    table = data_layer.read_table(source)
    column = next((c for c in ("document", "text", "passage", "positive") if c in table.columns), table.columns[0])
    return table[column].dropna().astype(str).tolist()


def build_loss(name: str, model, train_rows):
    """The sentence-transformers loss called `name` (one of engine.data.LOSSES) for `model`."""
    from sentence_transformers.sentence_transformer import losses

    known = sorted({loss for names in data_layer.LOSSES.values() for loss in names})
    if name not in known:
        raise ValueError(f"loss {name!r} is not supported; pick one of: {', '.join(known)}")
    if name == "CachedMultipleNegativesRankingLoss":
        from engine.loop import CACHED_MINI_BATCH

        return losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=CACHED_MINI_BATCH)
    if name == "SoftmaxLoss":
        return losses.SoftmaxLoss(model, model.get_embedding_dimension(), num_labels=int(train_rows["label"].max()) + 1)
    return getattr(losses, name)(model)


def _checkpoints(checkpoint_dir: Path) -> list[Path]:
    """checkpoint-N folders, oldest (lowest N) first."""
    return sorted(checkpoint_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))


def _latest_checkpoint(checkpoint_dir: Path) -> str | None:
    checkpoints = _checkpoints(checkpoint_dir)
    return str(checkpoints[-1]) if checkpoints else None


def _progress_callback(events: EventLog, stop: threading.Event, batch_size: int):
    from transformers import TrainerCallback

    class ProgressEvents(TrainerCallback):
        """Turns the trainer's logs into `train` / `eval` events, and a stop request into a clean stop."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.time()
            self.first_step = state.global_step

        def on_step_end(self, args, state, control, **kwargs):
            if stop.is_set():
                control.should_training_stop = True
                control.should_save = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            elapsed = time.time() - self.started
            done = max(state.global_step - self.first_step, 1)
            per_step = elapsed / done
            events.emit(
                "train",
                step=state.global_step,
                total_steps=state.max_steps,
                epoch=round(state.epoch or 0.0, 4),
                loss=float(logs["loss"]),
                learning_rate=float(logs.get("learning_rate", 0.0)),
                grad_norm=float(logs["grad_norm"]) if logs.get("grad_norm") is not None else None,
                samples_per_second=round(batch_size / per_step, 2),
                elapsed=round(elapsed, 2),
                eta=round(per_step * (state.max_steps - state.global_step), 2),
            )

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            from engine.evaluate import evaluator_metrics

            if metrics:
                events.emit("eval", step=state.global_step, which="trained", metrics=evaluator_metrics(metrics))

    return ProgressEvents()


def train(config: TrainConfig | dict, events: EventLog | None = None, stop: threading.Event | None = None) -> TrainResult:
    """Train one model as `config` says; write adapter/, merged/ and metrics.json under config.output_dir."""
    import torch
    from transformers import set_seed

    from engine.evaluate import retrieval_metrics
    from engine.models import FastSentenceTransformer, family_of

    config = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    config.check()
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    events = events or EventLog(output_dir / "events.jsonl")
    stop = stop or threading.Event()
    on_gpu = torch.cuda.is_available()

    events.status("loading", "reading the data")
    train_rows, held_out, summary = _read_split(config, events)
    loss_name = config.loss or summary.loss
    events.log(f"{len(train_rows)} training rows, {len(held_out)} held out; task {summary.task}, loss {loss_name}")

    events.status("loading", f"loading {config.model}")
    set_seed(config.seed)
    model = FastSentenceTransformer.from_pretrained(
        config.model,
        max_seq_length=config.max_seq_length,
        load_in_4bit=config.method == "qlora",
        full_finetuning=config.method == "full",
    )
    if not on_gpu:
        events.log("no GPU found: training on the CPU (fine for small models and the demo preset, slow otherwise)")

    queries, documents, extra = relevant_pairs(held_out, summary.task, config.max_eval_queries, config.seed)
    if config.extra_corpus:
        extra += read_extra_corpus(config.extra_corpus)
    if config.evaluate and queries:
        events.log(f"retrieval evaluation: {len(set(queries))} queries over {len(set(documents) | set(extra))} documents")
    metrics: dict = {}
    if config.evaluate and queries:
        events.status("evaluating", "measuring the base model on the held-out split")
        metrics["base"] = retrieval_metrics(model, queries, documents, extra)
        events.emit("eval", step=0, which="base", metrics=metrics["base"])

    if config.method != "full":
        FastSentenceTransformer.get_peft_model(
            model, r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=config.target_modules, use_gradient_checkpointing=config.gradient_checkpointing,
            random_state=config.seed,
        )
    elif config.gradient_checkpointing:
        model[0].auto_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    family = family_of(model)
    if config.fast or config.loop == "on":
        # On a CPU packing only pays inside the loop (one forward a batch, no trainer), so it comes with it.
        planned = config.max_steps or math.ceil(config.epochs * len(train_rows) / config.batch_size)
        _enable_fast_path(model, family, events, allow_cpu=config.loop != "off", steps=planned)
    resume = config.resume_from_checkpoint
    checkpoint_dir = output_dir / "checkpoints"
    if resume == "latest":
        resume = _latest_checkpoint(checkpoint_dir)
        events.log(f"resuming from {resume}" if resume else "no checkpoint to resume from; starting fresh")
    run = dict(config=config, model=model, train_rows=train_rows, events=events, stop=stop, queries=queries,
               documents=documents, extra=extra, checkpoint_dir=checkpoint_dir, resume=resume)
    reason = _loop_unavailable(config, model, loss_name, resume)
    if reason is None:
        steps = _train_packed(**run, loss_name=loss_name)
    else:
        if config.loop == "on" or config.fast:
            events.log(f"training with sentence-transformers' trainer: {reason}")
        steps = _train_with_trainer(**run, loss_name=loss_name, on_gpu=on_gpu)
    stopped = stop.is_set()

    events.status("saving", "saving the adapter and the merged model")
    if config.method != "full":
        model.save_pretrained(str(output_dir / "adapter"))
    model.save_pretrained_merged(str(output_dir / "merged"))

    if config.evaluate and queries:
        events.status("evaluating", "measuring the trained model on the held-out split")
        metrics["trained"] = retrieval_metrics(model, queries, documents, extra)
        events.emit("eval", step=steps, which="trained", metrics=metrics["trained"])
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))

    events.status("stopped" if stopped else "completed", f"{steps} steps")
    return TrainResult(model=model, output_dir=output_dir, stopped=stopped, metrics=metrics, steps=steps)


def _loop_unavailable(config: TrainConfig, model, loss_name: str, resume) -> str | None:
    """None when the packed loop (engine.loop) trains this run, else why the trainer does."""
    if config.loop == "off":
        return "loop is off"
    if config.loop == "auto" and not config.fast:
        return "the fast path is off"
    from engine.loop import is_loop_checkpoint, loop_unavailable

    if resume and not is_loop_checkpoint(resume):
        return f"{resume} is a trainer checkpoint"

    return loop_unavailable(model, loss_name)


def _train_packed(config: TrainConfig, model, train_rows, events: EventLog, stop: threading.Event, queries,
                  documents, extra, checkpoint_dir: Path, resume, loss_name: str) -> int:
    """Train with engine.loop.PackedTrainer; returns the steps done. Same events as the trainer's."""
    from engine.evaluate import retrieval_metrics
    from engine.loop import CACHED_MINI_BATCH, PackedTrainer

    columns = [train_rows[c].tolist() for c in train_rows.columns if c in ("anchor", "positive") or c.startswith("negative")]
    events.status("loading", f"tokenizing {sum(map(len, columns))} texts once, for the packed loop")
    trainer = PackedTrainer(
        model, columns, batch_size=config.batch_size, learning_rate=config.learning_rate, steps=config.max_steps,
        epochs=config.epochs, warmup_ratio=config.warmup_ratio, seed=config.seed,
        mini_batch=CACHED_MINI_BATCH if loss_name.startswith("Cached") else None,
    )
    if resume:
        trainer.load_state(resume)
        events.log(f"resumed at step {trainer.step} of {trainer.total_steps}")
    started, first_step = time.time(), trainer.step

    def on_steps(records):
        elapsed = time.time() - started
        per_step = elapsed / max(records[-1][0] - first_step, 1)
        for step, loss, grad_norm, learning_rate in records:
            events.emit("train", step=step, total_steps=trainer.total_steps,
                        epoch=round(step / trainer.batches_per_epoch, 4), loss=loss, learning_rate=learning_rate,
                        grad_norm=grad_norm, samples_per_second=round(config.batch_size / per_step, 2),
                        elapsed=round(elapsed, 2), eta=round(per_step * (trainer.total_steps - step), 2))

    def on_every(step):
        if config.eval_steps and queries and step % config.eval_steps == 0 and step < trainer.total_steps:
            events.emit("eval", step=step, which="trained", metrics=retrieval_metrics(model, queries, documents, extra))
        if config.save_steps and step % config.save_steps == 0:
            _save_loop_checkpoint(trainer, checkpoint_dir, events)

    intervals = [n for n in (config.eval_steps, config.save_steps) if n]
    every = math.gcd(*intervals) if intervals else None
    events.status("training", f"{config.method} on {config.model} (packed loop)")
    for note in (trainer.kernel_note, trainer.graph_note):  # known before the first step
        if note:
            events.log(note)
    noted = trainer.graph_note
    steps = trainer.fit(on_steps=on_steps, stop=stop, every=every, on_every=on_every)
    if trainer.graph_note and trainer.graph_note != noted:  # a capture that failed during training
        events.log(trainer.graph_note)
    if stop.is_set():
        _save_loop_checkpoint(trainer, checkpoint_dir, events)
    return steps


def _save_loop_checkpoint(trainer, checkpoint_dir: Path, events: EventLog, keep: int = 2) -> None:
    folder = trainer.save_state(checkpoint_dir / f"checkpoint-{trainer.step}")
    events.log(f"checkpoint saved: {folder}")
    for old in _checkpoints(checkpoint_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _train_with_trainer(config: TrainConfig, model, train_rows, events: EventLog, stop: threading.Event, queries,
                        documents, extra, checkpoint_dir: Path, resume, loss_name: str, on_gpu: bool) -> int:
    """Train with sentence-transformers' SentenceTransformerTrainer; returns the steps done."""
    import torch
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers

    from engine.evaluate import retrieval_evaluator

    loss = build_loss(loss_name, model, train_rows)
    uses_in_batch_negatives = "MultipleNegatives" in loss_name
    args = SentenceTransformerTrainingArguments(
        output_dir=str(checkpoint_dir),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        warmup_ratio=config.warmup_ratio,
        seed=config.seed,
        data_seed=config.seed,
        batch_sampler=BatchSamplers.NO_DUPLICATES if uses_in_batch_negatives else BatchSamplers.BATCH_SAMPLER,
        logging_steps=1,
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        save_total_limit=2,
        eval_strategy="steps" if config.eval_steps and queries else "no",
        eval_steps=config.eval_steps,
        report_to=[],
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        fp16=on_gpu and not torch.cuda.is_bf16_supported(),
        use_cpu=not on_gpu,
        # Tokenizing runs in the collate function: on a GPU, DataLoader workers keep it off the
        # main thread (GPU_NOTES.md measured 17-28 ms a batch there).
        dataloader_num_workers=min(4, max((os.cpu_count() or 1) - 1, 0)) if on_gpu else 0,
        dataloader_prefetch_factor=4 if on_gpu else None,
        dataloader_pin_memory=on_gpu,
        dataloader_persistent_workers=on_gpu,
        disable_tqdm=False,
    )
    evaluator = retrieval_evaluator(queries, documents, extra) if args.eval_strategy != "no" else None
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=data_layer.to_dataset(train_rows), loss=loss, evaluator=evaluator,
        callbacks=[_progress_callback(events, stop, config.batch_size)],
    )
    events.status("training", f"{config.method} on {config.model}")
    trainer.train(resume_from_checkpoint=resume)
    return trainer.state.global_step


def _enable_fast_path(model, family, events: EventLog, allow_cpu: bool = False, steps: int | None = None) -> None:
    try:
        from engine.attention import enable
    except ImportError:
        events.log("fast path not installed; using the stock padded path")
        return
    enabled = enable(model, family, allow_cpu=allow_cpu, steps=steps)
    if enabled:
        events.log(f"fast path: {enabled}")
