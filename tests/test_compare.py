"""Compare on a finished run of the bundled MiniLM (400 rows of the sample, 80 of them held out): the
held-out answer is marked in both columns at its true rank, the improved-queries table agrees with the
ranks opening a query shows, the per-query scores are the ones behind the run's metrics, their intervals
say how much of a change is noise, and the similarity view counts what the ranks count."""

from dataclasses import replace

import numpy as np
import pytest

from engine.evaluate import mean_interval, metric_intervals
from studio import charts
from studio.comparison import comparison_for
from studio.tabs.compare import RELEVANT, held_out_note, relevant_note, result_rows

from studio_helpers import RUN_TIMEOUT, make_studio, quick_config, wait_for

HELD_OUT = 80  # under the 100 below which the page warns, and a corpus small enough to encode quickly


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from engine.data import load_sample
    from studio.data_sources import DataSource

    home = tmp_path_factory.mktemp("compare")
    studio = make_studio(home)
    data = home / "pairs.csv"
    load_sample("train").head(400).to_csv(data, index=False)
    studio.runner.start_monitor()
    run = studio.start_run(quick_config(max_steps=4, evaluate=True, eval_size=HELD_OUT, max_eval_queries=500),
                           DataSource("file", str(data)))
    try:
        wait_for(lambda: studio.store.get(run.id).is_finished, RUN_TIMEOUT, "the run to finish")
    finally:
        studio.runner.close()
    run = studio.store.get(run.id)
    assert run.status == "completed", (run.error, run.hint)
    return run, comparison_for(run)


def brute_force_rank(index, query: str, document: str) -> int:
    ranking = [hit["document"] for hit in index.search(query, top_k=len(index.corpus))]
    return ranking.index(document) + 1


def test_per_query_scores_are_those_behind_the_runs_metrics(finished):
    run, comparison = finished
    assert len(comparison.held_out.queries) == HELD_OUT
    scores = comparison.per_query_scores()
    for model in ("base", "trained"):
        for metric in ("ndcg@10", "mrr@10"):
            assert len(scores[model][metric]) == HELD_OUT
            # the trained model was measured in 32 bits by the worker and is loaded here from its 16-bit save
            assert scores[model][metric].mean() == pytest.approx(run.metrics[model][metric], abs=0.02)


def test_the_held_out_answer_is_marked_in_both_columns_at_its_rank(finished):
    _run, comparison = finished
    gain = max(comparison.query_gains(), key=lambda g: g["base_rank"])
    assert gain["base_rank"] > 1  # the base model misses this one's answer at the top
    (answer,) = comparison.held_out.relevant[comparison.held_out.queries.index(gain["query"])]
    result = comparison.search(gain["query"], top_k=1)

    base_rows = result_rows(result["base"], result["relevant_hits"]["base"], trained=False)
    trained_rows = result_rows(result["trained"], result["relevant_hits"]["trained"], trained=True)
    for rows, index, rank in ((base_rows, comparison.base, gain["base_rank"]),
                              (trained_rows, comparison.trained, gain["trained_rank"])):
        assert rows[0][0] == 1
        (marked,) = [row for row in rows if RELEVANT in row]
        assert marked[0] == rank == brute_force_rank(index, gain["query"], answer)
        assert marked[-1] == answer
    assert len(base_rows) == 2  # the top 1, then the answer below it at its own rank
    assert f"**{gain['base_rank']}** with the base model and **{gain['trained_rank']}**" in relevant_note(result)


def test_a_query_of_ones_own_marks_nothing(finished):
    _run, comparison = finished
    result = comparison.search("a query nobody held out", top_k=3)
    rows = result_rows(result["base"], result["relevant_hits"]["base"], trained=False)
    assert len(rows) == 3 and not any(RELEVANT in row for row in rows)
    assert "not one of the held-out ones" in relevant_note(result)


def test_improved_queries_are_sorted_by_how_far_their_answer_moved_up(finished):
    _run, comparison = finished
    gains = comparison.query_gains()
    assert len(gains) == HELD_OUT
    assert [g["gain"] for g in gains] == sorted((g["gain"] for g in gains), reverse=True)
    assert all(g["gain"] == g["base_rank"] - g["trained_rank"] for g in gains)


def test_the_similarity_view_counts_the_queries_that_find_their_answer_first(finished):
    _run, comparison = finished
    view = comparison.similarity_margins()
    ranks = {g["query"]: g for g in comparison.query_gains()}
    for model, key in (("base", "base_rank"), ("trained", "trained_rank")):
        first = [own > other for own, other in zip(view[model]["own"], view[model]["other"])]
        assert first == [ranks[query][key] == 1 for query in view["queries"]]
    figure = charts.similarity_margins_figure(view)
    assert [trace.type for trace in figure.data] == ["histogram", "histogram"]
    found = sum(ranks[q]["trained_rank"] == 1 for q in view["queries"])
    assert f"fine-tuned: {found} of {HELD_OUT} queries find their own document first" in figure.data[1].name
    assert "own document" in figure.layout.title.text and "closest other document" in figure.layout.xaxis.title.text


def test_few_held_out_queries_come_with_a_noise_warning(finished):
    run, comparison = finished
    scores = comparison.per_query_scores()
    intervals = metric_intervals(scores["base"], scores["trained"])
    (low, high), (change_low, change_high) = intervals["ndcg@10"]["trained"], intervals["ndcg@10"]["change"]
    assert low <= run.metrics["trained"]["ndcg@10"] <= high
    note = held_out_note(run, HELD_OUT, intervals)
    assert f"Measured on {HELD_OUT} held-out queries" in note
    assert f"from {low:.3f} to {high:.3f}, and its change over the base model from {change_low:+.3f}" in note
    assert f"Only {HELD_OUT} held-out queries" in note and f"known to about ±{(high - low) / 2:.2f}" in note
    assert "hold out more rows" in note  # the data, not the Eval queries cap, limited the count
    capped = replace(run, config={**run.config, "max_eval_queries": HELD_OUT})
    assert "raise Eval queries" in held_out_note(capped, HELD_OUT, intervals)  # the cap did: the note names it
    assert "Only" not in held_out_note(run, 150, intervals)


def test_the_interval_of_a_mean_narrows_with_more_queries_and_pairs_the_change():
    rng = np.random.default_rng(1)
    few, many = rng.uniform(size=30), rng.uniform(size=3000)
    for values in (few, many):
        low, high = mean_interval(values)
        assert low < values.mean() < high
    assert np.subtract(*mean_interval(many)[::-1]) < np.subtract(*mean_interval(few)[::-1]) / 5
    assert mean_interval([0.5]) is None
    # every query gained exactly 0.05: the change is certain though the queries' scores spread widely
    intervals = metric_intervals({"ndcg@10": few}, {"ndcg@10": few + 0.05})["ndcg@10"]
    assert intervals["change"] == pytest.approx((0.05, 0.05))
    assert intervals["base"][1] - intervals["base"][0] > 0.1
