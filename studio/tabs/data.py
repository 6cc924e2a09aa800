"""Data tab: upload a file, name a Hugging Face dataset or take one of the bundled samples; preview, map
columns to roles (a dropdown per role, pre-filled by the engine's guess, which says why it picked each column),
validate, and choose the held-out size. Messages here name files by their base names and never a command-line flag."""

from __future__ import annotations

import gradio as gr

from engine import data as data_layer
from engine.data import DataError, MappingError
from studio import charts
from studio.data_sources import (DATA_SUFFIXES, DEMO_SAMPLE, SAMPLE, DataSource, held_out_split, read_source,
                                 source_from_text, source_from_upload)
from studio.settings import PathNotAllowed
from studio.ui import error_box, hide_error, show_error

NONE = "(none)"
PREVIEW_ROWS = 8
# One dropdown per role the engine knows (engine.data.ROLES), in that order.
ROLE_LABELS = {"anchor": "anchor (query)", "positive": "positive (relevant text)",
               "negative": "negative(s), optional", "score": "score, optional", "label": "label, optional"}


def mapping_from(anchor, positive, negative, score, label) -> dict:
    """Role -> column from the dropdowns (one value per role of engine.data.ROLES); roles left empty are left out."""
    negatives = [n for n in (negative or []) if n and n != NONE]
    values = {"anchor": anchor, "positive": positive, "negative": negatives[0] if len(negatives) == 1 else negatives,
              "score": score, "label": label}
    return {role: value for role, value in values.items() if value and value != NONE}


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
    mapped = [column for column in dict.fromkeys(c for _, c in data_layer.mapped_columns(mapping))
              if column in table.columns]
    return table[mapped + [c for c in table.columns if c not in mapped]].head(PREVIEW_ROWS)


def guess_markdown(guess) -> str:
    """What the guess picked and why, or what is left for the user to pick."""
    missing = [role for role in ("anchor", "positive") if role not in guess.mapping]
    if not missing:
        return f"Columns picked from their names: {guess.describe()}. Change them below if they are wrong."
    picked = f" (picked: {guess.describe()})" if guess.mapping else ""
    return (f"No column name says which holds {' and which '.join(data_layer.ROLE_MEANINGS[r] for r in missing)}"
            f"{picked}: pick the {' and '.join(missing)} column{'s' if len(missing) > 1 else ''} below.")


def used_markdown(mapping: dict) -> str:
    return "; ".join(f"{role}: {column}" for role, column in data_layer.mapped_columns(mapping))


def summary_markdown(summary: dict, source: DataSource) -> str:
    lines = [f"**{summary.get('rows', 0):,} rows** · task **{summary.get('task')}** · default loss "
             f"**{summary.get('loss')}** · duplicates: {summary.get('duplicates', 0):,}"]
    empty = summary.get("empty_values") or {}
    if isinstance(empty, dict):
        empty_text = ", ".join(f"{col}: {n:,}" for col, n in empty.items() if n) or "none"
    else:
        empty_text = f"{empty:,}"
    lines.append(f"Empty values: {empty_text}")
    for warning in summary.get("warnings") or []:
        lines.append(f"⚠️ {warning}")
    return "\n\n".join(lines)


def build(studio, ui) -> None:
    settings = studio.settings
    gr.Markdown("Training data are pairs: an **anchor** (a query) and a **positive** (the text it should find), "
                "optionally **negatives** (texts it should not find), a **score** (how similar the two are) or a "
                "**label** (1 for a matching pair, 0 for one that does not match).")
    with gr.Row():
        with gr.Column():
            with gr.Row():
                demo_btn = gr.Button("Use the demo sample: computing acronyms → what they stand for (the base "
                                     "model is weak on it)", variant="primary", elem_id="use-demo-sample")
                sample_btn = gr.Button("Use the bundled sample: Debian package summaries → descriptions (larger)",
                                       elem_id="use-sample")
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
        anchor = gr.Dropdown(label=ROLE_LABELS["anchor"], choices=[], interactive=True)
        positive = gr.Dropdown(label=ROLE_LABELS["positive"], choices=[], interactive=True)
        negative = gr.Dropdown(label=ROLE_LABELS["negative"], choices=[], multiselect=True, interactive=True)
        score = gr.Dropdown(label=ROLE_LABELS["score"], choices=[NONE], value=NONE, interactive=True)
        label = gr.Dropdown(label=ROLE_LABELS["label"], choices=[NONE], value=NONE, interactive=True)
    eval_size = gr.Slider(0.02, 0.5, value=0.1, step=0.01, label="Held-out split (fraction of rows kept for evaluation)",
                          elem_id="held-out-size")
    held_out_md = gr.Markdown(elem_id="held-out-note")
    summary_md = gr.Markdown(elem_id="data-summary")
    histogram = gr.Plot(label="Text lengths")
    state = gr.State(None)
    mapping_inputs = [anchor, positive, negative, score, label]  # the order of mapping_from's arguments

    def validated(source: DataSource, mapping: dict):
        table = read_source(source, settings)
        summary = data_layer.validate(table, mapping, source.name).to_dict()
        return summary_markdown(summary, source), charts.length_histogram(summary.get("text_lengths") or {})

    def load(source: DataSource, mapping: dict | None = None):
        """Show `source`, its columns mapped as `mapping` says (a run's, opened again), else as guessed."""
        table = read_source(source, settings)
        columns = [str(c) for c in table.columns]
        guess = data_layer.column_guess(table)
        picked = guess_markdown(guess) if mapping is None else f"Columns as the run used them: {used_markdown(mapping)}."
        mapping = guess.mapping if mapping is None else mapping
        summary, figure, problem = "", None, hide_error()
        if "anchor" in mapping and "positive" in mapping:
            try:
                summary, figure = validated(source, mapping)
            except DataError as error:
                problem = show_error(page_message(error))
        negatives = data_layer.negatives_of(mapping)
        return (source.to_dict(),
                f"**Loaded:** `{source.name}` · {len(table):,} rows · columns: {', '.join(columns)}\n\n"
                f"{picked}",
                mapped_first(table, mapping),
                gr.update(choices=columns, value=mapping.get("anchor")),
                gr.update(choices=columns, value=mapping.get("positive")),
                gr.update(choices=columns, value=negatives),
                gr.update(choices=[NONE, *columns], value=mapping.get("score") or NONE),
                gr.update(choices=[NONE, *columns], value=mapping.get("label") or NONE),
                summary, figure, problem)

    load_outputs = [state, source_md, preview, *mapping_inputs, summary_md, histogram, error]

    def failed(message: str):
        return (*[gr.skip()] * (len(load_outputs) - 1), show_error(message))

    def load_sample():
        return load(SAMPLE)

    def load_demo_sample():
        return load(DEMO_SAMPLE)

    def load_upload(path):
        if not path:
            return tuple(gr.skip() for _ in load_outputs)
        try:
            return load(source_from_upload(path, settings))
        except (DataError, PathNotAllowed, OSError) as error:
            return failed(page_message(error))

    def load_text(text, config, split):
        try:
            return load(source_from_text(text, settings, config, split))
        except (DataError, PathNotAllowed, OSError) as error:
            return failed(page_message(error))

    def remap(source_dict, *roles):
        source = DataSource.from_dict(source_dict)
        if source is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        mapping = mapping_from(*roles)
        try:
            table = read_source(source, settings)
            summary, figure = validated(source, mapping)
        except (DataError, PathNotAllowed, OSError) as error:
            return "", None, show_error(page_message(error)), gr.skip()
        return summary, figure, hide_error(), mapped_first(table, mapping)

    def held_out(source_dict, fraction):
        source = DataSource.from_dict(source_dict)
        if source is None:
            return ""
        try:
            return held_out_split(source, settings, fraction).note
        except (DataError, PathNotAllowed, OSError):
            return ""

    for changed in (state.change, eval_size.change):
        changed(held_out, [state, eval_size], held_out_md, api_visibility="private", show_progress="hidden")
    demo_btn.click(load_demo_sample, None, load_outputs, api_name="use_demo_sample")
    sample_btn.click(load_sample, None, load_outputs, api_name="use_sample")
    upload.upload(load_upload, upload, load_outputs, api_name="upload_data")
    load_btn.click(load_text, [source_text, hub_config, hub_split], load_outputs, api_name="load_data")
    source_text.submit(load_text, [source_text, hub_config, hub_split], load_outputs, api_visibility="private")
    for dropdown in mapping_inputs:
        dropdown.input(remap, [state, *mapping_inputs], [summary_md, histogram, error, preview],
                       api_visibility="private")

    ui.data_state, ui.mapping_inputs, ui.eval_size, ui.load_sample = state, mapping_inputs, eval_size, load_sample
    ui.load_demo_sample = load_demo_sample
    ui.data_load_outputs, ui.load_source = load_outputs, load
