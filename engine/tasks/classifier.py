"""The classifier task: a transformers `AutoModelForSequenceClassification` that puts one text, or a text pair, in one
of N classes (engine.models.FastClassifier).

Column roles and the loss (trained with transformers' `Trainer`, or on a fast path the packed loop,
engine.loop.scoring, with the same loss):

    | data shape  | roles                    | labels                                  | losses            |
    |-------------|--------------------------|-----------------------------------------|-------------------|
    | texts       | text, label              | strings or integers, at least 2 classes | CrossEntropyLoss  |
    | text-pairs  | text, text_pair, label   | strings or integers, at least 2 classes | CrossEntropyLoss  |

`class_weights` (TrainConfig) weights the cross-entropy by scikit-learn's "balanced" class weights, for imbalanced
labels. The held-out split is stratified by label; evaluation is scikit-learn's accuracy, macro-F1, per-class
precision / recall / F1 and the confusion matrix. The base is the checkpoint's own head where it has one with as many
classes, else the majority class (always the held-out split's most common label: the best a constant guess scores).
Importing this module does not import torch.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

NAME = "classifier"
SUMMARY = "a transformers text classifier: a text, or a text pair, to one of N labels"
ROLES = ("text", "text_pair", "label")
ROLE_MEANINGS = {"text": "the texts to classify", "label": "each text's class"}
LOSSES = {"texts": ("CrossEntropyLoss",), "text-pairs": ("CrossEntropyLoss",)}
TEXT_COLUMNS = ("text", "text_pair")

RARE_ROWS = 5  # a class with fewer training rows than this is hardly learned, nor measured
IMBALANCE_RATIO = 10  # the most common class this many times the rows of the least common: strongly imbalanced
LABELS_SHOWN = 20  # labels a message lists at most


def _fix(mapping: dict) -> str:
    return (f"pass --columns text={mapping.get('text') or 'COLUMN'},label={mapping.get('label') or 'COLUMN'}"
            + (f",text_pair={mapping['text_pair']}" if mapping.get("text_pair") else ""))


def _listed(labels) -> str:
    labels = list(labels)
    shown = ", ".join(f"'{label}'" for label in labels[:LABELS_SHOWN])
    return shown + (f" and {len(labels) - LABELS_SHOWN} more" if len(labels) > LABELS_SHOWN else "")


def _label_name(value) -> str | None:
    """A label cell as the class name the model gets: strings as they are, integers (1 or 1.0) by their digits;
    None for what is not a class (a fraction, true/false, a list)."""
    import numbers

    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):  # JSON's true / false: a yes-or-no class
        return str(value).lower()
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
        return str(int(value))
    return None


def validate(table, mapping: dict, source_name: str = "data", loss: str | None = None):
    """Check a classification table against `mapping` (text, label, optional text_pair) and summarise it; raise
    DataError (MappingError for the mapping) at the first problem. Rare classes, strong imbalance and one text
    with two labels are warnings."""
    from engine import data
    from engine.data import DataError, DataSummary, MappingError

    data._check_column_names(table.columns, source_name)
    columns_are = f"columns are: {', '.join(map(str, table.columns))}"
    for role in ("text", "label"):
        if not mapping.get(role):
            raise MappingError(f"no column of {source_name} is mapped to {role}; {columns_are}. Map {role} to the "
                               f"column that holds {ROLE_MEANINGS[role]}.", fix=_fix(mapping))
    others = sorted(set(mapping) - set(ROLES))
    if others:
        raise MappingError(f"{source_name}: the classifier task maps text, label and text_pair, not "
                           f"{', '.join(others)}. Map the texts to text and their classes to label.", fix=_fix(mapping))
    roles = [(role, mapping[role]) for role in ROLES if mapping.get(role)]
    for i, (role, column) in enumerate(roles):
        if column not in table.columns:
            what = f"'{column}'" if column == role else f"'{column}' (for {role})"
            raise MappingError(f"column {what} not found in {source_name}; {columns_are}.", fix=_fix(mapping))
        other = next((r for r, c in roles[:i] if c == column), None)
        if other:
            raise MappingError(f"column '{column}' of {source_name} is mapped to both {other} and {role}. Map "
                               f"{role} to another column.")
    loss = loss or "CrossEntropyLoss"
    if loss != "CrossEntropyLoss":
        raise ValueError(f"loss {loss!r} is not one the classifier task trains with; it takes CrossEntropyLoss")

    label_column = mapping["label"]
    for role, column in roles:
        for row, value in enumerate(table[column], start=1):
            problem = data.text_problem(value) if role in TEXT_COLUMNS else _label_problem(value)
            if problem:
                raise DataError(f"{source_name}, row {row}, column '{column}': {problem}")

    rows = prepare(table, mapping)
    if len(rows) < data.MIN_ROWS:
        raise DataError(f"{source_name} has {len(rows)} usable rows; training needs at least {data.MIN_ROWS}. "
                        "Add rows.")
    counts = Counter(rows["label"])
    if len(counts) < 2:
        raise DataError(f"{source_name}: every row of column '{label_column}' has the label '{next(iter(counts))}'; "
                        "a classifier needs at least two classes. Add rows of other classes, or map label to the "
                        "column that holds the classes.")
    if len(counts) * 2 > len(rows):
        raise DataError(f"{source_name}: column '{label_column}' holds {len(counts)} different labels in "
                        f"{len(rows)} rows, so most classes have a single example: it looks like text or an id, "
                        "not a class. Map label to the column that holds the classes.")
    warnings = label_warnings(counts, source_name)
    conflicting = int(rows.groupby([c for c in TEXT_COLUMNS if c in rows.columns])["label"].nunique().gt(1).sum())
    if conflicting:
        warnings.append(f"{source_name}: {conflicting} texts appear with more than one label; the model cannot "
                        "get both right. Check those rows.")
    duplicates = len(table) - len(rows)
    if duplicates:
        warnings.append(f"{source_name}: {duplicates} rows repeat an earlier row exactly; they are dropped before "
                        "training.")
    return DataSummary(
        rows=len(rows), task="text-pairs" if mapping.get("text_pair") else "texts", loss="CrossEntropyLoss",
        duplicates=duplicates, empty_values={column: int(table[column].map(data._is_empty).sum()) for _, column in roles},
        text_lengths={role: rows[role].str.len().tolist() for role in TEXT_COLUMNS if role in rows.columns},
        warnings=warnings, columns={role: column for role, column in roles}, labels=dict(counts.most_common()),
    )


def _label_problem(value) -> str | None:
    from engine.data import _is_empty

    if _is_empty(value):
        return "empty label. Fill it in or drop the row."
    if _label_name(value) is None:
        if isinstance(value, float):
            return (f"{value!r} is a fraction, not a class. A classifier's labels are classes (names such as 'spam', "
                    "or whole numbers): round them to classes, or train a reranker or embedding model on scores.")
        return f"{value!r} is not a class. Labels are names or whole numbers: fix it or drop the row."
    return None


def label_warnings(counts: Counter, source_name: str) -> list[str]:
    """Warnings about the classes of the training rows: very rare classes and strong imbalance."""
    warnings = []
    rare = [label for label, n in counts.most_common() if n < RARE_ROWS]
    if rare:
        warnings.append(f"{source_name}: {len(rare)} labels have fewer than {RARE_ROWS} rows ({_listed(rare)}); the "
                        "model will hardly learn them and the held-out split may have none. Add rows of them, or "
                        "merge them into other classes.")
    (most, most_rows), (least, least_rows) = counts.most_common()[0], counts.most_common()[-1]
    if most_rows >= IMBALANCE_RATIO * least_rows:
        warnings.append(f"{source_name}: the labels are strongly imbalanced: '{most}' has {most_rows} rows and "
                        f"'{least}' {least_rows} ({most_rows / least_rows:.0f}x). Turn on class weights so the rare "
                        "classes count as much in the loss, or add rows of them.")
    return warnings


def prepare(table, mapping: dict):
    """The mapped columns only, named by role: text, text_pair (where mapped), then label as the class name (a
    string). Text is stripped; exact duplicate rows are dropped. Call `validate` first."""
    import pandas as pd

    out = pd.DataFrame({role: table[mapping[role]] for role in TEXT_COLUMNS if mapping.get(role)})
    out = out.apply(lambda texts: texts.str.strip())
    out["label"] = table[mapping["label"]].map(_label_name)
    return out.drop_duplicates().reset_index(drop=True)


def split(rows, eval_size, seed: int):
    """(train, held-out), stratified by label (scikit-learn's train_test_split) so each class keeps its share on both
    sides; a class with a single row stays in training."""
    import numbers

    from sklearn.model_selection import train_test_split

    from engine.data import MIN_ROWS, DataError

    n = len(rows)
    if isinstance(eval_size, float) and 0 < eval_size < 1:
        wanted = max(1, round(eval_size * n))
    elif isinstance(eval_size, numbers.Integral) and not isinstance(eval_size, bool) and eval_size >= 1:
        wanted = int(eval_size)
    else:
        raise DataError(f"eval_size={eval_size!r}: pass a fraction between 0 and 1 (e.g. 0.1) or a row count "
                        "(e.g. 200).")
    if n - wanted < MIN_ROWS:
        raise DataError(f"cannot split {n} rows with eval_size={eval_size!r}: train would keep {n - wanted} rows and "
                        f"needs at least {MIN_ROWS}. Add rows, lower eval_size, or pass a separate eval file.")
    counts = rows["label"].value_counts()
    single = rows["label"].isin(counts[counts < 2].index)
    splittable = rows[~single]
    classes = splittable["label"].nunique()
    stratify = splittable["label"] if classes <= wanted <= len(splittable) - classes else None
    train_part, held_out = train_test_split(splittable, test_size=min(wanted, len(splittable) - 1),
                                            random_state=seed, stratify=stratify)
    import pandas as pd

    return pd.concat([train_part, rows[single]]).reset_index(drop=True), held_out.reset_index(drop=True)


def load_model(config, train_rows=None):
    """A classifier over the training rows' labels (sorted), as `config` says."""
    from engine.models import FastClassifier

    labels = sorted(train_rows["label"].unique(), key=_label_order) if train_rows is not None else None
    return FastClassifier.from_pretrained(
        config.model,
        labels=labels,
        max_seq_length=config.max_seq_length,
        load_in_4bit=config.method == "qlora",
        full_finetuning=config.method == "full",
    )


def _label_order(label: str):
    """Whole numbers in numeric order (2 before 10), then names in alphabetical order."""
    return (0, int(label), "") if label.lstrip("-").isdigit() else (1, 0, label)


def model_limits(model) -> tuple[int | None, int | None]:
    """(positions the model can read, its hidden width): what max_seq_length and lora_r are checked against."""
    return getattr(model.config, "max_position_embeddings", None), getattr(model.config, "hidden_size", None)


def training_rows(rows, loss_name: str, config, events):
    """The rows as they are, marked (`rows.attrs["class_weights"]`, pandas' own metadata) for `build_loss` when
    config.class_weights is on; the label set goes to the run's log."""
    counts = rows["label"].value_counts()
    events.log(f"{len(counts)} labels: " + ", ".join(f"{label} ({n})" for label, n in counts.items()))
    rows = rows.copy()
    rows.attrs["class_weights"] = config.class_weights
    if config.class_weights:
        events.log("class weights on: each class counts as much in the loss, however many rows it has")
    return rows


def add_adapter(model, config) -> None:
    """LoRA on the family's targets inside the encoder, the head trained in full; or, for full fine-tuning, only
    gradient checkpointing if asked."""
    from engine.models import FastClassifier

    if config.method != "full":
        FastClassifier.get_peft_model(
            model, r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=config.target_modules, use_gradient_checkpointing=config.gradient_checkpointing,
            random_state=config.seed,
        )
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def fast_path_unavailable(model) -> str | None:
    """None where the family packs a text (or text pair) as one sequence and reads its head from it."""
    from engine.attention import scoring_unavailable
    from engine.models import family_of

    return scoring_unavailable(family_of(model))


@dataclass
class ClassificationLoss:
    """Cross-entropy over the logits, weighted per class where `weights` is set (transformers' Trainer calls it as
    compute_loss_func)."""

    weights: list[float] | None = None

    def __call__(self, outputs, labels, num_items_in_batch=None):
        import torch

        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        weight = torch.tensor(self.weights, dtype=torch.float32, device=logits.device) if self.weights else None
        # Summed over the batch and divided by the rows of the whole optimizer step (the Trainer passes them
        # when it accumulates gradients): each row counts the same however the step is cut into batches.
        total = torch.nn.functional.cross_entropy(logits.float(), labels, weight=weight, reduction="sum")
        return total / (num_items_in_batch if num_items_in_batch is not None else labels.numel())


def build_loss(name: str, model, train_rows) -> ClassificationLoss:
    """CrossEntropyLoss; where `training_rows` marked the rows for class weights, scikit-learn's balanced class
    weights in the head's class order."""
    if name != "CrossEntropyLoss":
        raise ValueError(f"loss {name!r} is not supported for classifiers; pick CrossEntropyLoss")
    return ClassificationLoss(class_weights(model, train_rows) if train_rows.attrs.get("class_weights") else None)


def class_weights(model, train_rows) -> list[float]:
    """scikit-learn's "balanced" weights (rows / (classes x rows of the class)), in the head's class order; a class
    the training rows lack gets weight 1."""
    import numpy as np
    from sklearn.utils.class_weight import compute_class_weight

    present = np.array(sorted(train_rows["label"].unique()))
    weights = dict(zip(present, compute_class_weight("balanced", classes=present, y=train_rows["label"].to_numpy())))
    return [float(weights.get(model.config.id2label[i], 1.0)) for i in range(model.config.num_labels)]


def packed_unavailable(model, loss_name: str) -> str | None:
    from engine.loop.scoring import loop_unavailable

    return loop_unavailable(model, loss_name)


def packed_trainer(model, train_rows, loss_name: str, **settings):
    """The packed loop over the rows whose label the head knows (as `tokenized`), each text (with its text pair)
    one sequence tokenized as `tokenized` does, cross-entropy weighted as `build_loss` weighs it."""
    from engine.loop.scoring import ScoringTrainer

    label2id = model.config.label2id
    rows = train_rows[train_rows["label"].isin(list(label2id))]
    weights = class_weights(model, train_rows) if train_rows.attrs.get("class_weights") else None
    return ScoringTrainer(
        model, lambda texts, pairs: model.tokenizer(texts, pairs, padding=True, truncation=True, return_tensors="pt"),
        rows["text"].tolist(), rows["text_pair"].tolist() if "text_pair" in rows else None,
        [label2id[label] for label in rows["label"]], loss=loss_name, class_weights=weights, **settings)


@dataclass
class ClassificationEvaluation:
    """Held-out texts (and text pairs) with their labels, measured with scikit-learn."""

    texts: list[str]
    pairs: list[str] | None
    labels: list[str]
    batch_size: int = 64

    def __bool__(self) -> bool:
        return bool(self.texts)

    def describe(self) -> str:
        return f"classification evaluation: {len(self.texts)} held-out texts over {len(set(self.labels))} labels"

    def held_out_notes(self, model) -> list[str]:
        """What the held-out split cannot measure: classes it lacks, and labels the model was not trained on."""
        known = [model.config.id2label[i] for i in range(model.config.num_labels)]
        notes = []
        absent = [label for label in known if label not in set(self.labels)]
        if absent:
            notes.append(f"labels {_listed(absent)} have no held-out rows, so their precision and recall are not "
                         "measured")
        unknown = sorted(set(self.labels) - set(known))
        if unknown:
            notes.append(f"held-out labels {_listed(unknown)} are not among the training labels: those rows are left "
                         "out of the evaluation")
        return notes

    def predict(self, model) -> list[str]:
        """The label `model` gives each held-out text."""
        probabilities = class_probabilities(model, self.texts, self.pairs, self.batch_size)
        return [model.config.id2label[int(i)] for i in probabilities.argmax(-1)]

    def measure(self, model) -> dict:
        return self.scores(model, self.predict(model))

    def majority_class(self) -> str:
        """The held-out split's most common label: the base of a model without its own head."""
        return Counter(self.labels).most_common(1)[0][0]

    def measure_base(self, model) -> dict:
        """The checkpoint's own head where it kept one, else the majority class; `notes` says what the held-out
        split cannot measure (`held_out_notes`)."""
        notes = {"notes": self.held_out_notes(model)} if self.held_out_notes(model) else {}
        if getattr(model, "_lacker_own_head", False):
            return {**self.measure(model), "baseline": "the checkpoint's own classification head", **notes}
        majority = self.majority_class()
        return {**self.scores(model, [majority] * len(self.labels)), "baseline": f"majority class '{majority}'",
                **notes}

    def scores(self, model, predicted: list[str]) -> dict:
        """accuracy, macro_f1, weighted_f1, per_class {label: precision, recall, f1, support} and the confusion
        matrix (rows: true labels, columns: predicted, in the model's class order), over the rows whose label the
        model knows."""
        from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        kept = [(true, guess) for true, guess in zip(self.labels, predicted) if true in set(labels)]
        true, guess = [t for t, _ in kept], [g for _, g in kept]
        measured = [label for label in labels if label in set(true)]
        precision, recall, f1, support = precision_recall_fscore_support(true, guess, labels=measured, zero_division=0)
        return {
            "accuracy": float(accuracy_score(true, guess)),
            "macro_f1": float(f1_score(true, guess, labels=measured, average="macro", zero_division=0)),
            "weighted_f1": float(f1_score(true, guess, labels=measured, average="weighted", zero_division=0)),
            "per_class": {label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                          for label, p, r, f, s in zip(measured, precision, recall, f1, support)},
            "confusion_matrix": {"labels": labels,
                                 "matrix": confusion_matrix(true, guess, labels=labels).tolist()},
        }

    def evaluator(self):
        """What the trainer evaluates every eval_steps: this evaluation itself (see `trainer`)."""
        return self

    def metrics_from(self, raw: dict) -> dict:
        """Our metric names from what the trainer's evaluation logged ("eval_accuracy" -> "accuracy")."""
        return {key.removeprefix("eval_"): value for key, value in raw.items()
                if key.removeprefix("eval_") in ("accuracy", "macro_f1", "weighted_f1")}


def class_probabilities(model, texts: list[str], pairs: list[str] | None = None, batch_size: int = 64):
    """A (texts, classes) numpy array: each text's (or text pair's) softmax probabilities under `model`, in its class
    order (`model.config.id2label`)."""
    import torch

    was_training = model.training
    model.eval()
    batches = []
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                chunk = pairs[start:start + batch_size] if pairs else None
                inputs = model.tokenizer(texts[start:start + batch_size], chunk, padding=True, truncation=True,
                                         return_tensors="pt")
                batches.append(model(**inputs.to(model.device)).logits.float().softmax(-1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(batches).numpy() if batches else torch.empty(0, model.config.num_labels).numpy()


def held_out_evaluation(held_out, shape: str, config, extra_corpus=()) -> ClassificationEvaluation:
    """The held-out rows (at most config.max_eval_queries, a stratified sample where there are more); `extra_corpus`
    does not apply to a classifier."""
    rows, max_queries, seed = held_out, config.max_eval_queries, config.seed
    if len(rows) > max_queries:
        from sklearn.model_selection import train_test_split

        counts = rows["label"].value_counts()
        stratify = rows["label"] if counts.min() >= 2 and len(counts) <= max_queries else None
        rows, _ = train_test_split(rows, train_size=max_queries, random_state=seed, stratify=stratify)
    return ClassificationEvaluation(rows["text"].tolist(), rows["text_pair"].tolist() if "text_pair" in rows else None,
                                    rows["label"].tolist())


def tokenized(model, rows):
    """A `datasets.Dataset` of the rows tokenized for the model (truncated to max_seq_length), labels as class ids."""
    from datasets import Dataset

    pairs = rows["text_pair"].tolist() if "text_pair" in rows else None
    encoded = model.tokenizer(rows["text"].tolist(), pairs, truncation=True)
    label2id = model.config.label2id
    known = [i for i, label in enumerate(rows["label"]) if label in label2id]
    columns = {key: [values[i] for i in known] for key, values in encoded.items()}
    return Dataset.from_dict({**columns, "labels": [label2id[rows["label"].iloc[i]] for i in known]})


def trainer(model, train_dataset, loss, evaluator, callbacks, args_overrides: dict):
    """transformers' own Trainer: the rows tokenized ahead, padded per batch, cross-entropy (weighted per class
    where `class_weights` is on); `evaluator` (a ClassificationEvaluation) measured every eval_steps."""
    from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments

    from engine.models.loading import load_adapter_weights

    class ClassifierTrainer(Trainer):
        """transformers' Trainer, resuming the adapter of a model that keeps its class (transformers' own PEFT
        integration), which the stock resume takes for a full model."""

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            model = model or self.model
            if getattr(model, "_hf_peft_config_loaded", False):
                load_adapter_weights(model, resume_from_checkpoint)
            else:
                super()._load_from_checkpoint(resume_from_checkpoint, model)

    rows = train_dataset.to_pandas()
    args = dict(args_overrides)
    # transformers 5 takes the warmup as a ratio in warmup_steps (a float below 1); warmup_ratio is
    # sentence-transformers' own argument.
    args["warmup_steps"] = min(args.pop("warmup_ratio", 0.0), 0.999)
    eval_dataset = compute_metrics = None
    if evaluator is not None:
        import pandas as pd

        held_out = pd.DataFrame({"text": evaluator.texts, "label": evaluator.labels,
                                 **({"text_pair": evaluator.pairs} if evaluator.pairs else {})})
        eval_dataset = tokenized(model, held_out)

        def compute_metrics(prediction):
            guesses = [model.config.id2label[int(i)] for i in prediction.predictions.argmax(-1)]
            truths = [model.config.id2label[int(i)] for i in prediction.label_ids]
            scores = ClassificationEvaluation(evaluator.texts, evaluator.pairs, truths).scores(model, guesses)
            return {key: scores[key] for key in ("accuracy", "macro_f1", "weighted_f1")}
    trainer = ClassifierTrainer(
        model=model, args=TrainingArguments(**args), train_dataset=tokenized(model, rows),
        eval_dataset=eval_dataset, data_collator=DataCollatorWithPadding(model.tokenizer),
        processing_class=model.tokenizer, compute_loss_func=loss, compute_metrics=compute_metrics, callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # the run's events carry the progress; its printed dicts repeat them
    return trainer


def describe(model, settings: dict, metrics: dict) -> None:
    """The settings and before / after metrics go into the card every later save writes."""
    from engine.models.classifier import describe_training

    describe_training(model, settings, metrics)


def save(model, folder, merged: bool, dtype=None) -> None:
    """The LoRA adapter (with the head), or a merged 16-bit model that loads in plain transformers
    (`AutoModelForSequenceClassification.from_pretrained(folder)`, `pipeline("text-classification", model=folder)`)."""
    if merged:
        model.save_pretrained_merged(str(folder), dtype=dtype)
    else:
        model.save_pretrained(str(folder))
