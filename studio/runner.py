"""The runner: one training job at a time, each `python -m engine.worker RUN_DIR` in its own process.

The studio talks to a worker only through its run folder (config.json in; events.jsonl, checkpoints
and model folders out) and signals. The child's stdout and stderr go to RUN_DIR/worker.log, never to
a pipe, so a job never stalls waiting for someone to read it (LLaMA-Factory issue #10180). A monitor
thread, not the browser, moves the queue along: jobs run and finish with no page open, and a studio
that restarts finds a still-running worker again by its pid.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from studio.events import TERMINAL, progress_of
from studio.settings import REPO_ROOT
from studio.store import FAILED, QUEUED, RUNNING, STOPPED, Run, RunStore

logger = logging.getLogger(__name__)

LOG_TAIL_CHARS = 1500


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

    def submit(self, config: dict, data_label: str, write_data: Callable[[Path], dict] | None = None) -> Run:
        """Queue a run. `write_data(run_dir)` may write files into the run folder and returns config overrides.

        config.json gets the worker's config keys only; the worker sets its output folder to the run folder."""
        run_id = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)
        run_dir = self.home / run_id
        run_dir.mkdir(parents=True)
        config = dict(config)
        if write_data is not None:
            config.update(write_data(run_dir))
        (run_dir / "config.json").write_text(json.dumps(config, indent=2))
        run = Run(id=run_id, created=time.time(), status=QUEUED, model=config["model"], data=data_label,
                  method=config.get("method", "lora"), run_dir=str(run_dir), config=config)
        self.store.add(run)
        self.poll()
        return self.store.get(run_id)

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
        if status not in TERMINAL:
            status = FAILED
            error, hint = _exit_explanation(returncode, run_dir / "worker.log")
        elif status == FAILED and not error:
            error, hint = _exit_explanation(returncode, run_dir / "worker.log")
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


def _exit_explanation(returncode: int | None, log_path: Path) -> tuple[str, str]:
    """What to tell the user when a worker died without saying why itself."""
    if returncode == -signal.SIGKILL:
        return ("the training process was killed (SIGKILL), most likely because the machine ran out of memory",
                "try a smaller batch size or max sequence length, or QLoRA")
    code = "an unknown code" if returncode is None else f"code {returncode}"
    tail = log_tail(log_path).strip().splitlines()[-5:]
    cause = f"; the log ends with: {' | '.join(tail)}" if tail else ""
    return (f"the training process exited with {code} before finishing{cause}",
            f"see {log_path} for the whole log")
