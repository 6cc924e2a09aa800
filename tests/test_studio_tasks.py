"""The studio's flow per task, through the handlers its buttons and boxes call (in this process; the workers it
would start do nothing): the Model tab's curated models and memory estimate per task, the Data tab's roles, guesses,
label chart and mined-negatives preview, the Train tab's losses, GPU count and demo presets, and the Runs tab's task,
restored by Open in Train."""

from __future__ import annotations

import re
import sys

import pytest

from engine.families import DEFAULT_MODEL
from studio import hardware
from studio.app import build_app
from studio.data_sources import DEMO_SAMPLE, SECTIONS_SAMPLE, read_run_eval
from studio.tabs.data import NONE, ROLES
from studio.tabs.model import describe_model, memory_summary
from studio.tabs.train import DEMO_PRESETS, plan_markdown
from studio_helpers import make_studio

MINILM = describe_model(DEFAULT_MODEL)


def built(home, monkeypatch, gpus: int = 0):
    """A studio on `home` whose runs only get their folders written, as a machine with `gpus` GPUs builds it."""
    monkeypatch.setattr(hardware, "gpu_count", lambda: gpus)
    monkeypatch.setattr(hardware, "gpu_name", lambda: "NVIDIA H200, 143771 MiB" if gpus else None)
    studio = make_studio(home)
    studio.runner.command = lambda run_dir: [sys.executable, "-c", "pass"]
    studio.demo = build_app(studio)
    studio.handlers = {f.api_name: f for f in studio.demo.fns.values() if f.api_name}
    return studio


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        yield built(tmp_path_factory.mktemp("tasks") / "runs", patch)


def call(studio, api_name: str, *args):
    return studio.handlers[api_name].fn(*args)


def name_of(component) -> str:
    """What a user knows a component by: "error" for an error box, else its label, else its elem_id."""
    if "lacker-error" in (getattr(component, "elem_classes", None) or []):
        return "error"
    return getattr(component, "label", None) or component.elem_id


def by_label(block_fn, values) -> dict:
    """A handler's outputs keyed by name_of their components (a handler returning a dict: its keys)."""
    if isinstance(values, dict):
        return {name_of(c): v for c, v in values.items()}
    values = values if isinstance(values, (tuple, list)) else [values]
    return {name_of(c): v for c, v in zip(block_fn.outputs, values)}


def shown_roles(outputs: dict) -> dict:
    """The role dropdowns a load shows, by label, with the column each holds."""
    return {label: update.get("value") for label, update in outputs.items()
            if isinstance(update, dict) and update.get("visible") and "choices" in update and label != "Model: pick "
            "a curated one or type any Hugging Face Hub id"}


def test_each_task_offers_its_own_curated_models(studio):
    fn = studio.handlers["select_task"]
    reranker = by_label(fn, fn.fn("reranker", DEFAULT_MODEL))
    offered = [choice[0] if isinstance(choice, (tuple, list)) else choice
               for choice in reranker["Model: pick a curated one or type any Hugging Face Hub id"]["choices"]]
    assert {"BAAI/bge-reranker-v2-m3", "cross-encoder/ms-marco-MiniLM-L6-v2", DEFAULT_MODEL} <= set(offered)
    assert "BAAI/bge-large-en-v1.5" not in offered
    table = {row[0]: row for row in reranker["Curated models for this task"]}
    assert "new score head" in table[DEFAULT_MODEL][-1] and "keeps its" in table["BAAI/bge-reranker-v2-m3"][-1]
    assert "ships with Lacker Studio" in table["lacker-studio/minilm-l6-starter-reranker"][-1]  # no download
    classifier = by_label(fn, fn.fn("classifier", "someone/any-encoder"))
    choices = classifier["Model: pick a curated one or type any Hugging Face Hub id"]
    assert {row[0] for row in classifier["Curated models for this task"]} == {
        DEFAULT_MODEL, "answerdotai/ModernBERT-base", "answerdotai/ModernBERT-large"}
    assert choices["value"] == "someone/any-encoder"  # any hub id trains as any task


def gigabytes(text: str) -> float:
    return float(re.search(r"~([\d.]+) GB", text).group(1))


def test_the_memory_estimate_follows_the_task_and_the_gpus():
    large = describe_model("BAAI/bge-reranker-v2-m3")
    pairs = memory_summary(large, "lora", 32, 512, 16, task="reranker")
    embedding = memory_summary(large, "lora", 32, 512, 16, task="embedding")
    assert "(query, document) pairs" in pairs
    assert gigabytes(pairs) < 0.7 * gigabytes(embedding)  # a pair is one sequence; a bi-encoder embeds two texts
    on_four = memory_summary(large, "full", 32, 512, 16, task="reranker", gpus=4)
    assert "on each of 4 GPUs (a global batch of 128)" in on_four
    assert gigabytes(on_four) > gigabytes(memory_summary(large, "full", 32, 512, 16, task="reranker"))


def test_the_classifier_sample_maps_text_and_label_and_charts_the_labels(studio):
    fn = studio.handlers["use_sections_sample"]
    loaded = by_label(fn, fn.fn("classifier"))
    assert shown_roles(loaded) == {"text (what to classify)": "text", "text pair (a second text), optional": NONE,
                                   "label, optional": "section"}
    assert loaded["label, optional"]["label"] == "label (each text's class)"
    assert "text: text (its name); label: section (its name)" in loaded["data-source"]
    assert "8 labels" in loaded["data-summary"] and "CrossEntropyLoss" in loaded["data-summary"]
    chart = loaded["Rows per label"]
    assert chart["visible"] and set(chart["value"].data[0].x) == {"admin", "devel", "games", "graphics", "libs",
                                                                  "python", "sound", "web"}
    assert not loaded["error"]["visible"]


def test_switching_task_maps_the_data_again_and_says_what_is_wrong_for_the_page(studio):
    loaded = call(studio, "use_sample", "embedding")  # Debian pairs: package, query, document
    source, roles = loaded[0], [update["value"] for update in loaded[3:3 + len(ROLES)]]
    fn = studio.handlers["retask_data"]
    retasked = fn.fn("classifier", source, *roles)
    as_classifier = by_label(fn, retasked)
    assert shown_roles(as_classifier) == {"text (what to classify)": "document",
                                          "text pair (a second text), optional": NONE, "label, optional": NONE}
    assert "pick the label column below" in as_classifier["data-source"]  # no column name says it holds classes
    assert not as_classifier["error"]["visible"]  # nothing the user did is wrong yet

    classifier_roles = [update["value"] for update in retasked[3:3 + len(ROLES)]]
    remapped = by_label(studio.handlers["remap"], call(studio, "remap", source, "classifier", *classifier_roles))
    shown = remapped["error"]["value"]
    assert remapped["error"]["visible"] and "label" in shown and "Pick the right columns below" in shown
    assert "--" not in shown

    as_reranker = by_label(fn, fn.fn("reranker", source, *roles))
    assert shown_roles(as_reranker)["anchor (query)"] == "query" and not as_reranker["error"]["visible"]
    assert "mines hard negatives" in as_reranker["data-summary"]


def test_the_mined_negatives_preview_shows_what_training_gets(studio):
    loaded = call(studio, "use_sample", "reranker")
    roles = [update["value"] for update in loaded[3:3 + len(ROLES)]]
    error, note, table = call(studio, "preview_mining", loaded[0], "reranker", 2, *roles)
    assert not error["visible"], error["value"]
    assert table["visible"] and table["value"]["headers"] == ["query", "positive", "negative 1", "negative 2"]
    rows = table["value"]["data"]
    assert rows and all(row[1] not in row[2:] and row[2] for row in rows)  # a negative is never the positive
    assert "sampled from 4,000" in note and "with the bundled all-MiniLM-L6-v2" in note


def start(studio, task: str, source: dict, roles: list, **settings) -> tuple:
    """The Train tab's Start with the page's form as it opens, the task, the data, the roles, and `settings` in the
    boxes labelled for them."""
    block_fn = studio.handlers["start_training"]
    values = [component.value for component in block_fn.inputs]
    values[0:3 + len(ROLES)] = [task, describe_model(DEFAULT_MODEL, task=task), source, *roles]
    for label, value in settings.items():
        values[next(i for i, c in enumerate(block_fn.inputs) if getattr(c, "label", None) == label)] = value
    return block_fn.fn(*values)


def test_a_classifier_run_from_the_page_trains_on_text_and_label(studio):
    loaded = call(studio, "use_sections_sample", "classifier")
    roles = [update["value"] for update in loaded[3:3 + len(ROLES)]]
    losses = call(studio, "loss_choices", "classifier", *roles, None)
    assert losses["choices"] == ["CrossEntropyLoss"] or [c[0] for c in losses["choices"]] == ["CrossEntropyLoss"]
    run_id, error, command = start(studio, "classifier", loaded[0], roles, **{
        "Train for": "max steps", "Max steps": 5, "Class weights: rare labels count as much in the loss as common ones": True})
    assert not error["visible"], error["value"]
    assert "--task classifier" in command and "--columns text=text,label=section" in command
    assert "--class-weights" in command
    run = studio.store.get(run_id)
    assert run.config["task"] == "classifier" and run.config["class_weights"]
    held_out = read_run_eval(run.run_dir)
    assert list(held_out.columns) == ["text", "label"] and 300 <= len(held_out) <= 450  # of the sample's test split

    table = call(studio, "refresh_all")[0]
    row = next(row for row in table if row[0] == run_id)
    assert row[2] == "classifier" and row[8] == "accuracy"
    opened = call(studio, "show_run", run_id)
    named = by_label(None, opened)
    assert named["What to train"] == "classifier" and named["Max steps"] == 5
    assert named["Class weights: rare labels count as much in the loss as common ones"] is True
    assert named["text (what to classify)"]["value"] == "text" and named["text (what to classify)"]["visible"]


def test_a_reranker_run_offers_the_rerankers_losses(studio):
    loaded = call(studio, "use_demo_sample", "reranker")
    roles = [update["value"] for update in loaded[3:3 + len(ROLES)]]
    losses = call(studio, "loss_choices", "reranker", *roles, "MultipleNegativesRankingLoss")
    names = [c[0] if isinstance(c, (tuple, list)) else c for c in losses["choices"]]
    assert names[0] == "BinaryCrossEntropyLoss" and "LambdaLoss" in names
    assert losses["value"] == "MultipleNegativesRankingLoss"  # a choice the task has too stays
    run_id, error, command = start(studio, "reranker", loaded[0], roles, **{"Train for": "max steps", "Max steps": 5,
                                                                             "Hard negatives mined per pair": 5})
    assert not error["visible"], error["value"]
    assert "--task reranker" in command and "--negatives 5" in command
    assert studio.store.get(run_id).config["negatives"] == 5


@pytest.mark.parametrize("task", ["reranker", "classifier"])
def test_the_demo_preset_of_a_task_loads_its_sample_and_says_so(studio, task):
    fn = studio.handlers["demo_preset"]
    shown = by_label(fn, fn.fn(task))
    sample, mapping, settings = DEMO_PRESETS[task]
    assert sample.location in shown["data-source"] and not shown["error"]["visible"]
    model = {"reranker": "lacker-studio/minilm-l6-starter-reranker", "classifier": DEFAULT_MODEL}[task]
    assert shown["Max steps"] == settings["max_steps"] and shown["Model: pick a curated one or type any Hugging "
                                                                 "Face Hub id"] == model
    assert f"Set: {task} **{model.split('/')[-1]}**" in shown["demo-preset-note"]
    assert sample.name in shown["demo-preset-note"]
    assert all(shown[label]["value"] == column for label, column in (
        ("text (what to classify)" if role == "text" else "anchor (query)" if role == "anchor" else
         "positive (relevant text)" if role == "positive" else "label, optional", column)
        for role, column in mapping.items()))


def test_with_several_gpus_the_train_tab_offers_how_many(tmp_path, monkeypatch):
    studio = built(tmp_path / "runs", monkeypatch, gpus=4)
    gpus = next(c for c in studio.demo.blocks.values() if getattr(c, "elem_id", None) == "gpus")
    assert gpus.visible and gpus.maximum == 4
    loaded = call(studio, "use_sections_sample", "classifier")
    roles = [update["value"] for update in loaded[3:3 + len(ROLES)]]
    run_id, error, command = start(studio, "classifier", loaded[0], roles, **{
        "Train for": "max steps", "Max steps": 5, "GPUs to train on (data parallel; this machine has 4)": 2})
    assert not error["visible"], error["value"]
    assert "--gpus 2" in command and studio.store.get(run_id).config["gpus"] == 2

    def plan(gpu_count, mode="epochs"):
        return plan_markdown(studio, MINILM, SECTIONS_SAMPLE.to_dict(), 0.1, "lora", mode, 1.0, 40, 32, 64, False,
                             True, 300, 16, "classifier", gpu_count)

    one, two = plan(1), plan(2)
    steps = [int(re.search(r"\*\*([\d,]+) steps", text).group(1).replace(",", "")) for text in (one, two)]
    assert steps == [103, 52]  # one pass over the 3,294 training texts at 32 a GPU
    assert "On 2 GPUs: each takes a batch of 32 a step, so a step trains on 64 rows." in two


def test_without_several_gpus_there_is_no_gpu_choice(studio):
    gpus = next(c for c in studio.demo.blocks.values() if getattr(c, "elem_id", None) == "gpus")
    assert not gpus.visible


def test_the_embedding_preset_still_trains_the_demo_sample(studio):
    fn = studio.handlers["demo_preset"]
    shown = by_label(fn, fn.fn("embedding"))
    assert DEMO_SAMPLE.location in shown["data-source"] and shown["anchor (query)"]["value"] == "query"


def test_the_api_guesses_the_tasks_columns_and_reports_the_task(studio):
    run = call(studio, "start_run", {"task": "classifier", "max_steps": 5, "evaluate": False}, "sections")
    assert run["task"] == "classifier"
    assert studio.source_of(studio.store.get(run["run_id"]))[1] == {"text": "text", "label": "section"}
    assert next(r for r in call(studio, "list_runs") if r["run_id"] == run["run_id"])["task"] == "classifier"


def test_a_run_on_the_first_rows_of_a_sample_names_them_in_its_shell_command(studio):
    shown = studio.handlers["demo_preset"].fn("reranker")
    source = next(value for component, value in shown.items() if isinstance(value, dict) and "kind" in value)
    assert source["rows"] == 1000
    roles = [shown[component]["value"] for component in studio.handlers["start_training"].inputs[3:3 + len(ROLES)]]
    run_id, error, command = start(studio, "reranker", source, roles, **{"Train for": "max steps", "Max steps": 5})
    assert not error["visible"], error["value"]
    copy = f"{studio.store.get(run_id).run_dir}/data/train-source.jsonl"
    assert f"--data {copy}" in command
    with open(copy) as rows:
        assert sum(1 for _ in rows) == 1000  # what the run trains on, in the sample's own columns


@pytest.mark.parametrize("columns, expected", [
    (["package", "text", "section"], {"text": "text", "label": "section"}),
    (["title", "Description", "category"], {"text": "Description", "label": "category"}),
    (["premise", "hypothesis", "label"], {"text": "premise", "text_pair": "hypothesis", "label": "label"}),
    (["sentence1", "sentence2", "class"], {"text": "sentence1", "text_pair": "sentence2", "label": "class"}),
    (["id", "body"], {"text": "body"}),  # no column says it holds classes: left for the user to pick
])
def test_a_classifiers_columns_are_guessed_from_their_names(columns, expected):
    from engine.data import column_guess

    guess = column_guess(columns, "classifier")
    assert guess.mapping == expected
    assert all(guess.reasons[role] for role in expected)  # each pick says why
