"""The studio's API endpoints through gradio_client, against `python app.py` in its own process:
data loading and its errors, the demo preset's run, a run from start to Compare and Export, a token
that leaves no trace."""

import zipfile
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from engine.families import DEFAULT_MODEL
from hub_standin import HubStandIn
from studio.tabs.compare import BASE_HEADERS, RELEVANT, TRAINED_HEADERS
from studio_helpers import RUN_TIMEOUT, StudioProcess, finished_api_run, inputs_by_name, outputs_by_name

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
    done = finished_api_run(client, run["run_id"])
    assert done["status"] == "completed", (done["error"], done["hint"])
    return done


def test_the_sample_loads_with_its_columns_guessed(client):
    loaded = outputs_by_name(client, "/use_sample", client.predict(api_name="/use_sample"))
    assert "4,000 rows" in loaded["data-source"] and "debian-pairs/train.jsonl" in loaded["data-source"]
    assert (loaded["anchor (query)"]["value"], loaded["positive (relevant text)"]["value"]) == ("query", "document")
    assert "pairs" in loaded["data-summary"] and "MultipleNegativesRankingLoss" in loaded["data-summary"]
    assert not loaded["error"]["visible"]


def test_the_demo_sample_loads_beside_the_larger_one(app, client):
    loaded = outputs_by_name(client, "/use_demo_sample", client.predict(api_name="/use_demo_sample"))
    assert "7,105 rows" in loaded["data-source"] and "vera-pairs/train.jsonl" in loaded["data-source"]
    assert (loaded["anchor (query)"]["value"], loaded["positive (relevant text)"]["value"]) == ("query", "document")
    assert not loaded["error"]["visible"]
    from studio.data_sources import DEMO_SAMPLE, held_out_split
    from studio.settings import Settings

    note = held_out_split(DEMO_SAMPLE, Settings.from_env({"LACKER_HOME": str(app.home)}), 0.5).note
    assert "300 of the sample's 300 test queries" in note  # its own test split, however large the slider asks


def test_the_demo_preset_is_a_short_cpu_run_that_beats_the_base_model(app):
    client = Client(app.url, verbose=False)  # its own session, as a new browser tab: the preset fills its state
    preset = outputs_by_name(client, "/demo_preset", client.predict(api_name="/demo_preset"))
    assert "vera-pairs/train.jsonl" in preset["data-source"]  # the demo sample, which the base model is weak on
    assert preset["Model: pick a curated one or type any Hugging Face Hub id"] == DEFAULT_MODEL
    assert preset["Train for"] == "max steps" and preset["Evaluate base and trained model"]

    before = {run["run_id"] for run in client.predict(api_name="/list_runs")}
    started = outputs_by_name(client, "/start_training", client.predict(
        *inputs_by_name(client, "/start_training", preset), api_name="/start_training"))  # Start, form untouched
    assert not started["error"]["visible"], started["error"]["value"]
    assert f"--max-steps {preset['Max steps']}" in started["train-command"]
    (run_id,) = {run["run_id"] for run in client.predict(api_name="/list_runs")} - before

    done = finished_api_run(client, run_id, timeout=3 * RUN_TIMEOUT)  # evaluation of both models included
    assert done["status"] == "completed", (done["error"], done["hint"])
    assert done["step"] == done["loss_points"] == preset["Max steps"]
    base, trained = done["metrics"]["base"]["ndcg@10"], done["metrics"]["trained"]["ndcg@10"]
    assert trained >= base + 0.05, f"the demo preset did not visibly beat the base model: NDCG@10 {base:.4f} -> {trained:.4f}"


def test_a_corrupt_upload_is_an_inline_error(client, tmp_path):
    corrupt = tmp_path / "broken.parquet"
    corrupt.write_bytes(b"this is not parquet at all\x00\x01")
    uploaded = outputs_by_name(client, "/upload_data",
                               client.predict(handle_file(str(corrupt)), api_name="/upload_data"))
    assert uploaded["error"]["visible"] and "broken.parquet" in uploaded["error"]["value"]
    loaded = outputs_by_name(client, "/use_sample", client.predict(api_name="/use_sample"))  # and the app keeps working
    assert not loaded["error"]["visible"] and "4,000 rows" in loaded["data-source"]


def test_an_upload_over_the_limit_is_refused(client, tmp_path):
    big = tmp_path / "big.csv"
    big.write_text("query,document\n" + "a question,an answer that is long enough\n" * 40000)  # ~1.6 MB
    with pytest.raises(ValueError, match="exceeds the maximum file size of 1048576 bytes"):
        client.predict(handle_file(str(big)), api_name="/upload_data")


def test_paths_outside_the_allowed_folders_are_refused(client):
    error = outputs_by_name(client, "/load_data", client.predict("/etc/passwd", "", "", api_name="/load_data"))["error"]
    assert error["visible"] and "may only read files inside the folders its operator allows" in error["value"]
    with pytest.raises(Exception, match="may only read files inside the folders"):
        client.predict({"max_steps": 2}, "/etc/passwd", api_name="/start_run")


def test_a_run_is_listed_compared_and_exported(client, finished_run, tmp_path):
    run_id = finished_run["run_id"]
    assert run_id in [r["run_id"] for r in client.predict(api_name="/list_runs")]
    assert finished_run["step"] == 2 and finished_run["loss_points"] == 2

    _metrics, _note, examples, query, error = client.predict(run_id, api_name="/compare_run")
    assert not error["visible"] and examples["choices"] and query == examples["value"]
    base, trained, answer, error = client.predict(run_id, query, 5, api_name="/compare_search")
    assert not error["visible"]
    assert (base["headers"], trained["headers"]) == (BASE_HEADERS, TRAINED_HEADERS)
    for column in (base, trained):  # the top 5, then the held-out answer if it ranks below them
        assert [row[0] for row in column["data"][:5]] == [1, 2, 3, 4, 5]
        assert [row[1] for row in column["data"]].count(RELEVANT) == 1
    assert "ranks" in answer and "with the base model" in answer

    zip_path, error = client.predict(run_id, "merged", api_name="/export_zip")
    assert not error["visible"]
    with zipfile.ZipFile(zip_path) as archive:  # one folder, named after the run
        assert {name.split("/")[0] for name in archive.namelist()} == {f"lacker-{run_id}-merged"}
        card = archive.read(f"lacker-{run_id}-merged/README.md").decode()
    # the run's own card: its base, the data as the user picked it (not the run folder's copy), how to load it
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in card
    assert "- `data`: debian-pairs (a sample bundled with Lacker Studio)" in card
    assert f'model = SentenceTransformer("lacker-{run_id}-merged")' in card

    _metrics, _note, gains, _figure, error = client.predict(run_id, api_name="/compare_analyze")
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
