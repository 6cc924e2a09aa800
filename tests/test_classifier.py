"""The classifier task: FastClassifier per family (tiny models from tests/tiny_models.py), its labels, the data
checks and warnings, the stratified split, class weights, the metrics, and `lacker train --task classifier` end to
end on the bundled all-MiniLM-L6-v2."""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from transformers import AutoModelForSequenceClassification, pipeline

from engine import FastClassifier
from engine.tasks import classifier
from tiny_models import build_tiny_model

FAMILIES = ("bert", "xlm-roberta", "distilbert", "mpnet", "modernbert")
LABELS = ["admin", "games", "web"]
TEXTS = ["a tool to manage users and disks", "a strategy game with dragons", "a web server for static sites",
         "back up the system every night"]
TARGETS = torch.tensor([0, 1, 2, 0])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    return lambda family: build_tiny_model(family, folder / family) if not (folder / family).exists() else folder / family


def logits(model, texts=TEXTS):
    model.eval()
    with torch.no_grad():
        inputs = model.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        return model(**inputs).logits.float()


def two_steps(model):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    inputs = model.tokenizer(TEXTS, padding=True, truncation=True, return_tensors="pt")
    for _ in range(2):
        model(**inputs, labels=TARGETS).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_trains_the_head_whole_and_the_merged_model_loads_in_plain_transformers(family, tiny, tmp_path):
    model = FastClassifier.from_pretrained(str(tiny(family)), labels=LABELS, max_seq_length=32)
    assert type(model).__name__.endswith("ForSequenceClassification")
    FastClassifier.get_peft_model(model, r=4, random_state=0)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert any("lora_" in name for name in trainable)
    assert all("lora_" in name or "modules_to_save" in name for name in trainable), "only LoRA and the head train"
    heads = {name.split(".modules_to_save")[0] for name in trainable if "modules_to_save" in name}
    assert heads and not any("lora_" in name and name.split(".")[0] in heads for name in trainable), \
        "a head's own layers are trained whole, not adapted"
    before = logits(model)
    two_steps(model)
    trained = logits(model)
    assert not torch.allclose(before, trained)

    model.save_pretrained_merged(tmp_path / "merged")
    model.save_pretrained(tmp_path / "adapter")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    reloaded.tokenizer = model.tokenizer
    assert reloaded.config.id2label == dict(enumerate(LABELS))
    assert torch.allclose(logits(reloaded), trained, atol=2e-2), "the 16-bit merged model scores as the trained one"
    assert json.loads((tmp_path / "adapter" / "labels.json").read_text()) == LABELS
    from_adapter = FastClassifier.from_pretrained(str(tmp_path / "adapter"), max_seq_length=32)
    assert torch.allclose(logits(from_adapter), trained, atol=1e-4), "the adapter and its head load back whole"


def test_the_merged_model_serves_in_a_transformers_pipeline_with_the_class_names(tiny, tmp_path):
    model = FastClassifier.from_pretrained(str(tiny("bert")), labels=LABELS, max_seq_length=32)
    FastClassifier.get_peft_model(model, r=4, random_state=0)
    two_steps(model)
    model.save_pretrained_merged(tmp_path / "merged")
    predictions = pipeline("text-classification", model=str(tmp_path / "merged"))(TEXTS)
    expected = [LABELS[i] for i in logits(model).argmax(-1)]
    assert [p["label"] for p in predictions] == expected
    assert 'pipeline("text-classification", model="' in (tmp_path / "merged" / "README.md").read_text()


def test_a_checkpoint_with_a_head_of_the_same_classes_keeps_it_in_its_own_order(tiny, tmp_path):
    first = FastClassifier.from_pretrained(str(tiny("bert")), labels=LABELS)
    first.save_pretrained_merged(tmp_path / "sections", dtype="float32")
    again = FastClassifier.from_pretrained(str(tmp_path / "sections"), labels=["web", "admin", "games"])
    assert again.config.id2label == dict(enumerate(LABELS))
    assert again._lacker_own_head
    assert torch.allclose(logits(again), logits(first), atol=1e-5)

    other = FastClassifier.from_pretrained(str(tmp_path / "sections"), labels=["yes", "no"])
    assert other.config.id2label == {0: "yes", 1: "no"} and not other._lacker_own_head


def test_a_plain_encoder_needs_the_classes(tiny):
    with pytest.raises(ValueError, match="labels=\\[...\\]"):
        FastClassifier.from_pretrained(str(tiny("bert")))
    with pytest.raises(ValueError, match="at least 2 classes"):
        FastClassifier.from_pretrained(str(tiny("bert")), labels=["only"])


def table(labels, texts=None, **columns):
    texts = texts or [f"text number {i} about {label}" for i, label in enumerate(labels)]
    return pd.DataFrame({"body": texts, "section": labels, **columns})


MAPPING = {"text": "body", "label": "section"}


def test_integer_labels_are_classes_named_by_their_digits_in_numeric_order(tiny):
    rows = classifier.prepare(table([2, 10, 1.0, 2, 10, 1, 2, 10, 1]), MAPPING)
    assert sorted(set(rows["label"])) == ["1", "10", "2"]

    config = SimpleNamespace(model=str(tiny("bert")), max_seq_length=32, method="lora")
    model = classifier.load_model(config, rows)
    assert model.config.id2label == {0: "1", 1: "2", 2: "10"}


def test_rare_classes_and_strong_imbalance_are_reported():
    labels = ["libs"] * 60 + ["games"] * 20 + ["web"] * 3
    summary = classifier.validate(table(labels), MAPPING, "sections.csv")
    assert summary.labels == {"libs": 60, "games": 20, "web": 3}
    rare, imbalance = summary.warnings
    assert "sections.csv" in rare and "'web'" in rare and "fewer than 5 rows" in rare
    assert "strongly imbalanced" in imbalance and "'libs' has 60" in imbalance and "class weights" in imbalance
    balanced = classifier.validate(table(["libs", "games"] * 10), MAPPING, "sections.csv")
    assert balanced.warnings == []


def test_one_text_with_two_labels_is_reported():
    summary = classifier.validate(table(["a", "b"] * 6, texts=["same words"] * 2 + [f"t {i}" for i in range(10)]),
                                  MAPPING, "s.csv")
    assert any("1 texts appear with more than one label" in warning for warning in summary.warnings)


def test_the_split_keeps_every_class_on_both_sides_and_a_single_row_class_in_training():
    rows = classifier.prepare(table(["libs"] * 70 + ["games"] * 20 + ["web"] * 9 + ["lone"]), MAPPING)
    train, held_out = classifier.split(rows, 0.2, seed=0)
    assert len(held_out) == 20 and len(train) == 80
    assert Counter(held_out["label"]) == {"libs": 14, "games": 4, "web": 2}
    assert "lone" in set(train["label"])
    assert not set(train["text"]) & set(held_out["text"])


def test_the_evaluation_says_which_labels_it_cannot_measure(tiny):
    model = FastClassifier.from_pretrained(str(tiny("bert")), labels=LABELS)
    held_out = pd.DataFrame({"text": TEXTS, "label": ["admin", "games", "games", "sports"]})
    evaluation = classifier.held_out_evaluation(held_out, "texts", SimpleNamespace(max_eval_queries=500, seed=0))
    notes = evaluation.held_out_notes(model)
    assert any("'web'" in note and "no held-out rows" in note for note in notes)
    assert any("'sports'" in note and "not among the training labels" in note for note in notes)


def test_the_metrics_are_scikit_learns_and_the_base_of_a_new_head_is_the_majority_class(tiny):
    model = FastClassifier.from_pretrained(str(tiny("bert")), labels=LABELS)
    evaluation = classifier.ClassificationEvaluation(TEXTS, None, ["admin", "games", "games", "web"])
    scores = evaluation.scores(model, ["admin", "games", "web", "web"])
    assert scores["accuracy"] == 0.75
    assert scores["per_class"]["games"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert scores["confusion_matrix"] == {"labels": LABELS, "matrix": [[1, 0, 0], [0, 1, 1], [0, 0, 1]]}
    base = evaluation.measure_base(model)
    assert base["accuracy"] == 0.5 and base["baseline"] == "majority class 'games'"


def test_class_weights_are_balanced_in_the_heads_order(tiny):
    model = FastClassifier.from_pretrained(str(tiny("bert")), labels=LABELS)
    rows = pd.DataFrame({"text": ["t"] * 8, "label": ["games"] * 6 + ["web"] * 2})
    assert classifier.class_weights(model, rows) == [1.0, pytest.approx(8 / 12), pytest.approx(8 / 4)]
    plain = classifier.build_loss("CrossEntropyLoss", model, rows)
    rows.attrs["class_weights"] = True  # as training_rows marks them when class_weights is on
    weighted = classifier.build_loss("CrossEntropyLoss", model, rows)
    outputs = {"logits": torch.tensor([[0.0, 2.0, 0.0], [0.0, 2.0, 0.0]])}
    labels = torch.tensor([1, 2])
    assert weighted(outputs, labels) > plain(outputs, labels), "the rare class's mistake counts more"


@pytest.mark.slow
def test_lacker_train_task_classifier_writes_a_merged_model_that_beats_the_majority_class(tmp_path):
    """The bundled MiniLM on two sections of the bundled Debian sample, a few steps: merged/ loads in plain
    transformers and gets more of the held-out texts right than always answering the commonest section."""
    import os
    import subprocess
    import sys

    from engine.bundled import ASSETS_DIR

    sample = pd.read_json(ASSETS_DIR / "debian-sections" / "train.jsonl", lines=True)
    two = pd.concat([sample[sample["section"] == section].head(n) for section, n in (("games", 50), ("sound", 40))])
    data = tmp_path / "sections.jsonl"
    two.sample(frac=1.0, random_state=0).to_json(data, orient="records", lines=True)
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "engine", "train", "--task", "classifier", "--model",
         "sentence-transformers/all-MiniLM-L6-v2", "--data", str(data), "--columns", "text=text,label=section",
         "--max-steps", "8", "--batch-size", "8", "--max-seq-length", "64", "--learning-rate", "2e-3",
         "--eval-size", "20", "--output", str(run)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["base"]["baseline"] == "majority class 'games'"
    assert metrics["trained"]["accuracy"] > metrics["base"]["accuracy"]
    assert set(metrics["trained"]["per_class"]) == {"games", "sound"}

    classify = pipeline("text-classification", model=str(run / "merged"))
    assert classify("A fast-paced arcade shooter with ten levels")[0]["label"] in {"games", "sound"}
    assert f'model="{run / "merged"}"' in (run / "merged" / "README.md").read_text()


def test_a_stopped_run_resumes_from_its_checkpoint_as_if_never_stopped(tiny, tmp_path):
    from training_checks import assert_resumes_as_if_never_stopped

    texts = [f"a game with level {i} and dragons" for i in range(40)] + [f"a library for format {i}" for i in range(40)]
    config = {"task": "classifier", "model": str(tiny("bert")), "data": pd.DataFrame({"t": texts, "s": ["games"] * 40 +
              ["libs"] * 40}), "columns": {"text": "t", "label": "s"}, "max_steps": 4, "batch_size": 8,
              "max_seq_length": 32, "learning_rate": 1e-3, "evaluate": False,
              "loop": "off"}  # the stock trainer's resume, random state included (the packed loop's: test_packed_tasks)
    assert_resumes_as_if_never_stopped(config, tmp_path)
