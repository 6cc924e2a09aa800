"""RunStore: the run registry, one SQLite file that survives app restarts.

A row is what the Runs tab lists: the run's id, status, model, data, method, its folder, the
config it was started with, the worker's pid while it runs, timestamps, final metrics and, for a
failed run, the error and hint the worker wrote. The Hub token is never an input here.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# Store statuses are coarse; the worker's finer ones (loading, training, evaluating...) live in events.jsonl.
QUEUED, RUNNING, COMPLETED, STOPPED, FAILED = "queued", "running", "completed", "stopped", "failed"
FINISHED = (COMPLETED, STOPPED, FAILED)

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
    hint TEXT
)
"""
_COLUMNS = ("id", "created", "status", "model", "data", "method", "run_dir", "config", "pid",
            "started", "finished", "metrics", "error", "hint")


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

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        return (self.finished or time.time()) - self.started

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED


class RunStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        # One short-lived connection per call: the runner's monitor thread and Gradio's worker threads share the store.
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        return db

    def add(self, run: Run) -> Run:
        values = _to_row(run)
        with self._lock, self._connect() as db:
            db.execute(f"INSERT INTO runs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                       [values[c] for c in _COLUMNS])
        return run

    def update(self, run_id: str, **fields) -> Run:
        unknown = set(fields) - set(_COLUMNS)
        if unknown:
            raise KeyError(f"unknown run fields: {', '.join(sorted(unknown))}")
        row = {k: (json.dumps(v) if k in ("config", "metrics") and v is not None else v) for k, v in fields.items()}
        with self._lock, self._connect() as db:
            db.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in row)} WHERE id = ?", [*row.values(), run_id])
        return self.get(run_id)

    def get(self, run_id: str) -> Run:
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(f"no run {run_id!r} in {self.path}")
        return _from_row(row)

    def list(self, statuses: tuple[str, ...] | None = None) -> list[Run]:
        """Runs, newest first (queued ones oldest first when asked for by status, which is queue order)."""
        with self._connect() as db:
            if statuses:
                rows = db.execute(f"SELECT * FROM runs WHERE status IN ({', '.join('?' * len(statuses))}) "
                                  "ORDER BY created ASC", statuses).fetchall()
            else:
                rows = db.execute("SELECT * FROM runs ORDER BY created DESC").fetchall()
        return [_from_row(r) for r in rows]


def _to_row(run: Run) -> dict:
    row = {c: getattr(run, c) for c in _COLUMNS}
    row["config"] = json.dumps(run.config)
    row["metrics"] = None if run.metrics is None else json.dumps(run.metrics)
    return row


def _from_row(row: sqlite3.Row) -> Run:
    data = dict(row)
    data["config"] = json.loads(data["config"] or "{}")
    data["metrics"] = json.loads(data["metrics"]) if data["metrics"] else None
    return Run(**data)
