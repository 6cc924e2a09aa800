"""The two ways a run trains, each from a `Run` to the number of steps done, reporting the same events:

- `train_packed`: the packed loop (engine.loop), for the losses it runs (the in-batch-negative losses of
  embeddings, a reranker's BinaryCrossEntropyLoss, a classifier's cross-entropy); CUDA graphs on a GPU;
- `train_with_trainer`: the task's stock trainer (sentence-transformers', transformers'), for everything else.

`loop_unavailable` says which one a run gets, and why. Either runs on several ranks (engine.distributed): the
loop sums its gradients and gathers its in-batch negatives itself, the trainer through sentence-transformers' DDP
support (`gather_across_devices` where the loss has it). Only rank 0 writes checkpoints; `config.batch_size` is
each rank's batch.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from engine import atomic, distributed
from engine.checkpoints import UNFINISHED, publish, save_loop_checkpoint
from engine.config import TrainConfig
from engine.events import EventLog


class TrainingDiverged(ValueError):
    """The loss stopped being a number: the weights are lost to NaN or infinity, and training on cannot bring them
    back. Raised at the step it happens, before a checkpoint or a model of NaNs is saved."""

    def __init__(self, step: int, loss: float, learning_rate: float, grad_norm: float | None = None):
        what = f"the loss is {loss}" if not math.isfinite(loss) else f"the gradient norm is {grad_norm}"
        super().__init__(f"training diverged at step {step}: {what}")
        self.fix = (f"start again with a lower learning rate (this run's peaked at {learning_rate:g}; full "
                    "fine-tuning usually wants 1e-5 to 5e-5, LoRA 1e-4 to 5e-4)")


def check_loss(step: int, loss: float, learning_rate: float, grad_norm: float | None = None) -> None:
    """Raise TrainingDiverged when the step's loss, or its gradient norm (NaN gradients would poison the weights at
    the optimizer step), is not a finite number."""
    if not math.isfinite(loss) or (grad_norm is not None and not math.isfinite(grad_norm)):
        raise TrainingDiverged(step, loss, learning_rate, grad_norm)


@dataclass
class Run:
    """What a back-end needs of a run, prepared by engine.train.train."""

    config: TrainConfig
    task: object  # the task module (engine.tasks.*)
    model: object
    train_rows: object  # the prepared training table (columns named by role)
    loss_name: str
    evaluation: object  # the task's held-out evaluation; falsy when there is nothing to measure
    events: EventLog
    stop: threading.Event
    checkpoint_dir: Path
    resume: str | None


class SaveClock:
    """Whether a checkpoint is due by time: `seconds` of training since the last one (never, for 0), so that a
    killed run loses at most that much, whatever save_steps says."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.restart()

    def restart(self) -> None:
        self.last = time.monotonic()

    @property
    def due(self) -> bool:
        return bool(self.seconds) and time.monotonic() - self.last >= self.seconds


def loop_unavailable(run: Run) -> str | None:
    """None when the packed loop trains this run, else why the trainer does (a short phrase)."""
    config = run.config
    if config.loop == "off":
        return "loop is off"
    if config.loop == "auto" and not config.fast:
        return "the fast path is off"
    from engine.loop import is_loop_checkpoint

    if run.resume and not is_loop_checkpoint(run.resume):
        return f"{run.resume} is a trainer checkpoint"
    return run.task.packed_unavailable(run.model, run.loss_name)


def train_packed(run: Run) -> int:
    """Train with the task's packed-loop trainer (engine.loop); returns the steps done."""
    config, events = run.config, run.events
    events.status("loading", f"setting up the packed loop for the {len(run.train_rows)} training rows (their texts are tokenized once)")
    trainer = run.task.packed_trainer(
        run.model, run.train_rows, run.loss_name, batch_size=config.batch_size, learning_rate=config.learning_rate,
        steps=config.max_steps, epochs=config.epochs, warmup_ratio=config.warmup_ratio, seed=config.seed,
    )
    if run.resume:
        trainer.load_state(run.resume)
        events.log(f"resumed at step {trainer.step} of {trainer.total_steps}")
    started, first_step = time.time(), trainer.step
    clock = SaveClock(config.save_seconds)
    saved_at = [trainer.step]

    main = distributed.is_main()
    global_batch = trainer.global_batch

    def save():
        if main and trainer.step != saved_at[0]:  # the end may fall on a save_steps save
            save_loop_checkpoint(trainer, run.checkpoint_dir, events.log)
            saved_at[0] = trainer.step
        clock.restart()

    def on_steps(records):
        elapsed = time.time() - started
        per_step = elapsed / max(records[-1][0] - first_step, 1)
        for step, loss, grad_norm, learning_rate in records:
            events.emit("train", step=step, total_steps=trainer.total_steps,
                        epoch=round(step / trainer.batches_per_epoch, 4), loss=loss, learning_rate=learning_rate,
                        grad_norm=grad_norm, samples_per_second=round(global_batch / per_step, 2),
                        elapsed=round(elapsed, 2), eta=round(per_step * (trainer.total_steps - step), 2))
            check_loss(step, loss, config.learning_rate, grad_norm)
        if clock.due:  # here, after the step's losses are out: a run resumed from it draws an unbroken curve
            save()

    def on_every(step):
        if main and config.eval_steps and run.evaluation and step % config.eval_steps == 0 and step < trainer.total_steps:
            events.emit("eval", step=step, which="trained", metrics=run.evaluation.measure(run.model))
        if config.save_steps and step % config.save_steps == 0:
            save()

    intervals = [n for n in (config.eval_steps, config.save_steps) if n]
    every = math.gcd(*intervals) if intervals else None
    ranks = f", {trainer.world.size} ranks at batch {config.batch_size} each" if trainer.world.distributed else ""
    events.status("training", f"{config.method} on {config.model} (packed loop{ranks})")
    for note in (trainer.kernel_note, trainer.graph_note):  # known before the first step
        if note:
            events.log(note)
    noted = trainer.graph_note
    steps = trainer.fit(on_steps=on_steps, stop=run.stop, every=every, on_every=on_every)
    if trainer.graph_note and trainer.graph_note != noted:  # a capture that failed during training
        events.log(trainer.graph_note)
    save()  # at the end, or where it stopped: saving the model or measuring it may still fail
    return steps


def _progress_callback(run: Run):
    from transformers import TrainerCallback

    events, stop = run.events, run.stop
    batch_size, main = run.config.batch_size * distributed.current().size, distributed.is_main()

    class ProgressEvents(TrainerCallback):
        """Turns the trainer's logs into `train` / `eval` events, a stop request into a clean stop, and checkpoints
        due by time, at the end or at a stop into saves; publishes each checkpoint the trainer wrote."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.time()
            self.first_step = state.global_step
            self.clock = SaveClock(run.config.save_seconds)

        def on_step_end(self, args, state, control, **kwargs):
            if stop.is_set():
                control.should_training_stop = True
            if stop.is_set() or self.clock.due or state.global_step >= state.max_steps:
                control.should_save = True

        def on_save(self, args, state, control, **kwargs):
            if not main:  # the trainer saves on rank 0 only
                return
            publish(Path(args.output_dir) / f"checkpoint-{state.global_step}", run.checkpoint_dir, events.log)
            self.clock.restart()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            elapsed = time.time() - self.started
            per_step = elapsed / max(state.global_step - self.first_step, 1)
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
            # fp16's loss scaler skips the steps whose gradients overflowed: an infinite norm there is expected
            grad_norm = None if args is not None and args.fp16 else logs.get("grad_norm")
            check_loss(state.global_step, float(logs["loss"]), run.config.learning_rate, grad_norm)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if metrics:
                events.emit("eval", step=state.global_step, which="trained", metrics=run.evaluation.metrics_from(metrics))

    return ProgressEvents()


def train_with_trainer(run: Run) -> int:
    """Train with the task's stock trainer; returns the steps done."""
    import torch

    from engine import data as data_layer

    config, on_gpu = run.config, torch.cuda.is_available()
    loss = run.task.build_loss(run.loss_name, run.model, run.train_rows)
    if distributed.current().distributed and hasattr(loss, "gather_across_devices"):
        loss.gather_across_devices = True  # in-batch negatives from every rank, as one process at the global batch
    evaluating = bool(config.eval_steps and run.evaluation)
    unfinished = run.checkpoint_dir / UNFINISHED  # the trainer's checkpoints, until ProgressEvents publishes them
    if distributed.is_main():
        shutil.rmtree(unfinished, ignore_errors=True)  # a killed run's half-written one
    args = dict(
        output_dir=str(unfinished),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        warmup_ratio=config.warmup_ratio,
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=1,
        logging_nan_inf_filter=False,  # a NaN loss logged as it is, so that check_loss stops the run at that step
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        eval_strategy="steps" if evaluating else "no",
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
        disable_tqdm=True,  # the events carry progress (and the CLI prints them)
    )
    trainer = run.task.trainer(run.model, data_layer.to_dataset(run.train_rows), loss,
                               run.evaluation.evaluator() if evaluating else None, [_progress_callback(run)], args)
    run.events.status("training", f"{config.method} on {config.model}")
    with atomic.removed_on_failure(unfinished, run.checkpoint_dir):  # a failed save must not keep the space
        trainer.train(resume_from_checkpoint=run.resume)
    if distributed.is_main():
        shutil.rmtree(unfinished, ignore_errors=True)
    return trainer.state.global_step
