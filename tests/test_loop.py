"""The packed training loop (engine.loop) does the trainer's math: on the CPU, step by step, its losses
and weights match a plain loop over the stock padded model with sentence-transformers' own
MultipleNegativesRankingLoss, AdamW, linear schedule and gradient clipping. Also its batches, its
packing, its checkpoints, and `engine.train` driving it. tests/gpu/ runs it on CUDA with graphs."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pandas as pd
import pytest
import torch

from bench import models
from engine.attention import enable
from engine.families import family_by_name
from engine.loop import BUCKET, PackedTrainer, TokenStore, linear_schedule, loop_unavailable, no_duplicate_batches
from engine.loop.batches import plan_order
from engine.loop.surgery import checkpointing_blocks_graphs, draws_random
from training_checks import assert_same_training

ANCHORS = [f"what does package {i} do for topic {i % 5}" for i in range(24)] + ["shared query"] * 2
POSITIVES = [f"package {i} is a tool about topic {i % 5} with feature {i * 3} " * (1 + i % 4) for i in range(24)]
POSITIVES += ["first answer to the shared query", "second answer to the shared query"]
NEGATIVES = [f"an unrelated note number {i}" for i in range(26)]


def lora_model(name: str, checkpoint, packed: bool, device: str = "cpu"):
    model = models.load(name, checkpoint, device=device)
    for module in model.modules():  # dropout draws differ between packed and padded batches
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    torch.manual_seed(3)
    from peft import LoraConfig

    family = family_by_name(models.FAMILY_OF[name])
    model.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=list(family.lora_targets)))
    with torch.no_grad():  # PEFT starts B at zero; give the adapter something to say from step one
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    if packed:
        assert enable(model, family, allow_cpu=device == "cpu") is not None
    return model, family


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return models.build("tiny-bert", tmp_path_factory.mktemp("m") / "bert")


def reference_losses(model, plan, columns, steps, lr, warmup):
    """Stock path: padded forward per column, ST's MNRL, AdamW, transformers' linear schedule, clip 1.0
    (bf16 autocast on CUDA, as the trainer runs)."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    loss_fn = MultipleNegativesRankingLoss(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    model.train()
    for step, rows in enumerate(plan[:steps]):
        for group in optimizer.param_groups:
            group["lr"] = lr * linear_schedule(step, steps, warmup)
        device = next(model.parameters()).device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            features = [model.preprocess([column[r] for r in rows]) for column in columns]
            embeddings = [model({k: v.to(device) if torch.is_tensor(v) else v for k, v in f.items()})["sentence_embedding"]
                          for f in features]
            loss = loss_fn.compute_loss_from_embeddings(embeddings, labels=None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def mpnet(tmp_path_factory):
    return models.build("tiny-mpnet", tmp_path_factory.mktemp("m") / "mpnet")


@pytest.mark.parametrize("name, with_negatives", [("tiny-bert", False), ("tiny-bert", True), ("tiny-mpnet", True)])
def test_packed_loop_matches_the_stock_padded_loop_step_by_step(request, name, with_negatives):
    """MPNet packs through its relative-position-bias path (engine.attention.relative)."""
    checkpoint = request.getfixturevalue(name.removeprefix("tiny-"))
    columns = [ANCHORS, POSITIVES] + ([NEGATIVES] if with_negatives else [])
    packed_model, _ = lora_model(name, checkpoint, packed=True)
    stock_model, _ = lora_model(name, checkpoint, packed=False)
    initial = {n: p.detach().clone() for n, p in packed_model.named_parameters() if p.requires_grad}
    trainer = PackedTrainer(packed_model, columns, batch_size=8, learning_rate=5e-3, steps=6, warmup_ratio=0.2)
    assert trainer.packed
    records = []
    trainer.fit(on_steps=records.extend)
    expected = reference_losses(stock_model, trainer.plan, columns, 6, 5e-3, trainer.warmup)

    assert len(expected) == 6
    # (the unused pooler's adapter stays put)
    assert_same_training(packed_model, stock_model, records, expected, initial, moved_share=0.9)


@pytest.mark.parametrize("name, packed", [("tiny-bert", True), ("tiny-mpnet", False)])
def test_cached_loss_gives_the_whole_batch_result_one_mini_batch_at_a_time(request, name, packed):
    """CachedMultipleNegativesRankingLoss in the loop (GradCache): 24 sequences a batch embedded 5 at a
    time, mini-batches crossing from anchors to positives to negatives; same losses and weights."""
    checkpoint = request.getfixturevalue(name.removeprefix("tiny-"))
    columns = [ANCHORS, POSITIVES, NEGATIVES]
    runs = []
    for mini_batch in (None, 5):
        model, _ = lora_model(name, checkpoint, packed=packed)
        trainer = PackedTrainer(model, columns, batch_size=8, learning_rate=5e-3, steps=4, warmup_ratio=0.2,
                                mini_batch=mini_batch)
        records = []
        trainer.fit(on_steps=records.extend)
        runs.append(([r[1] for r in records], dict(model.named_parameters()), trainer))
    (whole, whole_params, _), (cached, cached_params, trainer) = runs
    chunks = trainer.pack(trainer.plan[0]).chunks
    assert [c.n_real for c in chunks] == [5, 5, 5, 5, 4]
    assert all(("cu_seqlens" in c.tensors) == packed for c in chunks)
    assert cached == pytest.approx(whole, rel=1e-4)
    for n, p in cached_params.items():
        if p.requires_grad:
            torch.testing.assert_close(p, whole_params[n], rtol=1e-4, atol=1e-5)


def test_cached_loss_replays_each_mini_batch_dropout(bert):
    """With dropout on, the second pass over a mini-batch must draw the first pass's masks: one mini-batch
    holding the whole batch then trains exactly like the plain step from the same random state."""
    runs = []
    for mini_batch in (None, 24, "no replay"):
        model, _ = lora_model("tiny-bert", bert, packed=True)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.3
        trainer = PackedTrainer(model, [ANCHORS, POSITIVES, NEGATIVES], batch_size=8, learning_rate=5e-3, steps=3,
                                mini_batch=24 if mini_batch == "no replay" else mini_batch)
        if mini_batch == "no replay":
            trainer._replaying = lambda state: contextlib.nullcontext()
        torch.manual_seed(7)
        trainer.fit()
        runs.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
    plain, replayed, not_replayed = runs
    for n in plain:
        torch.testing.assert_close(replayed[n], plain[n], rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(not_replayed[n], plain[n], rtol=1e-3, atol=1e-5) for n in plain)


def test_batches_never_repeat_a_text_and_cover_every_row_once():
    rows = np.array([[0, 10], [1, 11], [0, 12], [2, 10], [3, 13], [4, 14], [0, 15]])  # text ids per row
    batches = no_duplicate_batches(rows, batch_size=3, rng=np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(rows)))
    for batch in batches:
        texts = rows[batch].reshape(-1).tolist()
        assert len(texts) == len(set(texts)), batch


def test_packing_lays_out_sequences_and_fillers(bert):
    model, _ = lora_model("tiny-bert", bert, packed=True)
    trainer = PackedTrainer(model, [ANCHORS, POSITIVES, NEGATIVES], batch_size=4, learning_rate=1e-3, steps=2,
                            position_offset=2)
    rows = trainer.plan[0]
    plain = trainer.pack(rows).tensors
    bucketed = PackedTrainer(model, [ANCHORS, POSITIVES, NEGATIVES], batch_size=4, learning_rate=1e-3, steps=2,
                             position_offset=2, bucketed=True)  # what CUDA runs do, so that steps repeat shapes
    fillers = bucketed.packer.filler_count
    texts = [ANCHORS[r] for r in rows] + [POSITIVES[r] for r in rows] + [NEGATIVES[r] for r in rows]
    tokenized = model.tokenizer(texts, truncation=True, max_length=256)["input_ids"]
    assert plain["input_ids"].tolist() == [t for ids in tokenized for t in ids]
    assert plain["cu_seqlens"].tolist() == np.cumsum([0] + [len(ids) for ids in tokenized]).tolist()
    assert plain["position_ids"].tolist() == [2 + i for ids in tokenized for i in range(len(ids))]

    batch = bucketed.pack(rows)
    padded = batch.tensors
    n = len(texts)
    assert batch.full and batch.n_real == n
    assert padded["input_ids"].shape[0] % BUCKET == 0 and padded["cu_seqlens"].shape[0] == n + fillers + 1
    assert padded["input_ids"][: plain["input_ids"].shape[0]].tolist() == plain["input_ids"].tolist()
    filler_lengths = np.diff(padded["cu_seqlens"].numpy())[n:]
    assert (filler_lengths >= 1).all() and (filler_lengths <= trainer.max_length).all()
    assert (padded["seq_idx"][plain["input_ids"].shape[0]:] == n).all()  # fillers pool into a row nobody reads
    assert padded["position_ids"].max().item() < 2 + trainer.max_length


def test_tokenizing_ahead_in_the_background_gives_the_batches_and_losses_of_tokenizing_first(bert, monkeypatch):
    """The loop's texts are tokenized by a background thread in the plan's order, a few at a time here so that the
    steps race it, and only those the plan uses: the batches and the losses must be those of every text tokenized
    before the first step."""
    columns = [ANCHORS, POSITIVES, NEGATIVES]
    monkeypatch.setattr(TokenStore, "FIRST_CHUNK", 2)
    ahead_model, _ = lora_model("tiny-bert", bert, packed=True)
    ahead = PackedTrainer(ahead_model, columns, batch_size=4, learning_rate=5e-3, steps=5)
    ahead.store.chunk = 3
    ahead_records = []
    ahead.fit(on_steps=ahead_records.extend)
    assert ahead.store.ready.sum() == len(plan_order(ahead.row_texts, ahead.plan)) < len(ahead.store.texts)

    first_model, _ = lora_model("tiny-bert", bert, packed=True)
    first = PackedTrainer(first_model, columns, batch_size=4, learning_rate=5e-3, steps=5)
    first.store.ensure(np.arange(len(first.store.texts)))  # every text up front, in one go
    first_records = []
    first.fit(on_steps=first_records.extend)

    assert [r[1:3] for r in ahead_records] == [r[1:3] for r in first_records]  # losses and gradient norms, exactly
    for rows in first.plan:
        for name, tensor in first.pack(rows).tensors.items():
            assert torch.equal(ahead.pack(rows).tensors[name], tensor), name
    texts = list(first.store.index)
    tokenized = first_model.tokenizer(texts, truncation=True, max_length=256)["input_ids"]
    store = first.store
    assert [store.tokens[store.starts[i] : store.starts[i] + store.lengths[i]].tolist() for i in range(len(texts))] == tokenized


@pytest.mark.parametrize("family, vocabulary", [("bert", "wordpiece"), ("xlm-roberta", "unigram"), ("qwen3", "bpe"),
                                                ("gemma3", "gemma")])
def test_the_token_store_gives_each_familys_own_preprocessing_through_its_tokenizer(family, vocabulary, tmp_path,
                                                                                     monkeypatch):
    """The store tokenizes through the tokenizer alone (no padded tensors) once that gives what the model's
    preprocess gives, truncation and the family's special tokens included; a preprocessing that does more is used
    as it is."""
    from engine import FastSentenceTransformer
    from tiny_models import build_tiny_model

    folder = build_tiny_model(family, tmp_path / family, vocabulary=vocabulary)
    model = FastSentenceTransformer.from_pretrained(str(folder), max_seq_length=24, device="cpu")
    texts = ANCHORS + POSITIVES + ["a much longer text that runs on " * 8, "x", "Ünïcödé and ‘quotes’ — and émojis 🙂"]

    def tokens(store):
        store.ensure(np.arange(len(store.texts)))
        return [store.tokens[store.starts[i] : store.starts[i] + store.lengths[i]].tolist()
                for i in range(len(store.texts))]

    def preprocessed(transformer):
        out = transformer.preprocess(list(dict.fromkeys(texts)))  # the store's texts: each once, in order
        return [ids[mask.bool()].tolist() for ids, mask in zip(out["input_ids"], out["attention_mask"])]

    store = TokenStore(model[0], texts)
    assert tokens(store) == preprocessed(model[0]) and store.direct
    assert max(store.lengths) == 24  # truncated as preprocess truncates

    stock = model[0].preprocess
    monkeypatch.setattr(model[0], "preprocess", lambda batch: stock(["query: " + t for t in batch]))
    store = TokenStore(model[0], texts)
    assert tokens(store) == preprocessed(model[0]) and store.direct is False


def test_a_failure_to_tokenize_stops_the_loop_with_its_error(bert, monkeypatch):
    model, _ = lora_model("tiny-bert", bert, packed=True)
    trainer = PackedTrainer(model, [ANCHORS, POSITIVES], batch_size=4, learning_rate=5e-3, steps=3)

    def broken(texts):
        raise RuntimeError("tokenizer exploded")

    monkeypatch.setattr(trainer.transformer, "preprocess", broken)
    with pytest.raises(RuntimeError, match="tokenizer exploded"):
        trainer.fit()


def test_checkpoint_resume_gives_the_uninterrupted_result(bert, tmp_path):
    columns = [ANCHORS, POSITIVES]
    straight, family = lora_model("tiny-bert", bert, packed=True)
    PackedTrainer(straight, columns, batch_size=8, learning_rate=5e-3, steps=6).fit()

    first, _ = lora_model("tiny-bert", bert, packed=True)
    stop_after_three = PackedTrainer(first, columns, batch_size=8, learning_rate=5e-3, steps=6)
    stop_after_three.total_steps_done = stop_after_three.fit(every=3, on_every=lambda s: stop_after_three.save_state(tmp_path / f"c{s}"))
    resumed_model, _ = lora_model("tiny-bert", bert, packed=True)
    resumed = PackedTrainer(resumed_model, columns, batch_size=8, learning_rate=5e-3, steps=6)
    resumed.load_state(tmp_path / "c3")
    assert resumed.step == 3
    assert resumed.fit() == 6
    final = dict(resumed_model.named_parameters())
    for name, p in straight.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(final[name], p, rtol=1e-5, atol=1e-6)


def test_loop_reports_what_it_cannot_train(bert):
    packed, _ = lora_model("tiny-bert", bert, packed=True)
    assert loop_unavailable(packed, "MultipleNegativesRankingLoss") is None
    assert "CoSENTLoss" in loop_unavailable(packed, "CoSENTLoss")


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    return models.build("tiny-qwen3", tmp_path_factory.mktemp("m") / "qwen3")


def test_draws_random_sees_dropout_modules_config_dropouts_and_lora_dropout(bert, qwen3):
    from peft import LoraConfig

    hf = models.load("tiny-bert", bert, device="cpu")[0].model
    assert draws_random(hf)  # BERT's dropout 0.1, as built
    for module in hf.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    assert draws_random(hf)  # the config still says 0.1: conservative
    hf.config.hidden_dropout_prob = hf.config.attention_probs_dropout_prob = 0.0
    assert not draws_random(hf)

    model = models.load("tiny-qwen3", qwen3, device="cpu")
    assert not draws_random(model[0].model)  # Qwen3's only dropout is attention_dropout=0.0
    model[0].model.config.attention_dropout = 0.1  # a float handed to attention, no module
    assert draws_random(model[0].model)
    model[0].model.config.attention_dropout = 0.0
    targets = list(family_by_name("qwen3").lora_targets)
    model.add_adapter(LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=targets))
    assert draws_random(model[0].model)


def test_checkpointing_without_dropout_recomputes_without_the_host_rng_copy(qwen3):
    """Graphs stay on under checkpointing when nothing draws random numbers: the checkpoint functions
    lose only preserve_rng_state, the recompute runs and the gradients are the stock ones."""
    torch.manual_seed(0)
    ids = torch.randint(5, 1000, (3, 17))
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0
    grads = []
    for checkpointing in (False, True):
        hf = models.load("tiny-qwen3", qwen3, device="cpu")[0].model.train()
        layer_calls = []
        hf.layers[0].register_forward_pre_hook(lambda *_: layer_calls.append(1))
        if checkpointing:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            assert checkpointing_blocks_graphs(hf) is None
            assert hf.layers[0]._gradient_checkpointing_func.keywords == {"use_reentrant": False, "preserve_rng_state": False}
        hf(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state.square().mean().backward()
        assert len(layer_calls) == (2 if checkpointing else 1)  # forward, and the backward's recompute
        grads.append({n: p.grad for n, p in hf.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name, grad in grads[0].items():
        assert torch.allclose(grads[1][name], grad, rtol=1e-5, atol=1e-7), name


def test_checkpointing_with_dropout_keeps_graphs_off_and_says_why(bert):
    hf = models.load("tiny-bert", bert, device="cpu")[0].model
    assert checkpointing_blocks_graphs(hf) is None  # no checkpointing: nothing to decide
    hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    note = checkpointing_blocks_graphs(hf)
    assert note and "CUDA graphs off" in note and "dropout" in note
    # the RNG state is still saved: dropout masks must repeat in the recompute
    assert hf.encoder.layer[0]._gradient_checkpointing_func.keywords == {"use_reentrant": False}


@pytest.mark.parametrize("bucketed", [False, True])
def test_padded_loop_for_models_without_packed_attention_matches_stock(mpnet, bucketed):
    """Without packed attention (here MPNet left padded) the loop pads each column instead, rounded up
    to a multiple of 16 tokens when bucketed (as on CUDA), and must still do the stock math."""
    checkpoint = mpnet
    columns = [ANCHORS, POSITIVES, NEGATIVES]
    padded_model, _ = lora_model("tiny-mpnet", checkpoint, packed=False)
    stock_model, _ = lora_model("tiny-mpnet", checkpoint, packed=False)
    trainer = PackedTrainer(padded_model, columns, batch_size=8, learning_rate=5e-3, steps=5, bucketed=bucketed)
    assert not trainer.packed and loop_unavailable(padded_model, "MultipleNegativesRankingLoss") is None
    if bucketed:
        assert all(t.shape[1] % 16 == 0 for name, t in trainer.pack(trainer.plan[0]).tensors.items())
    records = []
    trainer.fit(on_steps=records.extend)
    expected = reference_losses(stock_model, trainer.plan, columns, 5, 5e-3, trainer.warmup)
    assert [r[1] for r in records] == pytest.approx(expected, rel=1e-4)


def test_mpnet_position_bias_built_on_the_device_gives_the_same_bias(tmp_path):
    from engine.attention.relative import position_bias_on_device

    model = models.load("tiny-mpnet", models.build("tiny-mpnet", tmp_path / "mpnet"), device="cpu")
    encoder = model[0].model.encoder
    hiddens = [torch.randn(3, 37, 64), torch.randn(2, 300, 64)]  # 300: distances past MPNet's reach of 128
    before = [encoder.compute_position_bias(hidden) for hidden in hiddens]
    assert position_bias_on_device(model[0].model, family_by_name("mpnet").relative_bias) == 1
    assert "compute_position_bias" in vars(encoder)  # the device-side lookup is installed
    for hidden, expected in zip(hiddens, before):
        torch.testing.assert_close(encoder.compute_position_bias(hidden), expected)


def test_train_with_the_loop_emits_progress_checkpoints_and_evaluations(tmp_path):
    from engine.train import train
    from tiny_models import build_tiny_model

    model = build_tiny_model("bert", tmp_path / "bert")
    data = tmp_path / "pairs.csv"
    pd.DataFrame({"question": ANCHORS * 3, "answer": POSITIVES * 3}).drop_duplicates().to_csv(data, index=False)
    result = train({"model": str(model), "data": str(data), "batch_size": 8, "max_steps": 6, "loop": "on",
                    "eval_steps": 3, "save_steps": 3, "max_seq_length": 32, "output_dir": str(tmp_path / "run")})
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "status" and "packed loop" in e["message"] for e in events)
    train_steps = [e["step"] for e in events if e["event"] == "train"]
    assert train_steps == [1, 2, 3, 4, 5, 6] and result.steps == 6
    assert all(np.isfinite(e["loss"]) and e["total_steps"] == 6 for e in events if e["event"] == "train")
    assert [e["step"] for e in events if e["event"] == "eval" and e["which"] == "trained"] == [3, 6]
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-6" / "loop_state.pt").exists()
    assert (tmp_path / "run" / "adapter").is_dir() and (tmp_path / "run" / "merged").is_dir()


def test_train_with_the_cached_loss_runs_the_loop_in_mini_batches(tmp_path, monkeypatch):
    from engine import loop
    from engine.train import train
    from tiny_models import build_tiny_model

    monkeypatch.setattr(loop, "CACHED_MINI_BATCH", 4)  # so that the batches below split
    seen = []
    step = loop.PackedTrainer._cached_step
    monkeypatch.setattr(loop.PackedTrainer, "_cached_step", lambda self, packed: seen.append(len(packed.chunks)) or step(self, packed))
    model = build_tiny_model("bert", tmp_path / "bert")
    data = tmp_path / "pairs.csv"
    pd.DataFrame({"question": ANCHORS, "answer": POSITIVES}).drop_duplicates().to_csv(data, index=False)
    result = train({"model": str(model), "data": str(data), "batch_size": 8, "max_steps": 3, "loop": "on",
                    "loss": "CachedMultipleNegativesRankingLoss", "evaluate": False, "max_seq_length": 32,
                    "output_dir": str(tmp_path / "run")})
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "status" and "packed loop" in e["message"] for e in events)
    assert result.steps == 3 and seen == [4, 4, 4]  # 8 anchors + 8 positives, 4 at a time
    assert all(np.isfinite(e["loss"]) for e in events if e["event"] == "train")


@pytest.mark.parametrize("candidate_columns", [1, 3])
def test_in_batch_loss_is_sentence_transformers_multiple_negatives_ranking_loss(bert, candidate_columns):
    """The loop's loss on given embeddings (anchors, then positives, then negatives) against
    sentence-transformers' own MultipleNegativesRankingLoss on the same embeddings, value and gradient."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from engine.loop.loss import in_batch_loss

    torch.manual_seed(0)
    batch = 6
    embeddings = torch.randn(batch * (1 + candidate_columns), 32, dtype=torch.float64, requires_grad=True)
    stock = MultipleNegativesRankingLoss(models.load("tiny-bert", bert, device="cpu"), scale=20.0)
    expected = stock.compute_loss_from_embeddings(list(embeddings.split(batch)), labels=None)
    (expected_grad,) = torch.autograd.grad(expected, embeddings)
    ours = in_batch_loss(embeddings, batch, scale=20.0)
    (grad,) = torch.autograd.grad(ours, embeddings)
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("mode", ["mean", "cls", "lasttoken"])
def test_pooling_is_sentence_transformers_pooling(mode):
    """The loop's pooling, packed and padded, against sentence-transformers' Pooling module on the same
    token embeddings (right-padded rows, as the loop pads; packed: the same tokens back to back, with
    filler tokens after them that no sequence may read)."""
    from sentence_transformers.sentence_transformer.modules import Pooling

    from engine.loop.pooling import pool_packed, pool_padded

    torch.manual_seed(0)
    lengths = torch.tensor([5, 1, 9, 3])
    hidden = torch.randn(len(lengths), int(lengths.max()), 16)
    mask = (torch.arange(hidden.shape[1])[None, :] < lengths[:, None]).long()
    expected = Pooling(16, pooling_mode=mode)({"token_embeddings": hidden, "attention_mask": mask})["sentence_embedding"]
    torch.testing.assert_close(pool_padded(hidden, mask, mode), expected)

    stream = torch.cat([hidden[mask.bool()], torch.randn(7, 16)])  # 7 filler tokens, one filler sequence
    cu_seqlens = torch.tensor([0, *lengths.cumsum(0).tolist(), stream.shape[0]], dtype=torch.int32)
    seq_idx = torch.cat([torch.repeat_interleave(torch.arange(len(lengths)), lengths), torch.full((7,), len(lengths))])
    packed = pool_packed(stream, mode, cu_seqlens, seq_idx, lengths.float(), n_real=len(lengths))
    torch.testing.assert_close(packed, expected)
