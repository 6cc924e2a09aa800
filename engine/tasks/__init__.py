"""Tasks: what a run trains. Each task is one module that names its model class, column roles, losses,
evaluator and side-by-side comparison, behind the same few functions (see `embedding`, the first):

    load_model(config)                   -> the library's own model class, ready to train
    model_limits(model)                  -> (max positions, hidden width), for checking the settings
    add_adapter(model, config)           LoRA on the family's targets (the task's head trained in full)
    losses                               data shape -> loss names, the default first
    build_loss(name, model, train_rows)  -> the library's loss object
    packed_columns(train_rows)           -> the text columns the packed loop embeds, or None
    held_out_evaluation(...)             -> an object with measure(model) -> metrics and evaluator()
    trainer(...)                         -> the library's stock trainer for this task

`engine.train.train` runs any task through these; a new task is a new module listed in TASKS.
Importing this package imports neither torch nor sentence-transformers.
"""

from __future__ import annotations

from engine.tasks import embedding

TASKS = {embedding.NAME: embedding}


def task_module(name: str):
    """The module of task `name`; ValueError names the tasks there are."""
    if name not in TASKS:
        raise ValueError(f"task {name!r} is not one of {', '.join(TASKS)}")
    return TASKS[name]
