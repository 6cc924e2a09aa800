"""A run's progress as events: one JSON object a line in RUN_DIR/events.jsonl, and on a terminal as text.

Every event has `event` (status, log, download, train, eval, error) and `time`; the studio reads the file
and never talks to the worker. `EventLog(path, echo=True)` also prints what happens to stderr, for the CLI
and `engine.train.train` called from Python: status and log lines as they come, training progress as one
line rewritten in place on a terminal, or a line every few seconds when stderr is a file.

On several ranks (engine.distributed) only rank 0's log writes and echoes; the first event a log writes records
the run's `world_size`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

from engine import atomic, distributed

logger = logging.getLogger(__name__)

ECHO_EVERY_SECONDS = 5.0  # progress lines when stderr is not a terminal


class EventLog:
    """Appends one JSON object a line to a file, written at once so a reader never waits on us, and whole or not
    at all: a line that does not fit on the disk is taken back and the write raises (DiskFull for lack of space).
    `phase` is the last status written (loading, training, evaluating, saving...), None before the first.
    On a rank other than 0 it writes nothing, unless `every_rank` (a rank's own failure, which only it knows)."""

    def __init__(self, path: str | os.PathLike | None, echo: bool = False, every_rank: bool = False):
        world = distributed.current()
        if not (world.main or every_rank):
            path, echo = None, False
        self._world_size = world.size if world.main else None  # written into the first event, then None
        self.path = Path(path) if path else None
        self.phase: str | None = None
        self._lock = threading.Lock()
        self._echo = TerminalEcho() if echo else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, event: str, **fields) -> dict:
        record = {"event": event, "time": round(time.time(), 3), **fields}
        if self._world_size is not None:
            record["world_size"], self._world_size = self._world_size, None
        if self.path:
            with self._lock:
                self._append((json.dumps(record) + "\n").encode())
        if self._echo is not None:
            self._echo.show(record)
        return record

    def _append(self, line: bytes) -> None:
        handle = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(handle).st_size
            try:
                rest = memoryview(line)
                while rest:  # a short write means the disk took only part of it; the next write says why
                    rest = rest[os.write(handle, rest):]
            except OSError as error:
                os.ftruncate(handle, size)  # shrinking needs no space: the file ends with a whole line again
                if atomic.is_disk_full(error):
                    raise atomic.DiskFull(self.path.parent, error) from error
                raise
        finally:
            os.close(handle)

    def status(self, status: str, message: str = "") -> None:
        logger.info("%s%s", status, f": {message}" if message else "")
        self.emit("status", status=status, message=message)
        self.phase = status

    def log(self, message: str) -> None:
        logger.info(message)
        self.emit("log", message=message)


class TerminalEcho:
    """Events as text on stderr: what a person running `lacker train` watches."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_line = 0.0
        self._open_line = False  # a progress line is on screen, not yet ended

    def show(self, record: dict) -> None:
        kind = record["event"]
        if kind == "train":
            self._progress(record)
        elif kind == "download":
            self._progress_text(record.get("message", ""), final=record.get("fraction") == 1.0)
        elif kind == "status" and record["status"] != "failed":  # a failure is the caller's to word (error/fix)
            self._line(f"[{record['status']}] {record.get('message', '')}".rstrip())
        elif kind == "log":
            self._line(record["message"])
        elif kind == "eval":
            metrics = record.get("metrics") or {}
            shown = ", ".join(f"{name} {value:.4f}" for name, value in list(metrics.items())[:3])
            self._line(f"{record.get('which', '')} model at step {record.get('step', 0)}: {shown}")

    def _progress(self, r: dict) -> None:
        total = r.get("total_steps") or 0
        eta = r.get("eta")
        text = (f"step {r['step']}/{total}  loss {r['loss']:.4f}  {r.get('samples_per_second', 0):.1f} samples/s"
                + (f"  ETA {_duration(eta)}" if eta is not None else ""))
        self._progress_text(text, final=bool(total) and r["step"] >= total)

    def _progress_text(self, text: str, final: bool) -> None:
        now = time.monotonic()
        if self.live:
            self.stream.write("\r" + text.ljust(78) + ("\n" if final else ""))
            self._open_line = not final
        elif final or now - self._last_line >= ECHO_EVERY_SECONDS:
            self.stream.write(text + "\n")
            self._last_line = now
        self.stream.flush()

    def _line(self, text: str) -> None:
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False
        self.stream.write(text + "\n")
        self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
