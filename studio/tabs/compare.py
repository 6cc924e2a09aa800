"""Compare tab: the base and the trained model side by side on the run's held-out split, in the view of the
run's task (the run pick shows one view and hides the others).

- embedding: both models' search results with the held-out answer marked, the before / after metrics with how
  much of their change is noise, the held-out queries that improved most (a click opens one), and what training
  did to the queries' similarity to their documents.
- reranker: a query's first-stage retriever top 20 and the base and fine-tuned cross-encoder's orders of them,
  with scores, rank changes and the held-out answer marked; MRR@10 and NDCG@10 of the three orders.
- classifier: a text's base and fine-tuned predictions with their probabilities; accuracy, macro-F1 and
  per-class precision / recall / F1; both confusion matrices; the held-out texts training put right (a click
  opens one).
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from engine.hub import metric_rows
from engine.tasks.reranker import CANDIDATES
from studio import charts
from studio.comparison import run_evaluation, task_evaluation
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
RERANK_METRIC_HEADERS = ["metric", "retriever order", "base", "fine-tuned", "change"]
RERANK_METRICS = ("mrr@10", "ndcg@10")
RETRIEVER_HEADERS = ["rank", "relevant", "cosine", "document"]
RERANKED_HEADERS = ["rank", "relevant", "change", "score", "document"]
CLASS_METRIC_HEADERS = ["metric", "base", "fine-tuned", "change"]
CLASS_METRICS = {"accuracy": "Accuracy", "macro_f1": "Macro-F1", "weighted_f1": "Weighted F1"}
PER_CLASS_HEADERS = ["class", "held-out texts", "base precision", "base recall", "base F1", "fine-tuned precision",
                     "fine-tuned recall", "fine-tuned F1"]
PREDICTION_HEADERS = ["class", "base", "fine-tuned"]
NEWLY_RIGHT_HEADERS = ["text", "label", "base said", "fine-tuned says"]
NEWLY_RIGHT_ROWS = 30
EXAMPLE_CHARACTERS = 110  # an example text's label in the dropdown; picking it fills in the whole text
VIEWS = ("embedding", "reranker", "classifier")


def comparable_runs(studio) -> list[tuple[str, str]]:
    """(label, run id) of runs that have a merged model, newest first; runs of other tasks than embedding say
    their task."""
    choices = []
    for run in studio.store.list():
        if run.status in (COMPLETED, STOPPED) and (Path(run.run_dir) / "merged").exists():
            task = "" if run.task == "embedding" else f"{run.task} · "
            choices.append((f"{run.id} · {run.status} · {task}{run.model.split('/')[-1]} on {Path(run.data).name}",
                            run.id))
    return choices


def rank_marker(change: int, before: int) -> str:
    """A hit's move from rank `before` (change = before - rank)."""
    if change > 0:
        return f"▲ {change} (was {before})"
    if change < 0:
        return f"▼ {-change} (was {before})"
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
        middle = [marker, rank_marker(hit["rank_change"], hit["base_rank"])] if trained else [marker]
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


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _change(before: float | None, after: float | None) -> str:
    return f"{after - before:+.4f}" if None not in (before, after) else ""


def rerank_metric_rows(metrics: dict | None) -> list[list]:
    """MRR@10 and NDCG@10 of the retriever's order, the base and the fine-tuned reranker, and the change."""
    base, trained = (metrics or {}).get("base") or {}, (metrics or {}).get("trained") or {}
    if not (base or trained):
        return []
    rows = []
    for name in RERANK_METRICS:
        retriever = trained.get(f"retriever_{name}", base.get(f"retriever_{name}"))
        rows.append([METRIC_LABELS[name], _rounded(retriever), _rounded(base.get(name)), _rounded(trained.get(name)),
                     _change(base.get(name), trained.get(name))])
    return rows


def _base_words(has_trained_head: bool | None, model: str) -> str:
    if has_trained_head is None:
        return ""
    if has_trained_head:
        return f"The base is {model} as it was, its own reranking head untrained by this run."
    return (f"The base is the retriever's own order: {model} had no trained reranking head, and a new head ranks "
            "at random until it is trained.")


def _base_had_a_head(metrics: dict | None) -> bool | None:
    """Whether the run's base was a cross-encoder with a trained head, as its measured base says: the base of a new
    head is the retriever's order (engine.tasks.reranker measure_base), whose metrics are the retriever's exactly."""
    base = (metrics or {}).get("base") or {}
    names = ("ndcg@10", "mrr@10")
    if not all(name in base and f"retriever_{name}" in base for name in names):
        return None
    return any(base[name] != base[f"retriever_{name}"] for name in names)


def rerank_note(run, evaluation, has_trained_head: bool | None = None) -> str:
    """What the reranker's metrics rest on: the held-out queries, the candidates each reranks, what the base is
    (`has_trained_head`, else read from the run's measured base)."""
    if has_trained_head is None:
        has_trained_head = _base_had_a_head(run.metrics)
    queries = len(evaluation.queries)
    lines = [f"**Measured on {queries} held-out queries**, each reranking the first-stage retriever's top "
             f"{CANDIDATES} of {len(evaluation.corpus)} held-out documents "
             f"({evaluation.retriever_name or 'the bundled all-MiniLM-L6-v2'}). "
             + _base_words(has_trained_head, run.model)]
    if not all((run.metrics or {}).get(side) for side in ("base", "trained")):
        lines.append("This run was not evaluated, so the metrics are measured here once both models are loaded.")
    if queries < FEW_QUERIES:
        lines.append(f"⚠ Only {queries} held-out queries: with this few, a change of a few hundredths may be noise. "
                     f"For a surer measure, {_more_queries_hint(run, queries)}.")
    return "\n\n".join(lines)


def reranked_rows(hits: list[dict] | None, reranked: bool) -> list[list]:
    """A column of one query's candidates: rank, the relevant mark, (the move, for a reranked order,) score,
    document."""
    rows = []
    for hit in hits or []:
        marker = RELEVANT if hit["relevant"] else ""
        middle = [marker, rank_marker(hit["rank_change"], hit["before"])] if reranked else [marker]
        rows.append([hit["rank"], *middle, round(hit["score"], 4), hit["document"]])
    return rows


def rerank_answer_note(result: dict) -> str:
    """Where the query's held-out answer ranks in each order, in words."""
    marked = {name: [hit["rank"] for hit in hits or [] if hit["relevant"]] for name, hits in result.items()
              if name in ("retriever", "base", "trained")}
    if not marked["retriever"] and not result["missed"]:
        return ("This query is not one of the held-out ones, so no document is marked relevant; the columns show "
                "each order of the retriever's top candidates.")
    if not marked["retriever"]:
        return ("The retriever did not bring this query's held-out answer into its top candidates, so no reranker "
                "can rank it: training the reranker cannot help this query (a better first-stage retriever could).")
    first = {name: min(ranks) for name, ranks in marked.items() if ranks}
    before = first.get("base", first["retriever"])
    after = first["trained"]
    moved = ("the same rank" if before == after else
             f"up {before - after}" if after < before else f"down {after - before}")
    base = (f", **{first['base']}** with the base reranker" if "base" in first
            else " (the base: the retriever's own order)")
    return (f"The held-out answer ({RELEVANT} below) ranks **{first['retriever']}** in the retriever's order{base} "
            f"and **{after}** with the fine-tuned reranker ({moved}).")


def class_metric_rows(metrics: dict | None) -> list[list]:
    """Accuracy, macro-F1 and weighted F1 before and after, and the change."""
    base, trained = (metrics or {}).get("base") or {}, (metrics or {}).get("trained") or {}
    return [[label, _rounded(base.get(name)), _rounded(trained.get(name)), _change(base.get(name), trained.get(name))]
            for name, label in CLASS_METRICS.items() if name in base or name in trained]


def per_class_rows(metrics: dict | None) -> list[list]:
    """Each class's held-out texts and its precision / recall / F1 under the base and the fine-tuned model."""
    base, trained = (metrics or {}).get("base") or {}, (metrics or {}).get("trained") or {}
    classes = {**base.get("per_class", {}), **trained.get("per_class", {})}
    rows = []
    for label, known in classes.items():
        row = [label, known["support"]]
        for side in (base, trained):
            scores = side.get("per_class", {}).get(label, {})
            row += [_rounded(scores.get(key)) for key in ("precision", "recall", "f1")]
        rows.append(row)
    return rows


def class_note(run, evaluation, metrics: dict | None) -> str:
    """What the classifier's metrics rest on and what the base is."""
    count = len(evaluation.texts)
    base = (metrics or {}).get("base") or {}
    lines = [f"**Measured on {count} held-out texts** over {len(set(evaluation.labels))} classes."
             + (f" The base is the {base['baseline']}." if base.get("baseline") else "")]
    lines += [f"{note[0].upper()}{note[1:]}." for note in base.get("notes", ())]
    if not all((run.metrics or {}).get(side) for side in ("base", "trained")):
        lines.append("This run was not evaluated, so the metrics are measured here once both models are loaded.")
    if count < FEW_QUERIES:
        lines.append(f"⚠ Only {count} held-out texts: with this few, a change of a few points of accuracy may be "
                     f"noise. For a surer measure, {_more_queries_hint(run, count)}.")
    return "\n\n".join(lines)


def _clip(text: str, limit: int = EXAMPLE_CHARACTERS) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def prediction_rows(result: dict) -> list[list]:
    """Each class with the base's and the fine-tuned model's probability, the fine-tuned model's likeliest first.
    A majority-class base answers its class always, whatever the text."""
    rows = []
    for i in sorted(range(len(result["labels"])), key=lambda i: -result["trained"][i]):
        label = result["labels"][i]
        if result["base"] is not None:
            base = f"{result['base'][i]:.4f}"
        else:
            base = "always (majority class)" if label == result["majority"] else ""
        rows.append([label, base, f"{result['trained'][i]:.4f}"])
    return rows


def prediction_note(result: dict, label: str | None) -> str:
    """Both models' answers for the text and, for a held-out text, whether each is right."""
    def top(probabilities):
        i = max(range(len(probabilities)), key=probabilities.__getitem__)
        return result["labels"][i], probabilities[i]

    trained, trained_p = top(result["trained"])
    if result["base"] is None:
        base, base_words = result["majority"], f"**{result['majority']}** (the majority class, whatever the text)"
    else:
        base, base_p = top(result["base"])
        base_words = f"**{base}** ({base_p:.2f})"
    lines = [f"Fine-tuned: **{trained}** ({trained_p:.2f}) · base: {base_words}"]
    if label is None:
        lines.append("This text is not one of the held-out ones, so there is no label to check the answers against.")
    else:
        verdict = {(True, True): "both models get it right", (True, False): "the fine-tuned model gets it right, the "
                   "base did not", (False, True): "the base got it right, the fine-tuned model does not",
                   (False, False): "neither model gets it right"}[(trained == label, base == label)]
        lines.append(f"Held-out label: **{label}**: {verdict}.")
    return "\n\n".join(lines)


def newly_right_rows(rows: list[dict]) -> list[list]:
    return [[row["text"] if row["text_pair"] is None else f"{row['text']} ‖ {row['text_pair']}", row["label"],
             row["base"], row["trained"]] for row in rows[:NEWLY_RIGHT_ROWS]]


def build(studio, ui) -> None:
    with gr.Row():
        # No run picked until the tab opens: picking one then is a change, and a change opens the run.
        run_pick = gr.Dropdown(label="Run", choices=comparable_runs(studio), value=None, scale=4,
                               allow_custom_value=True, elem_id="compare-run")
        refresh = gr.Button("Refresh runs", scale=1)
    error = error_box()
    with gr.Column(elem_id="compare-embedding") as embedding_view:
        _embedding_view(studio, run_pick, error)
    with gr.Column(visible=False, elem_id="compare-reranker") as reranker_view:
        _reranker_view(studio, run_pick, error)
    with gr.Column(visible=False, elem_id="compare-classifier") as classifier_view:
        _classifier_view(studio, run_pick, error)

    def show_view(run_id):
        try:
            task = studio.store.get(run_id).task if run_id else None
        except KeyError:
            return gr.skip(), gr.skip(), gr.skip()
        if task not in VIEWS:
            return gr.skip(), gr.skip(), gr.skip()
        return tuple(gr.update(visible=task == view) for view in VIEWS)

    def refresh_runs(current):
        choices = comparable_runs(studio)
        ids = [c[1] for c in choices]
        return gr.update(choices=choices, value=current if current in ids else (ids[0] if ids else None))

    run_pick.change(show_view, run_pick, [embedding_view, reranker_view, classifier_view], api_visibility="private")
    refresh.click(refresh_runs, run_pick, run_pick, api_visibility="private")
    # Coming back to the tab leaves the page as the user left it, unless the run it showed is gone.
    ui.compare_tab.select(refresh_runs, run_pick, run_pick, api_visibility="private")
    ui.compare_run = run_pick


def _run_of(studio, run_id, task: str):
    """The run `run_id` where it is one of `task`, else None (another view answers for it)."""
    try:
        run = studio.store.get(run_id) if run_id else None
    except KeyError:
        return None
    return run if run is not None and run.task == task else None


def _open_queries(run, evaluation_of, metric_rows, note_of):
    """What a query view (embedding, reranker) shows on opening `run`: (its metrics, the note `note_of` writes about
    the held-out evaluation `evaluation_of(run)` reads, the example queries, the first of them, the error box)."""
    try:
        evaluation = evaluation_of(run)
    except Exception as problem:  # an old or damaged run folder: say so, keep the tab usable
        return (metric_rows, "", gr.update(choices=[]), gr.skip(),
                show_error(f"cannot read the held-out split: {problem}"))
    samples = evaluation.queries[:EXAMPLE_QUERIES]
    first = samples[0] if samples else None
    return metric_rows, note_of(evaluation), gr.update(choices=samples, value=first), first or "", hide_error()


def _embedding_view(studio, run_pick, error) -> None:
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
        if run.task != "embedding":  # the run's own view opens it
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return _open_queries(run, run_evaluation, metrics_rows(run.metrics),
                             lambda held_out: held_out_note(run, len(held_out.queries)))

    def search(run_id, text, k):
        if not run_id:
            return gr.skip(), gr.skip(), gr.skip(), show_error("pick a finished run first")
        from studio.comparison import comparison_for

        try:
            run = studio.store.get(run_id)
            if run.task != "embedding":  # the run's own view searches
                return gr.skip(), gr.skip(), gr.skip(), gr.skip()
            if not (text or "").strip():
                return gr.skip(), gr.skip(), gr.skip(), show_error("type a query")
            result = comparison_for(run).search(text.strip(), int(k))
        except (OSError, KeyError, ValueError) as problem:
            return gr.skip(), gr.skip(), gr.skip(), show_error(str(problem))
        relevant = result["relevant_hits"]
        return (result_rows(result["base"], relevant["base"], trained=False),
                result_rows(result["trained"], relevant["trained"], trained=True), relevant_note(result), hide_error())

    def analyze(run_id):
        if not run_id:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), show_error("pick a finished run first")
        from studio.comparison import comparison_for
        from studio.preload import engine_stack

        engine_stack()
        from engine.evaluate import metric_intervals

        try:
            run = studio.store.get(run_id)
            if run.task != "embedding":
                return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
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


def _reranker_view(studio, run_pick, error) -> None:
    metrics_table = gr.Dataframe(headers=RERANK_METRIC_HEADERS, interactive=False, elem_id="compare-rerank-metrics",
                                 label="Held-out metrics: the retriever's order, the base and the fine-tuned reranker")
    note = gr.Markdown(elem_id="compare-rerank-note")
    examples = gr.Dropdown(label="Example queries from the held-out split", choices=[], elem_id="compare-rerank-examples")
    with gr.Row():
        query = gr.Textbox(label="Query", placeholder="type a query, or pick an example", scale=4,
                           elem_id="compare-rerank-query")
        rerank_btn = gr.Button("Rerank with both models", variant="primary", scale=1, elem_id="compare-rerank")
    answer_note = gr.Markdown(elem_id="compare-rerank-relevant")
    with gr.Row(equal_height=False):
        retriever_results = gr.Dataframe(headers=RETRIEVER_HEADERS, label="First-stage retriever", interactive=False,
                                         wrap=True, column_widths=["10%", "20%", "14%", "56%"], max_height=900,
                                         elem_id="compare-retriever")
        base_results = gr.Dataframe(headers=RERANKED_HEADERS, label="Base reranker", interactive=False, wrap=True,
                                    column_widths=["9%", "17%", "18%", "12%", "44%"], max_height=900, visible=False,
                                    elem_id="compare-rerank-base")
        trained_results = gr.Dataframe(headers=RERANKED_HEADERS, label="Fine-tuned reranker", interactive=False,
                                       wrap=True, column_widths=["9%", "17%", "18%", "12%", "44%"], max_height=900,
                                       elem_id="compare-rerank-trained")

    def open_run(run_id):
        run = _run_of(studio, run_id, "reranker")
        if run is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return _open_queries(run, task_evaluation, rerank_metric_rows(run.metrics),
                             lambda evaluation: rerank_note(run, evaluation))

    def rerank(run_id, text):
        run = _run_of(studio, run_id, "reranker")
        if run is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        if not (text or "").strip():
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), show_error("type a query")
        from studio.comparison import comparison_for

        try:
            result = comparison_for(run).search(text.strip())
        except (OSError, KeyError, ValueError) as problem:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), show_error(str(problem))
        return (reranked_rows(result["retriever"], reranked=False),
                gr.update(value=reranked_rows(result["base"], reranked=True), visible=result["base"] is not None),
                reranked_rows(result["trained"], reranked=True), rerank_answer_note(result), hide_error())

    def measure(run_id):
        run = _run_of(studio, run_id, "reranker")
        if run is None:
            return gr.skip(), gr.skip(), gr.skip()
        from studio.comparison import comparison_for

        try:
            comparison = comparison_for(run)
            metrics = comparison.metrics()
        except (OSError, KeyError, ValueError) as problem:
            return gr.skip(), gr.skip(), show_error(str(problem))
        return (rerank_metric_rows(metrics), rerank_note(run, comparison.evaluation, comparison.base is not None),
                hide_error())

    rerank_in, rerank_out = [run_pick, query], [retriever_results, base_results, trained_results, answer_note, error]
    run_pick.change(open_run, run_pick, [metrics_table, note, examples, query, error],
                    api_name="compare_reranker_run").then(
        rerank, rerank_in, rerank_out, api_visibility="private").then(
        measure, run_pick, [metrics_table, note, error], api_name="compare_reranker_metrics")
    examples.input(lambda q: q or gr.skip(), examples, query, api_visibility="private").then(
        rerank, rerank_in, rerank_out, api_visibility="private")
    rerank_btn.click(rerank, rerank_in, rerank_out, api_name="compare_rerank")
    query.submit(rerank, rerank_in, rerank_out, api_visibility="private")


def _classifier_view(studio, run_pick, error) -> None:
    metrics_table = gr.Dataframe(headers=CLASS_METRIC_HEADERS, label="Held-out metrics, before / after",
                                 interactive=False, elem_id="compare-class-metrics")
    note = gr.Markdown(elem_id="compare-class-note")
    per_class = gr.Dataframe(headers=PER_CLASS_HEADERS, label="Per class, on the held-out texts", interactive=False,
                             elem_id="compare-per-class")
    confusion_plot = gr.Plot(label="Confusion matrices", elem_id="compare-confusion")
    examples = gr.Dropdown(label="Example texts from the held-out split", choices=[], elem_id="compare-class-examples")
    with gr.Row():
        with gr.Column(scale=4):
            text = gr.Textbox(label="Text", placeholder="type a text, or pick an example", lines=3,
                              elem_id="compare-text")
            text_pair = gr.Textbox(label="Second text of the pair", lines=2, visible=False, elem_id="compare-text-pair")
        classify_btn = gr.Button("Classify with both models", variant="primary", scale=1, elem_id="compare-classify")
    answer_note = gr.Markdown(elem_id="compare-prediction")
    predictions = gr.Dataframe(headers=PREDICTION_HEADERS, label="Each class's probability", interactive=False,
                               elem_id="compare-predictions")
    newly_right = gr.Dataframe(headers=NEWLY_RIGHT_HEADERS, interactive=False, wrap=True, max_height=400,
                               column_widths=["64%", "12%", "12%", "12%"],
                               label="Held-out texts the fine-tuned model now gets right and the base got wrong "
                                     "(click one to open it)", elem_id="compare-newly-right")

    def open_run(run_id):
        run = _run_of(studio, run_id, "classifier")
        if run is None:
            return (gr.skip(),) * 8
        try:
            evaluation = task_evaluation(run)
        except Exception as problem:  # an old or damaged run folder: say so, keep the tab usable
            return (class_metric_rows(run.metrics), "", per_class_rows(run.metrics), None, gr.update(choices=[]),
                    gr.skip(), gr.skip(), show_error(f"cannot read the held-out split: {problem}"))
        count = min(EXAMPLE_QUERIES, len(evaluation.texts))
        choices = [(_clip(evaluation.texts[i]), str(i)) for i in range(count)]
        pairs = evaluation.pairs
        figure = charts.confusion_matrices_figure(run.metrics) if _has_matrices(run.metrics) else None
        return (class_metric_rows(run.metrics), class_note(run, evaluation, run.metrics), per_class_rows(run.metrics),
                figure, gr.update(choices=choices, value="0" if count else None),
                evaluation.texts[0] if count else "",
                gr.update(visible=bool(pairs), value=pairs[0] if pairs and count else ""), hide_error())

    def pick_example(run_id, index):
        run = _run_of(studio, run_id, "classifier")
        if run is None or index is None:
            return gr.skip(), gr.skip()
        evaluation = task_evaluation(run)
        i = int(index)
        return evaluation.texts[i], evaluation.pairs[i] if evaluation.pairs else ""

    def classify(run_id, typed, typed_pair):
        run = _run_of(studio, run_id, "classifier")
        if run is None:
            return gr.skip(), gr.skip(), gr.skip()
        if not (typed or "").strip():
            return gr.skip(), gr.skip(), show_error("type a text")
        from studio.comparison import comparison_for

        try:
            comparison = comparison_for(run)
            pair = (typed_pair or "").strip() or None if comparison.evaluation.pairs else None
            result = comparison.classify(typed.strip(), pair)
        except (OSError, KeyError, ValueError) as problem:
            return gr.skip(), gr.skip(), show_error(str(problem))
        label = comparison.held_out_label(typed.strip(), pair)
        return prediction_rows(result), prediction_note(result, label), hide_error()

    def analyze(run_id):
        run = _run_of(studio, run_id, "classifier")
        if run is None:
            return (gr.skip(),) * 6
        from studio.comparison import comparison_for

        try:
            comparison = comparison_for(run)
            metrics = comparison.metrics()
            fixed = comparison.newly_right()
        except (OSError, KeyError, ValueError) as problem:
            return (*(gr.skip(),) * 5, show_error(str(problem)))
        return (class_metric_rows(metrics), class_note(run, comparison.evaluation, metrics), per_class_rows(metrics),
                charts.confusion_matrices_figure(metrics), newly_right_rows(fixed), hide_error())

    def open_fixed(run_id, evt: gr.SelectData):
        run = _run_of(studio, run_id, "classifier")
        if run is None or not evt.index:
            return gr.skip(), gr.skip()
        from studio.comparison import comparison_for

        row = comparison_for(run).newly_right()[evt.index[0]]
        return row["text"], row["text_pair"] or ""

    classify_in, classify_out = [run_pick, text, text_pair], [predictions, answer_note, error]
    run_pick.change(open_run, run_pick, [metrics_table, note, per_class, confusion_plot, examples, text, text_pair, error],
                    api_name="compare_classifier_run").then(
        classify, classify_in, classify_out, api_visibility="private").then(
        analyze, run_pick, [metrics_table, note, per_class, confusion_plot, newly_right, error],
        api_name="compare_classifier_analyze")
    examples.input(pick_example, [run_pick, examples], [text, text_pair], api_visibility="private").then(
        classify, classify_in, classify_out, api_visibility="private")
    newly_right.select(open_fixed, run_pick, [text, text_pair], api_visibility="private").then(
        classify, classify_in, classify_out, api_visibility="private")
    classify_btn.click(classify, classify_in, classify_out, api_name="compare_classify")
    text.submit(classify, classify_in, classify_out, api_visibility="private")


def _has_matrices(metrics: dict | None) -> bool:
    return all("confusion_matrix" in ((metrics or {}).get(side) or {}) for side in ("base", "trained"))
