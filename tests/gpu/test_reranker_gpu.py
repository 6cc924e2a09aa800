"""The reranker task at full length on a CUDA GPU: `pytest -m gpu tests/gpu/test_reranker_gpu.py`.

The command of issue 14's "done means", on the bundled Debian pairs: all-MiniLM-L6-v2 becomes a cross-encoder with a
new head, trained on mined hard negatives with BinaryCrossEntropyLoss, and must rerank the held-out queries' top 20
from the first-stage retriever better than the retriever ordered them. Too long for the CPU suite (hundreds of steps).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

REPO = Path(__file__).resolve().parents[2]


def test_lacker_train_reranker_beats_the_retriever_order_and_saves_a_plain_cross_encoder(tmp_path):
    from sentence_transformers import CrossEncoder

    output = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "engine", "train", "--task", "reranker",
         "--model", "sentence-transformers/all-MiniLM-L6-v2", "--data", str(REPO / "assets/debian-pairs/train.jsonl"),
         "--columns", "anchor=query,positive=document", "--full-finetune", "--output", str(output)],
        capture_output=True, text=True, cwd=REPO, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((output / "metrics.json").read_text())
    print(json.dumps(metrics, indent=2))
    assert metrics["trained"]["ndcg@10"] > metrics["trained"]["retriever_ndcg@10"], metrics
    assert metrics["trained"]["mrr@10"] > metrics["trained"]["retriever_mrr@10"], metrics
    plain = CrossEncoder(str(output / "merged"))
    scores = plain.predict([("BTree implementation for Go", "This package provides an in-memory B-Tree implementation "
                             "for Go, useful as an ordered, mutable data structure."),
                            ("BTree implementation for Go", "A tool to convert images between formats.")])
    assert scores[0] > scores[1]
