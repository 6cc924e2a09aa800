"""The classifier task on a CUDA GPU: `pytest -m gpu tests/gpu/test_classifier_gpu.py`.

LoRA on a 16-bit base (the Trainer in bf16) and QLoRA on a 4-bit base (needs bitsandbytes) both train, and the
merged save loads in plain transformers and gives the trained model's predictions.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

from tiny_models import build_tiny_model  # noqa: E402

TEXTS = [f"a game with level {i} and dragons" for i in range(48)] + [f"a library for parsing format {i}" for i in range(48)]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return build_tiny_model("bert", tmp_path_factory.mktemp("gpu") / "bert")


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_a_classifier_trains_on_the_gpu_and_its_merged_save_predicts_the_same(method, tiny_bert, tmp_path):
    if method == "qlora":
        pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForSequenceClassification

    from engine.train import train

    data = pd.DataFrame({"text": TEXTS, "section": ["games"] * 48 + ["libs"] * 48})
    result = train({"task": "classifier", "model": str(tiny_bert), "data": data, "method": method,
                    "columns": {"text": "text", "label": "section"}, "max_steps": 6, "batch_size": 16,
                    "max_seq_length": 32, "learning_rate": 1e-3, "output_dir": str(tmp_path / "run")})
    assert set(result.metrics) == {"base", "trained"}
    model = result.model
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "merged").to("cuda").eval()
    inputs = model.tokenizer(TEXTS[::8], padding=True, truncation=True, return_tensors="pt").to("cuda")
    model.eval()
    with torch.no_grad():
        expected = model(**inputs).logits.float()
        got = reloaded(**inputs).logits.float()
    assert torch.equal(expected.argmax(-1), got.argmax(-1))
    assert torch.allclose(expected, got, atol=5e-2)
