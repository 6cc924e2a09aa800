"""The embedding task: a bi-encoder (`sentence_transformers.SentenceTransformer`) trained on text pairs.

Column roles and the losses they allow (sentence-transformers' loss classes, the default first):

    | data shape      | roles                                   | losses                                  |
    |-----------------|-----------------------------------------|-----------------------------------------|
    | pairs           | anchor, positive                        | MultipleNegativesRankingLoss, Cached... |
    | triplets        | anchor, positive, negative (one or more)| MultipleNegativesRankingLoss, ..., TripletLoss |
    | scored-pairs    | anchor, positive, score                 | CoSENTLoss, AnglELoss, CosineSimilarityLoss |
    | labelled-pairs  | anchor, positive, label                 | OnlineContrastiveLoss, ContrastiveLoss, SoftmaxLoss |

Evaluation is retrieval on the held-out split (InformationRetrievalEvaluator: NDCG@10, MRR@10, Recall@k, MAP);
the studio's comparison is a side-by-side search of the base and trained models (engine.evaluate).
Importing this module does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NAME = "embedding"
SUMMARY = "a sentence-transformers bi-encoder"
ROLES = ("anchor", "positive", "negative", "score", "label")

LOSSES = {
    "pairs": ("MultipleNegativesRankingLoss", "CachedMultipleNegativesRankingLoss"),
    "triplets": ("MultipleNegativesRankingLoss", "CachedMultipleNegativesRankingLoss", "TripletLoss"),
    "scored-pairs": ("CoSENTLoss", "AnglELoss", "CosineSimilarityLoss"),
    "labelled-pairs": ("OnlineContrastiveLoss", "ContrastiveLoss", "SoftmaxLoss"),
}


def validate(table, mapping: dict, source_name: str = "data", loss: str | None = None):
    """engine.data's checks of a pair table: the embedding task adds none of its own."""
    from engine import data

    return data.validate(table, mapping, source_name=source_name, loss=loss, losses=LOSSES)


def prepare(table, mapping: dict):
    from engine import data

    return data.prepare(table, mapping)


def split(rows, eval_size, seed: int):
    """Every row of one anchor on the same side, so retrieval evaluation never sees a training query."""
    from engine import data

    return data.split(rows, eval_size=eval_size, seed=seed)


def load_model(config, train_rows=None):
    """The model to fine-tune, as `config` says (a SentenceTransformer); the rows do not change it."""
    from engine.models import FastSentenceTransformer

    return FastSentenceTransformer.from_pretrained(
        config.model,
        max_seq_length=config.max_seq_length,
        load_in_4bit=config.method == "qlora",
        full_finetuning=config.method == "full",
    )


def model_limits(model) -> tuple[int | None, int | None]:
    """(positions the model can embed, its hidden width): what max_seq_length and lora_r are checked against."""
    config = model[0].auto_model.config
    return getattr(config, "max_position_embeddings", None), getattr(config, "hidden_size", None)


def training_rows(rows, loss_name: str, config, events):
    """The rows as they are: in-batch negatives need no mining."""
    return rows


def fast_path_unavailable(model) -> str | None:
    return None


def add_adapter(model, config) -> None:
    """LoRA on the family's targets, or, for full fine-tuning, only gradient checkpointing if asked."""
    from engine.models import FastSentenceTransformer

    add_adapter_with(FastSentenceTransformer, model, config)


def add_adapter_with(fast, model, config) -> None:
    """`add_adapter` for a sentence-transformers model loaded by `fast` (FastSentenceTransformer, FastCrossEncoder)."""
    if config.method != "full":
        fast.get_peft_model(
            model, r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=config.target_modules, use_gradient_checkpointing=config.gradient_checkpointing,
            random_state=config.seed,
        )
    elif config.gradient_checkpointing:
        model[0].auto_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def build_loss(name: str, model, train_rows):
    """The sentence-transformers loss called `name` (one of LOSSES) for `model`."""
    from sentence_transformers.sentence_transformer import losses

    known = sorted({loss for names in LOSSES.values() for loss in names})
    if name not in known:
        raise ValueError(f"loss {name!r} is not supported; pick one of: {', '.join(known)}")
    if name == "CachedMultipleNegativesRankingLoss":
        from engine.loop import CACHED_MINI_BATCH  # the same mini-batches as the packed loop's cached steps

        return losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=CACHED_MINI_BATCH)
    if name == "SoftmaxLoss":
        return losses.SoftmaxLoss(model, model.get_embedding_dimension(), num_labels=int(train_rows["label"].max()) + 1)
    return getattr(losses, name)(model)


def uses_in_batch_negatives(loss_name: str) -> bool:
    """Losses whose batches must hold no duplicate texts (sentence-transformers' NO_DUPLICATES sampler)."""
    return "MultipleNegatives" in loss_name


def packed_unavailable(model, loss_name: str) -> str | None:
    from engine.loop import loop_unavailable

    return loop_unavailable(model, loss_name)


def packed_trainer(model, train_rows, loss_name: str, **settings):
    """The packed loop over the texts it embeds, a list per column: anchors, positives, then each negative column;
    the cached loss embeds them CACHED_MINI_BATCH at a time."""
    from engine.loop import CACHED_MINI_BATCH, PackedTrainer

    columns = [train_rows[c].tolist() for c in train_rows.columns
               if c in ("anchor", "positive") or c.startswith("negative")]
    return PackedTrainer(model, columns, mini_batch=CACHED_MINI_BATCH if loss_name.startswith("Cached") else None,
                         **settings)


@dataclass
class RetrievalEvaluation:
    """Held-out retrieval: query i's relevant document is documents[i]; `extra` documents are distractors."""

    queries: list[str]
    documents: list[str]
    extra: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.queries)

    def describe(self) -> str:
        return (f"retrieval evaluation: {len(set(self.queries))} queries over "
                f"{len(set(self.documents) | set(self.extra))} documents")

    def measure(self, model) -> dict[str, float]:
        from engine.evaluate import retrieval_metrics

        return retrieval_metrics(model, self.queries, self.documents, self.extra)

    def measure_base(self, model) -> dict[str, float]:
        """The untrained model's own retrieval is the base."""
        return self.measure(model)

    def evaluator(self):
        from engine.evaluate import retrieval_evaluator

        return retrieval_evaluator(self.queries, self.documents, self.extra)

    def metrics_from(self, raw: dict) -> dict[str, float]:
        """Our metric names from what the trainer's evaluation logged."""
        from engine.evaluate import evaluator_metrics

        return evaluator_metrics(raw)


def held_out_evaluation(held_out, shape: str, config, extra_corpus=()) -> RetrievalEvaluation:
    """`retrieval_evaluation` of the held-out rows, with the run's query limit and seed."""
    return retrieval_evaluation(held_out, shape, config.max_eval_queries, config.seed, extra_corpus)


def retrieval_evaluation(held_out, shape: str, max_queries: int, seed: int, extra_corpus=()) -> RetrievalEvaluation:
    """The held-out rows as retrieval queries. Scored pairs count as relevant from the middle of the score range
    up; labelled pairs where the label is not 0. Documents of the rows left out by `max_queries`, and every
    negative, stay in the corpus as distractors, with `extra_corpus`."""
    rows = held_out
    if shape == "scored-pairs":
        low, high = rows["score"].min(), rows["score"].max()
        rows = rows[rows["score"] >= (low + high) / 2]
    elif shape == "labelled-pairs":
        rows = rows[rows["label"] != 0]
    chosen = rows.sample(n=min(max_queries, len(rows)), random_state=seed) if len(rows) > max_queries else rows
    chosen_documents = set(chosen["positive"])
    extra = [doc for doc in held_out["positive"].tolist() if doc not in chosen_documents]
    for column in held_out.columns:
        if column.startswith("negative"):
            extra += held_out[column].tolist()
    return RetrievalEvaluation(chosen["anchor"].tolist(), chosen["positive"].tolist(), extra + list(extra_corpus))


def trainer(model, train_dataset, loss, evaluator, callbacks, args_overrides: dict):
    """sentence-transformers' own trainer for the runs the packed loop does not take."""
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers

    sampler = BatchSamplers.NO_DUPLICATES if uses_in_batch_negatives(type(loss).__name__) else BatchSamplers.BATCH_SAMPLER
    args = SentenceTransformerTrainingArguments(batch_sampler=sampler, **args_overrides)
    return SentenceTransformerTrainer(model=model, args=args, train_dataset=train_dataset, loss=loss,
                                      evaluator=evaluator, callbacks=callbacks)


def describe(model, settings: dict, metrics: dict) -> None:
    """The settings and before / after metrics go into the card every later save writes (engine.hub)."""
    from engine.hub import describe_training

    describe_training(model, settings, metrics)


def save(model, folder, merged: bool, dtype=None) -> None:
    """The LoRA adapter, or a merged 16-bit model that loads in plain `SentenceTransformer(folder)`."""
    if merged:
        model.save_pretrained_merged(str(folder), dtype=dtype)
    else:
        model.save_pretrained(str(folder))
