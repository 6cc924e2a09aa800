"""Compare tab: the base and the trained model's search results side by side with the held-out answer
marked, the before / after metrics with how much of their change is noise, the held-out queries that
improved most (a click opens one), and what training did to the queries' similarity to their documents."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from engine.hub import metric_rows
from studio import charts
from studio.comparison import run_evaluation
from studio.store import COMPLETED, STOPPED
from studio.ui import error_box, hide_error, show_error

EXAMPLE_QUERIES = 12
GAIN_ROWS = 15
FEW_QUERIES = 100  # below this many held-out queries the page warns that small changes are noise
RELEVANT = "✓ relevant"
METRIC_LABELS = {"ndcg@10": "NDCG@10", "mrr@10": "MRR@10", "recall@1": "Recall@1", "recall@10": "Recall@10",
                 "recall@100": "Recall@100", "map@100": "MAP@100"}
METRIC_HEADERS = ["metric", "base", "fine-tuned", "change", "fine-tuned, 95% interval", "change, 95% interval"]
BASE_HEADERS = ["rank", "relevant", "score", "document"]
TRAINED_HEADERS = ["rank", "relevant", "change", "score", "document"]


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


def _interval(interval: tuple[float, float] | None, signed: bool) -> str:
    if interval is None:
        return ""
    return f"{interval[0]:+.3f} to {interval[1]:+.3f}" if signed else f"{interval[0]:.3f} to {interval[1]:.3f}"


def metrics_rows(metrics: dict | None, intervals: dict | None = None) -> list[list]:
    """The metrics table; the fine-tuned score's and the change's 95% intervals where `intervals`
    (engine.evaluate.metric_intervals) has them."""
    rows = []
    for name, before, after, change in metric_rows(metrics or {}):
        known = (intervals or {}).get(name, {})
        rows.append([METRIC_LABELS.get(name, name), None if before is None else round(before, 4),
                     None if after is None else round(after, 4), change,
                     _interval(known.get("trained"), signed=False), _interval(known.get("change"), signed=True)])
    return rows


def _more_queries_hint(run, queries: int) -> str:
    if queries >= run.config["max_eval_queries"]:
        return "raise Eval queries on the Train tab"
    return "hold out more rows (the Data tab's held-out split) or bring more data"


def held_out_note(run, queries: int, intervals: dict | None = None) -> str:
    """How many held-out queries the metrics rest on and, once `intervals` are known, where NDCG@10 and its
    change could land on another sample of as many queries; a plain warning under FEW_QUERIES."""
    lines = [f"**Measured on {queries} held-out queries.**"]
    ndcg = (intervals or {}).get("ndcg@10", {})
    measured = [(run.metrics or {}).get(side, {}).get("ndcg@10") for side in ("base", "trained")]
    if None in measured:
        lines.append("This run was not evaluated, so there are no before / after metrics; the search below still "
                     "compares both models.")
    elif ndcg.get("trained") and ndcg.get("change"):
        (low, high), (change_low, change_high) = ndcg["trained"], ndcg["change"]
        verdict = ("larger than the noise" if change_low > 0 or change_high < 0
                   else "within the noise: it could be luck of the sample")
        lines.append(f"On another {queries} queries like these, the fine-tuned model's NDCG@10 could land anywhere "
                     f"from {low:.3f} to {high:.3f}, and its change over the base model from {change_low:+.3f} to "
                     f"{change_high:+.3f} (95% intervals): the change of {measured[1] - measured[0]:+.4f} is {verdict}.")
    else:
        lines.append("The 95% intervals appear once both models are loaded.")
    if queries < FEW_QUERIES:
        known = (f"a score is only known to about ±{(ndcg['trained'][1] - ndcg['trained'][0]) / 2:.2f}"
                 if ndcg.get("trained") else "a score moves by several hundredths from one sample of queries to another")
        lines.append(f"⚠ Only {queries} held-out queries: with this few, {known}, so a change smaller than that may "
                     f"be noise. For a surer measure, {_more_queries_hint(run, queries)}.")
    return "\n\n".join(lines)


def result_rows(hits: list[dict], relevant_hits: list[dict], trained: bool) -> list[list]:
    """A results column: the top k, then any relevant document ranked below them, at its own rank."""
    shown = {hit["document"] for hit in hits}
    rows = []
    for hit in [*hits, *(h for h in relevant_hits if h["document"] not in shown)]:
        marker = RELEVANT if hit["relevant"] else ""
        middle = [marker, rank_marker(hit)] if trained else [marker]
        rows.append([hit["rank"], *middle, round(hit["score"], 4), hit["document"]])
    return rows


def relevant_note(result: dict) -> str:
    """Where the query's held-out answer ranks under each model, in words."""
    base, trained = result["relevant_hits"]["base"], result["relevant_hits"]["trained"]
    if not base:
        return ("This query is not one of the held-out ones, so no document is marked relevant; the columns show "
                "what each model finds.")
    before, after = min(hit["rank"] for hit in base), min(hit["rank"] for hit in trained)
    moved = ("the same rank" if before == after else
             f"up {before - after}" if after < before else f"down {after - before}")
    return (f"The held-out answer to this query ({RELEVANT} below) ranks **{before}** with the base model and "
            f"**{after}** with the fine-tuned one ({moved}).")


def build(studio, ui) -> None:
    with gr.Row():
        # No run picked until the tab opens: picking one then is a change, and a change opens the run.
        run_pick = gr.Dropdown(label="Run", choices=comparable_runs(studio), value=None, scale=4,
                               allow_custom_value=True, elem_id="compare-run")
        refresh = gr.Button("Refresh runs", scale=1)
    error = error_box()
    metrics_table = gr.Dataframe(headers=METRIC_HEADERS, label="Held-out metrics, before / after",
                                 interactive=False, elem_id="compare-metrics")
    noise_note = gr.Markdown(elem_id="compare-noise")
    with gr.Row():
        examples = gr.Dropdown(label="Example queries from the held-out split", choices=[], scale=3,
                               elem_id="compare-examples")
        top_k = gr.Slider(1, 20, value=5, step=1, label="top k", scale=1)
    with gr.Row():
        query = gr.Textbox(label="Query", placeholder="type a query, or pick an example", scale=4, elem_id="compare-query")
        search_btn = gr.Button("Search with both models", variant="primary", scale=1, elem_id="compare-search")
    answer_note = gr.Markdown(elem_id="compare-relevant")
    with gr.Row(equal_height=False):
        base_results = gr.Dataframe(headers=BASE_HEADERS, label="Base model", interactive=False, wrap=True,
                                    column_widths=["9%", "18%", "12%", "61%"], elem_id="compare-base")
        trained_results = gr.Dataframe(headers=TRAINED_HEADERS, label="Fine-tuned model", interactive=False, wrap=True,
                                       column_widths=["9%", "18%", "17%", "12%", "44%"], elem_id="compare-trained")
    gains = gr.Dataframe(headers=["query", "base rank", "fine-tuned rank", "moved up"], interactive=False, wrap=True,
                         label="Queries whose relevant document moved up most (click one to open it)", max_height=320,
                         elem_id="compare-gains")
    similarity_plot = gr.Plot(label="What training did", elem_id="compare-similarity")

    def open_run(run_id):
        if not run_id:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        try:
            run = studio.store.get(run_id)
        except KeyError as problem:
            return [], "", gr.update(choices=[]), gr.skip(), show_error(str(problem))
        try:
            held_out = run_evaluation(run)
        except Exception as problem:  # an old or damaged run folder: say so, keep the tab usable
            return (metrics_rows(run.metrics), "", gr.update(choices=[]), gr.skip(),
                    show_error(f"cannot read the held-out split: {problem}"))
        samples = held_out.queries[:EXAMPLE_QUERIES]
        first = samples[0] if samples else None
        return (metrics_rows(run.metrics), held_out_note(run, len(held_out.queries)),
                gr.update(choices=samples, value=first), first or "", hide_error())

    def search(run_id, text, k):
        if not run_id:
            return gr.skip(), gr.skip(), gr.skip(), show_error("pick a finished run first")
        if not (text or "").strip():
            return gr.skip(), gr.skip(), gr.skip(), show_error("type a query")
        from studio.comparison import comparison_for

        try:
            result = comparison_for(studio.store.get(run_id)).search(text.strip(), int(k))
        except (OSError, KeyError, ValueError) as problem:
            return gr.skip(), gr.skip(), gr.skip(), show_error(str(problem))
        relevant = result["relevant_hits"]
        return (result_rows(result["base"], relevant["base"], trained=False),
                result_rows(result["trained"], relevant["trained"], trained=True), relevant_note(result), hide_error())

    def analyze(run_id):
        if not run_id:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), show_error("pick a finished run first")
        from engine.evaluate import metric_intervals
        from studio.comparison import comparison_for

        try:
            run = studio.store.get(run_id)
            comparison = comparison_for(run)
        except (OSError, KeyError, ValueError) as problem:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), show_error(str(problem))
        scores = comparison.per_query_scores()
        intervals = metric_intervals(scores["base"], scores["trained"])
        rows = [[g["query"], g["base_rank"], g["trained_rank"], g["gain"]] for g in comparison.query_gains()[:GAIN_ROWS]]
        figure = charts.similarity_margins_figure(comparison.similarity_margins())
        return (metrics_rows(run.metrics, intervals), held_out_note(run, len(comparison.held_out.queries), intervals),
                rows, figure, hide_error())

    def open_gain(evt: gr.SelectData):
        return evt.row_value[0] if evt.row_value else gr.skip()

    def refresh_runs(current):
        choices = comparable_runs(studio)
        ids = [c[1] for c in choices]
        return gr.update(choices=choices, value=current if current in ids else (ids[0] if ids else None))

    search_in, search_out = [run_pick, query, top_k], [base_results, trained_results, answer_note, error]
    run_pick.change(open_run, run_pick, [metrics_table, noise_note, examples, query, error], api_name="compare_run").then(
        search, search_in, search_out, api_visibility="private").then(
        analyze, run_pick, [metrics_table, noise_note, gains, similarity_plot, error], api_name="compare_analyze")
    examples.input(lambda q: q or gr.skip(), examples, query, api_visibility="private").then(
        search, search_in, search_out, api_visibility="private")
    gains.select(open_gain, None, query, api_visibility="private").then(
        search, search_in, search_out, api_visibility="private")
    search_btn.click(search, search_in, search_out, api_name="compare_search")
    query.submit(search, search_in, search_out, api_visibility="private")
    refresh.click(refresh_runs, run_pick, run_pick, api_visibility="private")
    # Coming back to the tab leaves the page as the user left it, unless the run it showed is gone.
    ui.compare_tab.select(refresh_runs, run_pick, run_pick, api_visibility="private")
    ui.compare_run = run_pick
