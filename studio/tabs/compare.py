"""Compare tab: the base and the trained model's search results side by side, the before / after
metrics, the held-out queries that improved most, and a 2-D map of the embeddings."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from engine.hub import metric_rows
from studio import charts
from studio.data_sources import read_run_eval
from studio.store import COMPLETED, STOPPED
from studio.ui import error_box, hide_error, show_error

EXAMPLE_QUERIES = 12
RESULT_HEADERS = ["rank", "score", "document"]
METRIC_LABELS = {"ndcg@10": "NDCG@10", "mrr@10": "MRR@10", "recall@1": "Recall@1", "recall@10": "Recall@10",
                 "recall@100": "Recall@100", "map@100": "MAP@100"}


def comparable_runs(studio) -> list[tuple[str, str]]:
    """(label, run id) of runs that have a merged model, newest first."""
    choices = []
    for run in studio.store.list():
        if run.status in (COMPLETED, STOPPED) and (Path(run.run_dir) / "merged").exists():
            choices.append((f"{run.id} · {run.status} · {run.model.split('/')[-1]} on {Path(run.data).name}", run.id))
    return choices


def rank_marker(hit: dict) -> str:
    change = hit["rank_change"]
    if change > 0:
        return f"▲ {change} (was {hit['base_rank']})"
    if change < 0:
        return f"▼ {-change} (was {hit['base_rank']})"
    return "="


def metrics_rows(metrics: dict | None) -> list[list]:
    return [[METRIC_LABELS.get(name, name), None if before is None else round(before, 4),
             None if after is None else round(after, 4), change]
            for name, before, after, change in metric_rows(metrics or {})]


def build(studio, ui) -> None:
    with gr.Row():
        run_pick = gr.Dropdown(label="Run", choices=comparable_runs(studio), scale=4, allow_custom_value=True,
                               elem_id="compare-run")
        refresh = gr.Button("Refresh runs", scale=1)
    error = error_box()
    metrics_table = gr.Dataframe(headers=["metric", "base", "fine-tuned", "change"], label="Held-out metrics, before / after",
                                 interactive=False, elem_id="compare-metrics")
    with gr.Row():
        examples = gr.Dropdown(label="Example queries from the held-out split", choices=[], scale=3)
        top_k = gr.Slider(1, 20, value=5, step=1, label="top k", scale=1)
    with gr.Row():
        query = gr.Textbox(label="Query", placeholder="type a query, or pick an example", scale=4, elem_id="compare-query")
        search_btn = gr.Button("Search with both models", variant="primary", scale=1, elem_id="compare-search")
    with gr.Row(equal_height=False):
        base_results = gr.Dataframe(headers=RESULT_HEADERS, label="Base model", interactive=False, wrap=True,
                                    column_widths=["12%", "15%", "73%"], elem_id="compare-base")
        trained_results = gr.Dataframe(headers=["rank", "change", "score", "document"], label="Fine-tuned model",
                                       interactive=False, wrap=True, column_widths=["12%", "20%", "15%", "53%"],
                                       elem_id="compare-trained")
    analyze_btn = gr.Button("Which held-out queries improved most? (and the embedding map)")
    gains = gr.Dataframe(headers=["query", "base rank", "fine-tuned rank", "moved up"], interactive=False, wrap=True,
                         label="Queries whose relevant document moved up most", max_height=320)
    embedding_plot = gr.Plot(label="Embedding map")

    def open_run(run_id):
        if not run_id:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        try:
            run = studio.store.get(run_id)
        except KeyError as problem:
            return [], gr.update(choices=[]), gr.skip(), show_error(str(problem))
        try:
            held_out = read_run_eval(run.run_dir)
        except Exception as problem:  # an old or damaged run folder: say so, keep the tab usable
            return (metrics_rows(run.metrics), gr.update(choices=[]), gr.skip(),
                    show_error(f"cannot read the held-out split: {problem}"))
        anchor = (run.config.get("columns") or {}).get("anchor", "anchor")
        samples = held_out[anchor].astype(str).drop_duplicates().head(EXAMPLE_QUERIES).tolist()
        first = samples[0] if samples else None
        return metrics_rows(run.metrics), gr.update(choices=samples, value=first), first or "", hide_error()

    def search(run_id, text, k):
        if not run_id:
            return gr.skip(), gr.skip(), show_error("pick a finished run first")
        if not (text or "").strip():
            return gr.skip(), gr.skip(), show_error("type a query")
        from studio.comparison import comparison_for

        try:
            result = comparison_for(studio.store.get(run_id)).search(text.strip(), int(k))
        except (OSError, KeyError, ValueError) as problem:
            return gr.skip(), gr.skip(), show_error(str(problem))
        base_rows = [[h["rank"], round(h["score"], 4), h["document"]] for h in result["base"]]
        trained_rows = [[h["rank"], rank_marker(h), round(h["score"], 4), h["document"]] for h in result["trained"]]
        return base_rows, trained_rows, hide_error()

    def analyze(run_id):
        if not run_id:
            return gr.skip(), gr.skip(), show_error("pick a finished run first")
        from studio.comparison import comparison_for

        try:
            comparison = comparison_for(studio.store.get(run_id))
            rows = [[g["query"], g["base_rank"], g["trained_rank"], g["gain"]] for g in comparison.query_gains()[:15]]
            figure = charts.embedding_map(comparison.embedding_points())
        except (OSError, KeyError, ValueError) as problem:
            return gr.skip(), gr.skip(), show_error(str(problem))
        return rows, figure, hide_error()

    def refresh_runs(current):
        choices = comparable_runs(studio)
        ids = [c[1] for c in choices]
        return gr.update(choices=choices, value=current if current in ids else (ids[0] if ids else None))

    run_view = [metrics_table, examples, query, error]
    run_pick.change(open_run, run_pick, run_view, api_name="compare_run")
    examples.change(lambda q: q or gr.skip(), examples, query, api_visibility="private")
    search_btn.click(search, [run_pick, query, top_k], [base_results, trained_results, error], api_name="compare_search")
    query.submit(search, [run_pick, query, top_k], [base_results, trained_results, error], api_visibility="private")
    analyze_btn.click(analyze, run_pick, [gains, embedding_plot, error], api_name="compare_analyze")
    refresh.click(refresh_runs, run_pick, run_pick, api_visibility="private")
    ui.compare_tab.select(refresh_runs, run_pick, run_pick, api_visibility="private").then(
        open_run, run_pick, run_view, api_visibility="private")
    ui.compare_run = run_pick
