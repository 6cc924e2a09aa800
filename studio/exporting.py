"""Getting a run's model out: a zip to download, a copy in an allowed folder, or a push to the Hub.

Each carries the model card the worker saved with the model (sentence-transformers' card with the
run's settings and before / after metrics), its usage snippet naming where that copy is loaded from.

The Hub token is used for the one push call and nowhere else: it is not written to the run folder,
the registry, events or logs, and is blanked out of any error text shown to the user.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from engine.hub import name_model_in_card, point_adapter_at_hub_base, push_folder
from studio.settings import Settings
from studio.store import Run

KINDS = ("merged", "adapter")


def model_folder(run: Run, kind: str) -> Path:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    folder = Path(run.run_dir) / kind
    if not folder.is_dir():
        if kind == "adapter" and run.method == "full":
            raise FileNotFoundError(f"run {run.id} was a full fine-tune: it has no adapter; export the merged model")
        raise FileNotFoundError(f"run {run.id} has no {kind} model (status: {run.status}); "
                                "export needs a run that completed or was stopped after some steps")
    return folder


@contextmanager
def _named_copy(folder: Path, name: str):
    """A temporary copy of `folder` whose model card loads `name`, so the run folder never changes."""
    with tempfile.TemporaryDirectory(prefix="lacker-export-") as staging:
        staged = Path(staging) / folder.name
        shutil.copytree(folder, staged)
        name_model_in_card(staged, name)
        yield staged


def zip_model(run: Run, kind: str, settings: Settings) -> Path:
    """downloads/lacker-<run>-<kind>.zip under the runs home, built once; its model card loads the folder it
    unzips to. The downloads folder is the only one the studio's file route serves."""
    folder = model_folder(run, kind)
    target = settings.downloads_dir / f"lacker-{run.id}-{kind}"
    if not target.with_suffix(".zip").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with _named_copy(folder, target.name) as staged:
            shutil.make_archive(str(target), "zip", root_dir=staged)
    return target.with_suffix(".zip")


def save_model(run: Run, kind: str, destination: str, settings: Settings) -> Path:
    """Copy the model folder into `destination`, which must lie where the studio may write (the runs home or
    an operator's folder: Settings.check_writable_path); the copy's model card loads it from there."""
    target = settings.check_writable_path(destination)
    folder = model_folder(run, kind)
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{destination} exists and is not empty; pick a new folder name")
    shutil.copytree(folder, target, dirs_exist_ok=True)
    name_model_in_card(target, str(target))
    return target


def redact(text: str, token: str | None) -> str:
    for secret in {token, os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")}:
        if secret:
            text = text.replace(secret, "hf_***")
    return text


def push_model(run: Run, kind: str, repo_id: str, token: str | None, private: bool) -> str:
    """Upload the model with the model card the run wrote (settings, before / after metrics), its usage
    snippet naming `repo_id`; returns the repo URL. The adapter's config names its base by hub id."""
    repo_id = (repo_id or "").strip()
    if "/" not in repo_id:
        raise ValueError("repo id must look like your-name/model-name")
    folder = model_folder(run, kind)
    token = (token or "").strip() or None
    try:
        with _named_copy(folder, repo_id) as staged:
            if kind == "adapter":
                point_adapter_at_hub_base(staged, run.model)
            return push_folder(staged, repo_id, token=token, private=private)
    except Exception as problem:  # huggingface_hub raises many kinds; the user needs the words, without the token
        raise RuntimeError(redact(f"push to {repo_id} failed: {problem}", token)) from None
