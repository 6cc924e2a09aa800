"""A run's checkpoints: RUN_DIR/checkpoints/checkpoint-STEP folders, the newest few kept.

The packed loop writes its own state into them (engine.loop: `save_state` / `load_state`); the stock trainer
writes transformers' checkpoint format and rotates them itself (`save_total_limit`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

KEEP = 2  # checkpoints kept: the newest, and the one before it in case the newest is damaged


def checkpoint_folders(checkpoint_dir: Path) -> list[Path]:
    """checkpoint-N folders, oldest (lowest N) first."""
    folders = [p for p in Path(checkpoint_dir).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return sorted(folders, key=lambda p: int(p.name.split("-")[-1]))


def latest_checkpoint(checkpoint_dir: Path) -> str | None:
    folders = checkpoint_folders(checkpoint_dir)
    return str(folders[-1]) if folders else None


def save_loop_checkpoint(trainer, checkpoint_dir: Path, log) -> Path:
    """Save the packed loop's state as checkpoint-STEP, then drop all but the newest KEEP; `log(message)`."""
    folder = trainer.save_state(Path(checkpoint_dir) / f"checkpoint-{trainer.step}")
    log(f"checkpoint saved: {folder}")
    for old in checkpoint_folders(checkpoint_dir)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return folder
