"""Retrieval metrics (through sentence-transformers' InformationRetrievalEvaluator), the side-by-side
search the studio's Compare tab shows (through sentence-transformers' `util.semantic_search`), and the
per-query scores behind the metrics' confidence intervals (how much of a change is noise)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
from sentence_transformers.util import cos_sim, dot_score, semantic_search

from engine.hub import METRIC_NAMES


def retrieval_evaluator(queries: list[str], documents: list[str], extra_corpus=(), batch_size: int = 64,
                        name: str = "held-out") -> InformationRetrievalEvaluator:
    """Query i's relevant document is documents[i]; the corpus is every distinct document plus
    `extra_corpus`. A query text that appears several times is relevant to all its documents."""
    corpus_ids: dict[str, str] = {}
    for text in [*documents, *extra_corpus]:
        corpus_ids.setdefault(text, f"d{len(corpus_ids)}")
    query_ids: dict[str, str] = {}
    relevant: dict[str, set[str]] = {}
    for query, document in zip(queries, documents, strict=True):
        qid = query_ids.setdefault(query, f"q{len(query_ids)}")
        relevant.setdefault(qid, set()).add(corpus_ids[document])
    return InformationRetrievalEvaluator(
        queries={qid: text for text, qid in query_ids.items()},
        corpus={cid: text for text, cid in corpus_ids.items()},
        relevant_docs=relevant,
        mrr_at_k=[10],
        ndcg_at_k=[10],
        accuracy_at_k=[1, 10],
        precision_recall_at_k=[1, 10, 100],
        map_at_k=[100],
        batch_size=batch_size,
        name=name,
        write_csv=False,
        score_functions={"cosine": cos_sim},
        main_score_function="cosine",
    )


def evaluator_metrics(raw: dict) -> dict[str, float]:
    """Our metric names from the evaluator's keys, which carry its name and, inside a trainer, an
    "eval_" prefix: 'eval_held-out_cosine_ndcg@10' -> 'ndcg@10'."""
    metrics = {}
    for name in METRIC_NAMES:
        for key, value in raw.items():
            if key.endswith(f"cosine_{name}"):
                metrics[name] = float(value)
    return metrics


def retrieval_metrics(model: SentenceTransformer, queries: list[str], documents: list[str], extra_corpus=(),
                      batch_size: int = 64) -> dict[str, float]:
    """NDCG@10, MRR@10, Recall@1/10/100 and MAP@100 of `model` on (query, relevant document) pairs."""
    evaluator = retrieval_evaluator(queries, documents, extra_corpus, batch_size)
    # A measurement, not a training-time evaluation: the model card shows it through
    # engine.hub.describe_training, beside the base model's, rather than as this model's own result.
    evaluator.store_metrics_in_model_card_data = lambda *args, **kwargs: None
    was_training = model.training
    try:
        return evaluator_metrics(evaluator(model))
    finally:
        model.train(was_training)


@dataclass
class SearchIndex:
    """A corpus encoded once by one model, searched many times."""

    model: SentenceTransformer
    corpus: list[str]
    embeddings: torch.Tensor  # (documents, dimensions), unit length, float32

    @classmethod
    def build(cls, model: SentenceTransformer, corpus: list[str], batch_size: int = 64) -> "SearchIndex":
        corpus = list(dict.fromkeys(corpus))
        embeddings = model.encode_document(corpus, batch_size=batch_size, convert_to_tensor=True,
                                           normalize_embeddings=True)
        return cls(model, corpus, embeddings.float())

    def search(self, query: str, top_k: int = 5) -> list[dict]:
        """The `top_k` documents by cosine similarity to `query`, best first: rank (from 1), document, score."""
        query_embedding = self.model.encode_query([query], convert_to_tensor=True, normalize_embeddings=True)
        # Both sides are unit length, so the dot product is the cosine similarity.
        hits = semantic_search(query_embedding.float(), self.embeddings, top_k=top_k, score_function=dot_score)[0]
        return [{"rank": rank + 1, "document": self.corpus[hit["corpus_id"]], "score": float(hit["score"])}
                for rank, hit in enumerate(hits)]


def compare_search(base: SearchIndex, trained: SearchIndex, query: str, top_k: int = 5, relevant=()) -> dict:
    """Top-k of both models for `query`. Every hit says whether it is one of the `relevant` documents; each
    trained hit carries its rank under the base model (`base_rank`, over the whole corpus) and `rank_change`
    = base_rank - rank (positive: moved up). `relevant_hits[model]` are the relevant documents' hits in that
    model's whole ranking ("base", "trained"), wherever they rank."""
    relevant = set(relevant)
    rankings = {}
    for name, index in (("base", base), ("trained", trained)):
        rankings[name] = index.search(query, top_k=len(index.corpus))
        for hit in rankings[name]:
            hit["relevant"] = hit["document"] in relevant
    base_ranks = {hit["document"]: hit["rank"] for hit in rankings["base"]}
    for hit in rankings["trained"]:
        hit["base_rank"] = base_ranks[hit["document"]]
        hit["rank_change"] = hit["base_rank"] - hit["rank"]
    return {"query": query, "base": rankings["base"][:top_k], "trained": rankings["trained"][:top_k],
            "relevant_hits": {name: [hit for hit in ranking if hit["relevant"]] for name, ranking in rankings.items()}}


def relevant_ranks(scores: np.ndarray, relevant: list[list[int]]) -> list[np.ndarray]:
    """Each query's relevant documents' ranks (1 = most similar) among all documents. `scores`: (queries,
    documents) similarities; `relevant[i]`: the columns of query i's relevant documents. A tie counts in the
    document's favour."""
    return [(scores[i][None, :] > scores[i, columns][:, None]).sum(axis=1) + 1 for i, columns in enumerate(relevant)]


def per_query_scores(ranks: list[np.ndarray], k: int = 10) -> dict[str, np.ndarray]:
    """NDCG@k and MRR@k of each query from its relevant documents' ranks, as InformationRetrievalEvaluator
    defines them (binary relevance): their means are its ndcg@k and mrr@k."""
    ndcg, mrr = [], []
    for query_ranks in ranks:
        found = np.sort(query_ranks[query_ranks <= k])
        ideal = (1 / np.log2(np.arange(2, min(len(query_ranks), k) + 2))).sum()
        ndcg.append((1 / np.log2(found + 1)).sum() / ideal)
        mrr.append(1 / found[0] if len(found) else 0.0)
    return {f"ndcg@{k}": np.array(ndcg, dtype=float), f"mrr@{k}": np.array(mrr, dtype=float)}


def mean_interval(values, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float] | None:
    """The bootstrap (percentile) `level` interval of the mean of per-query `values`: where the metric would
    land on another held-out sample of the same size. None for fewer than two values."""
    from scipy.stats import bootstrap

    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return None
    if np.ptp(values) == 0:  # every query scored alike: no spread to resample (scipy warns and returns nan)
        return float(values[0]), float(values[0])
    interval = bootstrap((values,), np.mean, n_resamples=resamples, confidence_level=level, method="percentile",
                         rng=np.random.default_rng(seed)).confidence_interval
    return float(interval.low), float(interval.high)


def metric_intervals(base: dict[str, np.ndarray], trained: dict[str, np.ndarray], level: float = 0.95) -> dict:
    """For each metric of `per_query_scores` measured on the same queries by both models: {"base", "trained",
    "change"} -> the `level` interval of the mean (the change's from the paired per-query differences, so the
    queries' own difficulty cancels out)."""
    return {name: {"base": mean_interval(base[name], level), "trained": mean_interval(trained[name], level),
                   "change": mean_interval(trained[name] - base[name], level)}
            for name in base if name in trained}
