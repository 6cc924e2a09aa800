"""A finished run's base and trained models side by side on its held-out split.

The held-out queries, their relevant documents and the corpus are the ones the worker scored the run on
(`run_evaluation` repeats its sampling), so the per-query scores here are the ones behind the run's
metrics. This is the one part of the studio that imports torch (through the engine), and only when
Compare is used: both models are loaded once per run, and the corpus and the held-out queries encoded
once per model.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import data as data_layer
from engine.tasks.embedding import retrieval_evaluation
from studio.data_sources import read_run_eval
from studio.store import Run

_KEPT = 2  # runs whose models stay loaded


@dataclass
class HeldOutQueries:
    """`queries[i]` (distinct texts, in the order the worker sampled them) is relevant to the documents
    `relevant[i]`; `answers` knows the relevant documents of every held-out query, scored or not."""

    queries: list[str]
    relevant: list[set[str]]
    corpus: list[str]
    answers: dict[str, set[str]]


def _relevance(queries: list[str], documents: list[str]) -> dict[str, set[str]]:
    relevant: dict[str, set[str]] = {}
    for query, document in zip(queries, documents, strict=True):
        relevant.setdefault(query, set()).add(document)
    return relevant


def run_evaluation(run: Run) -> HeldOutQueries:
    """The held-out queries the worker measured `run` on (no model needed: this is quick)."""
    columns = run.config.get("columns") or {}
    held_out = data_layer.prepare(read_run_eval(run.run_dir), columns)
    shape = data_layer.task_for(columns)
    scored = retrieval_evaluation(held_out, shape, run.config["max_eval_queries"], run.config["seed"])
    every = retrieval_evaluation(held_out, shape, len(held_out), run.config["seed"])
    relevant = _relevance(scored.queries, scored.documents)
    return HeldOutQueries(queries=list(relevant), relevant=list(relevant.values()),
                          corpus=list(dict.fromkeys([*scored.documents, *scored.extra])),
                          answers=_relevance(every.queries, every.documents))


def _load(name_or_path: str, max_seq_length: int | None):
    from engine import FastSentenceTransformer

    model = FastSentenceTransformer.from_pretrained(name_or_path, for_inference=True)
    if max_seq_length:
        model.max_seq_length = max_seq_length
    if model.device.type == "cpu":
        model.float()  # merged models are saved in 16 bits; CPUs run those matmuls many times slower
    return model


class RunComparison:
    def __init__(self, run: Run):
        from engine.evaluate import SearchIndex, relevant_ranks

        merged = Path(run.run_dir) / "merged"
        if not (merged / "modules.json").exists() and not (merged / "config.json").exists():
            raise FileNotFoundError(f"run {run.id} has no merged model yet (status: {run.status}); "
                                    "Compare needs a run that completed or was stopped after some steps")
        self.held_out = run_evaluation(run)
        length = run.config.get("max_seq_length")  # search as the model was trained (and evaluated)
        self.base = SearchIndex.build(_load(run.config["model"], length), self.held_out.corpus)
        self.trained = SearchIndex.build(_load(str(merged), length), self.held_out.corpus)
        position = {document: i for i, document in enumerate(self.base.corpus)}
        self._relevant_columns = [[position[d] for d in documents] for documents in self.held_out.relevant]
        # (queries, documents) cosine similarities under each model: every held-out number below comes from these
        self._scores = {name: self._similarities(index) for name, index in (("base", self.base), ("trained", self.trained))}
        self._ranks = {name: relevant_ranks(scores, self._relevant_columns) for name, scores in self._scores.items()}

    def _similarities(self, index) -> np.ndarray:
        queries = index.model.encode_query(self.held_out.queries, normalize_embeddings=True, convert_to_numpy=True)
        return queries.astype(np.float32) @ index.embeddings.cpu().numpy().T

    def search(self, query: str, top_k: int) -> dict:
        """Both models' top k for `query`, its held-out relevant documents marked (none for a query of one's own)."""
        from engine.evaluate import compare_search

        return compare_search(self.base, self.trained, query, top_k, self.held_out.answers.get(query, ()))

    def query_gains(self) -> list[dict]:
        """Held-out queries sorted by how far their relevant document moved up, best first."""
        rows = [{"query": query, "base_rank": int(base.min()), "trained_rank": int(trained.min()),
                 "gain": int(base.min() - trained.min())}
                for query, base, trained in zip(self.held_out.queries, self._ranks["base"], self._ranks["trained"])]
        return sorted(rows, key=lambda r: (-r["gain"], r["trained_rank"]))

    def per_query_scores(self) -> dict[str, dict[str, np.ndarray]]:
        """{"base", "trained"} -> metric -> each held-out query's score (their means are the run's metrics)."""
        from engine.evaluate import per_query_scores

        return {name: per_query_scores(ranks) for name, ranks in self._ranks.items()}

    def similarity_margins(self) -> dict:
        """Each held-out query's cosine similarity to its own (relevant) document and to the most similar
        other document, under each model: {"queries", "base": {"own", "other"}, "trained": {...}}. Own above
        other is a query that finds its document first."""
        view: dict = {"queries": list(self.held_out.queries)}
        for name, scores in self._scores.items():
            own = np.array([scores[i, columns].max() for i, columns in enumerate(self._relevant_columns)])
            others = scores.copy()
            for i, columns in enumerate(self._relevant_columns):
                others[i, columns] = -np.inf
            view[name] = {"own": own.tolist(), "other": others.max(axis=1).tolist()}
        return view


_cache: OrderedDict[str, RunComparison] = OrderedDict()
_cache_lock = threading.Lock()


def comparison_for(run: Run) -> RunComparison:
    with _cache_lock:
        if run.id in _cache:
            _cache.move_to_end(run.id)
            return _cache[run.id]
        comparison = RunComparison(run)
        _cache[run.id] = comparison
        while len(_cache) > _KEPT:
            _cache.popitem(last=False)
        return comparison
