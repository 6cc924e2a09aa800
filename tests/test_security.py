"""What a stranger can make the studio read, write or serve, against `python app.py` in its own process: paths
outside the allowed folders (existing or not, through symlinks and ..) refused in the same words by the Model tab,
the API's start_run, the Data tab and Export; the file route serving the export zip and nothing else of the home;
wrong passwords throttled per client."""

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from engine.config import api_defaults
from studio.app import STUDIO_PATHS
from studio.login import LOCKOUT_S, MAX_FAILURES, LoginThrottle
from studio.settings import ASSETS_DIR, READ_REFUSED, REPO_ROOT, PathNotAllowed, Settings
from studio.store import Run, RunStore
from studio_helpers import StudioProcess, outputs_by_name

RUN_ID = "run-1"


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """A runs home holding one finished run, and beside it a folder the studio must not touch: a model and a
    data file in it, with symlinks from inside the home pointing out."""
    root = tmp_path_factory.mktemp("security")
    home, outside = root / "runs", root / "outside"
    (outside / "model").mkdir(parents=True)
    (outside / "model" / "config.json").write_text('{"model_type": "bert"}')
    (outside / "secret.csv").write_text("query,document\nsecret question,secret answer\n")
    run_dir = home / RUN_ID
    (run_dir / "merged").mkdir(parents=True)
    (run_dir / "merged" / "modules.json").write_text("[]")
    (run_dir / "config.json").write_text(json.dumps({"model": "sentence-transformers/all-MiniLM-L6-v2"}))
    RunStore(home / "runs.sqlite").add(Run(id=RUN_ID, created=time.time(), status="completed",
                                           model="sentence-transformers/all-MiniLM-L6-v2", data="pairs.csv",
                                           method="lora", run_dir=str(run_dir)))
    (home / "link-out").symlink_to(outside)
    (home / "link-etc").symlink_to("/etc")
    (home / "link-assets").symlink_to(ASSETS_DIR)
    return {"home": home, "outside": outside, "run_dir": run_dir}


def outside_paths(places) -> list[str]:
    """Paths that exist and paths that do not, absolute, relative, under ~, through symlinks and .. escapes."""
    home, outside = places["home"], places["outside"]
    return ["/etc", "/etc/passwd", "/root/.ssh", "/root/.ssh/id_rsa", "/nonexistent/model", "/nonexistent/data.csv",
            "/proc/self/environ", "/", "/tmp", "~", "~/.cache/huggingface", "../", "./engine", "engine",
            str(REPO_ROOT), str(REPO_ROOT / "engine"), str(outside / "model"), str(outside / "secret.csv"),
            str(outside / "missing"), str(home / "link-out" / "model"), str(home / "link-etc" / "passwd"),
            str(home / ".." / "outside" / "secret.csv"), f"{home}/{RUN_ID}/../../outside/model"]


@pytest.fixture(scope="module")
def app(places):
    process = StudioProcess(places["home"])
    yield process
    process.close()


@pytest.fixture(scope="module")
def client(app):
    return Client(app.url, verbose=False)


def refused(typed: str) -> str:
    return f"**Error:** {typed}: {READ_REFUSED}"


def test_model_and_data_paths_outside_the_allowed_folders_are_refused_in_the_same_words(client, places):
    runs_before = client.predict(api_name="/list_runs")
    for typed in outside_paths(places):
        for endpoint in ("/select_model", "/select_local_model"):
            _summary, error = client.predict(typed, api_name=endpoint)
            assert error["visible"] and error["value"] == refused(typed), (endpoint, typed, error)
        error = outputs_by_name(client, "/load_data", client.predict(typed, "", "", api_name="/load_data"))["error"]
        assert error["value"] == refused(typed), ("/load_data", typed, error)
        with pytest.raises(Exception) as model_refusal:
            client.predict({"model": typed, "max_steps": 1}, "sample", api_name="/start_run")
        assert str(model_refusal.value) == f"{typed}: {READ_REFUSED}"
        with pytest.raises(Exception) as data_refusal:
            client.predict({"max_steps": 1}, typed, api_name="/start_run")
        assert str(data_refusal.value) == f"{typed}: {READ_REFUSED}"
    assert client.predict(api_name="/list_runs") == runs_before  # nothing was queued


def test_a_model_inside_the_home_and_hub_ids_are_accepted(client, places):
    model = places["home"] / "models" / "mine"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2}')
    info, error = client.predict(str(model), api_name="/select_local_model")
    assert not error["visible"] and str(model) in info and "bert" in info
    info, error = client.predict("BAAI/bge-small-en-v1.5", api_name="/select_model")
    assert not error["visible"] and "BAAI/bge-small-en-v1.5" in info
    settings = Settings.from_env({"LACKER_HOME": str(places["home"])})
    assert settings.check_model_name("BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"
    assert settings.check_model_name(str(model)) == str(model.resolve())


def test_path_settings_are_not_taken_from_the_api(client):
    assert not set(STUDIO_PATHS) & set(api_defaults())
    runs_before = client.predict(api_name="/list_runs")
    for key in STUDIO_PATHS:
        with pytest.raises(Exception, match=f"unknown setting {key}; the settings are"):
            client.predict({key: "/etc/passwd", "max_steps": 1}, "sample", api_name="/start_run")
    assert client.predict(api_name="/list_runs") == runs_before


def test_export_writes_only_under_the_home_or_an_allowed_folder(client, places):
    home = places["home"]
    destinations = [str(ASSETS_DIR / "stolen"), str(ASSETS_DIR), str(REPO_ROOT / "engine" / "stolen"),
                    str(REPO_ROOT / "studio" / "stolen"), str(REPO_ROOT / "stolen"), str(home / "link-assets" / "x"),
                    str(home / "link-out" / "x"), str(home / ".." / "outside" / "x"), f"{home}/a/../../outside/y",
                    str(home / "downloads" / "x"), "/tmp/stolen", "/etc/stolen", "/root/.ssh/stolen", "stolen",
                    "~/stolen"]
    watched = (ASSETS_DIR, places["outside"], REPO_ROOT, REPO_ROOT / "engine", REPO_ROOT / "studio")
    listing_before = {folder: sorted(folder.iterdir()) for folder in watched}
    for typed in destinations:
        saved, error = client.predict(RUN_ID, "merged", typed, api_name="/export_save")
        # the folders a copy may go to, in the same words whether or not the typed one exists
        assert error["visible"] and error["value"] == (
            f"**Error:** this studio may not save to `{typed}`. It saves only inside `{home}` (never into its "
            "downloads folder or its own files): type a new folder there, for example "
            f"`{home / 'exports' / f'lacker-{RUN_ID}-merged'}`."), (typed, error)
    assert {folder: sorted(folder.iterdir()) for folder in watched} == listing_before  # nothing written
    assert not any(Path(p).exists() for p in ("/tmp/stolen", home / "downloads" / "x", home / "link-out" / "x"))

    saved, error = client.predict(RUN_ID, "merged", str(home / "exports" / "mine"), api_name="/export_save")
    assert not error["visible"], error
    assert (home / "exports" / "mine" / "modules.json").exists()


def test_writable_folders_include_the_operators(places, tmp_path):
    settings = Settings.from_env({"LACKER_HOME": str(places["home"]), "LACKER_ALLOWED_DIRS": str(tmp_path)})
    assert settings.check_writable_path(str(tmp_path / "model")) == (tmp_path / "model").resolve()
    with pytest.raises(PathNotAllowed, match="never into its own code or assets"):
        settings.check_writable_path(str(ASSETS_DIR / "debian-pairs"))  # readable, not writable
    assert settings.check_local_path(str(ASSETS_DIR / "debian-pairs")) == ASSETS_DIR / "debian-pairs"


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def file_urls(app, path: Path) -> list[str]:
    """Every form of Gradio's file route for a local path."""
    quoted = urllib.parse.quote(str(path))
    return [f"{app.url}gradio_api/file={quoted}", f"{app.url}file={quoted}", f"{app.url}gradio_api/file/{quoted}",
            f"{app.url}file/{quoted}"]


def test_the_file_route_serves_the_export_zip_and_nothing_else_of_the_home(app, client, places, tmp_path):
    upload = tmp_path / "private-pairs.csv"
    upload.write_text("query,document\n" + "".join(f"private question {i},private answer {i}\n" for i in range(20)))
    loaded = outputs_by_name(client, "/upload_data", client.predict(handle_file(str(upload)), api_name="/upload_data"))
    assert not loaded["error"]["visible"], loaded["error"]
    (kept,) = (places["home"] / "uploads").rglob("private-pairs.csv")

    for private in (places["home"] / "runs.sqlite", kept, places["run_dir"] / "config.json",
                    places["run_dir"] / "merged" / "modules.json", places["outside"] / "secret.csv"):
        for url in file_urls(app, private):
            status, body = fetch(url)
            assert status in (403, 404), (url, status)
            assert private.read_bytes() not in body

    zip_path, error = client.predict(RUN_ID, "merged", api_name="/export_zip")  # downloaded over the file route
    assert not error["visible"], error
    with zipfile.ZipFile(zip_path) as archive:
        assert f"lacker-{RUN_ID}-merged/modules.json" in archive.namelist()
    built = places["home"] / "downloads" / f"lacker-{RUN_ID}-merged.zip"
    status, body = fetch(file_urls(app, built)[0])
    assert status == 200 and body == built.read_bytes()


def login(app, password: str, source: str = "127.0.0.1") -> int:
    """POST the login form from a given loopback address; the status Gradio answers."""
    connection = http.client.HTTPConnection("127.0.0.1", app.port, timeout=10, source_address=(source, 0))
    try:
        connection.request("POST", "/login", urllib.parse.urlencode({"username": "ana", "password": password}),
                           {"Content-Type": "application/x-www-form-urlencoded"})
        return connection.getresponse().status
    finally:
        connection.close()


def test_wrong_passwords_lock_out_that_client_only(tmp_path):
    process = StudioProcess(tmp_path / "runs", env={"LACKER_AUTH": "ana:correct-horse"})
    try:
        assert login(process, "correct-horse") == 200
        assert [login(process, f"guess-{i}") for i in range(MAX_FAILURES)] == [400] * MAX_FAILURES
        assert login(process, "correct-horse") == 400  # this client is locked out, the right password too
        assert login(process, "correct-horse", source="127.0.0.2") == 200  # another client is not
    finally:
        process.close()


def test_a_lockout_ends():
    now = [0.0]
    check = LoginThrottle("ana", "correct-horse", clock=lambda: now[0])
    assert not any(check("ana", "wrong") for _ in range(MAX_FAILURES))
    assert not check("ana", "correct-horse")
    now[0] += LOCKOUT_S + 1
    assert check("ana", "correct-horse")
    assert not check("bob", "correct-horse") and not check("ana", "")
