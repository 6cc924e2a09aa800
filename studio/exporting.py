"""Getting a run's model out: a zip to download, a copy in an allowed folder, or a push to the Hub.

Each carries the model card the worker saved with the model (sentence-transformers' card with the
run's settings and before / after metrics), its usage snippet naming where that copy is loaded from.
What goes wrong is said in the page's words: which folders a copy may go to, that a push needs a
token, that the Hub cannot be reached.

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
from studio.settings import PathNotAllowed, Settings
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
    """A temporary copy of `folder`, itself named after the last part of `name`, whose model card loads
    `name`, so the run folder never changes."""
    with tempfile.TemporaryDirectory(prefix="lacker-export-") as staging:
        staged = Path(staging) / Path(name).name
        shutil.copytree(folder, staged)
        name_model_in_card(staged, name)
        yield staged


def zip_model(run: Run, kind: str, settings: Settings) -> Path:
    """downloads/lacker-<run>-<kind>.zip under the runs home, built once. It unzips into one folder of that
    name, which its model card loads. The downloads folder is the only one the studio's file route serves."""
    folder = model_folder(run, kind)
    target = settings.downloads_dir / f"lacker-{run.id}-{kind}"
    if not target.with_suffix(".zip").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with _named_copy(folder, target.name) as staged:
            shutil.make_archive(str(target), "zip", root_dir=staged.parent, base_dir=staged.name)
    return target.with_suffix(".zip")


def save_folders(settings: Settings) -> list[Path]:
    """Where the studio may save a copy: its runs folder and the operator's folders."""
    return [settings.home, *settings.operator_dirs]


def save_model(run: Run, kind: str, destination: str, settings: Settings) -> Path:
    """Copy the model folder into `destination`, which must lie where the studio may write (the runs home or
    an operator's folder: Settings.check_writable_path); the copy's model card loads it from there.
    PathNotAllowed names the folders it may go to."""
    try:
        target = settings.check_writable_path(destination)
    except PathNotAllowed:
        allowed = " or ".join(f"`{folder}`" for folder in save_folders(settings))
        # The same words whether or not the folder exists: they say where a copy may go, nothing about the rest.
        raise PathNotAllowed(f"this studio may not save to `{destination}`. It saves only inside {allowed} "
                             "(never into its downloads folder or its own files): type a new folder there, for "
                             f"example `{settings.home / 'exports' / f'lacker-{run.id}-{kind}'}`.") from None
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


NO_TOKEN = ("pushing needs a Hugging Face token with write access: paste one into the token box (make one at "
            "https://huggingface.co/settings/tokens), or ask whoever runs this studio to set the HF_TOKEN secret.")
TOKEN_REFUSED = ("the Hub refused the token: it is wrong, expired or has no write access to {repo_id}. Paste a "
                 "token with write access (https://huggingface.co/settings/tokens).")
HUB_UNREACHABLE = ("the Hugging Face Hub cannot be reached from the machine this studio runs on (no network, a "
                   "firewall, or the Hub is down). Try again later, or build the zip, download it and upload its "
                   "files on the Hub's website.")


def _unreachable(problem: BaseException) -> bool:
    """Whether the push failed for want of a connection, not because the Hub said no."""
    import httpx
    from huggingface_hub.errors import OfflineModeIsEnabled

    while problem is not None:
        if isinstance(problem, (httpx.TransportError, OfflineModeIsEnabled, ConnectionError, TimeoutError)):
            return True
        problem = problem.__cause__ or problem.__context__
    return False


def push_model(run: Run, kind: str, repo_id: str, token: str | None, private: bool) -> str:
    """Upload the model with the model card the run wrote (settings, before / after metrics), its usage
    snippet naming `repo_id`; returns the repo URL. The adapter's config names its base by hub id.
    RuntimeError says what to do: no token, a token the Hub refused, a Hub that cannot be reached."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import HfHubHTTPError

    repo_id = (repo_id or "").strip()
    if "/" not in repo_id:
        raise ValueError("repo id must look like your-name/model-name")
    folder = model_folder(run, kind)
    token = (token or "").strip() or None
    if token is None and not get_token():  # get_token: HF_TOKEN, else what `hf auth login` stored
        raise RuntimeError(NO_TOKEN)
    try:
        with _named_copy(folder, repo_id) as staged:
            if kind == "adapter":
                point_adapter_at_hub_base(staged, run.model)
            return push_folder(staged, repo_id, token=token, private=private)
    except Exception as problem:  # huggingface_hub raises many kinds; the user needs the words, without the token
        if _unreachable(problem):
            raise RuntimeError(HUB_UNREACHABLE) from None
        if isinstance(problem, HfHubHTTPError) and problem.response is not None and problem.response.status_code == 401:
            raise RuntimeError(TOKEN_REFUSED.format(repo_id=repo_id)) from None
        raise RuntimeError(redact(f"push to {repo_id} failed: {problem}", token)) from None
