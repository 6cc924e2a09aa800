"""The runner: one training job at a time, each `python -m engine.worker RUN_DIR` in its own process.

The studio talks to a worker only through its run folder (config.json in; events.jsonl, checkpoints
and model folders out) and signals. The child's stdout and stderr go to RUN_DIR/worker.log, never to
a pipe, so a job never stalls waiting for someone to read it (LLaMA-Factory issue #10180). A monitor
thread, not the browser, moves the queue along: jobs run and finish with no page open, and a studio
that restarts finds a still-running worker again by its pid.

A worker that dies without a last word gets its cause from what is known, not guessed: its exit signal or
code, the end of worker.log (CUDA's out-of-memory error, "No space left on device") and the kernel's log
(its out-of-memory killer names the pid it killed). A failed or stopped run with a checkpoint can be
resumed (`resume`): a new run, in a new folder, goes on from the checkpoint and keeps the curve so far.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from engine import atomic
from engine.checkpoints import checkpoint_folders, step_of, usable_checkpoint
from engine.worker import EXIT_DISK_FULL
from studio.data_sources import RUN_SOURCE
from studio.events import TERMINAL, progress_of
from studio.settings import REPO_ROOT
from studio.store import FAILED, QUEUED, RUNNING, STOPPED, Run, RunStore

logger = logging.getLogger(__name__)

LOG_TAIL_CHARS = 1500
RESUMABLE = (FAILED, STOPPED)


def worker_command(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "engine.worker", str(run_dir)]


class Runner:
    def __init__(self, store: RunStore, home: str | Path, poll_interval: float = 1.0,
                 command: Callable[[Path], list[str]] = worker_command,
                 on_finish: Callable[[Run], None] | None = None):
        self.store = store
        self.on_finish = on_finish
        self.command = command
        self.home = Path(home)
        self.poll_interval = poll_interval
        self._children: dict[str, subprocess.Popen] = {}
        self._lock = threading.RLock()
        self._monitor: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- submitting and stopping -------------------------------------------------------------

    def submit(self, config: dict, data_label: str, write_data: Callable[[Path], dict] | None = None,
               resumed_from: str | None = None) -> Run:
        """Queue a run. `write_data(run_dir)` may write files into the run folder and returns config overrides.

        config.json gets the worker's config keys only; the worker sets its output folder to the run folder."""
        run_id = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)
        run_dir = self.home / run_id
        run_dir.mkdir(parents=True)
        config = dict(config)
        if write_data is not None:
            config.update(write_data(run_dir))
        atomic.write_text(run_dir / "config.json", json.dumps(config, indent=2))
        run = Run(id=run_id, created=time.time(), status=QUEUED, model=config["model"], data=data_label,
                  method=config.get("method", "lora"), run_dir=str(run_dir), config=config, resumed_from=resumed_from)
        self.store.add(run)
        self.poll()
        return self.store.get(run_id)

    def resume(self, run_id: str) -> Run:
        """Queue a new run that goes on from the last whole checkpoint of the failed or stopped run `run_id`
        (the one before it where the last is damaged). The new folder gets links to the old run's data and
        checkpoints (hard links: no copies, and the old run stays as it was) and its events up to the
        checkpoint's step, so the loss curve goes on from there. ValueError says why a run cannot be resumed."""
        run = self.store.get(run_id)
        if run.status not in RESUMABLE:
            raise ValueError(f"run {run_id} is {run.status}; only a failed or stopped run can be resumed")
        old_dir = Path(run.run_dir)
        checkpoint = usable_checkpoint(old_dir / "checkpoints")
        if checkpoint is None:
            raise ValueError(f"run {run_id} has no whole checkpoint to resume from; start it again from the Train tab")
        step = step_of(checkpoint)

        def write_data(run_dir: Path) -> dict:
            _link_tree(old_dir / "data", run_dir / "data")
            for folder in checkpoint_folders(old_dir / "checkpoints"):
                _link_tree(folder, run_dir / "checkpoints" / folder.name)
            for kept in ("command.txt", RUN_SOURCE):  # what the run was started with: Open in Train shows it
                if (old_dir / kept).exists():
                    shutil.copyfile(old_dir / kept, run_dir / kept)
            _copy_history(old_dir / "events.jsonl", run_dir / "events.jsonl", step,
                          f"resumed from run {run_id}: steps 1-{step} are that run's, up to its checkpoint")
            moved = {key: str(run_dir / Path(value).relative_to(old_dir)) for key, value in run.config.items()
                     if key in ("data", "eval_data") and isinstance(value, str) and Path(value).is_relative_to(old_dir)}
            return {**moved, "resume_from_checkpoint": "latest"}

        return self.submit(run.config, run.data, write_data, resumed_from=run_id)

    def can_resume(self, run: Run) -> bool:
        """Whether `resume` may take `run`: failed or stopped, with a checkpoint (checked whole by `resume`)."""
        return run.status in RESUMABLE and bool(checkpoint_folders(Path(run.run_dir) / "checkpoints"))

    def stop(self, run_id: str) -> Run:
        """A queued run is cancelled; a running one gets SIGTERM and finishes its step, saves and exits."""
        with self._lock:
            run = self.store.get(run_id)
            if run.status == QUEUED:
                return self.store.update(run_id, status=STOPPED, finished=time.time(),
                                         error=None, hint="cancelled before it started")
            if run.status == RUNNING and run.pid:
                try:
                    os.kill(run.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            return run

    def queue_position(self, run_id: str) -> int | None:
        """1 for the next run to start, 2 for the one after it...; None if the run is not waiting."""
        queued = [r.id for r in self.store.list((QUEUED,))]
        return queued.index(run_id) + 1 if run_id in queued else None

    def active(self) -> Run | None:
        running = self.store.list((RUNNING,))
        return running[0] if running else None

    # -- the monitor -------------------------------------------------------------------------

    def start_monitor(self) -> None:
        if self._monitor is None:
            self._monitor = threading.Thread(target=self._monitor_loop, name="lacker-runner", daemon=True)
            self._monitor.start()

    def close(self) -> None:
        self._stopping.set()

    def _monitor_loop(self) -> None:
        while not self._stopping.wait(self.poll_interval):
            try:
                self.poll()
            except Exception:  # the monitor must outlive any one bad run folder
                logger.exception("runner poll failed")

    def poll(self) -> None:
        """Finish runs whose worker exited; start the next queued run when none is running."""
        with self._lock:
            self.store.retry()
            for run in self.store.list((RUNNING,)):
                alive, returncode = self._worker_state(run)
                if not alive:
                    self._finish(run, returncode)
            if not self.store.list((RUNNING,)):
                queued = self.store.list((QUEUED,))
                if queued:
                    self._start(queued[0])

    def _start(self, run: Run) -> None:
        run_dir = Path(run.run_dir)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        with open(run_dir / "worker.log", "ab") as log:
            child = subprocess.Popen(self.command(run_dir), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=REPO_ROOT, env=env,
                                     start_new_session=True)  # Ctrl-C on the studio must not kill the job
        self._children[run.id] = child
        self.store.update(run.id, status=RUNNING, pid=child.pid, started=time.time())
        logger.info("started run %s (pid %d)", run.id, child.pid)

    def _worker_state(self, run: Run) -> tuple[bool, int | None]:
        child = self._children.get(run.id)
        if child is not None:
            returncode = child.poll()
            return returncode is None, returncode
        # A worker started by an earlier studio process: it is ours if its command line names this run folder.
        try:
            cmdline = Path(f"/proc/{run.pid}/cmdline").read_bytes().decode(errors="replace")
            state = Path(f"/proc/{run.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, TypeError, IndexError):
            return False, None
        return ("engine.worker" in cmdline and run.run_dir in cmdline and state != "Z"), None

    def _finish(self, run: Run, returncode: int | None) -> None:
        self._children.pop(run.id, None)
        run_dir = Path(run.run_dir)
        progress = progress_of(run_dir)
        metrics = _read_json(run_dir / "metrics.json")
        status, error, hint = progress.status, progress.error, progress.hint
        if status not in TERMINAL or (status == FAILED and not error):
            status = FAILED
            error, hint = _exit_explanation(returncode, run.pid, run_dir)
        finished = self.store.update(run.id, status=status, finished=time.time(), metrics=metrics, error=error,
                                     hint=hint)
        logger.info("run %s %s", run.id, status)
        if self.on_finish is not None:
            self.on_finish(finished)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def log_tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - chars))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _link_tree(source: Path, target: Path) -> None:
    """`target` gets the files of `source` as hard links (copies where the filesystem has none); the files of a
    run folder are only ever replaced whole, never changed in place, so the two folders cannot affect each other."""
    if source.is_dir():
        def link(src, dst):
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)

        shutil.copytree(source, target, copy_function=link)


def _copy_history(source: Path, target: Path, step: int, note: str) -> None:
    """The `train` and `eval` events of `source` up to `step`, then a log line saying so, into `target`."""
    try:
        lines = source.read_text().splitlines()
    except OSError:
        lines = []
    kept = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") in ("train", "eval") and (event.get("step") or 0) <= step:
            kept.append(line)
    kept.append(json.dumps({"event": "log", "time": round(time.time(), 3), "message": note}))
    atomic.write_text(target, "".join(line + "\n" for line in kept))


def killed_for_memory(pid: int | None) -> bool | None:
    """Whether the kernel's out-of-memory killer killed `pid`, from its log (dmesg); None where it cannot be read."""
    if not pid:
        return None
    try:
        out = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0 or not out.stdout:
        return None
    return re.search(rf"(Killed process {pid}\b|oom-kill:.*\bpid={pid}\b)", out.stdout) is not None


SMALLER = "try a smaller batch size or max sequence length, or QLoRA"


def _go_on(run_dir: Path) -> str:
    if checkpoint_folders(run_dir / "checkpoints"):
        return "press Resume in the Runs tab to go on from its last checkpoint"
    return "start it again from the Train tab (it had saved no checkpoint yet)"


def _exit_explanation(returncode: int | None, pid: int | None, run_dir: Path) -> tuple[str, str]:
    """(error, hint) for a worker that ended without saying why itself (or failed without a message): its exit
    signal or code, the end of its worker.log and the kernel's log, each taken for what it says."""
    log_path = run_dir / "worker.log"
    tail = log_tail(log_path).strip().splitlines()[-5:]
    said = f"; the log ends with: {' | '.join(tail)}" if tail else ""
    text = "\n".join(tail).lower()
    if "cuda out of memory" in text or "outofmemoryerror" in text:
        return "out of GPU memory (CUDA said so)", SMALLER
    if returncode == EXIT_DISK_FULL or "no space left on device" in text:
        full = atomic.DiskFull(run_dir)
        return str(full), full.fix
    if returncode is not None and returncode < 0:
        number = -returncode
        name = signal.Signals(number).name if number in signal.valid_signals() else "an unknown signal"
        go_on = _go_on(run_dir)
        if number == signal.SIGKILL:
            by_kernel = killed_for_memory(pid)
            if by_kernel:
                return ("the system ran out of memory: the kernel's out-of-memory killer ended the training process "
                        "(signal 9, SIGKILL)", f"{SMALLER}; then {go_on}")
            if by_kernel is None:
                return ("killed by signal 9 (SIGKILL): the system may have run out of memory, or someone ended it "
                        "(the kernel's log, which would tell, cannot be read here)", f"{go_on}; if memory ran out, {SMALLER}")
        return f"killed by signal {number} ({name})", go_on
    code = "an unknown code (the studio restarted while it ran)" if returncode is None else f"code {returncode}"
    return f"the training process exited with {code} before finishing{said}", f"see {log_path} for the whole log"
