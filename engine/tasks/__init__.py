"""Tasks: what a run trains. Each task is one module that names its model class, column roles, losses,
evaluator and side-by-side comparison, behind the same few names (see `embedding`, the first):

    NAME                                  the task's name (TrainConfig.task, `lacker train --task`)
    SUMMARY                               what it trains, in a few words (the flag's help)
    ROLES                                 the column roles its data maps (anchor, positive, ...)
    LOSSES                                data shape -> loss names, the default first
    validate(table, mapping, source_name, loss=None) -> engine.data.DataSummary; raises DataError
    prepare(table, mapping)               -> the rows, columns named by role (validate first)
    split(rows, eval_size, seed)          -> (train rows, held-out rows)
    load_model(config, train_rows)        -> the library's own model class, ready to train (a classifier's head
                                          gets the training rows' classes)
    model_limits(model)                   -> (max positions, hidden width), for checking the settings
    training_rows(rows, loss_name, config, events) -> the rows the loss trains on (a reranker mines
                                          negatives here; events reports what it does)
    add_adapter(model, config)            LoRA on the family's targets (the task's head trained in full)
    fast_path_unavailable(model)          -> None where engine.attention's fast path applies, else why not
    build_loss(name, model, train_rows)   -> the library's loss object
    packed_unavailable(model, loss_name)  -> None where the packed loop (engine.loop) trains the model with this
                                          loss, else why not (a short phrase: the stock trainer runs instead)
    packed_trainer(model, train_rows, loss_name, **settings)
                                          -> the packed loop's trainer for the run: a PackedTrainer that embeds
                                          each text column (embedding), or a ScoringTrainer that scores each row
                                          as one sequence (reranker, classifier); settings are batch_size,
                                          learning_rate, steps, epochs, warmup_ratio, seed
    held_out_evaluation(held_out, shape, config, extra_corpus)
                                          -> falsy when there is nothing to measure, else an object with
                                          describe(), measure_base(model) (before any training),
                                          measure(model), evaluator() (for the trainer) and metrics_from(raw)
    trainer(model, train_dataset, loss, evaluator, callbacks, args_overrides) -> the library's stock trainer
    describe(model, settings, metrics)    records the run on the model, for the card its saves write
    save(model, folder, merged, dtype)    the adapter (merged=False) or a merged model (in dtype) that loads without
                                          this package (merged=True)

`engine.train.train` runs any task through these; a new task is a new module listed in TASKS.
Importing this package imports neither torch nor sentence-transformers, nor pandas.
"""

from __future__ import annotations

from engine.tasks import classifier, embedding, reranker

TASKS = {task.NAME: task for task in (embedding, reranker, classifier)}


def task_module(name: str):
    """The module of task `name`; ValueError names the tasks there are."""
    if name not in TASKS:
        raise ValueError(f"task {name!r} is not one of {', '.join(TASKS)}")
    return TASKS[name]


def all_roles() -> tuple[str, ...]:
    """Every column role some task maps, each once, in the order the tasks list them."""
    return tuple(dict.fromkeys(role for task in TASKS.values() for role in task.ROLES))
