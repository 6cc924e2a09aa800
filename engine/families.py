"""The family table: one row per architecture, and the one function that applies a row to a model.

A row says everything the engine needs to know about an architecture: which attention layout it
uses (for the packed fast path), where packed position ids start, which linear layers LoRA targets,
how a model without `modules.json` pools, which prompts it expects, and which fast paths apply.

This module imports neither torch nor transformers, so the studio can read the table cheaply.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # transformers `config.model_type` values this row covers
    attention: str  # "bidirectional", "bidirectional+sliding", "causal" or "relative-bias"
    position_offset: int  # first position id as released (padding_idx + 1 for RoBERTa-likes; packing reads the model's own)
    lora_targets: tuple[str, ...]  # attention and MLP projection names (PEFT suffix match)
    pooling: str  # sentence-transformers pooling mode used when a model has no modules.json
    prompts: dict[str, str] = field(default_factory=dict)  # used when a model has no prompts of its own
    padding_side: str = "right"
    fast_paths: tuple[str, ...] = ()  # names of the GPU fast paths that apply (see engine.attention)


FAMILIES: tuple[Family, ...] = (
    Family(
        name="bert",
        model_types=("bert",),
        attention="bidirectional",
        position_offset=0,
        lora_targets=("query", "key", "value", "dense"),
        pooling="mean",
        fast_paths=("varlen",),
    ),
    Family(
        name="xlm-roberta",
        model_types=("xlm-roberta", "roberta"),
        attention="bidirectional",
        position_offset=2,
        lora_targets=("query", "key", "value", "dense"),
        pooling="cls",
        fast_paths=("varlen",),
    ),
    Family(
        name="mpnet",
        model_types=("mpnet",),
        attention="relative-bias",
        position_offset=2,
        lora_targets=("q", "k", "v", "o", "dense"),
        pooling="mean",
        fast_paths=("flex",),
    ),
    Family(
        name="distilbert",
        model_types=("distilbert",),
        attention="bidirectional",
        position_offset=0,
        lora_targets=("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"),
        pooling="mean",
        fast_paths=("varlen",),
    ),
    Family(
        name="modernbert",
        model_types=("modernbert",),
        attention="bidirectional+sliding",
        position_offset=0,
        lora_targets=("Wqkv", "Wo", "Wi"),
        pooling="mean",
        fast_paths=("varlen",),
    ),
    Family(
        name="qwen3",
        model_types=("qwen3",),
        attention="causal",
        position_offset=0,
        lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        pooling="lasttoken",
        prompts={"query": "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"},
        padding_side="left",
        fast_paths=("varlen",),
    ),
    Family(
        name="gemma3",
        model_types=("gemma3_text", "gemma3"),
        attention="bidirectional+sliding",
        position_offset=0,
        lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        pooling="mean",
        prompts={"query": "task: search result | query: ", "document": "title: none | text: "},
        fast_paths=("varlen",),
    ),
)

_BY_MODEL_TYPE = {model_type: family for family in FAMILIES for model_type in family.model_types}


@dataclass(frozen=True)
class CuratedModel:
    """A model the studio offers by name. `params_m` is millions of parameters; `dim` the embedding size."""

    model_id: str
    family: str
    params_m: float
    dim: int
    layers: int
    max_seq_length: int
    note: str = ""


CURATED_MODELS: tuple[CuratedModel, ...] = (
    CuratedModel("sentence-transformers/all-MiniLM-L6-v2", "bert", 22.7, 384, 6, 256, "bundled; works offline"),
    CuratedModel("BAAI/bge-large-en-v1.5", "bert", 335, 1024, 24, 512),
    CuratedModel("intfloat/e5-large-v2", "bert", 335, 1024, 24, 512),
    CuratedModel("mixedbread-ai/mxbai-embed-large-v1", "bert", 335, 1024, 24, 512),
    CuratedModel("BAAI/bge-m3", "xlm-roberta", 568, 1024, 24, 8192, "multilingual"),
    CuratedModel("intfloat/multilingual-e5-large-instruct", "xlm-roberta", 560, 1024, 24, 512, "multilingual"),
    CuratedModel("Snowflake/snowflake-arctic-embed-l-v2.0", "xlm-roberta", 568, 1024, 24, 8192, "multilingual"),
    CuratedModel("sentence-transformers/all-mpnet-base-v2", "mpnet", 109, 768, 12, 384),
    CuratedModel("sentence-transformers/multi-qa-distilbert-cos-v1", "distilbert", 66, 768, 6, 512),
    CuratedModel("answerdotai/ModernBERT-base", "modernbert", 149, 768, 22, 8192),
    CuratedModel("answerdotai/ModernBERT-large", "modernbert", 395, 1024, 28, 8192),
    CuratedModel("Alibaba-NLP/gte-modernbert-base", "modernbert", 149, 768, 22, 8192),
    CuratedModel("Qwen/Qwen3-Embedding-0.6B", "qwen3", 596, 1024, 28, 32768, "instruction prompts"),
    CuratedModel("google/embeddinggemma-300m", "gemma3", 308, 768, 24, 2048, "task prompts"),
)

DEFAULT_MODEL = CURATED_MODELS[0].model_id


def family_by_name(name: str) -> Family:
    for family in FAMILIES:
        if family.name == name:
            return family
    raise KeyError(f"unknown family {name!r}; known families are: {', '.join(f.name for f in FAMILIES)}")


def family_for(model_type: str) -> Family | None:
    """The row for a transformers `config.model_type`, or None for an architecture not in the table."""
    return _BY_MODEL_TYPE.get(model_type)


def lora_targets_for(model_type: str) -> list[str] | str:
    """LoRA target names for a model type; PEFT's "all-linear" for architectures not in the table."""
    family = family_for(model_type)
    return list(family.lora_targets) if family else "all-linear"


def apply_family(model, family: Family | None) -> None:
    """Apply a row to a loaded SentenceTransformer: prompts and padding side where the model has none.

    The GPU fast paths (packed attention, fused kernels) are switched on by `engine.attention.enable`,
    which reads `family.fast_paths`; this function only does what is right on every device.
    """
    if family is None:
        return
    if family.prompts and not any(model.prompts.values()):
        model.prompts = dict(family.prompts)
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None and family.padding_side != tokenizer.padding_side:
        tokenizer.padding_side = family.padding_side
