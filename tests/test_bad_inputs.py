"""Every case of the bad-input corpus (tests/bad_inputs.py) through the three ways data come in: `lacker train`
(in-process for speed, and a few as real processes), the studio's Data tab (its upload and mapping handlers, and
the Train tab's Start where a setting such as the loss matters) and the studio's start_run API. Each must name the
problem (and the row and column where there is one), show no traceback, queue no run, and leave the studio
answering. Then one good file with a label column gives the same prepared rows through all three."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gradio as gr
import pandas as pd
import pytest
from gradio_client import Client, handle_file

from bad_inputs import BadInput, cases, reranker_cases, run_cli
from studio.app import build_app
from studio.tabs.data import NONE, ROLES
from studio_helpers import StudioProcess, make_studio

CASES = cases()
CASES_BY_NAME = {case.name: case for case in CASES}
# Every task's cases through the studio; the reranker's own go through the CLI in tests/test_reranker.py.
STUDIO_CASES = CASES + reranker_cases()
REPO = Path(__file__).resolve().parent.parent
# A few of every kind, as real `lacker train` processes and through a real studio server over HTTP.
IN_REAL_PROCESSES = ("tsv-named-csv", "json-deeply-nested", "nul-byte-in-csv", "score-a-billion")


def column_spec(mapping: dict) -> str:
    return ",".join(f"{role}={column}" for role, columns in mapping.items()
                    for column in (columns if isinstance(columns, list) else [columns]))


def train_argv(case: BadInput, path: Path, output: Path) -> list[str]:
    argv = ["train", "--data", str(path), "--output", str(output)]
    if case.mapping:
        argv += ["--columns", column_spec(case.mapping)]
    for key, value in case.settings.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def assert_names_the_problem(case: BadInput, shown: str) -> None:
    missing = [words for words in case.expect if words not in shown]
    assert not missing, f"{case.name}: {missing} not in what the user sees:\n{shown}"
    assert "Traceback" not in shown


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    home = tmp_path_factory.mktemp("studio") / "runs"
    studio = make_studio(home)
    studio.runner.command = lambda run_dir: [sys.executable, "-c", "pass"]  # a run's data are written; none trains
    studio.demo = build_app(studio)
    studio.handlers = {f.api_name: f for f in studio.demo.fns.values() if f.api_name}
    return studio


@pytest.fixture(scope="module")
def corpus(studio):
    """Each case's file, inside the studio's home so that start_run may read it."""
    folder = studio.settings.home / "corpus"
    return {case.name: case.write(folder) for case in STUDIO_CASES}


def call(studio, api_name: str, *args):
    return studio.handlers[api_name].fn(*args)


def page_text(outputs) -> str:
    """What a handler puts on the page: its strings and the text of its updated components."""
    shown = []
    for value in outputs if isinstance(outputs, tuple) else (outputs,):
        if isinstance(value, str):
            shown.append(value)
        elif isinstance(value, dict) and isinstance(value.get("value"), str) and value.get("visible", True):
            shown.append(value["value"])
    return "\n".join(shown)


def dropdown_values(mapping: dict) -> list:
    """The Data tab's role dropdowns (studio.tabs.data.ROLES: anchor, positive, negative, score, label, text,
    text_pair) set to `mapping`."""
    negatives = mapping.get("negative") or []
    values = {"negative": [negatives] if isinstance(negatives, str) else negatives}
    return [values.get(role, mapping.get(role) or (NONE if role in ("score", "label", "text_pair") else None))
            for role in ROLES]


def role_values(outputs) -> list:
    """The role dropdowns' values as a Data tab load set them (they follow the source, its text and the preview)."""
    return [update["value"] for update in outputs[3:3 + len(ROLES)]]


def start_from_the_page(studio, source: dict, roles: list, task: str = "embedding", **settings):
    """The Train tab's Start with its form as the page first shows it, the task, the data and roles of the Data
    tab, and `settings` in the fields labelled for them."""
    block_fn = studio.handlers["start_training"]
    labels = {"loss": "Loss (default from the column roles)"}
    values = [component.value for component in block_fn.inputs]
    for key, value in settings.items():
        values[next(i for i, c in enumerate(block_fn.inputs) if getattr(c, "label", None) == labels[key])] = value
    values[0], values[2], values[3:3 + len(ROLES)] = task, source, roles  # the task, the model, the data, its roles
    return block_fn.fn(*values)


def run_cli_here(argv: list[str], monkeypatch) -> tuple[int, str]:
    """(exit code, stderr) of `lacker train` run in this process, leaving no SIGTERM handler or environment
    variable of its own behind."""
    for name in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS"):  # what cli.main sets, undone after the test
        monkeypatch.setenv(name, "1")
    code, _out, stderr = run_cli(argv)
    return code, stderr


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_the_cli_names_the_problem(case, corpus, tmp_path, monkeypatch):
    code, stderr = run_cli_here(train_argv(case, corpus[case.name], tmp_path / "run"), monkeypatch)
    assert code == 2, stderr
    assert "error:" in stderr
    assert_names_the_problem(case, stderr)


@pytest.mark.parametrize("name", IN_REAL_PROCESSES)
def test_lacker_train_in_its_own_process_names_the_problem(name, corpus, tmp_path):
    case = CASES_BY_NAME[name]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))}
    done = subprocess.run([sys.executable, "-m", "engine", *train_argv(case, corpus[name], tmp_path / "run")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 2, done.stderr
    assert_names_the_problem(case, done.stderr + done.stdout)


@pytest.mark.parametrize("case", STUDIO_CASES, ids=[case.name for case in STUDIO_CASES])
def test_the_data_tab_names_the_problem(case, corpus, studio):
    runs_before = len(studio.store.list())
    task = case.settings.get("task", "embedding")  # picked on the Model tab before the upload
    outputs = call(studio, "upload_data", str(corpus[case.name]), task)
    source = outputs[0] if isinstance(outputs[0], dict) and "kind" in outputs[0] else None
    shown = page_text(outputs)
    settings = {key: value for key, value in case.settings.items() if key != "task"}
    if source and (case.mapping or settings):
        roles = dropdown_values(case.mapping) if case.mapping else role_values(outputs)  # as the upload set them
        if case.mapping:
            shown = page_text(call(studio, "remap", source, task, *roles))
        if settings or task != "embedding":
            _run_id, error, _command = start_from_the_page(studio, source, roles, task, **settings)
            shown = page_text(error)
    assert_names_the_problem(case, shown)
    assert "--" not in shown, "a command-line flag on the page"
    assert str(studio.settings.home) not in shown, "a server path on the page"
    assert len(studio.store.list()) == runs_before


@pytest.mark.parametrize("case", STUDIO_CASES, ids=[case.name for case in STUDIO_CASES])
def test_the_start_run_api_names_the_problem(case, corpus, studio):
    runs_before = len(studio.store.list())
    config = {**case.settings, **({"columns": case.mapping} if case.mapping else {})}
    with pytest.raises(gr.Error) as refused:
        call(studio, "start_run", config, str(corpus[case.name]))
    assert_names_the_problem(case, refused.value.message)
    assert "--columns" not in refused.value.message
    assert len(studio.store.list()) == runs_before


def test_the_studio_still_answers_after_the_corpus(studio, corpus):
    for case in STUDIO_CASES:
        call(studio, "upload_data", str(corpus[case.name]), case.settings.get("task", "embedding"))
    _state, source, *_rest, error = call(studio, "use_sample", "embedding")
    assert "4,000 rows" in source and not error["visible"]
    assert isinstance(call(studio, "list_runs"), list)


def test_a_real_studio_refuses_bad_uploads_and_runs_and_stays_up(tmp_path):
    app = StudioProcess(tmp_path / "runs")
    try:
        client = Client(app.url, verbose=False)
        for name in IN_REAL_PROCESSES:
            case = CASES_BY_NAME[name]
            *_rest, error = client.predict(handle_file(str(case.write(tmp_path / "uploads"))), api_name="/upload_data")
            assert_names_the_problem(case, error["value"] if error["visible"] else "")
            with pytest.raises(Exception) as refused:
                client.predict(dict(case.settings), str(case.write(app.home / "corpus")), api_name="/start_run")
            assert_names_the_problem(case, str(refused.value))
        source, *_rest, error = client.predict(api_name="/use_sample")
        assert "4,000 rows" in source and not error["visible"]
        assert client.predict(api_name="/list_runs") == []
    finally:
        app.close()


# One good file, three entry points, the same prepared rows

LABELLED = "\ufeff" + "Question Text,Answer Text,Label\n" + "".join(
    f"what does tool {i} do?,tool {i} {'does task' if i % 3 else 'has nothing to do with'} {i},{int(i % 3 > 0)}\n"
    for i in range(40))


def read_run_rows(run_dir: str) -> tuple[list, list]:
    folder = Path(run_dir) / "data"
    return tuple(pd.read_json(folder / f, lines=True).to_dict("records") for f in ("train.jsonl", "eval.jsonl"))


def test_the_cli_the_api_and_the_data_tab_prepare_the_same_rows(studio, tmp_path):
    from engine.events import EventLog
    from engine.train import TrainConfig, _read_split

    path = studio.settings.home / "labelled" / "pairs.csv"  # with a byte order mark, as Excel saves CSV
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(LABELLED, encoding="utf-8")
    mapping = {"anchor": "Question Text", "positive": "Answer Text", "label": "Label"}

    outputs = call(studio, "upload_data", str(path), "embedding")
    roles = role_values(outputs)
    assert roles == dropdown_values(mapping), "the Data tab guesses every role, the label included"
    page_run_id, error, _command = start_from_the_page(studio, outputs[0], roles)
    assert not error["visible"], error["value"]
    page_run = studio.store.get(page_run_id)
    api_run = call(studio, "start_run", {"columns": mapping}, str(path))
    guessed_api_run = call(studio, "start_run", {}, str(path))

    config = TrainConfig(data=str(path), columns=mapping, eval_size=page_run.config["eval_size"],
                         seed=page_run.config["seed"], output_dir=str(tmp_path))
    from engine.tasks import task_module

    train_rows, held_out, summary = _read_split(config, task_module(config.task), EventLog(tmp_path / "events.jsonl"))
    assert summary.task == "labelled-pairs" and set(train_rows["label"]) == {0, 1}
    from_the_cli = (train_rows.to_dict("records"), held_out.to_dict("records"))
    assert read_run_rows(page_run.run_dir) == from_the_cli
    assert read_run_rows(api_run["run_dir"]) == from_the_cli
    assert read_run_rows(guessed_api_run["run_dir"]) == from_the_cli


def test_the_data_tab_maps_question_text_and_answer_text_and_shows_them_first(studio):
    path = studio.settings.home / "tickets" / "tickets.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("ticket_id,answer_text,section,question_text\n" + "".join(
        f"{i},reset it from settings page {i},billing,how do I reset thing {i}?\n" for i in range(20)))

    outputs = call(studio, "upload_data", str(path), "embedding")
    state, source, preview, anchor, positive, *_roles, summary, _histogram, _labels, error = outputs
    assert (anchor["value"], positive["value"]) == ("question_text", "answer_text")
    assert 'question_text (reads as "question")' in source and 'answer_text (reads as "answer")' in source
    assert not error["visible"] and "20 rows" in summary
    assert preview.columns.tolist()[:2] == ["question_text", "answer_text"]
    assert str(studio.settings.home) not in source, "the page names the file, not where the server keeps it"

    *_shown, error, preview = call(studio, "remap", state, "embedding", "answer_text", "question_text", [], NONE, NONE,
                                   None, NONE)
    assert not error["visible"]
    assert preview.columns.tolist()[:2] == ["answer_text", "question_text"]
