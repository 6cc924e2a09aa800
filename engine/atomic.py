"""Writing a run's files whole or not at all, and naming a full disk when a write fails for lack of space.

A reader (the studio, `SentenceTransformer(RUN_DIR/merged)`, a resumed run) must never find half a file or half a
model folder where it looks: files are written beside their place and renamed into it (a rename within one
filesystem is atomic), and a failed write leaves the old version, or nothing, and removes its partial copy.
This module imports neither torch nor gradio: the studio uses it for config.json too.
"""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

# A write that failed while the disk has less than this left was a full disk, whatever the library said
# (torch.save reports ENOSPC as "unexpected pos 576 vs 534").
ALMOST_FULL_BYTES = 1 << 20


class DiskFull(OSError):
    """A write failed because the disk holding `folder` has no space left."""

    def __init__(self, folder: str | os.PathLike, cause: BaseException | None = None):
        self.folder = str(folder)
        detail = f" ({cause})" if cause is not None and str(cause) else ""
        super().__init__(errno.ENOSPC, f"disk full: no space left on the disk holding {self.folder}{detail}")
        self.fix = (f"free some space on the disk holding {self.folder}, then resume the run (Resume in the studio's "
                    "Runs tab, or lacker train --resume)")

    def __str__(self) -> str:
        return self.strerror


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes free on the filesystem holding `path` (or its nearest existing parent); None if unknown."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def is_disk_full(error: BaseException) -> bool:
    """Whether `error`, or an error it came from, says there is no space left (ENOSPC, or a quota: EDQUOT)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "no space left on device" in str(error).lower() or "database or disk is full" in str(error).lower():
            return True
        error = error.__cause__ or error.__context__
    return False


def as_disk_full(error: BaseException, folder: str | os.PathLike) -> DiskFull | None:
    """A DiskFull for `error` if it was one: said so, or failed while the disk is (almost) full. Call it before
    removing what the failed write left, which would free the space again."""
    if isinstance(error, DiskFull):
        return error
    free = free_bytes(folder)
    if is_disk_full(error) or (free is not None and free < ALMOST_FULL_BYTES):
        return DiskFull(folder, error)
    return None


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def removed_on_failure(partial: str | os.PathLike, folder: str | os.PathLike):
    """Run the block; if it fails, remove `partial` (what it was writing, a file or a folder), and raise a
    failure for lack of space on the disk of `folder` as DiskFull."""
    try:
        yield
    except Exception as error:
        full = as_disk_full(error, folder)  # before the removal frees the space
        _remove(Path(partial))
        if full is not None and full is not error:
            raise full from error
        raise
    except BaseException:  # a stop or an interrupt: no disk to blame
        _remove(Path(partial))
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temporary file beside it: a reader sees the old file or the new one."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    with removed_on_failure(temporary, path.parent):
        temporary.write_text(text)
        os.replace(temporary, path)


@contextmanager
def folder(path: str | os.PathLike):
    """`with folder(RUN_DIR / "merged") as temporary: model.save_pretrained(temporary)`: the files go into
    `merged.tmp` beside, which replaces `merged` only once the block has finished; if it fails, `merged` is as it
    was and the partial copy is removed (a failure for lack of space is raised as DiskFull)."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)  # left by a process that was killed while writing
    with removed_on_failure(temporary, path.parent):
        temporary.mkdir(parents=True)
        yield temporary
        replace_folder(temporary, path)


def replace_folder(source: Path, target: Path) -> None:
    """Rename the finished folder `source` to `target`, setting aside and then removing what `target` held.
    A reader finds the old folder, briefly nothing, or the new one; never a mix."""
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.rename(target, old)
    os.rename(source, target)
    shutil.rmtree(old, ignore_errors=True)
