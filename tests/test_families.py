"""Every family in the table, through a tiny model built from a config: load, LoRA on the family's
targets, two training steps, merged save, and a reload in plain sentence-transformers that gives the
same embeddings."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from sentence_transformers import SentenceTransformer

from engine import FastSentenceTransformer
from engine.families import FAMILIES, family_by_name
from engine.train import train
from tiny_models import CONFIGS, build_tiny_model

TEXTS = ["how do I install a package", "a command line tool for searching files by content",
         "the red planet", "Mars is often called the red planet because of its colour"]


def _pairs(n: int = 16) -> pd.DataFrame:
    return pd.DataFrame({
        "query": [f"question number {i} about topic {i % 5}" for i in range(n)],
        "answer": [f"an answer that talks about topic {i % 5} in detail, item {i}" for i in range(n)],
    })


def test_every_family_in_the_table_has_a_tiny_model():
    assert {family.name for family in FAMILIES} == set(CONFIGS)


def test_a_row_packs_through_relative_bias_exactly_when_it_names_the_bias_classes():
    """engine.attention.enable takes a "flex" row's packed path from its relative_bias site."""
    assert all(("flex" in family.fast_paths) == (family.relative_bias is not None) for family in FAMILIES)


@pytest.mark.parametrize("family_name", sorted(CONFIGS))
def test_family_trains_merges_and_reloads(family_name, tmp_path, caplog):
    folder = build_tiny_model(family_name, tmp_path / "base")
    family = family_by_name(family_name)

    with caplog.at_level("INFO", logger="engine.models"):
        model = FastSentenceTransformer.from_pretrained(str(folder), max_seq_length=32)
    assert "no modules.json" in caplog.text, "a model without modules.json must say how it is pooled"
    assert model[1].pooling_mode == family.pooling
    if family.prompts:
        assert model.prompts["query"] == family.prompts["query"]

    FastSentenceTransformer.get_peft_model(model, r=4, random_state=0)
    lora_parents = {name.rsplit(".lora_A", 1)[0].rsplit(".", 1)[-1] for name, _ in model.named_modules()
                    if name.endswith(".lora_A")}
    assert lora_parents == set(family.lora_targets)
    assert {name for name, p in model.named_parameters() if p.requires_grad} <= {
        name for name, _ in model.named_parameters() if "lora_" in name}

    before = {name: torch.zeros_like(p) for name, p in model.named_parameters() if "lora_B" in name}  # B starts at 0
    result = train({"model": str(folder), "data": _pairs(), "columns": {"anchor": "query", "positive": "answer"},
                    "max_steps": 2, "batch_size": 4, "max_seq_length": 32, "learning_rate": 1e-2,
                    "evaluate": False, "eval_size": 4, "output_dir": str(tmp_path / "run")})
    trained = result.model
    assert result.steps == 2
    losses = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    train_losses = [e["loss"] for e in losses if e["event"] == "train"]
    assert len(train_losses) == 2 and all(torch.isfinite(torch.tensor(train_losses)))
    after = {name: p for name, p in trained.named_parameters() if "lora_B" in name}
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[n], after[n].detach()) for n in before), "training did not move LoRA weights"

    merged_dir = tmp_path / "run" / "merged"
    expected = trained.encode(TEXTS, convert_to_tensor=True)
    reloaded = SentenceTransformer(str(merged_dir), device="cpu")
    got = reloaded.encode(TEXTS, convert_to_tensor=True)
    assert torch.nn.functional.cosine_similarity(expected.float(), got.float()).min() > 0.999
    assert not (merged_dir / "adapter_config.json").exists(), "a merged model must not need peft"
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").exists()


def _patch_site_classes(family) -> set[str]:
    sites = family.rms_norms + family.rope + family.mlps + family.packed_attention
    bias = family.relative_bias
    return {site.cls for site in sites} | ({bias.model, bias.self_attention, bias.encoder} if bias else set())


@pytest.mark.parametrize("family_name", sorted(CONFIGS))
def test_patch_sites_name_classes_the_familys_models_are_made_of(family_name, tmp_path):
    """A site naming a class the architecture does not have (a typo, a renamed transformers class)
    would patch nothing and say nothing: every site of each row must be found in its tiny model."""
    from engine.kernels.patching import class_path

    model = FastSentenceTransformer.from_pretrained(str(build_tiny_model(family_name, tmp_path / "base")))
    assert _patch_site_classes(family_by_name(family_name)) <= {class_path(m) for m in model.modules()}


def _saved_files(folder) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("family_name", sorted(CONFIGS))
def test_fast_path_surgery_is_not_saved(family_name, lora, tmp_path):
    """Everything the fast path does to a model (engine.attention.enable, the packed loop's
    prepare_model with kernels and graphs, the fused LoRA) leaves its state dict, its config and every
    file `save_pretrained` writes (the whole model, or its adapter) as the stock model's, and comes off
    again with remove_patches."""
    from engine.attention import enable
    from engine.kernels import patch_peft_lora
    from peft.tuners.lora import Linear as LoraLinear

    from engine.kernels.patching import class_path, is_patched, remove_patches
    from engine.loop.surgery import prepare_model

    folder = build_tiny_model(family_name, tmp_path / "base")
    family = family_by_name(family_name)
    stock, patched = (FastSentenceTransformer.from_pretrained(str(folder), max_seq_length=32) for _ in range(2))
    if lora:
        stock, patched = (FastSentenceTransformer.get_peft_model(model, r=4, random_state=0)
                          for model in (stock, patched))
    enable(patched, family, allow_cpu=True)
    hf = patched[0].model
    prepare_model(hf, cuda=True, graphs=True, kernels=True, cached=False)  # all of it runs on a CPU too
    patch_peft_lora(hf)
    installed = sum(is_patched(m, name) for m in hf.modules() for name in ("forward", "compute_position_bias"))
    sites = _patch_site_classes(family) - {site.cls for site in family.mlps if site.layout == "dense"}  # plain GELUs stay
    assert installed == sum(class_path(m) in sites or isinstance(m, LoraLinear) for m in hf.modules())

    assert patched.state_dict().keys() == stock.state_dict().keys()
    assert all(torch.equal(value, stock.state_dict()[name]) for name, value in patched.state_dict().items())
    assert hf.config.to_json_string(use_diff=False) == stock[0].model.config.to_json_string(use_diff=False)
    stock.save_pretrained(str(tmp_path / "stock"))
    patched.save_pretrained(str(tmp_path / "patched"))
    saved, expected = _saved_files(tmp_path / "patched"), _saved_files(tmp_path / "stock")
    if "README.md" in saved:  # the model card's usage snippet names the folder it was saved to
        saved["README.md"] = saved["README.md"].replace(b"patched", b"stock")
    assert saved.keys() == expected.keys() and ("config.json" in saved) != lora
    assert [name for name in saved if saved[name] != expected[name]] == []

    assert remove_patches(hf) == installed
    assert not any(is_patched(m) for m in hf.modules())
