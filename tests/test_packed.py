"""Packed (padding-free) batches give the padded model's embeddings and gradients.

Runs on CPU: `enable(..., allow_cpu=True)` routes packed attention through the PyTorch reference,
so these tests check everything but the CUDA kernel: position ids (XLM-RoBERTa from 2), the
boundaries handed to every layer, sliding windows (ModernBERT, Gemma3), causal masking (Qwen3),
and pooling from the packed tokens. tests/gpu/ repeats them with the CUDA kernel in bf16.
"""

from __future__ import annotations

import logging

import pytest
import torch

from bench import models
from engine.attention import ATTN_IMPLEMENTATION, enable
from engine.families import family_by_name

TEXTS = [
    "hello world",
    "a much longer sentence about debian packages, their synopses and long descriptions " * 2,
    "x",
    "Real-time strategy game of ancient warfare with a long name",
    "short one",
]
PACKED = ["tiny-bert", "tiny-xlm-roberta", "tiny-distilbert", "tiny-modernbert", "tiny-qwen3", "tiny-gemma3",
          "tiny-mpnet"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {name: models.build(name, root / name) for name in PACKED}


def _pair(name, checkpoints):
    padded = models.load(name, checkpoints[name], device="cpu")
    packed = models.load(name, checkpoints[name], device="cpu")
    for model in (padded, packed):
        model.eval()
    family = family_by_name(models.FAMILY_OF[name])
    assert enable(packed, family, allow_cpu=True) is not None
    return padded, packed


@pytest.mark.parametrize("name", PACKED)
def test_packed_embeddings_and_gradients_match_padded(name, checkpoints):
    padded, packed = _pair(name, checkpoints)
    features = packed.preprocess(TEXTS)
    assert "cu_seq_lens_q" in features and "attention_mask" not in features
    assert features["input_ids"].shape[0] == 1  # one stream, no padding

    outputs = []
    for model in (padded, packed):
        model.zero_grad()
        embeddings = model(model.preprocess(TEXTS))["sentence_embedding"]
        (embeddings * torch.linspace(-1, 1, embeddings.shape[-1])).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        outputs.append((embeddings.detach(), grads))
    (ref, ref_grads), (out, out_grads) = outputs
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    assert ref_grads.keys() == out_grads.keys()
    for n in ref_grads:
        torch.testing.assert_close(out_grads[n], ref_grads[n], atol=1e-5, rtol=1e-3, msg=n)


def test_gemma3_windows_at_embeddinggemma_scale_match_padded(tmp_path):
    """EmbeddingGemma's real window (512 tokens each way) over sequences up to 1,020 tokens, where the
    sliding layers see only part of a sequence: the packed path gives the padded model's embeddings.
    (tiny-gemma3's window of 8 checks the same rule on short texts.)"""
    import random
    import shutil

    import transformers

    config = transformers.Gemma3TextConfig(
        vocab_size=30522, hidden_size=64, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=1,
        head_dim=16, intermediate_size=128, sliding_window=512, use_bidirectional_attention=True,
        max_position_embeddings=2048)
    assert config.layer_types.count("sliding_attention") == 5
    torch.manual_seed(0)
    transformers.AutoModel.from_config(config).save_pretrained(tmp_path)
    for file in models.TOKENIZER_FILES:
        shutil.copy(models.tokenizer_dir() / file, tmp_path / file)
    rng = random.Random(0)
    words = "debian package tool library daemon kernel module python server client network editor".split()
    texts = [" ".join(rng.choice(words) for _ in range(n)) for n in (1000, 300, 700, 1020)]

    embeddings = []
    for packed in (False, True):
        model = models.load("tiny-gemma3", tmp_path, max_seq_length=1024, device="cpu").eval()
        if packed:
            assert enable(model, family_by_name("gemma3"), allow_cpu=True) is not None
        features = model.preprocess(texts)
        assert ("cu_seq_lens_q" in features) == packed
        with torch.no_grad():
            embeddings.append(model(features)["sentence_embedding"])
    assert features["cu_seq_lens_q"].diff().max() > 600  # longer than the window
    torch.testing.assert_close(embeddings[1], embeddings[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["tiny-xlm-roberta", "tiny-mpnet"])
def test_roberta_like_positions_start_at_two(name, checkpoints):
    _, packed = _pair(name, checkpoints)
    features = packed.preprocess(["one two", "three"])
    lengths = (features["cu_seq_lens_q"][1:] - features["cu_seq_lens_q"][:-1]).tolist()
    expected = torch.cat([torch.arange(n) + 2 for n in lengths])
    assert features["position_ids"][0].tolist() == expected.tolist()


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-mpnet"])
def test_packed_attention_does_not_leak_across_sequences(name, checkpoints):
    """A sequence's embedding must not depend on which sequences share its packed batch."""
    _, packed = _pair(name, checkpoints)
    alone = packed.encode(TEXTS[:1], convert_to_tensor=True)
    together = packed.encode(TEXTS, convert_to_tensor=True)[:1]
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


def test_unknown_architectures_and_cpu_fall_back_with_one_log_line(checkpoints, caplog, monkeypatch):
    import engine.attention

    monkeypatch.setattr(engine.attention, "_logged", set())  # earlier tests may have logged these already
    unknown = models.load("tiny-mpnet", checkpoints["tiny-mpnet"], device="cpu")
    bert = models.load("tiny-bert", checkpoints["tiny-bert"], device="cpu")
    with caplog.at_level(logging.INFO, logger="engine.attention"):
        assert enable(unknown, None, allow_cpu=True) is None
        assert enable(bert, family_by_name("bert")) is None
        assert enable(bert, family_by_name("bert")) is None
    messages = [r.getMessage() for r in caplog.records]
    assert any("not in the family table" in m and "padded SDPA" in m for m in messages)
    assert sum("unavailable on cpu" in m for m in messages) == 1  # said, and said once
    assert "cu_seq_lens_q" not in bert.preprocess(TEXTS)


def test_saved_model_loads_as_plain_sentence_transformer(checkpoints, tmp_path):
    from peft import LoraConfig
    from sentence_transformers import SentenceTransformer

    _, packed = _pair("tiny-xlm-roberta", checkpoints)
    packed.add_adapter(LoraConfig(r=4, target_modules=list(family_by_name("xlm-roberta").lora_targets)))
    expected = packed.encode(TEXTS, convert_to_tensor=True)
    packed.save(str(tmp_path / "saved"))
    config = (tmp_path / "saved").rglob("*.json")
    assert not any(ATTN_IMPLEMENTATION in path.read_text() for path in config)
    reloaded = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    reloaded.eval()
    assert reloaded[0].model.config._attn_implementation != ATTN_IMPLEMENTATION
    torch.testing.assert_close(reloaded.encode(TEXTS, convert_to_tensor=True), expected, atol=1e-5, rtol=1e-4)


def test_mpnet_flex_attention_matches_its_reference(checkpoints):
    """The FlexAttention form of MPNet's relative position bias (score modifier + block mask built
    from the sequence boundaries) against the one-sequence-at-a-time reference; forward only, since
    FlexAttention has no CPU backward (tests/gpu repeats it with gradients). Sequences longer than
    a 128-token block and distances past MPNet's 128-token reach are both covered."""
    from engine.attention.relative import packed_bias, relative_attention, relative_attention_reference

    encoder = models.load("tiny-mpnet", checkpoints["tiny-mpnet"], device="cpu")[0].model.encoder
    torch.nn.init.normal_(encoder.relative_attention_bias.weight)  # a bias big enough to matter
    lengths = [5, 300, 1, 140, 37]
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    q, k, v = (torch.randn(1, 4, sum(lengths), 16) for _ in range(3))
    with torch.no_grad():
        flex = packed_bias(encoder, cu_seqlens, sum(lengths), flex=True)
        reference = packed_bias(encoder, cu_seqlens, sum(lengths), flex=False)
        assert flex.block_mask is not None and reference.block_mask is None
        out = relative_attention(q, k, v, flex, scale=0.25)
        expected = relative_attention_reference(q, k, v, reference, scale=0.25)
        # MPNet's own bias, for the 300-token sequence, equals the table lookup
        own = encoder.compute_position_bias(torch.zeros(1, 300, 64))[0]
        distance = torch.arange(300)[None, :] - torch.arange(300)[:, None]
        torch.testing.assert_close(flex.table[:, distance.clamp(-128, 128) + 128], own)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_short_mpnet_runs_on_cuda_stay_padded_long_ones_pack(caplog):
    """FlexAttention's compile (~14 s on an H100) makes a short MPNet run slower end to end than the
    padded loop: below the measured break-even the run stays padded, and says so once."""
    from engine.attention import _short_run_stays_padded
    from engine.attention.relative import PAYS_OFF_FROM_STEPS

    mpnet, bert, cuda = family_by_name("mpnet"), family_by_name("bert"), torch.device("cuda")
    with caplog.at_level(logging.INFO, logger="engine.attention"):
        assert _short_run_stays_padded(mpnet, cuda, 60)
    assert any("60-step run stays padded" in r.getMessage() for r in caplog.records)
    assert not _short_run_stays_padded(mpnet, cuda, PAYS_OFF_FROM_STEPS)
    assert not _short_run_stays_padded(mpnet, cuda, None)
    assert not _short_run_stays_padded(mpnet, torch.device("cpu"), 60)  # the CPU reference compiles nothing
    assert not _short_run_stays_padded(bert, cuda, 60)
    assert not _short_run_stays_padded(None, cuda, 60)
