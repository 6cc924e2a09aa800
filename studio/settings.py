"""What an operator can set from the environment, and the rule for which local paths the studio may read.

    LACKER_HOME            where runs, uploads and the run registry live (default ./runs)
    LACKER_ALLOWED_DIRS    extra folders (os.pathsep-separated) that model and data paths may point into
    LACKER_MAX_UPLOAD_MB   the largest file the Data tab accepts (default 200)
    LACKER_AUTH            "user:password" to ask for a login (the `--auth` flag of `lacker studio` does the same)
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from engine.bundled import ASSETS_DIR

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MAX_UPLOAD_MB = 200


class PathNotAllowed(ValueError):
    """A local path outside the folders the operator lets the studio read."""


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ValueError("auth must look like user:password (LACKER_AUTH or --auth)")
    return user, password


def gradio_upload_dir() -> Path:
    """Where Gradio keeps uploaded files before a handler sees them (its GRADIO_TEMP_DIR rule)."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")


@dataclass(frozen=True)
class Settings:
    home: Path
    allowed_dirs: tuple[Path, ...]
    max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB
    auth: tuple[str, str] | None = None

    @classmethod
    def from_env(cls, environ=None, auth: str | None = None) -> "Settings":
        environ = os.environ if environ is None else environ
        home = Path(environ.get("LACKER_HOME") or "runs").expanduser().resolve()
        extra = [Path(p).expanduser() for p in (environ.get("LACKER_ALLOWED_DIRS") or "").split(os.pathsep) if p]
        allowed = (home, ASSETS_DIR, gradio_upload_dir(), *extra)
        try:
            max_mb = int(environ.get("LACKER_MAX_UPLOAD_MB") or DEFAULT_MAX_UPLOAD_MB)
        except ValueError:
            raise ValueError(f"LACKER_MAX_UPLOAD_MB must be a whole number of megabytes, not {environ['LACKER_MAX_UPLOAD_MB']!r}")
        return cls(
            home=home,
            allowed_dirs=tuple(p.resolve() for p in allowed),
            max_upload_mb=max_mb,
            auth=parse_auth(auth or environ.get("LACKER_AUTH")),
        )

    @property
    def uploads_dir(self) -> Path:
        return self.home / "uploads"

    @property
    def registry_path(self) -> Path:
        return self.home / "runs.sqlite"

    def check_local_path(self, text: str) -> Path:
        """The resolved path if it lies inside an allowed folder (symlinks followed), else PathNotAllowed."""
        path = Path(text).expanduser().resolve()
        if any(path == root or path.is_relative_to(root) for root in self.allowed_dirs):
            return path
        roots = ", ".join(str(r) for r in self.allowed_dirs)
        raise PathNotAllowed(
            f"{text} is outside the folders this studio may read ({roots}). "
            "Upload the file instead, or ask the operator to add its folder to LACKER_ALLOWED_DIRS."
        )
