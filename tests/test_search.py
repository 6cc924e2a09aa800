"""The Compare tab's search: the top k of each model are the documents a brute-force cosine ranking puts
first, each fine-tuned hit's base rank is where the base model ranks that document, the relevant
document is found at its brute-force rank under each model, inside the top k or not, and the per-query
scores average to the library evaluator's metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine import FastSentenceTransformer
from engine.evaluate import SearchIndex, compare_search, per_query_scores, relevant_ranks, retrieval_metrics
from tiny_models import build_tiny_model

CORPUS = [f"package {i} is a tool about topic {i % 7} with feature {i * 3}" for i in range(40)]
QUERIES = ["what does package 3 do", "a tool about topic 5", "feature 27"]


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """Two tiny models with different random weights, standing for the base and the fine-tuned model."""
    folder = tmp_path_factory.mktemp("tiny")
    return [FastSentenceTransformer.from_pretrained(str(build_tiny_model("bert", folder / f"bert-{seed}", seed=seed)),
                                                    for_inference=True)
            for seed in (0, 1)]


def brute_force_ranking(model, query: str, corpus: list[str]) -> list[tuple[str, float]]:
    """Every document with its cosine similarity to `query`, most similar first."""
    query_embedding = model.encode_query([query], convert_to_tensor=True)
    document_embeddings = model.encode_document(corpus, convert_to_tensor=True)
    scores = torch.nn.functional.cosine_similarity(query_embedding, document_embeddings)
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    return [(corpus[i], float(scores[i])) for i in order]


@pytest.mark.parametrize("query", QUERIES)
def test_top_k_are_the_brute_force_cosine_ranking(two_models, query):
    model = two_models[0]
    expected = brute_force_ranking(model, query, CORPUS)[:5]
    hits = SearchIndex.build(model, CORPUS).search(query, top_k=5)
    assert [hit["rank"] for hit in hits] == [1, 2, 3, 4, 5]
    assert [hit["document"] for hit in hits] == [document for document, _ in expected]
    assert [hit["score"] for hit in hits] == pytest.approx([score for _, score in expected], abs=1e-5)


def test_compare_search_gives_each_trained_hit_its_base_rank(two_models):
    base_model, trained_model = two_models
    base, trained = SearchIndex.build(base_model, CORPUS), SearchIndex.build(trained_model, CORPUS)
    query = QUERIES[0]
    result = compare_search(base, trained, query, top_k=5)

    base_order = [document for document, _ in brute_force_ranking(base_model, query, CORPUS)]
    trained_order = [document for document, _ in brute_force_ranking(trained_model, query, CORPUS)]
    assert result["query"] == query
    assert [hit["document"] for hit in result["base"]] == base_order[:5]
    assert [hit["document"] for hit in result["trained"]] == trained_order[:5]
    for hit in result["trained"]:
        assert hit["base_rank"] == base_order.index(hit["document"]) + 1
        assert hit["rank_change"] == hit["base_rank"] - hit["rank"]
    assert any(hit["rank_change"] != 0 for hit in result["trained"])  # the two models disagree somewhere


def test_top_k_beyond_the_corpus_returns_every_document_once(two_models):
    hits = SearchIndex.build(two_models[0], CORPUS[:3] + CORPUS[:2]).search(QUERIES[1], top_k=10)
    assert sorted(hit["document"] for hit in hits) == sorted(CORPUS[:3])


def test_compare_search_finds_the_relevant_document_wherever_each_model_ranks_it(two_models):
    base_model, trained_model = two_models
    base, trained = SearchIndex.build(base_model, CORPUS), SearchIndex.build(trained_model, CORPUS)
    query = QUERIES[1]
    relevant = brute_force_ranking(base_model, query, CORPUS)[-1][0]  # the base model ranks it last
    result = compare_search(base, trained, query, top_k=5, relevant=[relevant])

    assert not any(hit["relevant"] for hit in result["base"])
    for name, model in (("base", base_model), ("trained", trained_model)):
        (hit,) = result["relevant_hits"][name]
        order = [document for document, _ in brute_force_ranking(model, query, CORPUS)]
        assert hit["document"] == relevant and hit["rank"] == order.index(relevant) + 1
        assert [h["relevant"] for h in result[name]] == [d == relevant for d in order[:5]]
    assert result["relevant_hits"]["base"][0]["rank"] == len(CORPUS)


def test_per_query_scores_average_to_the_library_evaluators_metrics(two_models):
    """The per-query NDCG@10 / MRR@10 behind Compare's intervals are sentence-transformers' own, query by
    query: their means are what InformationRetrievalEvaluator reports, a query with two answers included."""
    model = two_models[0]
    queries = [f"what is package {i}" for i in range(12)] + ["what is package 3"]
    documents = CORPUS[:12] + [CORPUS[20]]  # query 3 has two relevant documents
    expected = retrieval_metrics(model, queries, documents, extra_corpus=CORPUS[12:])

    corpus = list(dict.fromkeys([*documents, *CORPUS[12:]]))
    distinct = list(dict.fromkeys(queries))
    relevant = [[corpus.index(d) for q, d in zip(queries, documents) if q == query] for query in distinct]
    query_embeddings = model.encode_query(distinct, normalize_embeddings=True, convert_to_numpy=True)
    document_embeddings = model.encode_document(corpus, normalize_embeddings=True, convert_to_numpy=True)
    scores = per_query_scores(relevant_ranks(query_embeddings @ document_embeddings.T, relevant))
    assert len(scores["ndcg@10"]) == 12
    assert scores["ndcg@10"].mean() == pytest.approx(expected["ndcg@10"], abs=1e-6)
    assert scores["mrr@10"].mean() == pytest.approx(expected["mrr@10"], abs=1e-6)
