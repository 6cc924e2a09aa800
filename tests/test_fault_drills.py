"""Fault drills: what a user sees when a run is killed, stopped early, runs out of disk, finds a damaged checkpoint,
or the studio restarts under it. Each drill runs the real worker on the bundled all-MiniLM-L6-v2 (batch 8, seq 64)
and asserts the registry's status and cause, the step a resumed run goes on from, the loss curve, and that no
half-written model is left where a user would load it."""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from engine.atomic import DiskFull
from engine.checkpoints import CheckpointError, checkpoint_folders, resume_point, step_of
from engine.events import EventLog
from engine.worker import explain
from studio.events import progress_of
from studio.store import COMPLETED, FAILED, RUNNING, STOPPED, Run, RunStore
from studio.tabs.runs import registry_notice

from studio_helpers import make_studio, start_sample_run, wait_for

RUN_TIMEOUT = 900  # a CPU worker on a shared machine: imports, loading, the steps, saving
STEPS, SAVE_EVERY = 16, 3


@pytest.fixture
def watched():
    """`watched(studio)` starts the studio's monitor, and closes it when the test ends."""
    studios = []

    def watch(studio):
        studio.runner.start_monitor()
        studios.append(studio)
        return studio

    yield watch
    for studio in studios:
        studio.runner.close()


@pytest.fixture
def studio(tmp_path, watched):
    return watched(make_studio(tmp_path))


def _steps_drawn(run_dir) -> list[int]:
    return [step for step, _ in progress_of(run_dir).losses]


def _logs(run_dir) -> str:
    return "\n".join(progress_of(run_dir).logs)


def _events_are_whole_lines(path: Path) -> bool:
    text = path.read_text()
    return text.endswith("\n") and all(json.loads(line) for line in text.splitlines())


def _run_until_step(studio, step: int, **config) -> Run:
    run = start_sample_run(studio, max_steps=STEPS, save_steps=SAVE_EVERY, **config)
    wait_for(lambda: progress_of(run.run_dir).step >= step, RUN_TIMEOUT, f"step {step}", interval=0.2)
    return studio.store.get(run.id)


def _resume_and_finish(studio, run_id: str) -> tuple[Run, int]:
    """Resume `run_id` as the Runs tab does and check what a user sees of the new run once it is done:
    completed, on record as resumed from `run_id`, one loss curve from step 1 to the end, a whole merged model.
    Returns the new run and the step it went on from."""
    resumed = studio.runner.resume(run_id)
    wait_for(lambda: studio.store.get(resumed.id).is_finished, RUN_TIMEOUT, "the resumed run to finish")
    resumed = studio.store.get(resumed.id)
    assert resumed.status == COMPLETED, (resumed.error, resumed.hint)
    assert resumed.resumed_from == run_id
    assert _steps_drawn(resumed.run_dir) == list(range(1, STEPS + 1))  # the curve goes on from the checkpoint
    assert (Path(resumed.run_dir) / "merged" / "model.safetensors").exists()
    return resumed, int(_logs(resumed.run_dir).split(" (step ")[1].split(")")[0])


def test_kill_9_is_reported_as_a_kill_and_resumes_from_the_last_checkpoint(studio):
    run = _run_until_step(studio, SAVE_EVERY * 2 + 1)
    shown_at_kill = progress_of(run.run_dir).step
    os.kill(run.pid, signal.SIGKILL)
    wait_for(lambda: studio.store.get(run.id).is_finished, 60, "the killed run to be noticed")
    killed = studio.store.get(run.id)
    assert killed.status == FAILED
    # The cause as it is: a signal. Memory is named only as a possibility where the kernel's log is unreadable.
    assert "killed by signal 9 (SIGKILL)" in killed.error and "ran out of memory" not in killed.error
    assert "Resume" in killed.hint
    assert not (Path(run.run_dir) / "merged").exists()
    assert studio.runner.can_resume(killed)

    _, resumed_from = _resume_and_finish(studio, run.id)
    assert shown_at_kill - resumed_from <= SAVE_EVERY  # at most one checkpoint interval lost
    assert studio.store.get(run.id).status == FAILED  # the killed attempt stays on the record


def test_a_damaged_checkpoint_falls_back_to_the_one_before(studio):
    run = _run_until_step(studio, SAVE_EVERY * 2 + 1)
    studio.runner.stop(run.id)
    wait_for(lambda: studio.store.get(run.id).is_finished, 120, "the stopped run to exit")
    assert studio.store.get(run.id).status == STOPPED
    older, newest = checkpoint_folders(Path(run.run_dir) / "checkpoints")
    with open(newest / "loop_state.pt", "r+b") as state:  # a bad sector, a bad copy: bytes that differ
        state.seek(200)
        state.write(b"\x00" * 64)

    resumed, resumed_from = _resume_and_finish(studio, run.id)
    assert f"checkpoint {newest.name} cannot be used: loop_state.pt is damaged" in _logs(resumed.run_dir)
    assert resumed_from == step_of(older)

    # Named explicitly, the damaged checkpoint is a short message that says what to do, not PyTorch's.
    with pytest.raises(CheckpointError, match="loop_state.pt is damaged") as raised:
        resume_point(str(newest), newest.parent, print)
    message, fix = explain(raised.value)
    assert newest.name in message and "latest" in fix


def test_stop_while_loading_or_evaluating_ends_the_worker_at_once(studio):
    for phase, config in (("loading", {}), ("evaluating", {"evaluate": True, "max_eval_queries": 500})):
        run = start_sample_run(studio, max_steps=STEPS, **config)
        wait_for(lambda: progress_of(run.run_dir).status == phase, RUN_TIMEOUT, f"the run to be {phase}",
                 interval=0.1)
        studio.runner.stop(run.id)
        wait_for(lambda: studio.store.get(run.id).is_finished, 120, f"the run stopped while {phase} to exit")
        stopped = studio.store.get(run.id)
        assert stopped.status == STOPPED, (phase, stopped.error, stopped.hint)
        progress = progress_of(run.run_dir)
        assert f"stopped while {phase}" in progress.message
        assert progress.step == 0  # it did not wait for a training step to look at the stop


def test_a_studio_restart_mid_run_finds_the_run_and_records_its_end(tmp_path, watched):
    studio = watched(make_studio(tmp_path))
    run = start_sample_run(studio, max_steps=12)
    wait_for(lambda: progress_of(run.run_dir).step >= 1, RUN_TIMEOUT, "the first step")
    studio.runner.close()  # the studio goes away; the worker does not

    restarted = watched(make_studio(tmp_path))
    restarted.runner.poll()  # a new runner, with no handle on the child, finds the worker by its pid
    assert restarted.runner.active().id == run.id
    wait_for(lambda: restarted.store.get(run.id).is_finished, RUN_TIMEOUT, "the run to finish")
    finished = restarted.store.get(run.id)
    assert finished.status == COMPLETED, (finished.error, finished.hint)
    assert _steps_drawn(run.run_dir) == list(range(1, 13))
    assert (Path(run.run_dir) / "merged" / "model.safetensors").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 40 MB tmpfs: room for a run's data, events and LoRA checkpoints, not for MiniLM's 90 MB merged model.
    Mounting needs root and a sandbox that allows it; without, the drill is skipped (the reason says why)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount)], capture_output=True,
                              text=True)
    except OSError as error:
        pytest.skip(f"cannot run mount: {error}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    """Fill `disk` to its last page."""
    filler = disk / "filler"
    handle = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (1 << 20, 1 << 12, 1):
            try:
                while os.write(handle, b"\0" * chunk):
                    pass
            except OSError:
                pass
    finally:
        os.close(handle)
    return filler


def test_a_full_disk_is_named_and_leaves_no_half_written_model(small_disk, watched):
    """A real full disk: the run's home on a 40 MB tmpfs, so saving the merged model runs out of space."""
    studio = watched(make_studio(small_disk / "home"))
    run = start_sample_run(studio, max_steps=3)
    wait_for(lambda: studio.store.get(run.id).is_finished, RUN_TIMEOUT, "the run to fail")
    failed = studio.store.get(run.id)
    run_dir = Path(run.run_dir)
    assert failed.status == FAILED and "disk full" in failed.error, (failed.error, failed.hint)
    assert "free some space" in failed.hint
    assert not (run_dir / "merged").exists() and not (run_dir / "merged.tmp").exists()
    assert _events_are_whole_lines(run_dir / "events.jsonl")
    assert checkpoint_folders(run_dir / "checkpoints")  # training was saved: Resume can go on once there is room


def test_events_and_the_registry_on_a_full_disk(small_disk):
    """The disk filled up to the last byte: an event is taken back whole and named, and the registry keeps its
    changes in memory, says so on the Runs tab, and writes them once space returns."""
    events = EventLog(small_disk / "events.jsonl")
    events.log("before the disk filled up")
    studio = make_studio(small_disk / "home")
    run = Run(id="r1", created=1.0, status=RUNNING, model="m", data="d.csv", method="lora",
              run_dir=str(small_disk / "r1"), config={})
    studio.store.add(run)
    filler = _fill(small_disk)

    with pytest.raises(DiskFull, match="disk full"):
        events.log("x" * 100_000)
    assert [json.loads(line)["message"] for line in events.path.read_text().splitlines()] == ["before the disk filled up"]

    studio.store.update("r1", status=FAILED, error="disk full")
    assert studio.store.get("r1").status == FAILED  # the page shows the truth meanwhile
    assert "cannot be written (the disk is full)" in studio.store.write_problem
    notice = registry_notice(studio)
    assert notice["visible"] and "runs.sqlite" in notice["value"]

    filler.unlink()
    studio.store.retry()
    assert studio.store.write_problem is None and not registry_notice(studio)["visible"]
    assert RunStore(studio.settings.registry_path).get("r1").status == FAILED


@pytest.mark.parametrize("loop", ["on", "off"])
def test_checkpoints_come_by_time_on_both_back_ends_and_resume(loop, tmp_path):
    """No save_steps: the time cadence alone (here: as often as it can) checkpoints during training, in the packed
    loop ("on") and in sentence-transformers' trainer ("off"); each checkpoint checks out, and "latest" goes on."""
    import pandas as pd

    from engine.checkpoints import checkpoint_problem
    from engine.train import train
    from tiny_models import build_tiny_model

    data = tmp_path / "pairs.csv"
    pd.DataFrame({"question": [f"what does package {i} do" for i in range(64)],
                  "answer": [f"package {i} is a tool with feature {i * 3}" for i in range(64)]}).to_csv(data, index=False)
    steps = 25 if loop == "on" else 3  # the loop reads its losses back (and may checkpoint) every 10 steps or second
    common = dict(model=str(build_tiny_model("bert", tmp_path / "bert")), data=str(data), batch_size=8,
                  max_seq_length=32, evaluate=False, loop=loop, save_seconds=1e-6, output_dir=str(tmp_path / "run"))
    train({**common, "max_steps": steps})
    saved = [int(m.split("checkpoint-")[-1]) for m in _logs(tmp_path / "run").splitlines() if "checkpoint saved" in m]
    assert saved and min(saved) < steps and max(saved) == steps
    assert all(checkpoint_problem(folder) is None for folder in checkpoint_folders(tmp_path / "run" / "checkpoints"))

    train({**common, "max_steps": steps + 2, "resume_from_checkpoint": "latest"})
    assert _steps_drawn(tmp_path / "run")[-3:] == [steps, steps + 1, steps + 2]



def test_only_studio_runs_point_at_worker_log(tmp_path, monkeypatch):
    """The CLI writes no worker.log: its hint for an unexpected error is --debug; a studio run's names the file."""
    import engine.train
    from engine.worker import run

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(engine.train, "train", broken)
    hints = {}
    for echo in (True, False):
        run_dir = tmp_path / f"echo-{echo}"
        run_dir.mkdir()
        (run_dir / "config.json").write_text(json.dumps({"data": "rows.csv"}))
        assert run(run_dir, echo=echo) == 1
        hints[echo] = progress_of(run_dir).hint
    assert "--debug" in hints[True] and "worker.log" not in hints[True]
    assert str(tmp_path / "echo-False" / "worker.log") in hints[False]
