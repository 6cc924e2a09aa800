"""A run's checkpoints: RUN_DIR/checkpoints/checkpoint-STEP folders, the newest few kept, each whole and checked.

The packed loop writes its own state into them (engine.loop: `save_state` / `load_state`); the stock trainer
writes transformers' checkpoint format into RUN_DIR/checkpoints/unfinished/, and `publish` moves each one in.
Either way a checkpoint is written beside its place, gets a SHA256SUMS file (the `sha256sum -c` format) and is
then renamed to checkpoint-STEP, so a folder of that name is complete; the checksums find one damaged later.
Resuming "latest" takes the newest checkpoint that checks out, saying why it passed over a newer one.
This module imports no torch: the studio reads checkpoints with it.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from engine import atomic

KEEP = 2  # checkpoints kept: the newest, and the one before it in case the newest is damaged
MANIFEST = "SHA256SUMS"
UNFINISHED = "unfinished"  # where the stock trainer writes a checkpoint before it is published


class CheckpointError(ValueError):
    """A checkpoint named to resume from is damaged or missing."""

    def __init__(self, message: str, fix: str):
        super().__init__(message)
        self.fix = fix


def step_of(folder: str | Path) -> int:
    return int(Path(folder).name.split("-")[-1])


def checkpoint_folders(checkpoint_dir: str | Path) -> list[Path]:
    """checkpoint-N folders, oldest (lowest N) first; unfinished ones (checkpoint-N.tmp) are not among them."""
    folders = [p for p in Path(checkpoint_dir).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return sorted(folders, key=step_of)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path) -> None:
    lines = [f"{_sha256(p)}  {p.relative_to(folder).as_posix()}\n" for p in _files(folder)]
    (folder / MANIFEST).write_text("".join(lines))


def checkpoint_problem(folder: str | Path) -> str | None:
    """None when `folder` is whole (every file its SHA256SUMS lists is there with that checksum), else what is
    wrong, in a few words. A folder without SHA256SUMS (a checkpoint from elsewhere) is taken as it is."""
    folder = Path(folder)
    if not folder.is_dir():
        return "it does not exist"
    manifest = folder / MANIFEST
    if not manifest.exists():
        return None
    for line in manifest.read_text().splitlines():
        expected, _, name = line.partition("  ")
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if _sha256(path) != expected:
            return f"{name} is damaged (its checksum differs from the one saved with it)"
    return None


def usable_checkpoint(checkpoint_dir: str | Path, log=None) -> Path | None:
    """The newest checkpoint-N in `checkpoint_dir` that is whole; `log(message)` hears of each one passed over."""
    for folder in reversed(checkpoint_folders(checkpoint_dir)):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        if log is not None:
            log(f"checkpoint {folder.name} cannot be used: {problem}; trying the one before it")
    return None


def resume_point(resume: str | None, checkpoint_dir: Path, log) -> str | None:
    """The checkpoint folder a run goes on from: None (start fresh), "latest" (the newest whole one in
    `checkpoint_dir`, falling back to older ones) or a folder, checked. `log(message)` says what was chosen."""
    if resume is None:
        return None
    if resume == "latest":
        folder = usable_checkpoint(checkpoint_dir, log)
        log(f"resuming from {folder} (step {step_of(folder)})" if folder else
            "no usable checkpoint to resume from; starting fresh")
        return str(folder) if folder else None
    problem = checkpoint_problem(resume)
    if problem is not None:
        raise CheckpointError(f"cannot resume from {resume}: {problem}",
                              "resume from 'latest' (the newest whole checkpoint) or from an older checkpoint folder")
    log(f"resuming from {resume}")
    return resume


def _keep_newest(checkpoint_dir: Path) -> None:
    for old in checkpoint_folders(checkpoint_dir)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)


def save_loop_checkpoint(trainer, checkpoint_dir: Path, log) -> Path:
    """Save the packed loop's state as checkpoint-STEP (written whole, or not at all; one of that step already
    there, from a run this one resumed, is replaced), then drop all but the newest KEEP; `log(message)`."""
    target = Path(checkpoint_dir) / f"checkpoint-{trainer.step}"
    with atomic.folder(target) as folder:
        trainer.save_state(folder)
        write_manifest(folder)
    log(f"checkpoint saved: {target}")
    _keep_newest(Path(checkpoint_dir))
    return target


def publish(unfinished: Path, checkpoint_dir: Path, log) -> Path:
    """Give the stock trainer's finished checkpoint `unfinished` (checkpoints/unfinished/checkpoint-STEP) its
    checksums and rename it into `checkpoint_dir`, then drop all but the newest KEEP; `log(message)`."""
    target = Path(checkpoint_dir) / unfinished.name
    with atomic.removed_on_failure(unfinished, checkpoint_dir):
        write_manifest(unfinished)
        atomic.replace_folder(unfinished, target)
    log(f"checkpoint saved: {target}")
    _keep_newest(Path(checkpoint_dir))
    return target
