"""The runner with the real `python -m engine.worker`: jobs finish with nobody watching, wait in a
queue, stop within a step with a usable checkpoint, are found again by a restarted studio, and a
crash comes back as a plain message."""

import json
import os
import signal
from pathlib import Path

from studio.events import progress_of
from studio.store import COMPLETED, FAILED, QUEUED, RUNNING, STOPPED

from studio_helpers import RUN_TIMEOUT, make_studio, start_sample_run, wait_for


def test_a_run_finishes_on_its_own_and_is_remembered(tmp_path):
    studio = make_studio(tmp_path)
    studio.runner.start_monitor()
    run = start_sample_run(studio, max_steps=3, gradient_checkpointing=True)  # the Train tab's checkbox
    try:
        done = wait_for(lambda: studio.store.get(run.id).is_finished, RUN_TIMEOUT, "the run to finish")
    finally:
        studio.runner.close()
    run = studio.store.get(run.id)
    assert done and run.status == COMPLETED, (run.error, run.hint)
    run_dir = Path(run.run_dir)
    assert (run_dir / "merged" / "modules.json").exists() and (run_dir / "adapter").is_dir()
    assert (run_dir / "worker.log").stat().st_size > 0  # the child's output went to a file, not a pipe
    progress = progress_of(run_dir)
    assert progress.status == "completed" and progress.step == 3 and len(progress.losses) == 3
    assert json.loads((run_dir / "config.json").read_text())["max_steps"] == 3
    assert json.loads((run_dir / "config.json").read_text())["gradient_checkpointing"] is True
    assert "lacker train" in studio.command_for(run) and "--gradient-checkpointing" in studio.command_for(run)
    # A new studio process reads the same registry.
    assert make_studio(tmp_path).store.get(run.id).status == COMPLETED


def test_queue_order_stop_and_reattach_after_a_restart(tmp_path):
    studio = make_studio(tmp_path)
    first = start_sample_run(studio, max_steps=400, save_steps=None)
    second = start_sample_run(studio, max_steps=400)
    third = start_sample_run(studio, max_steps=2)
    assert studio.store.get(first.id).status == RUNNING
    assert (studio.runner.queue_position(second.id), studio.runner.queue_position(third.id)) == (1, 2)

    studio.runner.stop(second.id)  # a queued run is cancelled without ever starting
    assert studio.store.get(second.id).status == STOPPED and studio.runner.queue_position(third.id) == 1

    wait_for(lambda: progress_of(first.run_dir).step >= 1, RUN_TIMEOUT, "the first run's first step")

    # The studio restarts: a new Runner with no handle on the child finds the worker by its pid.
    restarted = make_studio(tmp_path)
    restarted.runner.poll()
    assert restarted.runner.active().id == first.id
    assert restarted.store.get(third.id).status == QUEUED

    restarted.runner.stop(first.id)
    restarted.runner.start_monitor()
    try:
        wait_for(lambda: restarted.store.get(first.id).is_finished, 120, "the stopped run to exit")
        stopped = restarted.store.get(first.id)
        assert stopped.status == STOPPED, (stopped.error, stopped.hint)
        progress = progress_of(first.run_dir)
        assert progress.step < 400
        checkpoints = list((Path(first.run_dir) / "checkpoints").glob("checkpoint-*"))
        assert checkpoints and (Path(first.run_dir) / "merged" / "modules.json").exists()
        # The queue moves on by itself.
        wait_for(lambda: restarted.store.get(third.id).is_finished, RUN_TIMEOUT, "the queued run to run")
        assert restarted.store.get(third.id).status == COMPLETED
    finally:
        restarted.runner.close()
        studio.runner.close()


def test_a_crash_comes_back_as_a_plain_message(tmp_path):
    studio = make_studio(tmp_path)
    studio.runner.start_monitor()
    bad = start_sample_run(studio, model=str(tmp_path / "no-such-model"))
    try:
        wait_for(lambda: studio.store.get(bad.id).is_finished, RUN_TIMEOUT, "the bad run to fail")
        run = studio.store.get(bad.id)
        assert run.status == FAILED
        assert "no-such-model" in run.error and run.hint

        killed = start_sample_run(studio, max_steps=400)
        wait_for(lambda: studio.store.get(killed.id).status == RUNNING and studio.store.get(killed.id).pid,
                 60, "the run to start")
        os.kill(studio.store.get(killed.id).pid, signal.SIGKILL)  # what the kernel's OOM killer does, or a person
        wait_for(lambda: studio.store.get(killed.id).is_finished, 60, "the killed run to be noticed")
        run = studio.store.get(killed.id)
        # Nothing said it was memory: the error names the signal, and memory at most as a possibility.
        assert run.status == FAILED and "killed by signal 9 (SIGKILL)" in run.error
        assert "ran out of memory" not in run.error and run.hint
    finally:
        studio.runner.close()
