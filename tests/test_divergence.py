"""A run whose loss turns NaN stops at that step with the error and fix a user can act on, instead of training on
and failing later with 'Input contains NaN' while measuring a model of NaNs."""

import math
import threading
import types

import pytest

from engine.backends import TrainingDiverged, _progress_callback
from engine.config import TrainConfig
from engine.events import EventLog
from engine.worker import explain


def _trainer_callback(tmp_path, learning_rate):
    config = TrainConfig(data="unused.jsonl", learning_rate=learning_rate, output_dir=str(tmp_path))
    run = types.SimpleNamespace(config=config, events=EventLog(tmp_path / "events.jsonl"), stop=threading.Event())
    callback = _progress_callback(run)
    state = types.SimpleNamespace(global_step=0, max_steps=10, epoch=0.0)
    callback.on_train_begin(None, state, None)
    return callback, state


def test_a_nan_loss_stops_the_run_at_that_step_naming_the_learning_rate(tmp_path):
    callback, state = _trainer_callback(tmp_path, learning_rate=2e-4)
    state.global_step = 3
    callback.on_log(None, state, None, logs={"loss": 0.7, "learning_rate": 1e-4})
    state.global_step = 4
    with pytest.raises(TrainingDiverged) as caught:
        callback.on_log(None, state, None, logs={"loss": math.nan, "learning_rate": 2e-4})
    message, fix = explain(caught.value)
    assert "step 4" in message and "nan" in message
    assert "lower learning rate" in fix and "0.0002" in fix


def test_finite_losses_train_on(tmp_path):
    callback, state = _trainer_callback(tmp_path, learning_rate=2e-5)
    for step, loss in enumerate((2.0, 1.5, 1e30), start=1):
        state.global_step = step
        callback.on_log(None, state, None, logs={"loss": loss})


def test_nan_gradients_stop_the_run_even_when_the_loss_looks_fine(tmp_path):
    callback, state = _trainer_callback(tmp_path, learning_rate=2e-5)
    state.global_step = 7
    with pytest.raises(TrainingDiverged, match="step 7: the gradient norm is nan"):
        callback.on_log(None, state, None, logs={"loss": 0.0, "grad_norm": math.nan})
