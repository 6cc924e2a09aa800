"""RunStore: the run registry, one SQLite file that survives app restarts.

A row is what the Runs tab lists: the run's id, status, model, data, method, its folder, the
config it was started with, the worker's pid while it runs, timestamps, final metrics and, for a
failed run, the error and hint the worker wrote, and the run a resumed one goes on from. The Hub token is
never an input here.

A write that fails (a full disk, a read-only folder) is kept in memory, shown by every read as if it had been
written, and tried again on the next write or `retry()`: the page tells the user (`write_problem`), and the
studio neither loses the change nor loops on tracebacks.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# Store statuses are coarse; the worker's finer ones (loading, training, evaluating...) live in events.jsonl.
QUEUED, RUNNING, COMPLETED, STOPPED, FAILED = "queued", "running", "completed", "stopped", "failed"
FINISHED = (COMPLETED, STOPPED, FAILED)

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    status TEXT NOT NULL,
    model TEXT NOT NULL,
    data TEXT NOT NULL,
    method TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    config TEXT NOT NULL,
    pid INTEGER,
    started REAL,
    finished REAL,
    metrics TEXT,
    error TEXT,
    hint TEXT,
    resumed_from TEXT
)
"""
_COLUMNS = ("id", "created", "status", "model", "data", "method", "run_dir", "config", "pid",
            "started", "finished", "metrics", "error", "hint", "resumed_from")


@dataclass
class Run:
    id: str
    created: float
    status: str
    model: str
    data: str
    method: str
    run_dir: str
    config: dict = field(default_factory=dict)
    pid: int | None = None
    started: float | None = None
    finished: float | None = None
    metrics: dict | None = None
    error: str | None = None
    hint: str | None = None
    resumed_from: str | None = None  # the id of the run whose checkpoint this one went on from

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        return (self.finished or time.time()) - self.started

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED

    @property
    def task(self) -> str:
        """What the run trains (engine.tasks: embedding, reranker, classifier); runs from before there were tasks
        are embedding runs."""
        return self.config.get("task") or "embedding"


class RunStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._unwritten: dict[str, dict] = {}  # run id -> the row's columns not yet in the file (all of a new row)
        self.write_problem: str | None = None  # why the last write failed, until one succeeds
        with self._connect() as db:
            db.execute(_SCHEMA)
            known = {row["name"] for row in db.execute("PRAGMA table_info(runs)")}
            for column in _COLUMNS:
                if column not in known:  # a registry written before the column existed
                    db.execute(f"ALTER TABLE runs ADD COLUMN {column} TEXT")

    def _connect(self) -> sqlite3.Connection:
        # One short-lived connection per call: the runner's monitor thread and Gradio's worker threads share the store.
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        return db

    def add(self, run: Run) -> Run:
        with self._lock:
            self._unwritten[run.id] = _to_row(run)
            self._write()
        return run

    def update(self, run_id: str, **fields) -> Run:
        unknown = set(fields) - set(_COLUMNS)
        if unknown:
            raise KeyError(f"unknown run fields: {', '.join(sorted(unknown))}")
        self.get(run_id)  # KeyError for a run that is not here
        row = {k: (json.dumps(v) if k in ("config", "metrics") and v is not None else v) for k, v in fields.items()}
        with self._lock:
            self._unwritten[run_id] = {**self._unwritten.get(run_id, {}), **row}
            self._write()
        return self.get(run_id)

    def retry(self) -> None:
        """Write what earlier writes could not (the runner's monitor calls this on every poll)."""
        with self._lock:
            if self._unwritten:
                self._write()

    def _write(self) -> None:
        """Write every unwritten change in one transaction; on failure keep them all and say why."""
        try:
            with self._connect() as db:
                for run_id, row in self._unwritten.items():
                    if set(row) == set(_COLUMNS):  # a new row, or one whose insert failed
                        db.execute(f"INSERT OR REPLACE INTO runs ({', '.join(_COLUMNS)}) "
                                   f"VALUES ({', '.join('?' * len(_COLUMNS))})", [row[c] for c in _COLUMNS])
                    else:
                        db.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in row)} WHERE id = ?",
                                   [*row.values(), run_id])
        except (sqlite3.Error, OSError) as error:
            problem = _write_problem(self.path, error)
            if problem != self.write_problem:  # once, not on every poll
                logger.error("%s", problem)
            self.write_problem = problem
            return
        self._unwritten.clear()
        if self.write_problem:
            logger.info("the run registry %s is written again", self.path)
        self.write_problem = None

    def get(self, run_id: str) -> Run:
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        runs = self._with_unwritten([] if row is None else [dict(row)], only=run_id)
        if not runs:
            raise KeyError(f"no run {run_id!r} in {self.path}")
        return runs[0]

    def list(self, statuses: tuple[str, ...] | None = None) -> list[Run]:
        """Runs, newest first (queued ones oldest first when asked for by status, which is queue order)."""
        with self._connect() as db:
            rows = [dict(r) for r in db.execute("SELECT * FROM runs").fetchall()]
        runs = [r for r in self._with_unwritten(rows) if not statuses or r.status in statuses]
        return sorted(runs, key=lambda r: r.created, reverse=not statuses)

    def _with_unwritten(self, rows: list[dict], only: str | None = None) -> list[Run]:
        """The rows as they would be had every write succeeded."""
        with self._lock:
            unwritten = {k: v for k, v in self._unwritten.items() if only is None or k == only}
        by_id = {row["id"]: row for row in rows}
        for run_id, change in unwritten.items():
            if run_id in by_id:
                by_id[run_id] = {**by_id[run_id], **change}
            elif set(change) == set(_COLUMNS):
                by_id[run_id] = change
        return [_from_row(row) for row in by_id.values()]


def _write_problem(path: Path, error: BaseException) -> str:
    from engine.atomic import is_disk_full

    cause = "the disk is full" if is_disk_full(error) else str(error)
    return (f"The run registry {path} cannot be written ({cause}). The studio keeps the runs' changes in memory "
            "and writes them as soon as it can: free some space (or make the folder writable); nothing else to do.")


def _to_row(run: Run) -> dict:
    row = {c: getattr(run, c) for c in _COLUMNS}
    row["config"] = json.dumps(run.config)
    row["metrics"] = None if run.metrics is None else json.dumps(run.metrics)
    return row


def _from_row(row: dict) -> Run:
    data = dict(row)
    data["config"] = json.loads(data["config"] or "{}")
    data["metrics"] = json.loads(data["metrics"]) if data["metrics"] else None
    return Run(**data)
