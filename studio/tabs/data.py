"""Data tab: upload a file, name a Hugging Face dataset or take the bundled sample; preview, map
columns to roles (pre-filled by the engine's guess), validate, and choose the held-out size."""

from __future__ import annotations

import gradio as gr

from engine import data as data_layer
from engine.data import DataError
from studio import charts
from studio.data_sources import DATA_SUFFIXES, SAMPLE, DataSource, read_source, source_from_text, source_from_upload
from studio.settings import PathNotAllowed
from studio.ui import error_box, hide_error, show_error

NONE = "(none)"
PREVIEW_ROWS = 8


def mapping_from(anchor, positive, negative, score) -> dict:
    """Role -> column from the dropdowns; roles left empty are left out."""
    mapping = {}
    for role, value in (("anchor", anchor), ("positive", positive), ("score", score)):
        if value and value != NONE:
            mapping[role] = value
    negatives = [n for n in (negative or []) if n and n != NONE]
    if negatives:
        mapping["negative"] = negatives[0] if len(negatives) == 1 else negatives
    return mapping


def summary_markdown(summary: dict, source: DataSource) -> str:
    lines = [f"**{summary.get('rows', 0):,} rows** · task **{summary.get('task')}** · default loss "
             f"**{summary.get('loss')}** · duplicates: {summary.get('duplicates', 0):,}"]
    empty = summary.get("empty_values") or {}
    if isinstance(empty, dict):
        empty_text = ", ".join(f"{col}: {n:,}" for col, n in empty.items() if n) or "none"
    else:
        empty_text = f"{empty:,}"
    lines.append(f"Empty values: {empty_text}")
    if source.kind == "sample":
        lines.append("Held out for evaluation: the sample's own test split (500 pairs).")
    for warning in summary.get("warnings") or []:
        lines.append(f"⚠️ {warning}")
    return "\n\n".join(lines)


def build(studio, ui) -> None:
    settings = studio.settings
    gr.Markdown("Training data are pairs: an **anchor** (a query) and a **positive** (the text it should find), "
                "optionally **negatives** (texts it should not find) or a **score**.")
    with gr.Row():
        with gr.Column():
            sample_btn = gr.Button("Use the bundled sample (Debian package summaries → descriptions)",
                                   variant="primary")
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
        anchor = gr.Dropdown(label="anchor (query)", choices=[], interactive=True)
        positive = gr.Dropdown(label="positive (relevant text)", choices=[], interactive=True)
        negative = gr.Dropdown(label="negative(s), optional", choices=[], multiselect=True, interactive=True)
        score = gr.Dropdown(label="score, optional", choices=[NONE], value=NONE, interactive=True)
    eval_size = gr.Slider(0.02, 0.5, value=0.1, step=0.01, label="Held-out split (fraction of rows kept for evaluation)")
    summary_md = gr.Markdown(elem_id="data-summary")
    histogram = gr.Plot(label="Text lengths")
    state = gr.State(None)
    mapping_inputs = [anchor, positive, negative, score]

    def validated(source: DataSource, mapping: dict):
        table = read_source(source, settings)
        summary = data_layer.validate(table, mapping, source.label).to_dict()
        return summary_markdown(summary, source), charts.length_histogram(summary.get("text_lengths") or {})

    def load(source: DataSource):
        table = read_source(source, settings)
        columns = [str(c) for c in table.columns]
        guess = data_layer.guess_columns(columns)
        negatives = guess.get("negative") or []
        negatives = [negatives] if isinstance(negatives, str) else list(negatives)
        mapping = mapping_from(guess.get("anchor"), guess.get("positive"), negatives, guess.get("score"))
        try:
            summary, figure = validated(source, mapping)
            problem = hide_error()
        except DataError as error:
            summary, figure, problem = "", None, show_error(f"{error}. Pick the right columns below.")
        return (source.to_dict(), f"**Loaded:** `{source.label}` · {len(table):,} rows · columns: {', '.join(columns)}",
                table.head(PREVIEW_ROWS),
                gr.update(choices=columns, value=guess.get("anchor")),
                gr.update(choices=columns, value=guess.get("positive")),
                gr.update(choices=columns, value=negatives),
                gr.update(choices=[NONE, *columns], value=guess.get("score") or NONE),
                summary, figure, problem)

    load_outputs = [state, source_md, preview, anchor, positive, negative, score, summary_md, histogram, error]

    def failed(message: str):
        return (*[gr.skip()] * (len(load_outputs) - 1), show_error(message))

    def load_sample():
        return load(SAMPLE)

    def load_upload(path):
        if not path:
            return tuple(gr.skip() for _ in load_outputs)
        try:
            return load(source_from_upload(path, settings))
        except (DataError, PathNotAllowed, OSError) as error:
            return failed(str(error))

    def load_text(text, config, split):
        try:
            return load(source_from_text(text, settings, config, split))
        except (DataError, PathNotAllowed, OSError) as error:
            return failed(str(error))

    def remap(source_dict, anchor_col, positive_col, negative_cols, score_col):
        source = DataSource.from_dict(source_dict)
        if source is None:
            return gr.skip(), gr.skip(), gr.skip()
        try:
            summary, figure = validated(source, mapping_from(anchor_col, positive_col, negative_cols, score_col))
        except DataError as error:
            return "", None, show_error(str(error))
        return summary, figure, hide_error()

    sample_btn.click(load_sample, None, load_outputs, api_name="use_sample")
    upload.upload(load_upload, upload, load_outputs, api_name="upload_data")
    load_btn.click(load_text, [source_text, hub_config, hub_split], load_outputs, api_name="load_data")
    source_text.submit(load_text, [source_text, hub_config, hub_split], load_outputs, api_visibility="private")
    for dropdown in mapping_inputs:
        dropdown.input(remap, [state, *mapping_inputs], [summary_md, histogram, error], api_visibility="private")

    ui.data_state, ui.mapping_inputs, ui.eval_size, ui.load_sample = state, mapping_inputs, eval_size, load_sample
    ui.data_load_outputs = load_outputs
