"""A finished run's base and trained models side by side on its held-out split.

This is the one part of the studio that imports torch (through the engine), and only when Compare
is used: both models are loaded once per run and the held-out documents encoded once per model.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from studio.data_sources import read_run_eval
from studio.store import Run

MAX_HELD_OUT_ROWS = 2000  # the corpus Compare searches; the worker's metrics use the whole split
GAIN_QUERIES = 200
MAP_POINTS = 60
_KEPT = 2  # runs whose models stay loaded


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
        from engine.evaluate import SearchIndex

        merged = Path(run.run_dir) / "merged"
        if not (merged / "modules.json").exists() and not (merged / "config.json").exists():
            raise FileNotFoundError(f"run {run.id} has no merged model yet (status: {run.status}); "
                                    "Compare needs a run that completed or was stopped after some steps")
        columns = run.config.get("columns") or {}
        held_out = read_run_eval(run.run_dir).head(MAX_HELD_OUT_ROWS)
        self.queries = held_out[columns.get("anchor", "anchor")].astype(str).tolist()
        self.documents = held_out[columns.get("positive", "positive")].astype(str).tolist()
        negatives = columns.get("negative") or []
        extra = [str(t) for col in ([negatives] if isinstance(negatives, str) else negatives)
                 for t in held_out[col].tolist()]
        corpus = [*self.documents, *extra]
        length = run.config.get("max_seq_length")  # search as the model was trained (and evaluated)
        self.base = SearchIndex.build(_load(run.config["model"], length), corpus)
        self.trained = SearchIndex.build(_load(str(merged), length), corpus)
        self._encoded: dict[int, np.ndarray] = {}

    def search(self, query: str, top_k: int) -> dict:
        from engine.evaluate import compare_search

        return compare_search(self.base, self.trained, query, top_k)

    def _query_embeddings(self, index, n: int) -> np.ndarray:
        """Normalised embeddings of the first n held-out queries under one model, computed once."""
        cached = self._encoded.get(id(index))
        if cached is None or len(cached) < n:
            cached = index.model.encode_query(self.queries[:n], normalize_embeddings=True, convert_to_numpy=True)
            self._encoded[id(index)] = cached
        return cached[:n]

    def _document_embeddings(self, index, documents: list[str]) -> np.ndarray:
        position = {doc: i for i, doc in enumerate(index.corpus)}
        return index.embeddings.cpu().numpy()[[position[d] for d in documents]]

    def query_gains(self, limit: int = GAIN_QUERIES) -> list[dict]:
        """Held-out queries sorted by how far their relevant document moved up, best first."""
        n = min(limit, len(self.queries))
        ranks = []
        for index in (self.base, self.trained):
            scores = self._query_embeddings(index, n) @ index.embeddings.cpu().numpy().T
            own = (self._query_embeddings(index, n) * self._document_embeddings(index, self.documents[:n])).sum(axis=1)
            ranks.append((scores > own[:, None] + 1e-6).sum(axis=1) + 1)
        rows = [{"query": q, "base_rank": int(b), "trained_rank": int(a), "gain": int(b - a)}
                for q, b, a in zip(self.queries[:n], *ranks)]
        return sorted(rows, key=lambda r: (-r["gain"], r["trained_rank"]))

    def embedding_points(self, n: int = MAP_POINTS) -> dict[str, dict]:
        """2-D PCA of n queries and their documents, computed separately for each model."""
        n = min(n, len(self.queries))
        points = {}
        for name, index in (("base model", self.base), ("fine-tuned model", self.trained)):
            stacked = np.concatenate([self._query_embeddings(index, max(n, GAIN_QUERIES))[:n],
                                      self._document_embeddings(index, self.documents[:n])]).astype(np.float64)
            centered = stacked - stacked.mean(axis=0)
            _, _, components = np.linalg.svd(centered, full_matrices=False)
            xy = centered @ components[:2].T
            points[name] = {"x": xy[:, 0].tolist(), "y": xy[:, 1].tolist(),
                            "kind": ["query"] * n + ["document"] * n, "text": [*self.queries[:n], *self.documents[:n]]}
        return points


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
