"""What an operator can set from the environment, and the rules for which local paths the studio may read
and write: every path a user or an API caller names goes through one check (a model name:
`Settings.check_model_name`; data: `check_local_path`; an export destination: `check_writable_path`), and a
refusal reads the same whether the path exists or not, naming no folder of the server.

    LACKER_HOME            where runs, uploads and the run registry live (default ./runs)
    LACKER_ALLOWED_DIRS    extra folders (os.pathsep-separated) that model and data paths may point into and
                           exports may be saved into
    LACKER_MAX_UPLOAD_MB   the largest file the Data tab accepts (default 200)
    LACKER_AUTH            "user:password" to ask for a login (the `--auth` flag of `lacker studio` does the same;
                           wrong passwords are throttled, see studio.login)
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from engine.bundled import ASSETS_DIR

REPO_ROOT = Path(__file__).resolve().parent.parent
# The app's own code and assets: readable where allowed (the sample data), never written to.
APP_DIRS = (ASSETS_DIR, REPO_ROOT / "engine", REPO_ROOT / "studio")
DEFAULT_MAX_UPLOAD_MB = 200
READ_REFUSED = ("this studio may only read files inside the folders its operator allows; upload the file instead, "
                "or ask the operator to add its folder to LACKER_ALLOWED_DIRS")
WRITE_REFUSED = ("this studio may only write inside its runs folder or the folders its operator allows "
                 "(LACKER_ALLOWED_DIRS), never into its own code or assets; pick a new folder inside the runs folder")


class PathNotAllowed(ValueError):
    """A local path outside the folders the operator lets the studio read (or write, for an export)."""


def looks_like_path(text: str) -> bool:
    """Whether a name the user typed means a local path rather than a Hugging Face id: it starts with / . or ~,
    climbs with .., or exists (relative to this process or to the repository, where the worker runs)."""
    if not text:
        return False
    path = Path(text).expanduser()
    return text.startswith(("/", ".", "~")) or ".." in path.parts or path.exists() or (REPO_ROOT / path).exists()


def _inside(path: Path, roots) -> bool:
    return any(path.is_relative_to(root) for root in roots)


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
    allowed_dirs: tuple[Path, ...]  # readable: the home, the bundled assets, Gradio's uploads, the operator's
    operator_dirs: tuple[Path, ...] = ()  # LACKER_ALLOWED_DIRS: readable and writable
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
            operator_dirs=tuple(p.resolve() for p in extra),
            max_upload_mb=max_mb,
            auth=parse_auth(auth or environ.get("LACKER_AUTH")),
        )

    @property
    def uploads_dir(self) -> Path:
        return self.home / "uploads"

    @property
    def registry_path(self) -> Path:
        return self.home / "runs.sqlite"

    @property
    def downloads_dir(self) -> Path:
        """The one folder under the home that the file route serves: the zips the Export tab builds."""
        return self.home / "downloads"

    def check_local_path(self, text: str) -> Path:
        """The resolved path (symlinks and .. followed) if it lies inside an allowed folder, else PathNotAllowed."""
        path = Path(text).expanduser().resolve()
        if not _inside(path, self.allowed_dirs):
            raise PathNotAllowed(f"{text}: {READ_REFUSED}")
        return path

    def check_writable_path(self, text: str) -> Path:
        """The resolved path if the studio may write there: inside the runs home or an allowed folder, and outside
        the app's own code, assets and the served downloads folder; else PathNotAllowed."""
        path = Path(text).expanduser().resolve()
        protected = (*(d.resolve() for d in APP_DIRS), self.downloads_dir.resolve())
        if not _inside(path, (self.home, *self.operator_dirs)) or _inside(path, protected):
            raise PathNotAllowed(f"{text}: {WRITE_REFUSED}")
        return path

    def check_model_name(self, name: str) -> str:
        """A Hugging Face model id as it is, or a local model folder as its resolved path if it lies inside an
        allowed folder (the worker then loads exactly what was checked); else PathNotAllowed."""
        name = name.strip()
        if not looks_like_path(name):
            return name
        path = Path(name).expanduser()
        if not path.exists() and (REPO_ROOT / path).exists():
            path = REPO_ROOT / path  # where the worker, which runs in the repository, would find it
        try:
            return str(self.check_local_path(str(path)))
        except PathNotAllowed:
            raise PathNotAllowed(f"{name}: {READ_REFUSED}") from None
