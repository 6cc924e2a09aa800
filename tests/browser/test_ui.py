"""The studio in Debian's Chromium: the sample from loading to an exported model (on the way, Compare's
example pick, marked answers and a click on an improved query), a run that finishes with no page open, a
reload that finds the running job, Stop, a corrupt upload, Export's messages beside its buttons, a GGUF export with
its parity result, the Runs tab, each task's demo preset through the studio, and a reranker run and a classifier
run opened in Compare.

Screenshots are taken only when asked: LACKER_SCREENSHOTS=1 writes each tab's to assets/screenshots/<tab>.png
(the README's), LACKER_SCREENSHOTS=DIR writes them to DIR; unset, the tests write nothing into the repository."""

import os
import time
import zipfile
from pathlib import Path

import pytest

from studio_helpers import finished_api_run, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow]

README_SCREENSHOTS = Path(__file__).resolve().parents[2] / "assets" / "screenshots"
RUN_TIMEOUT = 600


def screenshot(page, tab: str) -> None:
    """Save the page as <tab>.png where LACKER_SCREENSHOTS says; without it, do nothing."""
    wanted = os.environ.get("LACKER_SCREENSHOTS")
    if not wanted:
        return
    folder = README_SCREENSHOTS if wanted == "1" else Path(wanted)
    folder.mkdir(parents=True, exist_ok=True)
    time.sleep(1)  # plotly animates a new chart in; let it settle so the picture shows it drawn
    page.screenshot(path=str(folder / f"{tab}.png"), full_page=True)


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def loss_points(page) -> int:
    return page.evaluate("() => { const p = document.querySelector('#loss-plot .js-plotly-plot');"
                         " return p && p.data && p.data[0] ? p.data[0].x.length : 0; }")


def progress(page) -> dict:
    return page.evaluate("() => { const p = document.querySelector('#run-progress');"
                         " return p ? {step: +p.dataset.step, total: +p.dataset.total, percent: +p.dataset.percent} : {}; }")


def status_text(page) -> str:
    return page.locator("#train-status").inner_text()


def fill_number(page, label: str, value) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Tab")


def run_ids(studio_app) -> set[str]:
    from studio.store import RunStore

    return {run.id for run in RunStore(studio_app.home / "runs.sqlite").list()}


def start_sample_run(page, studio_app, max_steps: int, evaluate: bool = True, eval_queries: int = 200,
                     checkpointing: bool = False) -> str:
    """Load the sample, set a short run, press Start; returns the new run's id once the Train tab shows it."""
    before = run_ids(studio_app)
    open_tab(page, "Data")
    page.get_by_role("button", name="Use the bundled sample").click()
    page.locator("#data-summary").get_by_text("4,000 rows").wait_for()
    open_tab(page, "Train")
    fill_number(page, "Max steps", max_steps)
    fill_number(page, "Batch size", 16)
    fill_number(page, "Max sequence length (tokens)", 128)
    fill_number(page, "Learning rate", 0.001)
    fill_number(page, "Eval queries", eval_queries)
    if not evaluate:
        page.get_by_label("Evaluate base and trained model").uncheck()
    if checkpointing:
        page.locator("#gradient-checkpointing input").check()
        page.locator("#train-memory").get_by_text("gradient checkpointing").wait_for()
    page.locator("#start-training").click()
    new = wait_for(lambda: run_ids(studio_app) - before, 60, "the new run in the registry")
    run_id = new.pop()
    page.locator("#train-status").get_by_text(run_id).wait_for()
    return run_id


def held_out_answers(studio_app, run_id: str) -> dict[str, str]:
    """Each held-out query of the run with its relevant document, as the run folder has them."""
    import json

    from studio.store import RunStore

    run_dir = Path(RunStore(studio_app.home / "runs.sqlite").get(run_id).run_dir)
    rows = [json.loads(line) for line in (run_dir / "data" / "eval.jsonl").read_text().splitlines()]
    return {row["anchor"].strip(): row["positive"].strip() for row in rows}


def query_text(page) -> str:
    return page.locator("#compare-query textarea, #compare-query input").first.input_value()


def marked_answers(page, columns=("#compare-base", "#compare-trained")) -> list[str]:
    """The document of the row marked relevant in the base column, then in the fine-tuned one (or in `columns`)."""
    from studio.tabs.compare import RELEVANT

    marked = []
    for column in columns:
        rows = page.locator(f"{column} [role=row]").filter(has_text=RELEVANT)
        marked += [rows.nth(i).locator("[role=gridcell], td").last.inner_text().strip() for i in range(rows.count())]
    return marked


def finished_as(page, run_id: str, status: str) -> bool:
    text = status_text(page)
    return run_id in text and status in text


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


def test_runs_tab_lists_every_run_and_overlays_two_curves(page, studio_app):
    """Makes its own runs through the API (two that complete, one cancelled while it waits in the queue),
    so it holds whichever tests ran before it."""
    from gradio_client import Client

    client = Client(studio_app.url, verbose=False)
    quick = {"max_steps": 6, "batch_size": 8, "max_seq_length": 64, "evaluate": False}
    curves = [client.predict({**quick, "seed": seed}, "sample", api_name="/start_run")["run_id"]
              for seed in (1, 2)]  # two seeds: two curves to tell apart in the overlay
    cancelled = client.predict({**quick, "max_steps": 400}, "sample", api_name="/start_run")["run_id"]
    assert client.predict(cancelled, api_name="/stop_run")["status"] == "stopped"  # queued behind the two above
    for run_id in curves:
        done = finished_api_run(client, run_id)
        assert done["status"] == "completed", (done["error"], done["hint"])

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


def number_in(page, label: str) -> float:
    return float(page.get_by_label(label, exact=True).input_value())


def command_text(page) -> str:
    return page.locator("#train-command textarea").input_value()


def no_run_active(studio_app) -> bool:
    from studio.store import RunStore

    return not RunStore(studio_app.home / "runs.sqlite").list(("running", "queued"))


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


def pick_task(page, task: str) -> None:
    """Pick `task` on the Model tab, once the page's own start-up (which shows the latest run's settings) is done:
    a click while it runs can be undone by it."""
    open_tab(page, "Model")
    radio = page.get_by_role("radio", name=task)

    def picked() -> bool:
        if not radio.is_checked():
            radio.click()
        return radio.is_checked()

    wait_for(picked, 60, f"the {task} task picked")


def start_the_tasks_demo_preset(page, studio_app, task: str, sample_button: str, roles: dict) -> str:
    """Pick `task` on the Model tab, load its sample on the Data tab (its roles guessed as `roles` says), press the
    demo preset and Start; returns the run's id once the Train tab shows it."""
    before = run_ids(studio_app)
    pick_task(page, task)
    open_tab(page, "Data")
    page.get_by_role("button", name=sample_button).click()
    page.locator("#data-summary").get_by_text("rows").first.wait_for()
    for label, column in roles.items():
        wait_for(lambda: page.get_by_label(label, exact=True).input_value() == column, 30, f"{label} to be {column}")
    open_tab(page, "Train")
    from studio.tabs.train import DEMO_PRESETS

    page.locator("#demo-preset").click()
    page.locator("#demo-preset-note").get_by_text(f"Set: {task.lower()}").wait_for()
    steps = DEMO_PRESETS[task.lower()][2]["max_steps"]
    wait_for(lambda: number_in(page, "Max steps") == steps, 30, "the preset's steps in the form")
    page.locator("#start-training").click()
    try:
        run_id = wait_for(lambda: run_ids(studio_app) - before, 60, "the new run in the registry").pop()
    except AssertionError as timed_out:  # say what the page showed instead
        raise AssertionError(f"{timed_out}; the Train tab says: {status_text(page)!r}; "
                             f"{page.locator('.error-box, #train-error').all_inner_texts()}") from None
    page.locator("#train-status").get_by_text(run_id).wait_for()
    assert f"--task {task.lower()}" in command_text(page)
    return run_id


def train_the_tasks_demo_preset(page, studio_app, task: str, sample_button: str, roles: dict) -> tuple[str, str]:
    """`start_the_tasks_demo_preset`, then (run id, the status line) once the run completed and the Runs tab lists
    it with its task."""
    run_id = start_the_tasks_demo_preset(page, studio_app, task, sample_button, roles)
    wait_for(lambda: finished_as(page, run_id, "completed") or finished_as(page, run_id, "failed"), 3 * RUN_TIMEOUT,
             "the demo preset's run to finish")
    status = status_text(page)
    assert "completed" in status, status
    open_tab(page, "Runs")
    page.get_by_role("button", name="Refresh").click()
    row = page.locator("#runs-table [role=row]").filter(has_text=run_id)
    wait_for(lambda: task.lower() in row.inner_text(), 30, "the run's task in the Runs table")
    return run_id, status


def gain(status: str, metric: str) -> tuple[float, float]:
    """(base, trained) as the Train tab's status line says them: "NDCG@10 0.174 → 0.301"."""
    import re

    base, trained = re.search(rf"{re.escape(metric)} (\d+\.\d+) → \**(\d+\.\d+)", status).groups()
    return float(base), float(trained)


def test_a_newcomer_starts_the_reranker_demo_preset_and_stop_ends_it(page, studio_app):
    """The reranker's flow from the task choice to a running job: its roles guessed, its preset set, its command's
    task; then Stop. Not trained to the end here: that takes minutes on a CPU, and the preset does not yet beat the
    retriever's order there (NDCG@10 0.125 against 0.174 after 150 steps, 2026-12-02). The reranker's Compare view
    is the browser test below; a finished reranker run through the engine is tests/test_reranker.py's."""
    run_id = start_the_tasks_demo_preset(page, studio_app, "Reranker", "Use the demo sample",
                                         {"anchor (query)": "query", "positive (relevant text)": "document"})
    page.locator("#stop-training").click()
    wait_for(lambda: finished_as(page, run_id, "stopped"), 180, "the run to stop")


def test_a_newcomer_trains_the_classifier_demo_preset_and_it_beats_the_majority_class(page, studio_app):
    _run_id, status = train_the_tasks_demo_preset(page, studio_app, "Classifier", "Use the classifier sample",
                                                  {"text (what to classify)": "text",
                                                   "label (each text's class)": "section"})
    base, trained = gain(status, "accuracy")
    assert trained >= base + 0.2, f"the classifier preset did not visibly beat the majority class: {base} -> {trained}"


def pick_compare_run(page, run_id: str) -> None:
    """Open `run_id` in Compare: opening the tab picks the newest run; another is picked from the list."""
    open_tab(page, "Compare")
    shown = page.locator("#compare-run input")
    wait_for(lambda: shown.input_value(), 30, "the newest run picked")
    if run_id not in shown.input_value():
        shown.click()
        page.get_by_role("option").filter(has_text=run_id).click()



def debian(folder: str, split: str, rows: int, columns: dict):
    import pandas as pd

    from engine.bundled import ASSETS_DIR

    table = pd.read_json(ASSETS_DIR / folder / f"{split}.jsonl", lines=True).rename(columns=columns)
    return table[list(columns.values())].head(rows)


@pytest.fixture(scope="module")
def reranker_run(studio_app, tmp_path_factory):
    """A tiny cross-encoder (a new head, so the base is the retriever's order), a few steps on mined negatives."""
    from studio_helpers import register_finished_run
    from tiny_models import build_tiny_model

    roles = {"query": "anchor", "document": "positive"}
    return register_finished_run(studio_app.home, "compare-reranker", {
        "task": "reranker", "model": str(build_tiny_model("bert", tmp_path_factory.mktemp("tiny") / "bert")),
        "method": "full", "max_steps": 3, "batch_size": 8, "learning_rate": 1e-3, "negatives": 2,
        "max_seq_length": 64}, debian("debian-pairs", "train", 60, roles), debian("debian-pairs", "test", 30, roles))


@pytest.fixture(scope="module")
def classifier_run(studio_app):
    """The bundled MiniLM as a classifier of two Debian sections, enough steps to beat the majority class."""
    import pandas as pd

    from studio_helpers import register_finished_run

    def two_sections(split, games, sound):
        rows = debian("debian-sections", split, 10_000, {"text": "text", "section": "label"})
        return pd.concat([rows[rows["label"] == "games"].head(games), rows[rows["label"] == "sound"].head(sound)]
                         ).sample(frac=1.0, random_state=0)

    return register_finished_run(studio_app.home, "compare-classifier", {
        "task": "classifier", "model": "sentence-transformers/all-MiniLM-L6-v2", "max_steps": 8, "batch_size": 8,
        "learning_rate": 2e-3, "max_seq_length": 64}, two_sections("train", 50, 40), two_sections("test", 12, 8))


def test_a_reranker_run_in_compare_shows_the_retrievers_top_20_and_the_fine_tuned_order(page, studio_app,
                                                                                       reranker_run):
    from studio.tabs.compare import RELEVANT

    pick_compare_run(page, reranker_run.id)
    page.locator("#compare-reranker").wait_for()
    assert not page.locator("#compare-embedding").is_visible()
    wait_for(lambda: "NDCG@10" in page.locator("#compare-rerank-metrics").inner_text(), 60, "the metrics table")
    page.locator("#compare-rerank-note").get_by_text("Measured on 30 held-out queries").wait_for()
    query_box = page.locator("#compare-rerank-query textarea, #compare-rerank-query input").first
    first = wait_for(lambda: query_box.input_value(), 60, "an example query in the query box")
    answers = held_out_answers(studio_app, reranker_run.id)
    note = page.locator("#compare-rerank-relevant")
    wait_for(lambda: "with the fine-tuned reranker" in note.inner_text() or "did not bring" in note.inner_text(),
             RUN_TIMEOUT, "where the query's answer ranks")
    if "did not bring" not in note.inner_text():  # the retriever found it: marked at the rank the note says
        (marked,) = page.locator("#compare-retriever [role=row]").filter(has_text=RELEVANT).all()
        cells = marked.locator("[role=gridcell], td")
        assert cells.last.inner_text().strip() == answers[first]
        assert f"ranks {cells.first.inner_text().strip()} in the retriever's order" in note.inner_text()
    assert page.locator("#compare-retriever [role=row]").nth(1).inner_text().startswith("1")
    assert any(marker in page.locator("#compare-rerank-trained").inner_text() for marker in ("▲", "▼", "="))
    assert not page.locator("#compare-rerank-base").is_visible()  # a new head: the base is the retriever's order
    assert "the retriever's own order" in page.locator("#compare-rerank-note").inner_text()

    query_box.fill("how do I play music from the terminal?")
    page.locator("#compare-rerank").click()
    note.get_by_text("not one of the held-out ones").wait_for()
    assert RELEVANT not in page.locator("#compare-rerank-trained").inner_text()


def test_a_classifier_run_in_compare_shows_both_predictions_and_what_training_put_right(page, classifier_run):
    pick_compare_run(page, classifier_run.id)
    page.locator("#compare-classifier").wait_for()
    wait_for(lambda: "Macro-F1" in page.locator("#compare-class-metrics").inner_text(), 60, "the metrics table")
    page.locator("#compare-class-note").get_by_text("majority class 'games'").wait_for()
    page.locator("#compare-confusion .js-plotly-plot").wait_for()
    assert "of 20 right" in page.locator("#compare-confusion").inner_text()
    wait_for(lambda: "Held-out label" in page.locator("#compare-prediction").inner_text(), RUN_TIMEOUT,
             "both models' predictions")
    assert "always (majority class)" in page.locator("#compare-predictions").inner_text()

    fixed = page.locator("#compare-newly-right [role=row]")
    wait_for(lambda: fixed.count() > 1, RUN_TIMEOUT, "the texts training put right")
    row = fixed.nth(1).locator("[role=gridcell], td")
    opened, label = row.first.inner_text().strip(), row.nth(1).inner_text().strip()
    row.first.click()  # a row opens its text
    text_box = page.locator("#compare-text textarea")
    wait_for(lambda: text_box.input_value().strip() == opened, 60, "the clicked text in the text box")
    note = page.locator("#compare-prediction")
    wait_for(lambda: "the fine-tuned model gets it right, the base did not" in note.inner_text(), 60,
             "the opened text's verdict")
    assert f"Held-out label: {label}" in note.inner_text()

    text_box.fill("A fast-paced arcade shooter with ten levels")
    page.locator("#compare-classify").click()
    wait_for(lambda: "not one of the held-out ones" in note.inner_text(), 60, "the typed text's predictions")
