"""The packed loop for rerankers and classifiers on CUDA: `pytest -m gpu tests/gpu/test_packed_tasks_gpu.py`.

bf16, varlen attention, fused LoRA, the Triton kernels where the family has them, and each step replayed from a
CUDA graph, against the stock padded loop (sentence-transformers' BinaryCrossEntropyLoss, the classifier task's
cross-entropy, under the same bf16 autocast) on the same batches: every step's loss within 2%, dropout off. Then a
reranker run and a classifier run through engine.train on the GPU, whose merged saves score the same in plain
sentence-transformers / transformers. The step-by-step math at 1e-4 is tests/test_packed_tasks.py's, on the CPU.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

from test_packed_tasks import (CLASSES, DOCUMENTS, LABELS, QUERIES, RELEVANCE, classifier_runs,  # noqa: E402
                               reranker_runs)
from tiny_models import build_tiny_model  # noqa: E402

STEPS = 18  # three epochs of six full batches: the first of a shape eager, its second captured, the rest replayed


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    return lambda family: build_tiny_model(family, folder / family) if not (folder / family).exists() else folder / family


def assert_graphed_and_within_two_percent(trainer, records, expected):
    assert trainer.graphs_on, trainer.graph_note
    assert any(isinstance(graph, torch.cuda.CUDAGraph) for graph in trainer.graphs.values())
    losses = [r[1] for r in records]
    assert len(losses) == len(expected) == STEPS
    for step, (got, want) in enumerate(zip(losses, expected), start=1):
        assert got == pytest.approx(want, rel=0.02), f"step {step}: packed {got}, stock {want}"


@pytest.mark.parametrize("family", ["bert", "xlm-roberta", "modernbert"])
def test_reranker_cuda_graph_loop_matches_stock_bce_within_two_percent(tiny, family):
    _, _, records, expected, _, trainer = reranker_runs(tiny(family), family, device="cuda", steps=STEPS, lr=1e-3,
                                                        copies=2)
    assert_graphed_and_within_two_percent(trainer, records, expected)


@pytest.mark.parametrize("family, pairs, weights", [("bert", True, False), ("modernbert", False, True),
                                                    ("xlm-roberta", False, False)])
def test_classifier_cuda_graph_loop_matches_stock_cross_entropy_within_two_percent(tiny, family, pairs, weights):
    _, _, records, expected, _, trainer = classifier_runs(tiny(family), family, pairs, weights, device="cuda",
                                                          steps=STEPS, lr=1e-3, copies=2)
    assert_graphed_and_within_two_percent(trainer, records, expected)


def test_engine_train_runs_both_tasks_in_the_graphed_loop_and_their_merged_saves_agree(tiny, tmp_path):
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification

    from engine.train import train

    pairs = pd.DataFrame({"query": QUERIES * 2, "document": DOCUMENTS * 2, "label": [int(r) for r in RELEVANCE] * 2})
    reranker = train({"task": "reranker", "model": str(tiny("bert")), "data": pairs, "max_steps": 12,
                      "columns": {"anchor": "query", "positive": "document", "label": "label"}, "batch_size": 8,
                      "learning_rate": 1e-3, "max_seq_length": 64, "evaluate": False,
                      "output_dir": str(tmp_path / "reranker")})
    events = (tmp_path / "reranker" / "events.jsonl").read_text()
    assert "(packed loop)" in events and "CUDA graphs off" not in events
    scored = list(zip(QUERIES[:6], DOCUMENTS[:6]))
    reranker.model.eval()
    plain = CrossEncoder(str(tmp_path / "reranker" / "merged"), device="cuda")
    np.testing.assert_allclose(plain.predict(scored), reranker.model.predict(scored), atol=2e-2)

    texts = pd.DataFrame({"description": QUERIES * 2, "section": [LABELS[c] for c in CLASSES] * 2})
    classified = train({"task": "classifier", "model": str(tiny("modernbert")), "data": texts, "max_steps": 12,
                        "columns": {"text": "description", "label": "section"}, "batch_size": 8,
                        "learning_rate": 1e-3, "max_seq_length": 64, "evaluate": False,
                        "output_dir": str(tmp_path / "classifier")})
    events = (tmp_path / "classifier" / "events.jsonl").read_text()
    assert "(packed loop)" in events and "CUDA graphs off" not in events
    model = classified.model.eval()
    inputs = model.tokenizer(QUERIES[:6], padding=True, return_tensors="pt").to("cuda")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "classifier" / "merged").to("cuda").eval()
    with torch.no_grad():
        assert (reloaded(**inputs).logits.argmax(-1) == model(**inputs).logits.argmax(-1)).all()
