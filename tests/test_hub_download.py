"""Models come from the Hub when they are not local: downloaded through HF_ENDPOINT (a local stand-in of
the Hub here) with progress, trained from the CLI and from the studio, and every way a download fails
(missing repo, gated model, dropped connection, offline) says what was wrong and what to do. Each test
starts from an empty Hugging Face cache."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from engine.resolve import (HubOffline, HubUnreachable, ModelAccessDenied, ModelNotOnHub, bundled_minilm_path,
                            resolve_model)
from hub_standin import HubStandIn
from studio.events import progress_of
from studio.store import COMPLETED
from studio_helpers import make_studio, start_sample_run, wait_for
from tiny_models import build_tiny_model

REPO = Path(__file__).resolve().parent.parent
TOKEN = "hf_GatedTestTokenDoNotLeak0123456789"
# Files a download must skip: another runtime's export, and pickled weights beside model.safetensors.
NOT_NEEDED = {"onnx/model.onnx": b"onnx" * 100, "pytorch_model.bin": b"pickle" * 100}


@pytest.fixture(scope="module")
def tiny_st_folder(tmp_path_factory) -> Path:
    """A tiny random BERT saved as a sentence-transformers folder (modules.json, 1_Pooling/, ...)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models

    raw = build_tiny_model("bert", tmp_path_factory.mktemp("tiny") / "bert")
    transformer = models.Transformer(str(raw), max_seq_length=64)
    model = SentenceTransformer(modules=[transformer, models.Pooling(transformer.get_embedding_dimension(), "mean")],
                                device="cpu")
    folder = tmp_path_factory.mktemp("tiny") / "st"
    model.save(str(folder))
    return folder


@pytest.fixture
def hub(tiny_st_folder):
    with HubStandIn() as standin:
        standin.serve_model("org/tiny", tiny_st_folder, extra_files=NOT_NEEDED)
        standin.serve_model("org/gated", tiny_st_folder, gated=True, granted=("hf_GrantedToken",))
        standin.serve_model("org/flaky", tiny_st_folder, drop=True)
        yield standin


@pytest.fixture
def hub_env(monkeypatch, tmp_path, hub) -> dict:
    """A fresh, empty Hugging Face home pointed at the stand-in; no token, not offline."""
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"), "HF_ENDPOINT": hub.url}
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once the socket is closed


def test_an_uncached_model_downloads_and_trains_from_the_cli(hub, hub_env, tmp_path):
    output = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "engine", "train", "--model", "org/tiny", "--data", "assets/debian-pairs/train.jsonl",
         "--columns", "anchor=query,positive=document", "--max-steps", "2", "--max-seq-length", "64", "--no-eval",
         "--output", str(output)],
        cwd=REPO, env={**os.environ, **hub_env}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (output / "merged" / "model.safetensors").exists()
    assert "downloaded org/tiny" in result.stderr
    downloaded = {path.removeprefix("org/tiny/") for path in hub.downloads}
    assert {"model.safetensors", "modules.json", "1_Pooling/config.json", "tokenizer.json"} <= downloaded
    assert not downloaded & NOT_NEEDED.keys()


def test_a_studio_run_shows_the_download_before_its_first_step(hub, hub_env, tmp_path):
    studio = make_studio(tmp_path / "studio")
    studio.runner.start_monitor()
    run = start_sample_run(studio, model="org/tiny", max_steps=2)
    try:
        wait_for(lambda: studio.store.get(run.id).is_finished, 300, "the run to finish")
    finally:
        studio.runner.close()
    run = studio.store.get(run.id)
    assert run.status == COMPLETED, (run.error, run.hint)
    events = [json.loads(line) for line in (Path(run.run_dir) / "events.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    downloads = [e for e in events if e["event"] == "download"]
    assert downloads and kinds.index("download") < kinds.index("train")
    assert downloads[0]["message"].startswith("downloading org/tiny") and downloads[-1]["fraction"] == 1.0
    logs = list(progress_of(run.run_dir).logs)
    assert any(line.startswith("[loading] downloading org/tiny") for line in logs)
    assert any(line.startswith("[loading] downloaded org/tiny") for line in logs)


def test_progress_is_reported_and_a_downloaded_model_then_works_offline(hub, hub_env, monkeypatch):
    reports = []
    folder = resolve_model("org/tiny", progress=lambda message, fraction: reports.append((message, fraction)))
    assert (folder / "modules.json").exists() and (folder / "model.safetensors").exists()
    assert not (folder / "onnx").exists() and not (folder / "pytorch_model.bin").exists()
    assert reports[0] == (f"downloading org/tiny from {hub.url}", 0.0)
    assert reports[-1][0].startswith("downloaded org/tiny: ") and reports[-1][1] == 1.0

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    requests_before = len(hub.tokens)
    assert resolve_model("org/tiny") == folder
    assert len(hub.tokens) == requests_before  # from the cache, without asking the Hub


def test_a_missing_repo_says_it_is_not_on_the_hub(hub_env, hub):
    with pytest.raises(ModelNotOnHub) as caught:
        resolve_model("org/no-such-model")
    assert f"'org/no-such-model' is not on the Hub at {hub.url} (404)" in str(caught.value)
    assert "check the spelling" in caught.value.fix


@pytest.mark.parametrize("token, status", [(None, 401), ("hf_NotGrantedToken0123456789", 403)])
def test_a_gated_model_says_to_accept_its_licence_and_set_a_token(hub_env, hub, monkeypatch, token, status):
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    with pytest.raises(ModelAccessDenied) as caught:
        resolve_model("org/gated")
    error = caught.value
    assert f"org/gated is a gated model on {hub.url}" in str(error) and f"({status})" in str(error)
    assert f"accept its licence on {hub.url}/org/gated" in error.fix and "HF_TOKEN" in error.fix
    assert "hf_" not in str(error) + error.fix


def test_a_gated_model_downloads_with_a_granted_token(hub_env, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_GrantedToken")
    assert (resolve_model("org/gated") / "model.safetensors").exists()
    assert "Bearer hf_GrantedToken" in hub.tokens


def test_a_dropped_connection_or_a_closed_port_says_the_hub_could_not_be_reached(hub_env, hub, monkeypatch):
    with pytest.raises(HubUnreachable) as caught:
        resolve_model("org/flaky")
    assert f"the Hugging Face Hub at {hub.url} could not be reached to download org/flaky" in str(caught.value)
    assert "internet connection" in caught.value.fix
    assert any(path.startswith("org/flaky/") for path in hub.downloads)  # it did start, then the connection dropped

    closed = closed_port_url()
    monkeypatch.setenv("HF_ENDPOINT", closed)
    with pytest.raises(HubUnreachable, match=f"the Hugging Face Hub at {closed} could not be reached"):
        resolve_model("org/tiny")


def test_offline_with_nothing_cached_says_so_and_asks_nothing_of_the_hub(hub_env, hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubOffline) as caught:
        resolve_model("org/tiny")
    assert "'org/tiny' is not available offline: HF_HUB_OFFLINE is set" in str(caught.value)
    assert "unset HF_HUB_OFFLINE" in caught.value.fix and "hf download org/tiny" in caught.value.fix
    assert hub.tokens == []


@pytest.mark.parametrize("name", ["sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"])
def test_the_bundled_minilm_resolves_offline_unreachable_or_missing_from_the_endpoint(hub_env, hub, monkeypatch,
                                                                                       name):
    bundled = bundled_minilm_path()
    assert resolve_model(name) == bundled  # the stand-in (a mirror, say) does not have it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model(name) == bundled
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    assert resolve_model(name) == bundled
