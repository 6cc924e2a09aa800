"""The run registry and the studio's settings: what survives a restart, and which paths it may read."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from studio.settings import PathNotAllowed, Settings
from studio.store import QUEUED, RUNNING, Run, RunStore


def make_run(run_id: str, created: float, status: str = QUEUED) -> Run:
    return Run(id=run_id, created=created, status=status, model="m", data="d.csv", method="lora",
               run_dir=f"/runs/{run_id}", config={"model": "m", "max_steps": 5})


def test_runs_survive_a_new_store_instance(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    store.add(make_run("a", 1.0))
    store.add(make_run("b", 2.0))
    store.update("a", status=RUNNING, pid=123, started=10.0, metrics={"trained": {"ndcg@10": 0.5}})

    reopened = RunStore(tmp_path / "runs.sqlite")
    a = reopened.get("a")
    assert (a.status, a.pid, a.started, a.config["max_steps"]) == (RUNNING, 123, 10.0, 5)
    assert a.metrics == {"trained": {"ndcg@10": 0.5}}
    assert [r.id for r in reopened.list()] == ["b", "a"]  # newest first
    assert [r.id for r in reopened.list((QUEUED,))] == ["b"]


def test_queued_runs_come_back_in_queue_order(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    for i, run_id in enumerate(["first", "second", "third"]):
        store.add(make_run(run_id, 100.0 + i))
    assert [r.id for r in store.list((QUEUED,))] == ["first", "second", "third"]


def test_unknown_run_is_a_clear_error(tmp_path):
    with pytest.raises(KeyError, match="no run 'nope'"):
        RunStore(tmp_path / "runs.sqlite").get("nope")


def test_local_paths_outside_the_allowed_folders_are_refused(tmp_path):
    home, outside = tmp_path / "home", tmp_path / "outside"
    home.mkdir(), outside.mkdir()
    (outside / "secret.csv").write_text("a,b\n")
    (home / "link.csv").symlink_to(outside / "secret.csv")
    settings = Settings.from_env({"LACKER_HOME": str(home)})
    assert settings.check_local_path(str(home / "data.csv")) == (home / "data.csv").resolve()
    for path in ("/etc/passwd", str(outside / "secret.csv"), str(home / "link.csv"), str(home / ".." / "outside")):
        with pytest.raises(PathNotAllowed, match="may only read files inside the folders its operator allows"):
            settings.check_local_path(path)
    extra = Settings.from_env({"LACKER_HOME": str(home), "LACKER_ALLOWED_DIRS": str(outside)})
    assert extra.check_local_path(str(outside / "secret.csv")).name == "secret.csv"


def test_auth_and_upload_limit_come_from_the_environment(tmp_path):
    settings = Settings.from_env({"LACKER_HOME": str(tmp_path), "LACKER_AUTH": "ana:s3cret", "LACKER_MAX_UPLOAD_MB": "5"})
    assert settings.auth == ("ana", "s3cret") and settings.max_upload_mb == 5
    assert Settings.from_env({"LACKER_HOME": str(tmp_path)}, auth="bo:pw").auth == ("bo", "pw")
    with pytest.raises(ValueError, match="user:password"):
        Settings.from_env({"LACKER_HOME": str(tmp_path), "LACKER_AUTH": "nopassword"})


def test_an_upload_over_the_limit_names_its_size_and_the_limit(tmp_path):
    from engine.data import DataError
    from studio.data_sources import source_from_upload

    settings = Settings.from_env({"LACKER_HOME": str(tmp_path / "home"), "LACKER_MAX_UPLOAD_MB": "1"})
    big = tmp_path / "big.csv"
    big.write_bytes(b"query,document\n" + b"q,d\n" * 700_000)
    with pytest.raises(DataError, match=r"big.csv is 3 MB; this studio accepts uploads up to 1 MB"):
        source_from_upload(str(big), settings)
    small = tmp_path / "small.csv"
    small.write_text("query,document\nq,d\n")
    kept = source_from_upload(str(small), settings)
    assert kept.kind == "file" and Path(kept.location).read_text() == small.read_text()
    assert Path(kept.location).is_relative_to(settings.home)  # a copy the worker can still read later


def test_importing_the_studio_does_not_import_torch():
    code = ("import sys, studio, studio.app; from studio.app import build_app; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
