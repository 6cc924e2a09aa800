"""A finished run's base and trained models side by side on its held-out split, for the run's task.

The held-out split is the one the worker scored the run on, sampled as the worker sampled it (the task's own
`held_out_evaluation`, or for embeddings `run_evaluation`), so the numbers here are the ones behind the run's
metrics: an embedding run's per-query search scores (`RunComparison`), a reranker run's retriever candidates
reranked by both cross-encoders (`RerankerComparison`), a classifier run's predictions (`ClassifierComparison`).
`comparison_for(run)` gives the one for the run's task. This is the one part of the studio that imports torch
(through the engine), and only when Compare is used: both models are loaded once per run (on a CPU in 32 bits:
merged models may be saved in 16, whose matmuls CPUs run many times slower), and what every query shares
(the corpus, the held-out split) is encoded once per model.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import data as data_layer
from engine.config import TrainConfig
from engine.tasks import task_module
from engine.tasks.embedding import retrieval_evaluation
from studio.data_sources import read_run_eval
from studio.preload import engine_stack
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
    return _on_cpu_in_32_bits(model)


def run_settings(run: Run) -> TrainConfig:
    """The run's settings as the worker read them (a setting the registry lacks takes its default)."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{**{k: v for k, v in run.config.items() if k in known}, "data": run.data})


def _merged_folder(run: Run) -> Path:
    merged = Path(run.run_dir) / "merged"
    if not (merged / "modules.json").exists() and not (merged / "config.json").exists():
        raise FileNotFoundError(f"run {run.id} has no merged model yet (status: {run.status}); "
                                "Compare needs a run that completed or was stopped after some steps")
    return merged


def _on_cpu_in_32_bits(model):
    if model.device.type == "cpu":
        model.float()
    return model


def task_evaluation(run: Run, every: bool = False):
    """The run's held-out evaluation as the worker built it (no model needed: this is quick); `every`: with
    every held-out query, not only the max_eval_queries the metrics rest on."""
    task, config = task_module(run.task), run_settings(run)
    columns = run.config.get("columns") or {}
    held_out = task.prepare(read_run_eval(run.run_dir), columns)
    if every:
        config.max_eval_queries = max(len(held_out), 1)
    shape = data_layer.task_for(columns) if "anchor" in columns else None  # a classifier's rows have no shape
    return task.held_out_evaluation(held_out, shape, config)


def _measured(metrics: dict | None) -> bool:
    return bool(metrics and metrics.get("base") and metrics.get("trained"))


class RunComparison:
    task = "embedding"

    def __init__(self, run: Run):
        from engine.evaluate import SearchIndex, relevant_ranks

        merged = _merged_folder(run)
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


class RerankerComparison:
    """A reranker run: each query's candidates are the first-stage retriever's top 20 among the held-out
    documents, ordered by the base and the trained cross-encoder. The base is the untrained cross-encoder where
    the checkpoint had a trained head, else (`base` None) the retriever's order, as the worker measured it."""

    task = "reranker"

    def __init__(self, run: Run):
        from engine import FastCrossEncoder

        merged = _merged_folder(run)
        self.run = run
        self.evaluation = task_evaluation(run)
        every = task_evaluation(run, every=True)
        self.answers = dict(zip(every.queries, every.relevant))
        length = run.config.get("max_seq_length")  # rerank as the model was trained (and evaluated)
        base = FastCrossEncoder.from_pretrained(run.config["model"], max_seq_length=length, for_inference=True)
        self.base = None if base._lacker_new_head else _on_cpu_in_32_bits(base)
        self.trained = _on_cpu_in_32_bits(FastCrossEncoder.from_pretrained(str(merged), max_seq_length=length,
                                                                          for_inference=True))
        self._measured = None

    def search(self, query: str) -> dict:
        """engine.tasks.reranker.side_by_side for `query`, its held-out relevant documents marked (none for a
        query of one's own)."""
        from engine.tasks.reranker import side_by_side

        return side_by_side(self.evaluation, self.base, self.trained, query, self.answers.get(query, ()))

    def measure(self) -> dict:
        """{"base", "trained"}: MRR@10 and NDCG@10 of each on the held-out queries, retriever_* those of the
        retriever's order, measured here with the models loaded (once)."""
        if self._measured is None:
            base = (self.evaluation.measure(self.base) if self.base is not None
                    else self.evaluation.retriever_order_metrics())
            self._measured = {"base": base, "trained": self.evaluation.measure(self.trained)}
        return self._measured

    def metrics(self) -> dict:
        """The run's metrics where the worker measured both models, else `measure()`."""
        return self.run.metrics if _measured(self.run.metrics) else self.measure()


class ClassifierComparison:
    """A classifier run: the base and the trained model's predictions, on a text of one's own or on the held-out
    split. The base is the checkpoint's own head where it has one with the run's classes, else (`base` None)
    the held-out split's majority class, as the worker measured it."""

    task = "classifier"

    def __init__(self, run: Run):
        from engine import FastClassifier

        merged = _merged_folder(run)
        self.run = run
        self.evaluation = task_evaluation(run)
        length = run.config.get("max_seq_length")
        self.trained = _on_cpu_in_32_bits(FastClassifier.from_pretrained(str(merged), max_seq_length=length,
                                                                        for_inference=True))
        self.labels = [self.trained.config.id2label[i] for i in range(self.trained.config.num_labels)]
        base = FastClassifier.from_pretrained(run.config["model"], labels=self.labels, max_seq_length=length,
                                              for_inference=True)
        self.base = _on_cpu_in_32_bits(base) if base._lacker_own_head else None
        self.majority = self.evaluation.majority_class()
        every = task_evaluation(run, every=True)
        self._labels_of = dict(zip(zip(every.texts, every.pairs or [None] * len(every.texts)), every.labels))
        self._predictions = None

    def held_out_label(self, text: str, text_pair: str | None = None) -> str | None:
        """The held-out label of the text (and pair), None for a text of one's own."""
        return self._labels_of.get((text, text_pair))

    def classify(self, text: str, text_pair: str | None = None) -> dict:
        """{"labels": the classes in head order, "trained": their probabilities for the text, "base": the base's
        (None for the majority class, which answers `majority` whatever the text)}."""
        from engine.tasks.classifier import class_probabilities

        pairs = [text_pair] if text_pair else None
        probabilities = {name: class_probabilities(model, [text], pairs)[0].tolist()
                         for name, model in (("base", self.base), ("trained", self.trained)) if model is not None}
        return {"labels": self.labels, "trained": probabilities["trained"], "base": probabilities.get("base"),
                "majority": self.majority}

    def predictions(self) -> dict[str, list[str]]:
        """{"base", "trained"}: each held-out text's predicted label (computed once)."""
        if self._predictions is None:
            count = len(self.evaluation.texts)
            base = (self.evaluation.predict(self.base) if self.base is not None else [self.majority] * count)
            self._predictions = {"base": base, "trained": self.evaluation.predict(self.trained)}
        return self._predictions

    def measure(self) -> dict:
        """{"base", "trained"}: the task's scikit-learn scores of `predictions()`."""
        return {name: self.evaluation.scores(self.trained, guesses) for name, guesses in self.predictions().items()}

    def metrics(self) -> dict:
        """The run's metrics where the worker measured both models, else `measure()`."""
        return self.run.metrics if _measured(self.run.metrics) else self.measure()

    def newly_right(self) -> list[dict]:
        """The held-out texts the trained model gets right and the base got wrong: text, text_pair, label, base
        (its guess), trained."""
        guesses = self.predictions()
        pairs = self.evaluation.pairs or [None] * len(self.evaluation.texts)
        return [{"text": text, "text_pair": pair, "label": label, "base": base, "trained": trained}
                for text, pair, label, base, trained in zip(self.evaluation.texts, pairs, self.evaluation.labels,
                                                            guesses["base"], guesses["trained"])
                if trained == label != base]


COMPARISONS = {kind.task: kind for kind in (RunComparison, RerankerComparison, ClassifierComparison)}

_cache: OrderedDict[str, RunComparison | RerankerComparison | ClassifierComparison] = OrderedDict()
_cache_lock = threading.Lock()


def comparison_for(run: Run) -> RunComparison | RerankerComparison | ClassifierComparison:
    """The comparison for the run's task, its models loaded once and kept for the last _KEPT runs."""
    engine_stack()
    with _cache_lock:
        if run.id in _cache:
            _cache.move_to_end(run.id)
            return _cache[run.id]
        comparison = COMPARISONS[run.task](run)
        _cache[run.id] = comparison
        while len(_cache) > _KEPT:
            _cache.popitem(last=False)
        return comparison
