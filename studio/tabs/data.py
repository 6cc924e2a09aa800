"""Data tab: upload a file, name a Hugging Face dataset or take one of the bundled samples; preview, map
columns to the roles the task needs (a dropdown per role, pre-filled by the engine's guess, which says why it picked
each column), validate with the task's own checks, and choose the held-out size. A classifier's labels get a chart of
their rows; a reranker trained on pairs gets a preview of the hard negatives its training will mine. Messages here
name files by their base names and never a command-line flag."""

from __future__ import annotations

import types

import gradio as gr

from engine import data as data_layer
from engine.config import bounds, default
from engine.data import DataError, MappingError
from engine.tasks import task_module
from studio import charts
from studio.data_sources import (DATA_SUFFIXES, DEMO_SAMPLE, SAMPLE, SECTIONS_SAMPLE, DataSource, held_out_split,
                                 read_source, source_from_text, source_from_upload)
from studio.settings import PathNotAllowed
from studio.ui import error_box, hide_error, show_error

NONE = "(none)"
PREVIEW_ROWS = 8
# One dropdown per role some task maps (engine.tasks' ROLES), in this order: mapping_from takes their values so.
ROLES = ("anchor", "positive", "negative", "score", "label", "text", "text_pair")
PAIR_ROLES = ("anchor", "positive", "negative", "score", "label")  # the embedding's and the reranker's
CLASSIFIER_ROLES = ("text", "text_pair", "label")
REQUIRED = {"classifier": ("text", "label")}  # a pair task needs anchor and positive
ROLE_LABELS = {"anchor": "anchor (query)", "positive": "positive (relevant text)",
               "negative": "negative(s), optional", "score": "score, optional", "label": "label, optional",
               "text": "text (what to classify)", "text_pair": "text pair (a second text), optional"}
CLASSIFIER_LABEL = "label (each text's class)"
DATA_INTROS = {
    "embedding": "Training data are pairs: an **anchor** (a query) and a **positive** (the text it should find), "
                 "optionally **negatives** (texts it should not find), a **score** (how similar the two are) or a "
                 "**label** (1 for a matching pair, 0 for one that does not match).",
    "reranker": "Training data are (query, document) pairs: an **anchor** (the query) and a **positive** (a document "
                "that answers it). With pairs only, training mines **hard negatives** (documents that look relevant "
                "but belong to other queries) for each; or bring **negatives**, a 0/1 **label** or a 0..1 **score**.",
    "classifier": "Training data are **texts** with a **label** each (names such as `games` or whole numbers; at least "
                  "two classes), optionally a **text pair** (a second text read with the first).",
}
PREVIEW_MINING_ROWS = 256  # the pairs the mined-negatives preview mines among: seconds on a CPU
PREVIEW_QUERIES = 4


def roles_of(task: str) -> tuple[str, ...]:
    return CLASSIFIER_ROLES if task == "classifier" else PAIR_ROLES


def required_roles(task: str) -> tuple[str, ...]:
    return REQUIRED.get(task, ("anchor", "positive"))


def mapping_from(task, anchor, positive, negative, score, label, text, text_pair) -> dict:
    """Role -> column from the dropdowns (one value per role of ROLES), for the roles `task` maps; roles left empty
    are left out."""
    negatives = [n for n in (negative or []) if n and n != NONE]
    values = {"anchor": anchor, "positive": positive, "negative": negatives[0] if len(negatives) == 1 else negatives,
              "score": score, "label": label, "text": text, "text_pair": text_pair}
    return {role: values[role] for role in roles_of(task) if values[role] and values[role] != NONE}


def mapped_columns(mapping: dict) -> list[tuple[str, str]]:
    """(role, column) for every column a mapping of any task names, negatives one by one."""
    return [(role, column) for role, columns in mapping.items()
            for column in (columns if isinstance(columns, list) else [columns]) if column]


def page_message(error: Exception) -> str:
    """A data problem worded for the page: the data layer's message (a file by its base name, no flags), and for a
    mapping problem a pointer at the dropdowns instead of the CLI's --columns."""
    if isinstance(error, MappingError):
        return f"{error} Pick the right columns below."
    if isinstance(error, (DataError, PathNotAllowed)):
        return str(error)
    return f"the file could not be read ({getattr(error, 'strerror', None) or type(error).__name__}). Upload it again."


def mapped_first(table, mapping: dict):
    """The preview's first rows with the mapped columns first, in role order, then the rest."""
    mapped = [column for column in dict.fromkeys(c for _, c in mapped_columns(mapping)) if column in table.columns]
    return table[mapped + [c for c in table.columns if c not in mapped]].head(PREVIEW_ROWS)


def guess_markdown(guess, task: str = "embedding") -> str:
    """What the guess picked and why, or what is left for the user to pick."""
    missing = [role for role in required_roles(task) if role not in guess.mapping]
    if not missing:
        return f"Columns picked from their names: {guess.describe()}. Change them below if they are wrong."
    meanings = {**data_layer.ROLE_MEANINGS, **task_module("classifier").ROLE_MEANINGS}
    picked = f" (picked: {guess.describe()})" if guess.mapping else ""
    return (f"No column name says which holds {' and which '.join(meanings[r] for r in missing)}"
            f"{picked}: pick the {' and '.join(missing)} column{'s' if len(missing) > 1 else ''} below.")


def used_markdown(mapping: dict) -> str:
    return "; ".join(f"{role}: {column}" for role, column in mapped_columns(mapping))


def summary_markdown(summary: dict, task: str = "embedding") -> str:
    lines = [f"**{summary.get('rows', 0):,} rows** · task **{summary.get('task')}** · default loss "
             f"**{summary.get('loss')}** · duplicates: {summary.get('duplicates', 0):,}"]
    empty = summary.get("empty_values") or {}
    if isinstance(empty, dict):
        empty_text = ", ".join(f"{col}: {n:,}" for col, n in empty.items() if n) or "none"
    else:
        empty_text = f"{empty:,}"
    lines.append(f"Empty values: {empty_text}")
    labels = summary.get("labels") or {}
    if labels:
        lines.append(f"**{len(labels)} labels:** " + ", ".join(f"{label} ({n:,})" for label, n in labels.items()))
    if task == "reranker" and summary.get("task") == "pairs":
        lines.append("No negatives in the data: training mines hard negatives for each pair with the bundled "
                     "all-MiniLM-L6-v2 (**Preview mined negatives** shows some).")
    for warning in summary.get("warnings") or []:
        lines.append(f"⚠️ {warning}")
    return "\n\n".join(lines)


class MiningNotes:
    """What the reranker's mining reports (engine.events.EventLog's status / log / emit), kept for the page."""

    def __init__(self):
        self.mined: dict = {}

    def status(self, stage: str, message: str = "") -> None:
        pass

    def log(self, message: str) -> None:
        pass

    def emit(self, event: str, **fields) -> None:
        if event == "mining":
            self.mined = fields


def mined_preview(table, mapping: dict, negatives: int, seed: int = 42):
    """(rows for the preview table, a note): the reranker task's own mining on a sample of the pairs."""
    reranker = task_module("reranker")
    rows = reranker.prepare(table, mapping)
    sampled = rows.sample(n=min(PREVIEW_MINING_ROWS, len(rows)), random_state=seed).reset_index(drop=True)
    notes = MiningNotes()
    mined = reranker.mine_negatives(sampled, types.SimpleNamespace(negatives=int(negatives), mine_with=None), notes)
    columns = reranker.negative_columns(mined)
    found = mined.dropna(subset=columns[:1]).head(PREVIEW_QUERIES)
    shown = [[row.anchor, row.positive, *[getattr(row, c) or "" for c in columns]] for row in found.itertuples()]
    note = (f"Mined {notes.mined.get('negatives', 0):,} hard negatives for {len(sampled):,} pairs sampled from "
            f"{len(rows):,} in {notes.mined.get('seconds', 0):.1f} s with the bundled all-MiniLM-L6-v2. Training "
            f"mines among all {len(rows):,} training documents, so its negatives are harder still; a negative that "
            "scores too close to the positive is skipped as a likely unlabelled answer.")
    return shown, ["query", "positive", *[f"negative {i}" for i in range(1, len(columns) + 1)]], note


def build(studio, ui) -> None:
    settings = studio.settings
    intro = gr.Markdown(DATA_INTROS["embedding"], elem_id="data-intro")
    with gr.Row():
        with gr.Column():
            with gr.Row():
                demo_btn = gr.Button("Use the demo sample: computing acronyms → what they stand for (the base "
                                     "model is weak on it)", variant="primary", elem_id="use-demo-sample")
                sample_btn = gr.Button("Use the bundled sample: Debian package summaries → descriptions (larger)",
                                       elem_id="use-sample")
                sections_btn = gr.Button("Use the classifier sample: Debian package descriptions → their section",
                                         variant="primary", elem_id="use-sections-sample", visible=False)
            upload = gr.File(label=f"...or upload CSV / TSV / JSON / JSONL / Parquet (up to {settings.max_upload_mb} MB)",
                             file_types=list(DATA_SUFFIXES), type="filepath", elem_id="data-upload")
        with gr.Column():
            source_text = gr.Textbox(label="...or a Hugging Face dataset id or a file on this machine",
                                     placeholder="sentence-transformers/natural-questions")
            with gr.Row():
                hub_config = gr.Textbox(label="config (optional)", scale=1)
                hub_split = gr.Textbox(label="split (optional)", placeholder="train", scale=1)
            load_btn = gr.Button("Load")
    error = error_box()
    source_md = gr.Markdown("No data loaded yet.", elem_id="data-source")
    preview = gr.Dataframe(label="First rows", interactive=False, wrap=True, max_height=300)
    with gr.Row():
        dropdowns = {}
        for role in ROLES:
            kind = {"negative": dict(choices=[], multiselect=True)}.get(role) or (
                dict(choices=[NONE], value=NONE) if role in ("score", "label", "text_pair") else dict(choices=[]))
            # allow_custom_value: a role the task hides can keep a column of the data loaded before (the page saw it
            # keep "document" after the classifier sample loaded), and Gradio then refused every event taking the
            # dropdowns, Start among them, before our code ran; hidden roles are ignored (mapping_from), and a
            # typed name that is no column gets the data layer's "column ... not found" instead.
            dropdowns[role] = gr.Dropdown(label=ROLE_LABELS[role], interactive=True, visible=role in PAIR_ROLES,
                                          allow_custom_value=True, **kind)
    eval_size = gr.Slider(0.02, 0.5, value=0.1, step=0.01, label="Held-out split (fraction of rows kept for evaluation)",
                          elem_id="held-out-size")
    held_out_md = gr.Markdown(elem_id="held-out-note")
    summary_md = gr.Markdown(elem_id="data-summary")
    with gr.Row(visible=False) as mining_row:
        low, high = bounds("negatives")
        negatives = gr.Number(default("negatives"), label="Hard negatives mined per pair", precision=0, minimum=low,
                              maximum=high, elem_id="mined-negatives-count", scale=1)
        mine_btn = gr.Button("Preview mined negatives", elem_id="preview-mining", scale=1)
        mined_md = gr.Markdown(elem_id="mined-note")
    mined_table = gr.Dataframe(label="Mined hard negatives: what training gets for a few queries", interactive=False,
                               wrap=True, visible=False, elem_id="mined-negatives")
    histogram = gr.Plot(label="Text lengths")
    label_chart = gr.Plot(label="Rows per label", visible=False, elem_id="label-chart")
    state = gr.State(None)
    mapping_inputs = [dropdowns[role] for role in ROLES]  # the order of mapping_from's arguments after the task
    task = ui.task

    def validated(source: DataSource, mapping: dict, task_value: str):
        """(summary text, text-length histogram, label chart) of the task's own validation; raises DataError."""
        table = read_source(source, settings)
        summary = task_module(task_value).validate(table, mapping, source.name).to_dict()
        labels = summary.get("labels") or {}
        return (summary_markdown(summary, task_value), charts.length_histogram(summary.get("text_lengths") or {}),
                gr.update(value=charts.label_distribution(labels), visible=True) if labels else gr.update(visible=False))

    def role_updates(task_value: str, columns: list[str], mapping: dict) -> list[dict]:
        shown = roles_of(task_value)
        updates = []
        for role in ROLES:
            label = CLASSIFIER_LABEL if role == "label" and task_value == "classifier" else ROLE_LABELS[role]
            if role == "negative":
                value, choices = data_layer.negatives_of(mapping), columns
            elif role in ("score", "label", "text_pair"):
                value, choices = mapping.get(role) or NONE, [NONE, *columns]
            else:
                value, choices = mapping.get(role), columns
            updates.append(gr.update(choices=choices, value=value, visible=role in shown, label=label))
        return updates

    def load(source: DataSource, mapping: dict | None = None, task_value: str = "embedding",
             said: str = "Columns as the run used them"):
        """Show `source`, its columns mapped as `mapping` says (a run's, opened again: `said` says whose), else as
        guessed for the task."""
        table = read_source(source, settings)
        columns = [str(c) for c in table.columns]
        guess = data_layer.column_guess(table, task_value)
        picked = guess_markdown(guess, task_value) if mapping is None else f"{said}: {used_markdown(mapping)}."
        mapping = guess.mapping if mapping is None else mapping
        summary, figure, labels, problem = "", None, gr.update(visible=False), hide_error()
        if all(role in mapping for role in required_roles(task_value)):
            try:
                summary, figure, labels = validated(source, mapping, task_value)
            except DataError as error:
                problem = show_error(page_message(error))
        return (source.to_dict(),
                f"**Loaded:** `{source.name}` · {len(table):,} rows · columns: {', '.join(columns)}\n\n"
                f"{picked}",
                mapped_first(table, mapping),
                *role_updates(task_value, columns, mapping),
                summary, figure, labels, problem)

    load_outputs = [state, source_md, preview, *mapping_inputs, summary_md, histogram, label_chart, error]

    def failed(message: str):
        return (*[gr.skip()] * (len(load_outputs) - 1), show_error(message))

    def load_sample(task_value="embedding"):
        return load(SAMPLE, task_value=task_value)

    def load_demo_sample(task_value="embedding"):
        return load(DEMO_SAMPLE, task_value=task_value)

    def load_sections_sample(task_value="classifier"):
        return load(SECTIONS_SAMPLE, task_value=task_value)

    def load_upload(path, task_value):
        if not path:
            return tuple(gr.skip() for _ in load_outputs)
        try:
            return load(source_from_upload(path, settings), task_value=task_value)
        except (DataError, PathNotAllowed, OSError) as error:
            return failed(page_message(error))

    def load_text(text, config, split, task_value):
        try:
            return load(source_from_text(text, settings, config, split), task_value=task_value)
        except (DataError, PathNotAllowed, OSError) as error:
            return failed(page_message(error))

    def remap(source_dict, task_value, *roles):
        source = DataSource.from_dict(source_dict)
        if source is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        mapping = mapping_from(task_value, *roles)
        try:
            table = read_source(source, settings)
            summary, figure, labels = validated(source, mapping, task_value)
        except (DataError, PathNotAllowed, OSError) as error:
            return "", None, gr.update(visible=False), show_error(page_message(error)), gr.skip()
        return summary, figure, labels, hide_error(), mapped_first(table, mapping)

    def chrome(task_value):
        """What the page shows for the task besides the roles: its words, its samples, the mining preview."""
        pair_task = task_value != "classifier"
        return (DATA_INTROS[task_value], gr.update(visible=pair_task), gr.update(visible=pair_task),
                gr.update(visible=not pair_task), gr.update(visible=task_value == "reranker"),
                gr.update(visible=False))

    def retask(task_value, source_dict, *roles):
        """The data loaded, mapped for the task picked: as before where that mapping has the task's roles
        (embedding and reranker share them), else guessed anew."""
        source = DataSource.from_dict(source_dict)
        if source is None:
            return (*[gr.skip()] * 3, *role_updates(task_value, [], {}), *[gr.skip()] * 4)
        mapping = mapping_from(task_value, *roles)
        kept = all(mapping.get(role) for role in required_roles(task_value))
        try:
            return load(source, mapping if kept else None, task_value, said="Columns kept from before")
        except (DataError, PathNotAllowed, OSError) as error:
            return failed(page_message(error))

    def preview_mining(source_dict, task_value, count, *roles):
        source = DataSource.from_dict(source_dict)
        if source is None:
            return show_error("no data yet: load a file, a dataset or a sample first"), gr.skip(), gr.skip()
        mapping = mapping_from(task_value, *roles)
        if any(mapping.get(role) for role in ("negative", "label", "score")):
            return (hide_error(), "The data bring their own negatives, labels or scores: training mines nothing.",
                    gr.update(visible=False))
        try:
            table = read_source(source, settings)
            task_module("reranker").validate(table, mapping, source.name)
            shown, headers, note = mined_preview(table, mapping, int(count or default("negatives")))
        except (DataError, PathNotAllowed, OSError) as error:
            return show_error(page_message(error)), "", gr.update(visible=False)
        return hide_error(), note, gr.update(value={"headers": headers, "data": shown}, visible=True)

    def held_out(source_dict, fraction, task_value):
        source = DataSource.from_dict(source_dict)
        if source is None:
            return ""
        try:
            return held_out_split(source, settings, fraction, task_value).note
        except (DataError, PathNotAllowed, OSError):
            return ""

    for changed in (state.change, eval_size.change, task.change):
        changed(held_out, [state, eval_size, task], held_out_md, api_visibility="private", show_progress="hidden")
    demo_btn.click(load_demo_sample, task, load_outputs, api_name="use_demo_sample")
    sample_btn.click(load_sample, task, load_outputs, api_name="use_sample")
    sections_btn.click(load_sections_sample, task, load_outputs, api_name="use_sections_sample")
    upload.upload(load_upload, [upload, task], load_outputs, api_name="upload_data")
    load_btn.click(load_text, [source_text, hub_config, hub_split, task], load_outputs, api_name="load_data")
    source_text.submit(load_text, [source_text, hub_config, hub_split, task], load_outputs, api_visibility="private")
    for dropdown in mapping_inputs:
        dropdown.input(remap, [state, task, *mapping_inputs], [summary_md, histogram, label_chart, error, preview],
                       api_visibility="private")
    data_chrome = [intro, demo_btn, sample_btn, sections_btn, mining_row, mined_table]
    task.change(chrome, task, data_chrome, api_visibility="private")
    task.input(retask, [task, state, *mapping_inputs], load_outputs, api_name="retask_data")
    mine_btn.click(preview_mining, [state, task, negatives, *mapping_inputs], [error, mined_md, mined_table],
                   api_name="preview_mining")

    ui.data_state, ui.mapping_inputs, ui.eval_size, ui.load_sample = state, mapping_inputs, eval_size, load_sample
    ui.load_demo_sample, ui.load_sections_sample, ui.negatives = load_demo_sample, load_sections_sample, negatives
    ui.data_load_outputs, ui.load_source = load_outputs, load
