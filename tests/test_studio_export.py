"""What the Export tab tells a user when an export cannot happen, in the page's words and beside the button
pressed: a push with no token, a token the Hub refuses, a Hub that cannot be reached, a folder outside the
allowed ones. The model card and the weights of a good export are in test_model_card.py."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import huggingface_hub.constants
import pytest

from hub_standin import HubStandIn
from studio.exporting import HUB_UNREACHABLE, NO_TOKEN, push_model, save_model
from studio.settings import PathNotAllowed, Settings
from studio.store import Run

MODEL_FILES = {"modules.json": "[]", "README.md": 'model = SentenceTransformer("somewhere")\n'}


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def run(home) -> Run:
    """A finished run whose merged/ holds what an export copies (the files' contents do not matter here)."""
    merged = home / "run-7" / "merged"
    merged.mkdir(parents=True)
    for name, text in MODEL_FILES.items():
        (merged / name).write_text(text)
    return Run(id="run-7", created=time.time(), status="completed", model="sentence-transformers/all-MiniLM-L6-v2",
               data="pairs.csv", method="lora", run_dir=str(home / "run-7"))


@pytest.fixture
def no_stored_token(monkeypatch, tmp_path):
    """No HF_TOKEN and no token saved by `hf auth login`, as on a fresh machine."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_push_without_a_token_says_where_to_get_one_and_asks_nothing_of_the_hub(run, no_stored_token, monkeypatch):
    with HubStandIn() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(RuntimeError) as refused:
            push_model(run, "merged", "someone/model", token="  ", private=True)
    assert str(refused.value) == NO_TOKEN
    assert "token box" in NO_TOKEN and "huggingface.co/settings/tokens" in NO_TOKEN
    assert hub.tokens == [] and hub.repos == {}


def test_a_push_with_no_network_says_the_hub_cannot_be_reached(run, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(RuntimeError) as failed:
        push_model(run, "merged", "someone/model", token="hf_test_token", private=True)
    assert str(failed.value) == HUB_UNREACHABLE
    assert "cannot be reached" in HUB_UNREACHABLE and "download" in HUB_UNREACHABLE
    monkeypatch.setenv("HF_ENDPOINT", "http://no-such-host.invalid")  # the "Name or service not known" case
    with pytest.raises(RuntimeError, match="cannot be reached") as failed:
        push_model(run, "merged", "someone/model", token="hf_test_token", private=True)
    assert "Errno" not in str(failed.value)


def test_a_token_the_hub_refuses_is_named_as_the_problem_without_showing_it(run, monkeypatch):
    with HubStandIn(write_tokens=("hf_good_token",)) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(RuntimeError) as refused:
            push_model(run, "merged", "someone/model", token="hf_read_only_token", private=True)
        message = str(refused.value)
        assert "refused the token" in message and "write access" in message and "someone/model" in message
        assert "hf_read_only_token" not in message and "someone/model" not in hub.repos

        url = push_model(run, "merged", "someone/model", token="hf_good_token", private=True)
    assert url.endswith("someone/model") and "README.md" in hub.repos["someone/model"]["files"]


def test_saving_outside_the_allowed_folders_names_the_folders_that_are(run, home, tmp_path):
    operator = tmp_path / "shared-models"
    settings = Settings.from_env({"LACKER_HOME": str(home), "LACKER_ALLOWED_DIRS": str(operator)})
    for typed in ("/etc/models", str(tmp_path / "elsewhere"), str(home / "downloads" / "x")):
        with pytest.raises(PathNotAllowed) as refused:
            save_model(run, "merged", typed, settings)
        message = str(refused.value)
        assert f"may not save to `{typed}`" in message
        assert f"`{home.resolve()}` or `{operator.resolve()}`" in message
        assert f"`{home.resolve() / 'exports' / 'lacker-run-7-merged'}`" in message
        assert "Upload" not in message and "LACKER_ALLOWED_DIRS" not in message

    copy = save_model(run, "merged", str(operator / "mine"), settings)
    assert (copy / "modules.json").exists()
    assert (copy / "README.md").read_text() == f'model = SentenceTransformer("{copy}")\n'
