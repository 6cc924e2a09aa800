"""The packed loop on CUDA, as `lacker train` runs it on a GPU: bf16, CUDA graphs, every family packed
(MPNet through FlexAttention), and MPNet padded; with gradient checkpointing too.
Its per-step losses against the stock padded loop (tests/test_loop.py's reference) on the same batches,
dropout off: `pytest -m gpu tests/gpu`."""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

from bench import models  # noqa: E402
from engine.loop import PackedTrainer  # noqa: E402
from test_loop import ANCHORS, NEGATIVES, POSITIVES, lora_model, reference_losses  # noqa: E402

FAMILIES = ["tiny-bert", "tiny-xlm-roberta", "tiny-distilbert", "tiny-modernbert", "tiny-qwen3", "tiny-gemma3", "tiny-mpnet"]


CASES = ([(name, True, False) for name in FAMILIES] + [("tiny-mpnet", False, False)]
         + [(name, True, True) for name in ("tiny-gemma3", "tiny-qwen3")])


@pytest.mark.parametrize("name, packed, checkpointing", CASES)
def test_graphed_loop_matches_the_stock_loop_on_cuda(name, packed, checkpointing, tmp_path):
    """With gradient checkpointing (models without dropout) the steps are captured too: the recompute
    needs no host copy of the RNG state (engine.loop.surgery.checkpointing_blocks_graphs)."""
    checkpoint = models.build(name, tmp_path / name)
    columns = [ANCHORS * 4, [p + " more" * (i % 3) for i, p in enumerate(POSITIVES * 4)], NEGATIVES * 4]
    packed_model, _ = lora_model(name, checkpoint, packed=packed, device="cuda")
    if checkpointing:
        packed_model[0].auto_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    stock_model, _ = lora_model(name, checkpoint, packed=False, device="cuda")
    trainer = PackedTrainer(packed_model, columns, batch_size=8, learning_rate=2e-3, steps=12, warmup_ratio=0.1)
    records = []
    trainer.fit(on_steps=records.extend)
    expected = reference_losses(stock_model, trainer.plan, columns, 12, 2e-3, trainer.warmup)

    assert trainer.packed == packed and trainer.graph_note is None
    assert packed_model[0].auto_model.is_gradient_checkpointing == checkpointing
    assert any(not isinstance(g, str) for g in trainer.graphs.values()), "no step ran from a CUDA graph"
    losses = [r[1] for r in records]
    # bf16 both ways: 2%, or 0.02 absolute once the loss is small
    assert losses == pytest.approx(expected, rel=0.02, abs=0.02), list(zip(losses, expected))


def test_graphed_loop_full_fine_tuning_and_eager_agree(tmp_path):
    from engine.attention import enable
    from engine.families import family_by_name

    checkpoint = models.build("tiny-bert", tmp_path / "bert")
    results = []
    for graphs in (True, False):
        torch.manual_seed(0)
        model = models.load("tiny-bert", checkpoint, device="cuda")
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        assert enable(model, family_by_name("bert")) is not None
        trainer = PackedTrainer(model, [ANCHORS * 4, POSITIVES * 4], batch_size=8, learning_rate=1e-4, steps=10,
                                cuda_graphs=graphs)
        records = []
        trainer.fit(on_steps=records.extend)
        results.append([r[1] for r in records])
    assert results[0] == pytest.approx(results[1], rel=0.02)


@pytest.mark.parametrize("name, packed", [("tiny-gemma3", True), ("tiny-mpnet", False)])
def test_cached_loss_on_cuda_matches_the_graphed_whole_batch_loop(name, packed, tmp_path):
    """CachedMultipleNegativesRankingLoss's mini-batches (eager, random state replayed per mini-batch) on
    CUDA against the graphed whole-batch step, dropout off."""
    checkpoint = models.build(name, tmp_path / name)
    columns = [ANCHORS * 4, POSITIVES * 4, NEGATIVES * 4]
    results = []
    for mini_batch in (None, 5):
        model, _ = lora_model(name, checkpoint, packed=packed, device="cuda")
        trainer = PackedTrainer(model, columns, batch_size=8, learning_rate=2e-3, steps=8, mini_batch=mini_batch)
        records = []
        trainer.fit(on_steps=records.extend)
        results.append([r[1] for r in records])
        assert (trainer.graph_note is None) == (mini_batch is None)
    assert results[1] == pytest.approx(results[0], rel=0.02, abs=0.02)
