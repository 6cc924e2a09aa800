"""Reading a run's events.jsonl: only the bytes appended since the last read, folded into RunProgress.

The worker appends one JSON object a line and flushes; a line without its newline yet is a write in
progress and is left for the next read. The studio never holds a pipe to the worker: this file is
how it learns everything.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

TERMINAL = ("completed", "stopped", "failed")
LOG_LINES_KEPT = 200


@dataclass
class RunProgress:
    status: str = "queued"
    message: str = ""
    step: int = 0
    total_steps: int | None = None
    epoch: float | None = None
    elapsed: float | None = None
    eta: float | None = None
    samples_per_second: float | None = None
    download_fraction: float | None = None  # of the model's download (0..1), before training starts
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, training loss)
    evals: list[dict] = field(default_factory=list)  # {"step", "which", "metrics"}
    logs: deque = field(default_factory=lambda: deque(maxlen=LOG_LINES_KEPT))
    error: str | None = None
    hint: str | None = None
    started: float | None = None
    last_time: float | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    @property
    def fraction(self) -> float:
        if self.status == "completed":
            return 1.0
        if not self.total_steps:  # before the first step: the model's download, while there is one
            downloading = self.download_fraction is not None and self.download_fraction < 1.0
            return self.download_fraction if downloading else 0.0
        return min(1.0, self.step / self.total_steps)

    def metrics(self, which: str) -> dict | None:
        """The latest eval metrics of `which` ("base" or "trained")."""
        for ev in reversed(self.evals):
            if ev["which"] == which:
                return ev["metrics"]
        return None

    def apply(self, event: dict) -> None:
        kind = event.get("event")
        when = event.get("time")
        if when is not None:
            self.started = self.started if self.started is not None else when
            self.last_time = when
        if kind == "status":
            self.status = event.get("status", self.status)
            self.message = event.get("message") or ""
            if self.message:
                self.logs.append(f"[{self.status}] {self.message}")
        elif kind == "train":
            self.step = int(event.get("step") or self.step)
            self.total_steps = event.get("total_steps") or self.total_steps
            for name in ("epoch", "elapsed", "eta", "samples_per_second"):
                if event.get(name) is not None:
                    setattr(self, name, event[name])
            if event.get("loss") is not None:
                self.losses.append((self.step, float(event["loss"])))
        elif kind == "eval":
            self.evals.append({"step": event.get("step") or 0, "which": event.get("which") or "trained",
                               "metrics": event.get("metrics") or {}})
        elif kind == "download":  # several a second while a model downloads; the throttled "loading" status logs it
            self.message = event.get("message") or self.message
            self.download_fraction = event.get("fraction")
        elif kind == "log":
            self.logs.append(str(event.get("message", "")))
        elif kind == "error":
            self.error = event.get("error") or "the worker reported an error"
            self.hint = event.get("hint")
            self.logs.append(f"ERROR: {self.error}" + (f" ({self.hint})" if self.hint else ""))


class EventReader:
    """One run's events.jsonl, read incrementally. Thread-safe: the runner's monitor and the UI timer share it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.progress = RunProgress()
        self._offset = 0
        self._lock = threading.Lock()

    def refresh(self) -> RunProgress:
        with self._lock:
            try:
                with open(self.path, "rb") as f:
                    f.seek(self._offset)
                    chunk = f.read()
            except FileNotFoundError:
                return self.progress
            complete = chunk[: chunk.rfind(b"\n") + 1]
            self._offset += len(complete)
            for line in complete.splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    self.progress.logs.append(f"(unreadable event line: {line[:80]!r})")
                    continue
                if isinstance(event, dict):
                    self.progress.apply(event)
            return self.progress


_logs: dict[Path, EventReader] = {}
_logs_lock = threading.Lock()


def progress_of(run_dir: str | Path) -> RunProgress:
    """The up-to-date progress of the run in `run_dir`, reading only what was appended since last time."""
    path = Path(run_dir) / "events.jsonl"
    with _logs_lock:
        log = _logs.get(path)
        if log is None:
            log = _logs[path] = EventReader(path)
    return log.refresh()
