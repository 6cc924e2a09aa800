"""The reranker task: a cross-encoder (`sentence_transformers.CrossEncoder`) that scores (query, document) pairs.

Column roles and the losses they allow (sentence-transformers' cross-encoder loss classes, the default first):

    | data shape      | roles                                    | losses                                          |
    |-----------------|------------------------------------------|-------------------------------------------------|
    | pairs           | anchor, positive                         | BinaryCrossEntropyLoss, MultipleNegativesRankingLoss, LambdaLoss, ListNetLoss |
    | triplets        | anchor, positive, negative (one or more) | the same                                        |
    | labelled-pairs  | anchor, positive, label (1 relevant, 0 not) | BinaryCrossEntropyLoss, LambdaLoss, ListNetLoss |
    | scored-pairs    | anchor, positive, score (relevance 0..1) | BinaryCrossEntropyLoss, LambdaLoss, ListNetLoss |

Pairs carry no negatives, so `training_rows` mines `negatives` hard negatives per pair with sentence-transformers'
`mine_hard_negatives` and a bi-encoder (`mine_with`, default the bundled all-MiniLM-L6-v2), skipping the very top
ranks and any candidate within a relative margin of the positive's score: those are most likely unlabelled
positives. The rows then take the shape the loss reads: (query, document, label) pairs for BinaryCrossEntropyLoss,
whose pos_weight is the negatives per positive; (query, positive, negatives...) for MultipleNegativesRankingLoss;
(query, [documents], [labels]) lists for LambdaLoss and ListNetLoss.

On the fast path BinaryCrossEntropyLoss trains in the packed loop (engine.loop.scoring: each pair one packed
sequence, the head read from its tokens); the other losses keep CrossEncoderTrainer.

Evaluation reranks a first-stage retrieval: each held-out query's candidates are the retriever's (the same bi-encoder)
top 20 among the held-out documents, and CrossEncoderRerankingEvaluator gives MRR@10 and NDCG@10 of the reranked
order and of the retriever's (`retriever_*`). The base is the untrained cross-encoder where the checkpoint has a
trained head, else the retriever's order (a new head ranks at random). `side_by_side` is one query's view of the
same: the retriever's candidates and both cross-encoders' orders of them (the studio's Compare tab).
Importing this module does not import torch.
"""

from __future__ import annotations

import contextlib
import functools
import io
import time
from dataclasses import dataclass
from pathlib import Path

from engine.tasks import embedding

NAME = "reranker"
SUMMARY = "a sentence-transformers cross-encoder scoring (query, document) pairs"
ROLES = ("anchor", "positive", "negative", "score", "label")

LISTWISE = ("LambdaLoss", "ListNetLoss")
LOSSES = {
    "pairs": ("BinaryCrossEntropyLoss", "MultipleNegativesRankingLoss", *LISTWISE),
    "triplets": ("BinaryCrossEntropyLoss", "MultipleNegativesRankingLoss", *LISTWISE),
    "labelled-pairs": ("BinaryCrossEntropyLoss", *LISTWISE),
    "scored-pairs": ("BinaryCrossEntropyLoss", *LISTWISE),
}
SHAPE_WORDS = {"pairs": "query and positive columns", "triplets": "query, positive and negative columns",
               "labelled-pairs": "a label column", "scored-pairs": "a score column"}
CANDIDATES = 20  # the first-stage retriever's hits a held-out query's reranking starts from
AT_K = 10
# Mining: candidates ranked above MINE_SKIP_TOP (of at most MINE_RANGE) are skipped, as is any within
# MINE_RELATIVE_MARGIN of the positive's score (sentence-transformers' docs and NV-Retriever's TopK-PercPos).
MINE_SKIP_TOP, MINE_RANGE, MINE_RELATIVE_MARGIN = 10, 100, 0.05


def validate(table, mapping: dict, source_name: str = "data", loss: str | None = None):
    """engine.data's checks of a pair table, then what a reranker needs besides: the loss fits the columns,
    labels are 0 or 1 with both present, scores lie in 0..1, no positive repeats its query and no negative its
    positive."""
    from engine import data
    from engine.data import DataError

    summary = data.validate(table, mapping, source_name=source_name, loss=loss, losses=LOSSES)
    shape = summary.task
    if loss and loss not in LOSSES[shape]:
        fits = [name for name, names in LOSSES.items() if loss in names]
        needs = " or ".join(SHAPE_WORDS[name] for name in fits) if fits else "no data shape a reranker trains on"
        raise DataError(f"{source_name}: {loss} does not train a reranker on {SHAPE_WORDS[shape]}; it needs {needs}. "
                        f"Pick one of {', '.join(LOSSES[shape])}.")
    anchors, positives = table[mapping["anchor"]], table[mapping["positive"]]
    for row, (anchor, positive) in enumerate(zip(anchors, positives), start=1):
        if anchor.strip() == positive.strip():
            raise DataError(f"{source_name}, row {row}, column '{mapping['positive']}': the positive is the same "
                            f"text as its query (column '{mapping['anchor']}'), so a reranker would learn that a "
                            "copy of the query is the best answer. Fix the positive or drop the row.")
    for column in data.negatives_of(mapping):
        for row, (negative, positive) in enumerate(zip(table[column], positives), start=1):
            if negative.strip() == positive.strip():
                raise DataError(f"{source_name}, row {row}, column '{column}': the negative is the same text as the "
                                f"positive (column '{mapping['positive']}'), so the pair is marked both relevant "
                                "and not. Fix the negative or drop the row.")
    if mapping.get("label"):
        labels = [int(float(value)) for value in table[mapping["label"]]]
        for row, label in enumerate(labels, start=1):
            if label not in (0, 1):
                raise DataError(f"{source_name}, row {row}, column '{mapping['label']}': {label} is not 0 or 1. A "
                                "reranker learns from 1 (relevant) and 0 (not relevant): make the labels 0/1, or "
                                "give graded relevance as a score column from 0 to 1.")
        if len(set(labels)) == 1:
            raise DataError(f"{source_name}: every label (column '{mapping['label']}') is {labels[0]}; a reranker "
                            "needs relevant (1) and not relevant (0) pairs to tell them apart. Add rows of the "
                            "other label, or leave the label column out to mine negatives.")
    if mapping.get("score"):
        for row, value in enumerate(table[mapping["score"]], start=1):
            if not 0 <= float(value) <= 1:
                raise DataError(f"{source_name}, row {row}, column '{mapping['score']}': {float(value):g} is outside "
                                "0 to 1, the relevance a reranker learns (BinaryCrossEntropyLoss reads it as a "
                                "probability). Scale the scores into 0 to 1 (ratings of 0 to 5 divided by 5).")
    return summary


prepare = embedding.prepare
split = embedding.split
model_limits = embedding.model_limits
describe = embedding.describe  # the card data of a FastCrossEncoder takes the same training description
save = embedding.save  # FastCrossEncoder binds the same save_pretrained_merged; merged/ loads in plain CrossEncoder


def load_model(config, train_rows=None):
    """The cross-encoder to fine-tune (one output: the relevance score); the rows do not change it. A saved adapter
    (the shipped starter reranker, or a run's adapter/) is merged into its base first: training starts from the
    cross-encoder it makes, with its trained head, and adds a new adapter (or trains it all)."""
    from engine.models import FastCrossEncoder
    from engine.models.sentence_transformer import _has_adapter, _merge_adapters_in_place

    model = FastCrossEncoder.from_pretrained(
        config.model, num_labels=1, max_seq_length=config.max_seq_length,
        load_in_4bit=config.method == "qlora", full_finetuning=config.method == "full",
    )
    if _has_adapter(model):
        if config.method == "qlora":
            raise ValueError(f"{config.model} is a LoRA adapter: its update cannot be merged into a 4-bit base; "
                             "train it with --method lora or --full-finetune")
        _merge_adapters_in_place(model)
    return model


def add_adapter(model, config) -> None:
    """LoRA on the family's targets with the head trained in full, or, for full fine-tuning, only gradient
    checkpointing if asked."""
    from engine.models import FastCrossEncoder

    embedding.add_adapter_with(FastCrossEncoder, model, config)


def fast_path_unavailable(model) -> str | None:
    """None where the family packs a (query, document) pair as one sequence and reads its head from it."""
    from engine.attention import scoring_unavailable
    from engine.models import family_of

    return scoring_unavailable(family_of(model))


def packed_unavailable(model, loss_name: str) -> str | None:
    from engine.loop.scoring import loop_unavailable

    return loop_unavailable(model, loss_name)


def packed_trainer(model, train_rows, loss_name: str, **settings):
    """The packed loop over the (query, document, label) pairs, each pair one sequence tokenized as the stock
    loss tokenizes it (CrossEncoder.preprocess), BinaryCrossEntropyLoss with `build_loss`'s pos_weight."""
    from engine.loop.scoring import ScoringTrainer

    return ScoringTrainer(model, lambda queries, documents: model.preprocess(list(zip(queries, documents))),
                          train_rows["anchor"].tolist(), train_rows["document"].tolist(), train_rows["label"].tolist(),
                          loss=loss_name, pos_weight=positive_weight(train_rows["label"]), **settings)


@functools.lru_cache(maxsize=1)
def retriever(name: str | None):
    """The first-stage bi-encoder (the bundled all-MiniLM-L6-v2 unless `name`), loaded once for mining and
    evaluation."""
    from engine.families import DEFAULT_MODEL
    from engine.models import FastSentenceTransformer

    return FastSentenceTransformer.from_pretrained(name or DEFAULT_MODEL, for_inference=True)


def _shape(rows) -> str:
    if "label" in rows.columns:
        return "labelled-pairs"
    if "score" in rows.columns:
        return "scored-pairs"
    return "triplets" if "negative" in rows.columns else "pairs"


def negative_columns(rows) -> list[str]:
    return [c for c in rows.columns if c.startswith("negative")]


def mine_negatives(rows, config, events):
    """`rows` (anchor, positive) with columns negative, negative_2, ... of up to `config.negatives` hard negatives
    per pair, mined among the positives; a pair for which none passed the margin keeps none (None)."""
    import pandas as pd
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    from engine.data import DataError

    documents = rows["positive"].nunique()
    if documents <= config.negatives:
        raise DataError(f"{documents} different positives leave too few to mine {config.negatives} hard negatives "
                        "per query from. Add rows, or ask for fewer negatives.",
                        fix=f"add rows, or pass --negatives {max(documents - 1, 1)}")
    name = config.mine_with or "the bundled all-MiniLM-L6-v2"
    events.status("loading", f"mining {config.negatives} hard negatives for {rows['anchor'].nunique()} queries "
                             f"among {documents} documents with {name}")
    started = time.monotonic()
    model = retriever(config.mine_with)
    range_max = min(MINE_RANGE, documents - 1)
    range_min = min(MINE_SKIP_TOP, max(range_max - 3 * config.negatives, 0))  # a small corpus keeps enough candidates
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # its statistics go to the events, not the terminal
        mined = mine_hard_negatives(
            Dataset.from_pandas(rows[["anchor", "positive"]], preserve_index=False), model,
            anchor_column_name="anchor", positive_column_name="positive", num_negatives=config.negatives,
            range_min=range_min, range_max=range_max, relative_margin=MINE_RELATIVE_MARGIN, sampling_strategy="top",
            output_format="labeled-list", batch_size=64, verbose=True,
        )
    found = {(row["anchor"], row["positive"][0]): row["positive"][1:] for row in mined}
    lists = [found.get(pair, []) for pair in zip(rows["anchor"], rows["positive"])]
    out = rows[["anchor", "positive"]].copy()
    for i in range(config.negatives):
        out["negative" if i == 0 else f"negative_{i + 1}"] = [negs[i] if i < len(negs) else None for negs in lists]
    seconds = time.monotonic() - started
    for line in printed.getvalue().splitlines():
        if line.strip():
            events.log(f"mining: {line.rstrip()}")
    total = sum(map(len, lists))
    example = next((i for i, negs in enumerate(lists) if negs), None)
    events.emit("mining", pairs=len(out), negatives=total, seconds=round(seconds, 2), model=name,
                example=None if example is None else {"query": out["anchor"][example],
                                                      "positive": out["positive"][example],
                                                      "negatives": lists[example]})
    events.log(f"mined {total} hard negatives for {len(out)} pairs in {seconds:.1f}s"
               + (f"; e.g. query {out['anchor'][example]!r}, positive {_clip(out['positive'][example])!r}, "
                  f"negatives {[_clip(n) for n in lists[example]]}" if example is not None else ""))
    if not total:
        raise DataError("no hard negative passed the margin for any query: the positives are too alike for the "
                        "retriever to tell apart. Bring negative columns, or labels.")
    return pd.DataFrame(out)


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def training_rows(rows, loss_name: str, config, events):
    """The rows in the shape `loss_name` reads, mining negatives first where the data has none."""
    import pandas as pd

    shape = _shape(rows)
    if shape == "pairs":
        rows = mine_negatives(rows, config, events)
        shape = "triplets"
    if loss_name == "MultipleNegativesRankingLoss":
        # It reads (query, positive, negative_1..n) with the same n in every row.
        return rows.dropna().reset_index(drop=True)
    if shape == "triplets":
        judged = [(row.anchor, row.positive, 1.0) for row in rows.itertuples()]
        judged += [(anchor, negative, 0.0) for column in negative_columns(rows)
                   for anchor, negative in zip(rows["anchor"], rows[column]) if isinstance(negative, str)]
        pairs = pd.DataFrame(judged, columns=["anchor", "document", "label"])
    else:
        relevance = rows["label"].astype(float) if shape == "labelled-pairs" else rows["score"]
        pairs = pd.DataFrame({"anchor": rows["anchor"], "document": rows["positive"], "label": relevance})
    pairs = pairs.drop_duplicates(subset=["anchor", "document"]).reset_index(drop=True)
    if loss_name in LISTWISE:
        grouped = pairs.groupby("anchor", sort=False)
        return pd.DataFrame({"anchor": list(grouped.groups), "documents": grouped["document"].agg(list).tolist(),
                             "labels": grouped["label"].agg(list).tolist()})
    return pairs


def build_loss(name: str, model, train_rows):
    """The cross-encoder loss called `name` for `model`; BinaryCrossEntropyLoss weighs positives by the negatives
    there are per positive, so the rarer relevant pairs count as much as the rest."""
    import torch
    from sentence_transformers.cross_encoder import losses

    known = sorted({loss for names in LOSSES.values() for loss in names})
    if name not in known:
        raise ValueError(f"loss {name!r} is not a reranker loss; pick one of: {', '.join(known)}")
    if name == "BinaryCrossEntropyLoss":
        weight = positive_weight(train_rows["label"])
        return losses.BinaryCrossEntropyLoss(model, pos_weight=None if weight is None else torch.tensor(weight))
    return getattr(losses, name)(model)


def positive_weight(labels) -> float | None:
    """Not relevant pairs per relevant pair, for 0/1 labels with both present (mined: about `negatives`); None
    for graded scores."""
    positives = int((labels == 1).sum())
    if not labels.isin((0.0, 1.0)).all() or not 0 < positives < len(labels):
        return None
    return (len(labels) - positives) / positives


@dataclass
class RerankingEvaluation:
    """Held-out reranking: query i's relevant documents are relevant[i]; its candidates are the retriever's top
    CANDIDATES among `corpus`, found on first use."""

    queries: list[str]
    relevant: list[list[str]]
    corpus: list[str]
    retriever_name: str | None

    def __post_init__(self):
        self._evaluator = None
        self._corpus_embeddings = None

    def __bool__(self) -> bool:
        return bool(self.queries)

    def describe(self) -> str:
        return (f"reranking evaluation: {len(self.queries)} queries, each reranking the retriever's top "
                f"{CANDIDATES} of {len(self.corpus)} documents")

    def retrieve(self, queries: list[str]) -> list[list[tuple[str, float]]]:
        """Each query's candidates: the retriever's top CANDIDATES of `corpus` (encoded once) with their cosine
        similarity, best first. A held-out query gets the candidates its evaluation reranks."""
        from sentence_transformers.util import semantic_search

        model = retriever(self.retriever_name)
        if self._corpus_embeddings is None:
            self._corpus_embeddings = model.encode_document(self.corpus, batch_size=64, convert_to_tensor=True,
                                                            normalize_embeddings=True)
        embedded = model.encode_query(queries, batch_size=64, convert_to_tensor=True, normalize_embeddings=True)
        hits = semantic_search(embedded, self._corpus_embeddings, top_k=min(CANDIDATES, len(self.corpus)))
        return [[(self.corpus[hit["corpus_id"]], float(hit["score"])) for hit in found] for found in hits]

    def evaluator(self):
        from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

        if self._evaluator is None:
            samples = [{"query": query, "positive": positive, "documents": [document for document, _ in found]}
                       for query, positive, found in zip(self.queries, self.relevant, self.retrieve(self.queries))]
            # always_rerank_positives=False: a positive the retriever missed stays missed, as in a real search.
            self._evaluator = CrossEncoderRerankingEvaluator(samples, at_k=AT_K, always_rerank_positives=False,
                                                             name="held-out", batch_size=64, write_csv=False)
        return self._evaluator

    def measure(self, model) -> dict[str, float]:
        evaluator = self.evaluator()
        # A measurement, not a training-time evaluation: the card shows it beside the base's (engine.hub).
        evaluator.store_metrics_in_model_card_data = lambda *args, **kwargs: None
        was_training = model.training
        try:
            return self.metrics_from(evaluator(model))
        finally:
            model.train(was_training)

    def measure_base(self, model) -> dict[str, float]:
        """The untrained cross-encoder where its head was trained, else the retriever's order."""
        if not getattr(model, "_lacker_new_head", False):
            return self.measure(model)
        return self.retriever_order_metrics()

    def retriever_order_metrics(self) -> dict[str, float]:
        """MRR@10 and NDCG@10 of the retriever's own order (also as retriever_*): the base of a new head."""
        import numpy as np

        evaluator = self.evaluator()
        metrics = {"mrr@10": [], "ndcg@10": []}
        for sample in evaluator.samples:  # the evaluator's own reading of the retriever's order, without a model
            found = [int(document in sample["positive"]) for document in sample["documents"]]
            if not any(found):
                mrr, ndcg = 0.0, 0.0
            else:
                found += [1] * (len(sample["positive"]) - sum(found))
                mrr, ndcg, _ = evaluator.compute_metrics(found, np.arange(len(found), 0, -1))
            metrics["mrr@10"].append(mrr)
            metrics["ndcg@10"].append(ndcg)
        order = {name: float(np.mean(values)) for name, values in metrics.items()}
        return {**order, **{f"retriever_{name}": value for name, value in order.items()}}

    def metrics_from(self, raw: dict) -> dict[str, float]:
        """Our names for the evaluator's keys ('eval_held-out_ndcg@10', 'held-out_base_mrr@10', ...)."""
        metrics = {}
        for name in (f"ndcg@{AT_K}", f"mrr@{AT_K}"):
            for key, value in raw.items():
                if key.endswith(f"held-out_{name}"):
                    metrics[name] = float(value)
                elif key.endswith(f"held-out_base_{name}"):
                    metrics[f"retriever_{name}"] = float(value)
        return metrics


def rerank(model, query: str, documents: list[str]) -> list[tuple[str, float]]:
    """`documents` in `model`'s order for `query`, best first, each with its score (`CrossEncoder.predict`)."""
    import numpy as np

    scores = model.predict([(query, document) for document in documents], batch_size=64, convert_to_numpy=True,
                           show_progress_bar=False)
    return [(documents[i], float(scores[i])) for i in np.argsort(-scores, kind="stable")]


def side_by_side(evaluation: RerankingEvaluation, base, trained, query: str, relevant=()) -> dict:
    """The retriever's candidates for `query` and their orders under the `base` and `trained` cross-encoders (base
    None: the base is the retriever's order, as where the checkpoint had no trained head). {"retriever", "base",
    "trained"}: hits best first, each {rank, document, score, relevant}; a reranked hit also has `before`, its rank
    in the order it improves on (the base's, or the retriever's for the base itself or where the base is the
    retriever's), and rank_change = before - rank (positive: moved up). "missed": the `relevant` documents the
    retriever left out of the candidates, which no reranker can bring back."""
    relevant = set(relevant)
    (candidates,) = evaluation.retrieve([query])

    def hits(order, previous=None):
        ranked = [{"rank": rank, "document": document, "score": score, "relevant": document in relevant}
                  for rank, (document, score) in enumerate(order, start=1)]
        if previous is not None:
            before = {hit["document"]: hit["rank"] for hit in previous}
            for hit in ranked:
                hit["before"] = before[hit["document"]]
                hit["rank_change"] = hit["before"] - hit["rank"]
        return ranked

    documents = [document for document, _ in candidates]
    first = hits(candidates)
    reranked = None if base is None else hits(rerank(base, query, documents), first)
    return {"query": query, "retriever": first, "base": reranked,
            "trained": hits(rerank(trained, query, documents), reranked or first),
            "missed": sorted(relevant - set(documents))}


def held_out_evaluation(held_out, shape: str, config, extra_corpus=()) -> RerankingEvaluation:
    """The held-out rows as reranking queries (at most config.max_eval_queries). Relevant: every positive of
    pairs and triplets, labelled pairs of label 1, scored pairs from the middle of the score range up. Every
    held-out text but the queries, and `extra_corpus`, is a candidate document."""
    rows = held_out
    if shape == "scored-pairs":
        low, high = rows["score"].min(), rows["score"].max()
        rows = rows[rows["score"] >= (low + high) / 2]
    elif shape == "labelled-pairs":
        rows = rows[rows["label"] == 1]
    relevant = rows.groupby("anchor", sort=False)["positive"].agg(list)
    queries = relevant.index.to_series()
    if len(queries) > config.max_eval_queries:
        queries = queries.sample(n=config.max_eval_queries, random_state=config.seed)
    corpus = list(held_out["positive"]) + [text for column in negative_columns(held_out)
                                           for text in held_out[column]] + list(extra_corpus)
    corpus = [text for text in dict.fromkeys(corpus) if isinstance(text, str)]  # a missing negative is NaN
    return RerankingEvaluation(queries.tolist(), [relevant[q] for q in queries], corpus, config.mine_with)


def uses_in_batch_negatives(loss_name: str) -> bool:
    return loss_name == "MultipleNegativesRankingLoss"


def trainer(model, train_dataset, loss, evaluator, callbacks, args_overrides: dict):
    """sentence-transformers' CrossEncoderTrainer."""
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments

    from engine.models.loading import load_adapter_weights

    class RerankerTrainer(CrossEncoderTrainer):
        """CrossEncoderTrainer, resuming a LoRA run's checkpoint into the model's own adapter (with the head it
        trains in full): the stock resume reloads the folder as a whole model, which an adapter folder is not."""

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            model = model or self.model
            if (Path(resume_from_checkpoint) / "adapter_model.safetensors").exists():
                load_adapter_weights(model[0].auto_model, resume_from_checkpoint)
            else:
                super()._load_from_checkpoint(resume_from_checkpoint, model)

    sampler = BatchSamplers.NO_DUPLICATES if uses_in_batch_negatives(type(loss).__name__) else BatchSamplers.BATCH_SAMPLER
    args = CrossEncoderTrainingArguments(batch_sampler=sampler, **args_overrides)
    return RerankerTrainer(model=model, args=args, train_dataset=train_dataset, loss=loss,
                           evaluator=evaluator, callbacks=callbacks)
