"""The engine's own training path on a CUDA GPU: `pytest -m gpu tests/gpu`.

Default LoRA training takes the fast path and still saves a plain sentence-transformers model;
QLoRA trains on a 4-bit base (needs bitsandbytes) and its merged save loads in 16 bits.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

from tiny_models import build_tiny_model  # noqa: E402


def _pairs(n: int = 96) -> pd.DataFrame:
    return pd.DataFrame({"query": [f"question {i} on subject {i % 9}" for i in range(n)],
                         "document": [f"text {i} that explains subject {i % 9} at some length" for i in range(n)]})


def _events(run_dir):
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return build_tiny_model("bert", tmp_path_factory.mktemp("gpu") / "bert")


def test_default_training_takes_the_fast_path_and_saves_a_plain_model(tiny_bert, tmp_path):
    from sentence_transformers import SentenceTransformer

    from engine.train import train

    result = train({"model": str(tiny_bert), "data": _pairs(), "max_steps": 6, "batch_size": 16,
                    "max_seq_length": 32, "output_dir": str(tmp_path / "run")})
    events = _events(tmp_path / "run")
    assert any(e["event"] == "log" and e["message"].startswith("fast path:") for e in events), events
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in events if e["event"] == "train")
    assert events[-1]["status"] == "completed" and set(result.metrics) == {"base", "trained"}
    for name in ("config.json", "config_sentence_transformers.json", "sentence_bert_config.json"):
        assert "lacker" not in (tmp_path / "run" / "merged" / name).read_text(), f"{name} names our attention"
    reloaded = SentenceTransformer(str(tmp_path / "run" / "merged"), device="cuda")
    texts = ["question 3 on subject 3", "text 5 that explains subject 5"]
    cos = torch.nn.functional.cosine_similarity(result.model.encode(texts, convert_to_tensor=True).float(),
                                                reloaded.encode(texts, convert_to_tensor=True).float())
    assert cos.min() > 0.99


def test_qlora_trains_on_a_4bit_base_and_merges_to_16_bits(tiny_bert, tmp_path):
    pytest.importorskip("bitsandbytes")
    from sentence_transformers import SentenceTransformer

    from engine.train import train

    result = train({"model": str(tiny_bert), "data": _pairs(), "method": "qlora", "max_steps": 6, "batch_size": 16,
                    "max_seq_length": 32, "evaluate": False, "output_dir": str(tmp_path / "run")})
    assert getattr(result.model[0].auto_model, "is_loaded_in_4bit", False)
    assert _events(tmp_path / "run")[-1]["status"] == "completed"
    merged = SentenceTransformer(str(tmp_path / "run" / "merged"), device="cuda")
    assert next(merged.parameters()).dtype in (torch.bfloat16, torch.float16)
    assert merged.encode(["hello"]).shape == (1, 64)
