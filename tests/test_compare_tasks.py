"""Compare for reranker and classifier runs: the view a run of each task gets, checked against the plain
libraries. A reranker run of the bundled MiniLM (a new head: its base is the retriever's order) shows the
retriever's top 20 and the fine-tuned cross-encoder's order of them with each move and the held-out answer
marked, beside its metrics; a checkpoint with a trained head is its own base, and a run that was not evaluated is
measured here. A classifier run shows both models' predictions with probabilities (a new head's base is the majority
class, a checkpoint's own head is itself), its metrics, both confusion matrices, and the held-out texts training
put right."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from sentence_transformers import CrossEncoder
from transformers import pipeline

from engine.bundled import ASSETS_DIR
from engine.families import DEFAULT_MODEL
from engine.tasks.reranker import CANDIDATES, retriever
from studio import charts
from studio.comparison import ClassifierComparison, RerankerComparison, comparison_for
from studio.store import COMPLETED, Run, RunStore
from studio.tabs.compare import (RELEVANT, class_metric_rows, comparable_runs, per_class_rows, prediction_note,
                                 prediction_rows, rerank_answer_note, rerank_metric_rows, rerank_note,
                                 reranked_rows)
from studio_helpers import register_finished_run
from tiny_models import build_tiny_model

HELD_OUT_QUERIES = 30  # more documents than the retriever's top 20, so the candidates are a real cut


def pairs(split: str) -> pd.DataFrame:
    rows = pd.read_json(ASSETS_DIR / "debian-pairs" / f"{split}.jsonl", lines=True)
    return rows.rename(columns={"query": "anchor", "document": "positive"})[["anchor", "positive"]]


def sections(split: str, counts: dict[str, int]) -> pd.DataFrame:
    rows = pd.read_json(ASSETS_DIR / "debian-sections" / f"{split}.jsonl", lines=True)
    rows = pd.concat([rows[rows["section"] == section].head(n) for section, n in counts.items()])
    return rows.rename(columns={"section": "label"})[["text", "label"]].sample(frac=1.0, random_state=0)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("compare-tasks")


@pytest.fixture(scope="module")
def reranker_run(home):
    """The bundled MiniLM as a cross-encoder (a new head), a few steps on mined negatives."""
    return register_finished_run(home, "rerank-minilm", {
        "task": "reranker", "model": DEFAULT_MODEL, "method": "full", "max_steps": 3, "batch_size": 8,
        "learning_rate": 2e-5, "negatives": 2, "max_seq_length": 64}, pairs("train").head(100),
        pairs("test").head(HELD_OUT_QUERIES))


@pytest.fixture(scope="module")
def classifier_run(home):
    """The bundled MiniLM as a classifier of two Debian sections (a new head), enough steps to beat the majority."""
    return register_finished_run(home, "classify-minilm", {
        "task": "classifier", "model": DEFAULT_MODEL, "max_steps": 8, "batch_size": 8, "learning_rate": 2e-3,
        "max_seq_length": 64}, sections("train", {"games": 50, "sound": 40}), sections("test", {"games": 12, "sound": 8}))


def unevaluated_run(home, run_id: str, task: str, base: Path, trained_save, held_out: pd.DataFrame) -> Run:
    """A finished run that skipped evaluation: `base` is its model, `trained_save(folder)` writes its merged/."""
    run_dir = home / run_id
    (run_dir / "data").mkdir(parents=True)
    held_out.to_json(run_dir / "data" / "eval.jsonl", orient="records", lines=True)
    trained_save(run_dir / "merged")
    config = {"task": task, "model": str(base), "columns": {c: c for c in held_out.columns}, "max_eval_queries": 500,
              "seed": 42, "max_seq_length": 64, "evaluate": False}
    return RunStore(home / "runs.sqlite").add(Run(id=run_id, created=time.time(), status=COMPLETED, model=str(base),
                                                  data="held-out.jsonl", method="lora", run_dir=str(run_dir),
                                                  config=config))


def cosine_order(query: str, documents: list[str]) -> list[str]:
    model = retriever(None)
    scores = model.similarity(model.encode_query([query]), model.encode_document(documents))[0]
    return [documents[i] for i in scores.argsort(descending=True).tolist()]


def test_a_reranker_run_shows_the_retrievers_top_20_and_the_fine_tuned_order_of_them(reranker_run):
    comparison = comparison_for(reranker_run)
    assert isinstance(comparison, RerankerComparison) and comparison.base is None  # a new head: the retriever's order
    query = comparison.evaluation.queries[0]
    (answer,) = comparison.answers[query]
    result = comparison.search(query)

    corpus = comparison.evaluation.corpus
    assert len(corpus) == HELD_OUT_QUERIES and len(result["retriever"]) == CANDIDATES
    assert [hit["document"] for hit in result["retriever"]] == cosine_order(query, corpus)[:CANDIDATES]
    candidates = [hit["document"] for hit in result["retriever"]]
    plain = CrossEncoder(str(Path(reranker_run.run_dir) / "merged"), device="cpu")
    scores = plain.predict([(query, document) for document in candidates])
    assert [hit["document"] for hit in result["trained"]] == [candidates[i] for i in (-scores).argsort(kind="stable")]
    assert [hit["score"] for hit in result["trained"]] == pytest.approx(sorted(scores, reverse=True), abs=1e-4)
    for hit in result["trained"]:  # each move is from the document's rank in the retriever's order (the base)
        assert hit["before"] == candidates.index(hit["document"]) + 1
        assert hit["rank_change"] == hit["before"] - hit["rank"]

    retriever_rows = reranked_rows(result["retriever"], reranked=False)
    trained_rows = reranked_rows(result["trained"], reranked=True)
    assert [row[0] for row in trained_rows] == list(range(1, CANDIDATES + 1))
    for rows, hits in ((retriever_rows, result["retriever"]), (trained_rows, result["trained"])):
        marked = [row for row in rows if RELEVANT in row]
        if answer in candidates:
            assert [row[-1] for row in marked] == [answer]
            assert marked[0][0] == [hit["document"] for hit in hits].index(answer) + 1
    if answer in candidates:
        trained_rank = [hit["document"] for hit in result["trained"]].index(answer) + 1
        note = rerank_answer_note(result)
        assert f"ranks **{candidates.index(answer) + 1}** in the retriever's order" in note
        assert f"**{trained_rank}** with the fine-tuned reranker" in note
    else:
        assert result["missed"] == [answer] and "did not bring" in rerank_answer_note(result)


def test_a_query_of_ones_own_is_reranked_with_nothing_marked(reranker_run):
    result = comparison_for(reranker_run).search("how do I play music from the terminal?")
    assert len(result["trained"]) == CANDIDATES and result["missed"] == []
    assert not any(RELEVANT in row for row in reranked_rows(result["trained"], reranked=True))
    assert "not one of the held-out ones" in rerank_answer_note(result)


def test_an_answer_the_retriever_missed_is_said_to_be_out_of_any_rerankers_reach():
    hit = {"rank": 1, "document": "another", "score": 0.5, "relevant": False}
    result = {"retriever": [hit], "base": None, "trained": [{**hit, "before": 1, "rank_change": 0}],
              "missed": ["the answer"]}
    assert "did not bring this query's held-out answer into its top candidates" in rerank_answer_note(result)


def test_the_reranker_metrics_are_the_runs_and_measuring_them_again_agrees(reranker_run):
    metrics = reranker_run.metrics
    rows = {row[0]: row[1:] for row in rerank_metric_rows(metrics)}
    assert set(rows) == {"MRR@10", "NDCG@10"}
    retriever_order, base, trained, change = rows["NDCG@10"]
    assert retriever_order == base == round(metrics["base"]["ndcg@10"], 4)  # the base is the retriever's order
    assert trained == round(metrics["trained"]["ndcg@10"], 4)
    assert change == f"{metrics['trained']['ndcg@10'] - metrics['base']['ndcg@10']:+.4f}"
    comparison = comparison_for(reranker_run)
    assert "The base is the retriever's own order" in rerank_note(reranker_run, comparison.evaluation)  # evaluated
    measured = comparison.measure()
    assert measured["base"] == pytest.approx(metrics["base"], abs=1e-6)
    for name in ("ndcg@10", "mrr@10"):
        assert measured["trained"][name] == pytest.approx(metrics["trained"][name], abs=0.01)
    studio = SimpleNamespace(store=RunStore(Path(reranker_run.run_dir).parent / "runs.sqlite"))
    assert any(label.startswith("rerank-minilm · completed · reranker · ") for label, _ in comparable_runs(studio))


def test_a_checkpoint_with_a_trained_head_is_its_own_base_and_an_unevaluated_run_is_measured_here(home):
    from engine import FastCrossEncoder

    base_folder = home / "tiny-reranker"
    FastCrossEncoder.from_pretrained(str(build_tiny_model("bert", home / "tiny-0")), device="cpu").save_pretrained(
        str(base_folder))  # now a checkpoint with a trained head
    trained = FastCrossEncoder.from_pretrained(str(build_tiny_model("bert", home / "tiny-1", seed=1)), device="cpu")
    run = unevaluated_run(home, "rerank-headed", "reranker", base_folder, lambda d: trained.save_pretrained(str(d)),
                          pairs("test").head(HELD_OUT_QUERIES))
    comparison = comparison_for(run)
    assert comparison.base is not None
    result = comparison.search(comparison.evaluation.queries[0])
    retriever_ranks = {hit["document"]: hit["rank"] for hit in result["retriever"]}
    base_ranks = {hit["document"]: hit["rank"] for hit in result["base"]}
    assert all(hit["before"] == retriever_ranks[hit["document"]] for hit in result["base"])
    assert all(hit["before"] == base_ranks[hit["document"]] for hit in result["trained"])  # moves from the base
    plain = CrossEncoder(str(base_folder), device="cpu")
    scores = plain.predict([(result["query"], hit["document"]) for hit in result["base"]])
    assert list(scores) == pytest.approx(sorted(scores, reverse=True), abs=1e-5)  # the base's own order
    assert "with the base reranker" in rerank_answer_note(result) or result["missed"]

    metrics = comparison.metrics()  # the run has none: measured with both loaded models
    assert set(metrics["trained"]) == set(metrics["base"]) == {"ndcg@10", "mrr@10", "retriever_ndcg@10",
                                                              "retriever_mrr@10"}
    assert metrics["base"]["retriever_ndcg@10"] == metrics["trained"]["retriever_ndcg@10"]  # the same candidates
    assert [row[0] for row in rerank_metric_rows(metrics)] == ["MRR@10", "NDCG@10"]


def pipeline_probabilities(folder, text: str) -> dict[str, float]:
    classify = pipeline("text-classification", model=str(folder), top_k=None, device="cpu")
    return {guess["label"]: guess["score"] for guess in classify([text], truncation=True)[0]}


def test_a_classifier_run_shows_both_predictions_with_their_probabilities(classifier_run):
    comparison = comparison_for(classifier_run)
    assert isinstance(comparison, ClassifierComparison) and comparison.base is None  # a new head: the majority class
    text, label = comparison.evaluation.texts[0], comparison.evaluation.labels[0]
    result = comparison.classify(text)
    assert result["labels"] == ["games", "sound"] and result["majority"] == "games"
    expected = pipeline_probabilities(Path(classifier_run.run_dir) / "merged", text)
    # The studio runs the adapter on its base, the pipeline the merged save: the same model to float rounding
    assert dict(zip(result["labels"], result["trained"])) == pytest.approx(expected, abs=1e-3)

    rows = prediction_rows(result)
    assert [row[0] for row in rows] == sorted(expected, key=expected.get, reverse=True)
    assert {row[0]: row[1] for row in rows} == {"games": "always (majority class)", "sound": ""}
    assert {row[0]: float(row[2]) for row in rows} == pytest.approx(expected, abs=1e-3)
    note = prediction_note(result, comparison.held_out_label(text))
    assert f"Fine-tuned: **{max(expected, key=expected.get)}**" in note and "the majority class" in note
    assert f"Held-out label: **{label}**" in note
    assert "no label to check" in prediction_note(comparison.classify("a text of my own"),
                                                   comparison.held_out_label("a text of my own"))


def test_the_classifier_metrics_confusion_matrices_and_the_texts_training_put_right(classifier_run):
    metrics = classifier_run.metrics
    assert metrics["trained"]["accuracy"] > metrics["base"]["accuracy"]  # the page has something to show
    rows = {row[0]: row[1:] for row in class_metric_rows(metrics)}
    assert rows["Accuracy"][:2] == [round(metrics["base"]["accuracy"], 4), round(metrics["trained"]["accuracy"], 4)]
    assert rows["Macro-F1"][1] == round(metrics["trained"]["macro_f1"], 4)
    per_class = {row[0]: row[1:] for row in per_class_rows(metrics)}
    assert per_class["sound"][0] == 8 and per_class["games"][4] == round(metrics["trained"]["per_class"]["games"]["precision"], 4)

    figure = charts.confusion_matrices_figure(metrics)
    assert [trace.type for trace in figure.data] == ["heatmap", "heatmap"]
    for trace, side in zip(figure.data, ("base", "trained")):
        assert [list(row) for row in trace.z] == metrics[side]["confusion_matrix"]["matrix"]
    right = round(metrics["trained"]["accuracy"] * 20)
    assert f"fine-tuned: {right} of 20 right" in [annotation.text for annotation in figure.layout.annotations]

    comparison = comparison_for(classifier_run)
    assert comparison.measure()["trained"]["accuracy"] == pytest.approx(metrics["trained"]["accuracy"])
    merged = Path(classifier_run.run_dir) / "merged"
    classify = pipeline("text-classification", model=str(merged), device="cpu")
    guesses = [guess["label"] for guess in classify(comparison.evaluation.texts, truncation=True)]
    expected = [text for text, label, guess in zip(comparison.evaluation.texts, comparison.evaluation.labels, guesses)
                if guess == label != "games"]
    assert expected and [row["text"] for row in comparison.newly_right()] == expected


def test_a_checkpoint_with_its_own_head_is_the_classifiers_base(home):
    from engine import FastClassifier

    def classifier(seed: int):
        return FastClassifier.from_pretrained(str(build_tiny_model("bert", home / f"tiny-classifier-{seed}", seed=seed)),
                                              labels=["games", "sound"], device="cpu")

    base_folder = home / "tiny-games-or-sound"
    classifier(0).save_pretrained_merged(base_folder, dtype="float32")
    trained = classifier(1)
    run = unevaluated_run(home, "classify-headed", "classifier", base_folder,
                          lambda folder: trained.save_pretrained_merged(folder, dtype="float32"),
                          sections("test", {"games": 6, "sound": 6}))
    comparison = comparison_for(run)
    assert comparison.base is not None
    text = comparison.evaluation.texts[0]
    result = comparison.classify(text)
    assert dict(zip(result["labels"], result["base"])) == pytest.approx(pipeline_probabilities(base_folder, text),
                                                                       abs=1e-4)
    assert all(row[1] and row[1] != "always (majority class)" for row in prediction_rows(result))
    metrics = comparison.metrics()  # the run has none: measured here
    assert metrics["base"]["accuracy"] == pytest.approx(
        sum(g == l for g, l in zip(comparison.predictions()["base"], comparison.evaluation.labels)) / 12)
    assert all(row["base"] != row["label"] == row["trained"] for row in comparison.newly_right())
    assert json.loads((Path(run.run_dir) / "merged" / "config.json").read_text())["id2label"] == {"0": "games",
                                                                                                 "1": "sound"}
