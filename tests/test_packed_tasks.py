"""The packed loop for rerankers and classifiers (engine.loop.scoring) does the stock trainers' math: on the CPU,
step by step, its losses and weights match a plain loop over the stock padded model with sentence-transformers'
BinaryCrossEntropyLoss (pos_weight) and the classifier task's cross-entropy (class weights), AdamW, the linear
schedule and clipping; the head it reads from the packed tokens gives each family's own logits; and a run through
engine.train with it saves a merged model that plain CrossEncoder / transformers load with the same scores.
Tiny random models (tests/tiny_models.py); tests/gpu/test_packed_tasks_gpu.py runs it on CUDA with graphs."""

from __future__ import annotations

import json
import threading

import numpy as np
import pandas as pd
import pytest
import torch
from sentence_transformers import CrossEncoder
from transformers import AutoModelForSequenceClassification

from engine import FastClassifier, FastCrossEncoder
from engine.attention import enable
from engine.families import family_by_name
from engine.loop import linear_schedule
from engine.loop.heads import sequence_logits
from engine.loop.pairs import PairPacker, PairTokens, first_position, takes_token_types
from engine.loop.scoring import ScoringTrainer, loop_unavailable
from engine.tasks.classifier import ClassificationLoss
from tiny_models import build_tiny_model
from training_checks import assert_same_training

QUERIES = [f"what does package {i} do for topic {i % 5}" for i in range(24)]
DOCUMENTS = [f"package {i} is a tool about topic {i % 5} with feature {i * 3} " * (1 + i % 4) for i in range(24)]
RELEVANCE = [1.0 if i % 3 == 0 else 0.0 for i in range(24)]
LABELS = ["admin", "games", "web"]
CLASSES = [i % 3 for i in range(24)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    return lambda family: build_tiny_model(family, folder / family) if not (folder / family).exists() else folder / family


def without_dropout(model):
    for module in model.modules():  # dropout draws differ between packed and padded batches
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def with_talking_adapter(model):
    with torch.no_grad():  # PEFT starts B at zero; give the adapter something to say from step one
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return model


def cross_encoder(folder, family: str, packed: bool, lora: bool = True, device: str = "cpu"):
    torch.manual_seed(0)  # the same new head for both copies
    model = without_dropout(FastCrossEncoder.from_pretrained(str(folder), max_seq_length=64, device=device))
    if lora:
        FastCrossEncoder.get_peft_model(model, r=4, lora_alpha=8, random_state=0)
        with_talking_adapter(model)
    if packed:
        assert "packed varlen attention" in enable(model, family_by_name(family), allow_cpu=device == "cpu")
    return model


def classifier(folder, family: str, packed: bool, pooling: str | None = None, device: str = "cpu"):
    torch.manual_seed(0)
    model = FastClassifier.from_pretrained(str(folder), labels=LABELS, max_seq_length=64, device=device)
    if pooling:
        model.config.classifier_pooling = pooling
    without_dropout(model)
    FastClassifier.get_peft_model(model, r=4, lora_alpha=8, random_state=0)
    with_talking_adapter(model)
    if packed:
        assert "packed varlen attention" in enable(model, family_by_name(family), allow_cpu=device == "cpu")
    return model


def stock_steps(model, plan, loss_of_rows, steps: int, lr: float, warmup: int) -> list[float]:
    """AdamW, transformers' linear schedule, clipping at 1.0 over the stock padded forward (bf16 autocast on
    CUDA, as the stock trainers run)."""
    params = [p for p in model.parameters() if p.requires_grad]
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for step, rows in enumerate(plan[:steps]):
        for group in optimizer.param_groups:
            group["lr"] = lr * linear_schedule(step, steps, warmup)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = loss_of_rows(rows)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def reranker_runs(folder, family: str, device: str = "cpu", steps: int = 6, lr: float = 5e-3, copies: int = 1):
    """The packed loop and the stock padded loop (sentence-transformers' BinaryCrossEntropyLoss, pos_weight 2) on
    the same batches: (packed model, stock model, packed records, stock losses, initial trainable weights,
    trainer). `copies` repeats the rows (longer epochs)."""
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    packed = cross_encoder(folder, family, True, device=device)
    stock = cross_encoder(folder, family, False, device=device)
    initial = {n: p.detach().clone() for n, p in packed.named_parameters() if p.requires_grad}
    queries, documents, relevance = QUERIES * copies, DOCUMENTS * copies, RELEVANCE * copies
    trainer = ScoringTrainer(packed, lambda q, d: packed.preprocess(list(zip(q, d))), queries, documents, relevance,
                             loss="BinaryCrossEntropyLoss", pos_weight=2.0, batch_size=8, learning_rate=lr,
                             steps=steps, warmup_ratio=0.2)
    records = []
    trainer.fit(on_steps=records.extend)
    bce = BinaryCrossEntropyLoss(stock, pos_weight=torch.tensor(2.0, device=device))
    expected = stock_steps(stock, trainer.plan, lambda rows: bce(
        [[queries[r] for r in rows], [documents[r] for r in rows]],
        torch.tensor([relevance[r] for r in rows], device=device)), steps, lr, trainer.warmup)
    return packed, stock, records, expected, initial, trainer


def classifier_runs(folder, family: str, pairs: bool, weights: bool, device: str = "cpu", steps: int = 6,
                    lr: float = 5e-3, copies: int = 1):
    """The packed loop and the stock padded loop (the task's ClassificationLoss: what transformers' Trainer calls
    as compute_loss_func) on the same batches; returns as `reranker_runs`."""
    packed = classifier(folder, family, True, device=device)
    stock = classifier(folder, family, False, device=device)
    initial = {n: p.detach().clone() for n, p in packed.named_parameters() if p.requires_grad}
    class_weights = [0.5, 1.0, 2.0] if weights else None
    texts, classes = QUERIES * copies, CLASSES * copies
    second = DOCUMENTS * copies if pairs else None
    encode = lambda texts, others: packed.tokenizer(texts, others, padding=True, truncation=True, return_tensors="pt")
    trainer = ScoringTrainer(packed, encode, texts, second, classes, loss="CrossEntropyLoss",
                             class_weights=class_weights, batch_size=8, learning_rate=lr, steps=steps,
                             warmup_ratio=0.2)
    records = []
    trainer.fit(on_steps=records.extend)
    loss = ClassificationLoss(class_weights)

    def stock_loss(rows):
        inputs = stock.tokenizer([texts[r] for r in rows], [second[r] for r in rows] if pairs else None,
                                 padding=True, truncation=True, return_tensors="pt").to(device)
        return loss(stock(**inputs), torch.tensor([classes[r] for r in rows], device=device))

    expected = stock_steps(stock, trainer.plan, stock_loss, steps, lr, trainer.warmup)
    return packed, stock, records, expected, initial, trainer


@pytest.mark.parametrize("family", ["bert", "modernbert"])
def test_reranker_packed_loop_matches_cross_encoder_bce_step_by_step(tiny, family):
    """BERT packs its pairs with token types; ModernBERT has none."""
    packed, stock, records, expected, initial, trainer = reranker_runs(tiny(family), family)
    assert (trainer.packer.store.types is not None) == (family == "bert")
    assert_same_training(packed, stock, records, expected, initial)


@pytest.mark.parametrize("family, pairs, weights", [("bert", True, False), ("modernbert", False, True)])
def test_classifier_packed_loop_matches_the_trainers_cross_entropy_step_by_step(tiny, family, pairs, weights):
    """BERT on text pairs (token types), ModernBERT on single texts with class weights."""
    packed, stock, records, expected, initial, _ = classifier_runs(tiny(family), family, pairs, weights)
    assert_same_training(packed, stock, records, expected, initial)


@pytest.mark.parametrize("family, pooling", [("bert", None), ("xlm-roberta", None), ("distilbert", None),
                                             ("modernbert", "cls"), ("modernbert", "mean"), ("qwen3", None)])
def test_each_familys_head_read_from_packed_tokens_gives_its_own_logits(tiny, family, pooling):
    model = classifier(tiny(family), family, packed=True, pooling=pooling).eval()
    texts, others = QUERIES[:5], DOCUMENTS[:5]
    encode = lambda a, b: model.tokenizer(a, b, padding=True, truncation=True, return_tensors="pt")
    base = model.base_model
    store = PairTokens(encode, texts, others, takes_token_types(base))
    packer = PairPacker(store, np.zeros(5, np.int64), pad_id=model.tokenizer.pad_token_id, max_seq_length=64,
                        batch_size=5, bucketed=False, position_offset=first_position(model), pin=False)
    b = packer.pack(np.arange(5)).tensors
    extra = {"token_type_ids": b["token_type_ids"][None]} if "token_type_ids" in b else {}
    with torch.no_grad():
        hidden = base(input_ids=b["input_ids"][None], position_ids=b["position_ids"][None], cu_seq_lens_q=b["cu_seqlens"],
                      cu_seq_lens_k=b["cu_seqlens"], max_length_q=64, max_length_k=64, **extra).last_hidden_state[0]
        packed = sequence_logits(model, family_by_name(family).sequence_head, hidden, b["cu_seqlens"], b["seq_idx"],
                                 b["lengths"], 5)
        stock = model(**encode(texts, others)).logits
    torch.testing.assert_close(packed, stock, rtol=1e-4, atol=1e-5)


def test_losses_the_packed_loop_does_not_score_keep_the_stock_trainer(tiny):
    model = cross_encoder(tiny("bert"), "bert", packed=True)
    assert loop_unavailable(model, "BinaryCrossEntropyLoss") is None
    assert "ListNetLoss" in loop_unavailable(model, "ListNetLoss")
    assert "packed attention is off" in loop_unavailable(cross_encoder(tiny("bert"), "bert", packed=False),
                                                        "BinaryCrossEntropyLoss")


def train_events(output) -> list[dict]:
    return [json.loads(line) for line in (output / "events.jsonl").read_text().splitlines()]


def test_a_reranker_run_trains_in_the_packed_loop_and_its_merged_model_scores_the_same_in_plain_cross_encoder(
        tiny, tmp_path):
    from engine.train import train

    rows = pd.DataFrame({"query": QUERIES * 2, "document": DOCUMENTS * 2, "label": [int(r) for r in RELEVANCE] * 2})
    rows.to_json(tmp_path / "pairs.jsonl", orient="records", lines=True)
    result = train({"task": "reranker", "model": str(tiny("bert")), "data": str(tmp_path / "pairs.jsonl"),
                    "columns": {"anchor": "query", "positive": "document", "label": "label"}, "max_steps": 4,
                    "batch_size": 8, "learning_rate": 1e-3, "max_seq_length": 64, "evaluate": False,
                    "output_dir": str(tmp_path / "run")})
    statuses = [e["message"] for e in train_events(tmp_path / "run") if e["event"] == "status"]
    assert any("packed loop" in message for message in statuses if message.startswith("lora"))
    assert result.steps == 4
    pairs = list(zip(QUERIES[:6], DOCUMENTS[:6]))
    result.model.eval()
    trained = result.model.predict(pairs)
    plain = CrossEncoder(str(tmp_path / "run" / "merged"), device="cpu")
    np.testing.assert_allclose(plain.predict(pairs), trained, atol=5e-3)  # a 16-bit save


def test_a_classifier_run_trains_in_the_packed_loop_and_its_merged_model_predicts_the_same_in_plain_transformers(
        tiny, tmp_path):
    from engine.train import train

    rows = pd.DataFrame({"description": QUERIES * 2, "section": [LABELS[c] for c in CLASSES] * 2})
    rows.to_json(tmp_path / "texts.jsonl", orient="records", lines=True)
    result = train({"task": "classifier", "model": str(tiny("modernbert")), "data": str(tmp_path / "texts.jsonl"),
                    "columns": {"text": "description", "label": "section"}, "max_steps": 4, "batch_size": 8,
                    "learning_rate": 1e-3, "max_seq_length": 64, "class_weights": True, "evaluate": False,
                    "output_dir": str(tmp_path / "run")})
    statuses = [e["message"] for e in train_events(tmp_path / "run") if e["event"] == "status"]
    assert any("packed loop" in message for message in statuses if message.startswith("lora"))
    model = result.model.eval()
    inputs = model.tokenizer(QUERIES[:6], padding=True, return_tensors="pt")
    with torch.no_grad():
        trained = model(**inputs).logits.float()
        plain = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "run" / "merged")).eval()
        torch.testing.assert_close(plain(**inputs).logits.float(), trained, atol=2e-2, rtol=0)  # a 16-bit save
    assert plain.config.id2label == model.config.id2label


def test_a_stopped_scoring_loop_resumes_from_its_state_as_if_never_stopped(tiny, tmp_path):
    def trainer(model):
        encode = lambda texts, others: model.tokenizer(texts, others, padding=True, truncation=True, return_tensors="pt")
        return ScoringTrainer(model, encode, QUERIES, None, CLASSES, loss="CrossEntropyLoss", batch_size=8,
                              learning_rate=5e-3, steps=6)

    straight = []
    trainer(classifier(tiny("bert"), "bert", True)).fit(on_steps=straight.extend)
    first = trainer(classifier(tiny("bert"), "bert", True))
    stop = threading.Event()
    done = []
    first.fit(on_steps=done.extend, stop=stop, after_step=lambda step: step == 3 and stop.set())
    first.save_state(tmp_path / "state")
    resumed = trainer(classifier(tiny("bert"), "bert", True))
    resumed.load_state(tmp_path / "state")
    resumed.fit(on_steps=done.extend)
    assert [r[0] for r in done] == [1, 2, 3, 4, 5, 6]
    assert [r[1] for r in done] == pytest.approx([r[1] for r in straight], rel=1e-5)


def test_the_task_speed_rows_train_stock_and_ours_on_the_same_batches(tmp_path):
    """bench.speed --tasks (bench/speed_tasks.py) on the CPU: both rows of a task run, and their loss curves agree
    (same batches, dropout off), so the GPU rows compare like with like."""
    from bench import speed

    speed.main(["--tasks", "--device", "cpu", "--steps", "5", "--only", "reranker:tiny-bert:64:8:stock,ours",
                "classifier:tiny-bert:64:8:stock,ours", "--json", str(tmp_path / "rows.json"),
                "--out", str(tmp_path / "rows.md")])
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [(r["task"], r["method"], r["error"]) for r in rows] == [
        ("reranker", "stock", ""), ("reranker", "ours", ""), ("classifier", "stock", ""), ("classifier", "ours", "")]
    for stock, ours in (rows[:2], rows[2:]):
        assert "packed varlen attention" in ours["enabled"]
        assert [loss for _, loss in ours["losses"]] == pytest.approx([loss for _, loss in stock["losses"]], rel=1e-3)
    assert "| reranker | tiny-bert | 64 | 8 | 5 | ours |" in (tmp_path / "rows.md").read_text()


RANK_SCRIPT = '''
import sys
import torch
from engine import distributed
from engine.loop.scoring import ScoringTrainer
from test_packed_tasks import QUERIES, DOCUMENTS, RELEVANCE, cross_encoder

world = distributed.setup()
model = cross_encoder(sys.argv[1], "bert", packed=True)
trainer = ScoringTrainer(model, lambda q, d: model.preprocess(list(zip(q, d))), QUERIES, DOCUMENTS, RELEVANCE,
                         loss="BinaryCrossEntropyLoss", pos_weight=2.0, batch_size=4, learning_rate=5e-3, steps=5,
                         warmup_ratio=0.2)
records = []
trainer.fit(on_steps=records.extend)
if world.main:
    torch.save({"losses": [r[1] for r in records],
                "weights": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}},
               sys.argv[2])
distributed.teardown()
'''


def test_two_ranks_of_the_scoring_loop_train_as_one_process_at_twice_the_batch(tiny, tmp_path):
    """torchrun, gloo on the CPU: each rank packs half of every batch; the summed gradients and losses are one
    process's at the global batch (what `lacker train --gpus 2` gives a reranker)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from engine.distributed import World

    tests = Path(__file__).parent
    (tmp_path / "ranks.py").write_text(RANK_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(tmp_path / "ranks.py"), str(tiny("bert")), str(tmp_path / "ranks.pt")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = torch.load(tmp_path / "ranks.pt", weights_only=True)

    model = cross_encoder(tiny("bert"), "bert", packed=True)
    alone = ScoringTrainer(model, lambda q, d: model.preprocess(list(zip(q, d))), QUERIES, DOCUMENTS, RELEVANCE,
                           loss="BinaryCrossEntropyLoss", pos_weight=2.0, batch_size=8, learning_rate=5e-3, steps=5,
                           warmup_ratio=0.2, world=World())
    records = []
    alone.fit(on_steps=records.extend)
    assert ranks["losses"] == pytest.approx([r[1] for r in records], rel=1e-4)
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(ranks["weights"][name], p.detach(), rtol=1e-4, atol=1e-5)
