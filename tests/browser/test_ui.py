"""The studio in Debian's Chromium: the sample from loading to an exported model (on the way, Compare's
example pick, marked answers and a click on an improved query), a run that finishes with no page open, a
reload that finds the running job, Stop, a corrupt upload, Export's messages beside its buttons, a GGUF export with
its parity result, the Runs tab and the embedding demo preset (each task's own preset, and a run of each task in
Compare: test_ui_tasks.py).

Screenshots are taken only when asked: LACKER_SCREENSHOTS=1 writes each tab's to assets/screenshots/<tab>.png
(the README's), LACKER_SCREENSHOTS=DIR writes them to DIR; unset, the tests write nothing into the repository."""

import time
import zipfile
from pathlib import Path

import pytest

from studio_helpers import finished_api_run, wait_for

from ui_helpers import (RUN_TIMEOUT, command_text, finished_as, held_out_answers, loss_points, marked_answers,
                        no_run_active, number_in, open_tab, progress, query_text, run_ids, screenshot,
                        start_sample_run)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_sample_to_exported_model(page, studio_app, tmp_path):
    page.locator("#device-notice").get_by_text("GPU").first.wait_for()
    screenshot(page, "model")

    run_id = start_sample_run(page, studio_app, max_steps=20)
    open_tab(page, "Data")
    screenshot(page, "data")
    open_tab(page, "Train")

    wait_for(lambda: loss_points(page) >= 2, RUN_TIMEOUT, "the first loss points")
    first = loss_points(page)
    wait_for(lambda: loss_points(page) > first, RUN_TIMEOUT, "the loss curve to grow")
    wait_for(lambda: finished_as(page, run_id, "completed"), RUN_TIMEOUT, "the run to complete")
    assert progress(page) == {"step": 20, "total": 20, "percent": 100}
    assert loss_points(page) == 20
    assert page.locator("#train-command textarea").input_value().startswith("lacker train --model")
    screenshot(page, "train")

    open_tab(page, "Compare")
    page.locator("#compare-metrics").get_by_text("NDCG@10").wait_for()
    page.locator("#compare-noise").get_by_text("Measured on").wait_for()
    answers = held_out_answers(studio_app, run_id)
    first = wait_for(lambda: query_text(page), 60, "an example query in the query box")
    wait_for(lambda: marked_answers(page) == [answers[first]] * 2, RUN_TIMEOUT, "its answer marked in both columns")
    assert page.locator("#compare-base [role=row]").nth(1).inner_text().startswith("1")
    assert any(marker in page.locator("#compare-trained").inner_text() for marker in ("▲", "▼", "="))

    page.locator("#compare-examples input").click()
    page.get_by_role("option").nth(2).click()  # another example: it is searched at once
    picked = wait_for(lambda: query_text(page) != first and query_text(page), 30, "the picked example in the box")
    wait_for(lambda: marked_answers(page) == [answers[picked]] * 2, 60, "the picked example's answer marked")

    gains = page.locator("#compare-gains [role=row]")
    wait_for(lambda: gains.count() > 2, RUN_TIMEOUT, "the improved queries")
    improved = gains.nth(2).locator("[role=gridcell], td").first
    opened = improved.inner_text().strip()
    improved.click()  # a row opens its query
    wait_for(lambda: query_text(page) == opened, 30, "the improved query in the box")
    wait_for(lambda: marked_answers(page) == [answers[opened]] * 2, 60, "the improved query's answer marked")
    page.locator("#compare-similarity .js-plotly-plot").wait_for()
    assert "own document" in page.locator("#compare-similarity").inner_text()
    screenshot(page, "compare")

    open_tab(page, "Export")
    page.locator("#export-zip").click()
    link = page.locator("#export-download a").first
    link.wait_for()
    with page.expect_download() as download_info:
        link.click()
    archive = tmp_path / "merged.zip"
    download_info.value.save_as(archive)
    screenshot(page, "export")
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(tmp_path / "unzipped")
    (folder,) = (tmp_path / "unzipped").iterdir()  # one folder, named after the run
    assert folder.name == f"lacker-{run_id}-merged"

    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    assert model.encode(["a tiny text editor"]).shape == (1, 384)

    open_tab(page, "Runs")
    wait_for(lambda: run_id in page.locator("#runs-table").inner_text(), 60, "the run in the Runs table")


def test_a_run_finishes_with_no_page_open_and_reload_reattaches(browser, studio_app):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(studio_app.url)
    run_id = start_sample_run(page, studio_app, max_steps=6, evaluate=False, checkpointing=True)
    assert "--gradient-checkpointing" in page.locator("#train-command textarea").input_value()
    context.close()  # nobody is watching now

    from studio.store import RunStore

    store = RunStore(studio_app.home / "runs.sqlite")
    wait_for(lambda: store.get(run_id).is_finished, RUN_TIMEOUT, "the unwatched run to finish")
    assert store.get(run_id).status == "completed"

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(studio_app.url)
    open_tab(page, "Train")
    page.locator("#train-status").get_by_text(run_id).wait_for()
    wait_for(lambda: loss_points(page) == 6, 60, "the finished run's curve")
    context.close()


def test_reload_finds_the_running_job_and_stop_stops_it(page, studio_app):
    run_id = start_sample_run(page, studio_app, max_steps=400, evaluate=False)
    wait_for(lambda: progress(page).get("step", 0) >= 1, RUN_TIMEOUT, "the first step")
    page.reload()
    open_tab(page, "Train")
    page.locator("#train-status").get_by_text(run_id).wait_for()
    wait_for(lambda: loss_points(page) >= 1 and progress(page).get("step", 0) >= 1, 60, "the curve after a reload")
    page.locator("#stop-training").click()
    wait_for(lambda: finished_as(page, run_id, "stopped"), 180, "the run to stop")
    assert progress(page)["step"] < 400


def test_a_corrupt_upload_shows_its_error_and_the_app_keeps_working(page, tmp_path):
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 definitely not a parquet file")
    open_tab(page, "Data")
    page.locator("#data-upload input[type=file]").set_input_files(str(corrupt))
    page.locator(".lacker-error").get_by_text("corrupt.parquet").wait_for()
    page.get_by_role("button", name="Use the bundled sample").click()
    page.locator("#data-summary").get_by_text("4,000 rows").wait_for()
    # the mapping dropdowns' own update (validation of the guessed roles) may still be processing: its outcome counts
    shown = lambda: [box.inner_text() for box in page.locator(".lacker-error").all() if box.is_visible()]  # noqa: E731
    wait_for(lambda: not shown(), 30, "the error box to go once the sample loaded")


def below(page, message: str, button: str) -> float:
    """How far (px) the top of `message` lies below the bottom of `button`; negative when above it."""
    return page.evaluate("([m, b]) => document.querySelector(m).getBoundingClientRect().top"
                         " - document.querySelector(b).getBoundingClientRect().bottom", [message, button])


def test_export_says_what_went_wrong_beside_the_button_pressed(page, studio_app):
    """A run registered as finished (its merged/ holds only a stand-in file: nothing here loads it); the studio
    runs without a Hub token (conftest)."""
    from studio.store import Run, RunStore

    run_dir = studio_app.home / "export-messages"
    (run_dir / "merged").mkdir(parents=True)
    (run_dir / "merged" / "modules.json").write_text("[]")
    RunStore(studio_app.home / "runs.sqlite").add(Run(
        id="export-messages", created=time.time() - 10 ** 6, status="completed",  # the oldest: not picked first
        model="sentence-transformers/all-MiniLM-L6-v2", data="pairs.csv", method="lora", run_dir=str(run_dir)))

    open_tab(page, "Export")
    page.locator("#export-run input").click()
    page.get_by_role("option", name="export-messages").click()
    page.get_by_label("Folder (a new one inside the runs folder or an allowed folder)").fill("/etc/my-model")
    page.locator("#export-save").click()
    saved = page.locator("#export-save-error")
    saved.get_by_text("may not save to").wait_for()
    assert str(studio_app.home.resolve()) in saved.inner_text() and "Upload" not in saved.inner_text()
    assert 0 <= below(page, "#export-save-error", "#export-save") < 60

    page.get_by_role("textbox", name="Repository").fill("someone/my-model")
    page.locator("#export-push").click()
    pushed = page.locator("#export-push-error")
    pushed.get_by_text("needs a Hugging Face token").wait_for()
    assert "Errno" not in pushed.inner_text()
    assert 0 <= below(page, "#export-push-error", "#export-push") < 60
    assert "token" not in saved.inner_text()  # each button keeps its own message


def test_export_gguf_from_the_tab_shows_its_parity_result(page, studio_app, tmp_path):
    """A run registered as finished whose merged/ is a tiny BERT from a config, held out from the bundled sample:
    its GGUF is written, embedded in llama.cpp and compared with the PyTorch model from the tab."""
    import json

    from engine.data import SAMPLE_DIR
    from engine.models import FastSentenceTransformer
    from studio.store import Run, RunStore
    from tiny_models import build_tiny_model

    run_dir = studio_app.home / "export-gguf"
    base = build_tiny_model("bert", tmp_path / "bert")
    FastSentenceTransformer.from_pretrained(str(base), device="cpu").save_pretrained(str(run_dir / "merged"))
    (run_dir / "config.json").write_text(json.dumps({"data": str(SAMPLE_DIR / "train.jsonl"),
                                                     "output_dir": str(run_dir), "eval_size": 0.1}))
    (run_dir / "events.jsonl").write_text("")
    RunStore(studio_app.home / "runs.sqlite").add(Run(
        id="export-gguf", created=time.time() - 10 ** 6, status="completed", model="tiny-bert",
        data="train.jsonl", method="lora", run_dir=str(run_dir)))

    open_tab(page, "Export")
    page.locator("#export-run input").click()
    page.get_by_role("option", name="export-gguf").click()
    page.locator("#export-formats").get_by_text("No GGUF or ONNX export of this run yet").wait_for()
    page.locator("#export-format").get_by_text("GGUF q8_0").click()
    page.locator("#export-convert").click()
    parity = page.locator("#export-parity")
    parity.get_by_text("parity passed").wait_for(timeout=RUN_TIMEOUT * 1000)
    assert "GGUF q8_0" in parity.inner_text() and "cosine min" in parity.inner_text()
    assert "| GGUF q8_0 |" not in page.locator("#export-formats").inner_text()  # a table, rendered
    assert "GGUF q8_0" in page.locator("#export-formats").inner_text()
    serve = page.locator("#export-serve").inner_text()
    assert "ollama create export-gguf" not in serve and "ollama create lacker-export-gguf-gguf-q8_0" in serve
    assert "--pooling mean" in serve
    link = page.locator("#export-file a").first
    with page.expect_download() as download_info:
        link.click()
    saved = tmp_path / "model.gguf"
    download_info.value.save_as(saved)
    assert saved.read_bytes()[:4] == b"GGUF"


def trained_runs(studio_app) -> list[str]:
    """The registry's completed runs that logged training steps (not those registered with a stand-in model)."""
    from studio.store import RunStore

    runs = RunStore(studio_app.home / "runs.sqlite").list()
    return [run.id for run in runs if run.status == "completed" and (Path(run.run_dir) / "events.jsonl").exists()
            and '"event": "train"' in (Path(run.run_dir) / "events.jsonl").read_text()]


def test_runs_tab_lists_every_run_and_overlays_two_curves(page, studio_app):
    """Overlays two runs that trained to the end: those the tests before it in this file left, else its own (through
    the API, on two seeds), so that it holds alone too; and cancels one while it waits in the queue behind a run."""
    from gradio_client import Client

    client = Client(studio_app.url, verbose=False)
    quick = {"max_steps": 6, "batch_size": 8, "max_seq_length": 64, "evaluate": False}
    curves = trained_runs(studio_app)[:2]
    ahead = [client.predict({**quick, "seed": seed}, "sample", api_name="/start_run")["run_id"]
             for seed in (1, 2)[:max(1, 2 - len(curves))]]  # at least one: the cancelled run waits behind it
    cancelled = client.predict({**quick, "max_steps": 400}, "sample", api_name="/start_run")["run_id"]
    assert client.predict(cancelled, api_name="/stop_run")["status"] == "stopped"  # queued behind the run(s) above
    for run_id in ahead:
        done = finished_api_run(client, run_id)
        assert done["status"] == "completed", (done["error"], done["hint"])
    curves = (curves + ahead)[:2]

    open_tab(page, "Runs")
    table = page.locator("#runs-table")
    everything = run_ids(studio_app)
    wait_for(lambda: all(run_id in table.inner_text() for run_id in everything), 60, "every run in the table")
    assert "completed" in table.inner_text() and "stopped" in table.inner_text()
    for run_id in curves:
        page.locator("#runs-overlay input").click()
        page.get_by_role("option", name=run_id).click()
    page.keyboard.press("Escape")
    traces = "() => { const p = document.querySelector('#runs-overlay-plot .js-plotly-plot'); return p ? p.data.length : 0; }"
    wait_for(lambda: page.evaluate(traces) == 2, 60, "two curves overlaid")
    screenshot(page, "runs")


def test_open_in_train_shows_that_runs_settings_data_and_command(page, studio_app):
    """Two runs with different settings and data (one on the sample, one on an uploaded-style CSV); opening
    each from Runs puts its own settings, data and shell command in the form. Neither needs to train: the first
    is stopped while it loads, the second cancelled while it waits behind it."""
    from gradio_client import Client

    pairs = studio_app.home / "pairs.csv"  # inside the studio's home: a file it may read
    pairs.write_text("q,a\n" + "".join(f"question number {i},the answer to question {i}\n" for i in range(60)))
    client = Client(studio_app.url, verbose=False)
    first = client.predict({"max_steps": 400, "batch_size": 8, "max_seq_length": 64, "evaluate": False, "seed": 3},
                           "sample", api_name="/start_run")["run_id"]
    second = client.predict({"max_steps": 7, "batch_size": 4, "max_seq_length": 48, "learning_rate": 0.003,
                             "columns": {"anchor": "q", "positive": "a"}, "evaluate": False}, str(pairs),
                            api_name="/start_run")["run_id"]
    assert client.predict(second, api_name="/stop_run")["status"] == "stopped"
    client.predict(first, api_name="/stop_run")

    def open_in_train(run_id):
        open_tab(page, "Runs")
        page.get_by_role("button", name="Refresh").click()
        page.get_by_label("Run", exact=True).fill(run_id)
        page.get_by_label("Run", exact=True).press("Enter")
        page.get_by_role("button", name="Open in Train, Compare and Export").click()
        page.locator("#train-status").get_by_text(run_id).wait_for()
        wait_for(lambda: run_id in command_text(page), 30, "the run's command")  # --output names its folder

    open_in_train(second)
    wait_for(lambda: number_in(page, "Max steps") == 7, 30, "the second run's step count")
    assert (number_in(page, "Batch size"), number_in(page, "Max sequence length (tokens)")) == (4, 48)
    assert number_in(page, "Learning rate") == 0.003
    assert "--max-steps 7" in command_text(page) and "pairs.csv" in command_text(page)
    open_tab(page, "Data")
    page.locator("#data-source").get_by_text("pairs.csv").wait_for()
    assert "Columns as the run used them" in page.locator("#data-source").inner_text()

    open_in_train(first)
    wait_for(lambda: number_in(page, "Max steps") == 400, 30, "the first run's step count")
    assert (number_in(page, "Batch size"), number_in(page, "Seed")) == (8, 3)
    assert "--max-steps 400" in command_text(page) and "debian-pairs/train.jsonl" in command_text(page)
    open_tab(page, "Data")
    page.locator("#data-source").get_by_text("4,000 rows").wait_for()
    screenshot(page, "open-in-train")


def test_a_reload_keeps_the_sessions_data_and_shows_the_latest_runs_settings(page, studio_app):
    from gradio_client import Client

    client = Client(studio_app.url, verbose=False)
    run_id = client.predict({"max_steps": 9, "batch_size": 4, "max_seq_length": 32, "evaluate": False},
                            "sample", api_name="/start_run")["run_id"]
    from studio.store import RunStore

    events = Path(RunStore(studio_app.home / "runs.sqlite").get(run_id).run_dir) / "events.jsonl"
    wait_for(lambda: events.exists() and events.stat().st_size, RUN_TIMEOUT, "the run's first event")  # it has a log
    client.predict(run_id, api_name="/stop_run")
    wait_for(lambda: no_run_active(studio_app), RUN_TIMEOUT, "no run training")

    pairs = studio_app.home / "reload.csv"
    pairs.write_text("q,a\n" + "".join(f"reload question {i},reload answer {i}\n" for i in range(30)))
    open_tab(page, "Data")
    # the page load kept the latest run's data first; the stored value (encrypted) must change to this file's
    stored = "() => localStorage.getItem('lacker-data')"
    before = page.evaluate(stored)
    page.get_by_label("...or a Hugging Face dataset id or a file on this machine").fill(str(pairs))
    page.get_by_role("button", name="Load", exact=True).click()
    page.locator("#data-source").get_by_text("reload.csv").wait_for()
    page.locator("#held-out-note").get_by_text("about 3 of the 30 rows").wait_for()
    wait_for(lambda: page.evaluate(stored) not in (None, before), 30, "the browser to keep the data")

    page.reload()
    page.get_by_role("tab", name="Model").wait_for()
    open_tab(page, "Data")
    page.locator("#data-source").get_by_text("reload.csv").wait_for()  # this session's data, not the run's
    open_tab(page, "Train")
    page.locator("#train-status").get_by_text(run_id).wait_for()
    wait_for(lambda: number_in(page, "Max steps") == 9, 30, "the latest run's settings")
    assert number_in(page, "Batch size") == 4 and "--max-steps 9" in command_text(page)
    page.locator("#train-plan").get_by_text("Expected time").wait_for()  # worked out for the reloaded form
    log = page.locator("#train-logs textarea")
    wait_for(lambda: log.input_value(), 30, "the run's log")
    assert log.input_value().splitlines()[0].startswith("[stopped]")  # the last word first, seen without scrolling

    from studio.tabs.train import DEMO_PRESET

    page.locator("#demo-preset").click()
    note = page.locator("#demo-preset-note")
    note.get_by_text(f"{DEMO_PRESET['max_steps']} steps").wait_for()
    assert "all-MiniLM-L6-v2" in note.inner_text() and "expected" in note.inner_text()
    wait_for(lambda: number_in(page, "Max steps") == DEMO_PRESET["max_steps"], 30, "the preset's steps in the form")
