"""The studio's API endpoints through gradio_client, against `python app.py` in its own process:
data loading and its errors, a run from start to Compare and Export, a token that leaves no trace."""

import zipfile
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from hub_standin import HubStandIn
from studio_helpers import StudioProcess, wait_for

TOKEN = "hf_StudioTestTokenDoNotLeak0123456789"


@pytest.fixture(scope="module")
def hub():
    with HubStandIn() as standin:
        yield standin


@pytest.fixture(scope="module")
def app(tmp_path_factory, hub):
    home = tmp_path_factory.mktemp("studio") / "runs"
    process = StudioProcess(home, env={"HF_ENDPOINT": hub.url, "LACKER_MAX_UPLOAD_MB": "1"})
    yield process
    process.close()


@pytest.fixture(scope="module")
def client(app):
    return Client(app.url, verbose=False)


@pytest.fixture(scope="module")
def finished_run(client):
    run = client.predict({"max_steps": 2, "batch_size": 8, "max_seq_length": 64, "evaluate": False}, "sample",
                         api_name="/start_run")
    assert run["status"] in ("queued", "running")
    done = wait_for(lambda: (s := client.predict(run["run_id"], api_name="/run_status"))["status"]
                    in ("completed", "stopped", "failed") and s, 300, "the run to finish")
    assert done["status"] == "completed", (done["error"], done["hint"])
    return done


def test_the_app_is_up_quickly(app):
    assert app.started_in < 30


def test_the_sample_loads_with_its_columns_guessed(client):
    source, preview, anchor, positive, *_rest, summary, _histogram, error = client.predict(api_name="/use_sample")
    assert "4,000 rows" in source and "debian-pairs/train.jsonl" in source
    assert (anchor["value"], positive["value"]) == ("query", "document")
    assert "pairs" in summary and "MultipleNegativesRankingLoss" in summary
    assert not error["visible"]


def test_the_demo_preset_fills_model_data_and_a_short_cpu_run(client):
    values = client.predict(api_name="/demo_preset")
    source, model = values[0], values[10]  # after the Data tab's 10 shown outputs
    method, max_steps, batch_size, max_seq_length = values[11], values[16], values[17], values[18]
    assert "debian-pairs/train.jsonl" in source and model == "sentence-transformers/all-MiniLM-L6-v2"
    assert (method, batch_size, max_seq_length) == ("lora", 16, 128) and max_steps <= 60


def test_a_corrupt_upload_is_an_inline_error(client, tmp_path):
    corrupt = tmp_path / "broken.parquet"
    corrupt.write_bytes(b"this is not parquet at all\x00\x01")
    *_rest, error = client.predict(handle_file(str(corrupt)), api_name="/upload_data")
    assert error["visible"] and "broken.parquet" in error["value"]
    source, *_rest, error = client.predict(api_name="/use_sample")  # and the app keeps working
    assert not error["visible"] and "4,000 rows" in source


def test_an_upload_over_the_limit_is_refused(client, tmp_path):
    big = tmp_path / "big.csv"
    big.write_text("query,document\n" + "a question,an answer that is long enough\n" * 40000)  # ~1.6 MB
    with pytest.raises(ValueError, match="exceeds the maximum file size of 1048576 bytes"):
        client.predict(handle_file(str(big)), api_name="/upload_data")


def test_paths_outside_the_allowed_folders_are_refused(client):
    *_rest, error = client.predict("/etc/passwd", "", "", api_name="/load_data")
    assert error["visible"] and "outside the folders this studio may read" in error["value"]
    with pytest.raises(Exception, match="outside the folders"):
        client.predict({"max_steps": 2}, "/etc/passwd", api_name="/start_run")


def test_a_run_is_listed_compared_and_exported(client, finished_run, tmp_path):
    run_id = finished_run["run_id"]
    assert run_id in [r["run_id"] for r in client.predict(api_name="/list_runs")]
    assert finished_run["step"] == 2 and finished_run["loss_points"] == 2

    _metrics, examples, query, error = client.predict(run_id, api_name="/compare_run")
    assert not error["visible"] and examples["choices"] and query == examples["value"]
    base, trained, error = client.predict(run_id, query, 5, api_name="/compare_search")
    assert not error["visible"]
    assert len(base["data"]) == 5 and len(trained["data"]) == 5
    assert trained["headers"] == ["rank", "change", "score", "document"]

    zip_path, error = client.predict(run_id, "merged", api_name="/export_zip")
    assert not error["visible"]
    with zipfile.ZipFile(zip_path) as archive:
        assert "modules.json" in archive.namelist()

    gains, _figure, error = client.predict(run_id, api_name="/compare_analyze")
    assert not error["visible"] and gains["data"]


def test_the_hub_token_is_used_but_never_stored(client, finished_run, app, hub):
    result, error = client.predict(finished_run["run_id"], "merged", "someone/studio-test", True, TOKEN,
                                   api_name="/push_to_hub")
    assert not error["visible"], error["value"]
    assert "someone/studio-test" in result
    assert f"Bearer {TOKEN}" in hub.tokens  # it reached the Hub...
    card = hub.repos["someone/studio-test"]["files"]["README.md"].decode()
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in card

    result, error = client.predict(finished_run["run_id"], "adapter", "not-a-repo-id", True, TOKEN,
                                   api_name="/push_to_hub")
    assert error["visible"] and TOKEN not in error["value"]
    # ...and left no trace in run folders, the registry, events or the studio's own log.
    for path in [*Path(app.home).rglob("*"), app.log_path]:
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), f"token found in {path}"


def test_auth_keeps_strangers_out(tmp_path):
    import urllib.request

    process = StudioProcess(tmp_path / "runs", env={"LACKER_AUTH": "ana:correct-horse"})
    try:
        with pytest.raises(Exception):
            Client(process.url, verbose=False)  # no login: the app's config is not served
        with pytest.raises(Exception):
            Client(process.url, auth=("ana", "wrong"), verbose=False)
        client = Client(process.url, auth=("ana", "correct-horse"), verbose=False)
        assert client.predict(api_name="/list_runs") == []
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(process.url + "config", timeout=10)
    finally:
        process.close()
