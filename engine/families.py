"""The family table: one row per architecture, and the one function that applies a row to a model.

A row says everything the engine needs to know about an architecture: which packed attention path
it takes, which linear layers LoRA targets, how a model without `modules.json` pools, which prompts
it expects, which padding side, and where the fast path patches the model. The patch sites name
transformers classes by their full module path (checked against transformers 5.17), so adding an
architecture is adding a row: engine.kernels and engine.attention hold only the kernels and the
generic patch functions that read these fields.

This module imports neither torch nor transformers, so the studio can read the table cheaply.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RmsNormSite:
    """An RMSNorm class whose forward the Triton RMSNorm (engine.kernels.patch_norm) replaces: it computes
    normed * (offset + weight) with its epsilon in attribute `eps`."""

    cls: str  # "module.path.ClassName"
    eps: str
    offset: float
    output_in_weight_dtype: bool  # weight * normed.to(x.dtype): the product promotes to weight's dtype


@dataclass(frozen=True)
class RopeSite:
    """An attention class whose forward calls its modeling module's apply_rotary_pos_emb, which the Triton
    RoPE (engine.kernels.rope) takes over."""

    cls: str
    upcasts: bool  # True: q.float() * cos ..., both outputs cast to q's dtype; False: in the inputs' promoted
    # dtype, which the outputs keep (bf16 q and fp32 cos under autocast give fp32 outputs)


@dataclass(frozen=True)
class MlpSite:
    """An MLP (or intermediate) class whose activation the Triton activations (engine.kernels.activations) run.

    layout: "dense" act(dense(x)); "gate_up_down" down_proj(act(gate_proj(x)) * up_proj(x));
    "fused_gate_up" Wo(drop(act(input) * gate)) with input, gate the halves of Wi(x)."""

    cls: str
    layout: str
    activation_config: str  # the config attribute naming the activation
    activation_module: str  # the module's attribute holding the activation module it calls


@dataclass(frozen=True)
class PackedAttentionSite:
    """An attention class whose forward the packed path replaces on packed calls (engine.attention.packed_forward):
    q, k and v stay (tokens, heads, head_dim) views of their projections from the projection to varlen attention,
    with no transposes in or out.

    qkv: the q, k and v projections' attributes, or one attribute for a fused projection whose output holds q, k
    and v in that order, each (heads, head_dim) (ModernBERT's Wqkv); norms: q's and k's per-head RMSNorms over
    head_dim (Qwen3's q_norm, k_norm), run before RoPE; rotary: q and k rotated by the forward's
    `position_embeddings` with the modeling module's apply_rotary_pos_emb; out: the output projection the
    forward applies, then `out_dropout` (None where a later module projects, as BERT's SelfOutput does)."""

    cls: str
    qkv: tuple[str, ...]
    head_dim: str  # the attribute holding head_dim
    scaling: str | None = "scaling"  # the attribute holding the softmax scale; None: head_dim ** -0.5
    norms: tuple[str, str] | None = None
    rotary: bool = False
    out: str | None = None
    out_dropout: str | None = None


@dataclass(frozen=True)
class RelativeBiasSite:
    """Classes that take MPNet-style relative position bias packed (engine.attention.relative)."""

    model: str  # its forward gets packed inputs and builds the bias once for every layer
    self_attention: str  # its forward applies the bias through FlexAttention
    encoder: str  # holds relative_attention_bias and compute_position_bias (looked up on the device)


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # transformers `config.model_type` values this row covers
    lora_targets: tuple[str, ...]  # attention and MLP projection names (PEFT suffix match)
    pooling: str  # sentence-transformers pooling mode used when a model has no modules.json
    prompts: dict[str, str] = field(default_factory=dict)  # used when a model has no prompts of its own
    padding_side: str = "right"
    fast_paths: tuple[str, ...] = ()  # "varlen": packed through varlen attention; "flex": through relative_bias
    # The fast path's patch sites (engine.kernels.patch_layers, engine.attention.enable read them)
    rms_norms: tuple[RmsNormSite, ...] = ()
    rope: tuple[RopeSite, ...] = ()
    mlps: tuple[MlpSite, ...] = ()
    relative_bias: RelativeBiasSite | None = None
    packed_attention: tuple[PackedAttentionSite, ...] = ()
    # Keyword arguments every training forward takes: decoders build a KV cache by default, which nothing
    # reads, and a sliding cache copies from the host, which no CUDA graph can hold
    forward_kwargs: dict = field(default_factory=dict)
    # The architecture name llama.cpp gives this family in GGUF files (`general.architecture`); None where
    # llama.cpp has no graph for it, so engine.export refuses GGUF and points to ONNX
    gguf_arch: str | None = None
    # How its ForSequenceClassification head reads a sequence (engine.loop.heads, the packed loop of rerankers and
    # classifiers): "pooler" (BERT: the pooler on the first token, dropout, classifier), "first_token" (a
    # classification head that reads the first token itself: RoBERTa's, MPNet's), "pre_classifier" (DistilBERT),
    # "prediction_head" (ModernBERT: cls or mean pooling as its config says, head, drop, classifier), "last_token"
    # (decoders: the score layer on the last token); None where the packed loop scores no pairs
    sequence_head: str | None = None


def _models(name: str) -> str:
    return f"transformers.models.{name}.modeling_{name}"


_NO_CACHE = {"use_cache": False}
_BERT_QKV = ("query", "key", "value")
_DECODER_QKV = ("q_proj", "k_proj", "v_proj")


FAMILIES: tuple[Family, ...] = (
    Family(
        name="bert",
        model_types=("bert",),
        lora_targets=("query", "key", "value", "dense"),
        pooling="mean",
        fast_paths=("varlen",),
        mlps=(MlpSite(f"{_models('bert')}.BertIntermediate", "dense", "hidden_act", "intermediate_act_fn"),),
        packed_attention=(PackedAttentionSite(f"{_models('bert')}.BertSelfAttention", _BERT_QKV,
                                              "attention_head_size"),),
        forward_kwargs=_NO_CACHE,
        sequence_head="pooler",
        gguf_arch="bert",
    ),
    Family(
        name="xlm-roberta",
        model_types=("xlm-roberta", "roberta"),
        lora_targets=("query", "key", "value", "dense"),
        pooling="cls",
        fast_paths=("varlen",),
        mlps=(MlpSite(f"{_models('xlm_roberta')}.XLMRobertaIntermediate", "dense", "hidden_act",
                      "intermediate_act_fn"),),
        packed_attention=(PackedAttentionSite(f"{_models('xlm_roberta')}.XLMRobertaSelfAttention", _BERT_QKV,
                                              "attention_head_size"),),
        forward_kwargs=_NO_CACHE,
        sequence_head="first_token",
        gguf_arch="bert",  # llama.cpp runs XLM-RoBERTa as bert with a SentencePiece (t5) vocabulary
    ),
    Family(
        name="mpnet",
        model_types=("mpnet",),
        lora_targets=("q", "k", "v", "o", "dense"),
        pooling="mean",
        fast_paths=("flex",),
        mlps=(MlpSite(f"{_models('mpnet')}.MPNetIntermediate", "dense", "hidden_act", "intermediate_act_fn"),),
        sequence_head="first_token",
        relative_bias=RelativeBiasSite(model=f"{_models('mpnet')}.MPNetModel",
                                       self_attention=f"{_models('mpnet')}.MPNetSelfAttention",
                                       encoder=f"{_models('mpnet')}.MPNetEncoder"),
    ),
    Family(
        name="distilbert",
        model_types=("distilbert",),
        lora_targets=("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"),
        pooling="mean",
        fast_paths=("varlen",),
        packed_attention=(PackedAttentionSite(f"{_models('distilbert')}.DistilBertSelfAttention",
                                              ("q_lin", "k_lin", "v_lin"), "attention_head_size", out="out_lin"),),
        sequence_head="pre_classifier",
    ),
    Family(
        name="modernbert",
        model_types=("modernbert",),
        lora_targets=("Wqkv", "Wo", "Wi"),
        pooling="mean",
        fast_paths=("varlen",),
        rope=(RopeSite(f"{_models('modernbert')}.ModernBertAttention", upcasts=True),),
        mlps=(MlpSite(f"{_models('modernbert')}.ModernBertMLP", "fused_gate_up", "hidden_activation", "act"),),
        packed_attention=(PackedAttentionSite(f"{_models('modernbert')}.ModernBertAttention", ("Wqkv",), "head_dim",
                                              scaling=None, rotary=True, out="Wo", out_dropout="out_drop"),),
        sequence_head="prediction_head",
        gguf_arch="modern-bert",
    ),
    Family(
        name="qwen3",
        model_types=("qwen3",),
        lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        pooling="lasttoken",
        prompts={"query": "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"},
        padding_side="left",
        fast_paths=("varlen",),
        rms_norms=(RmsNormSite(f"{_models('qwen3')}.Qwen3RMSNorm", eps="variance_epsilon", offset=0.0,
                               output_in_weight_dtype=True),),
        rope=(RopeSite(f"{_models('qwen3')}.Qwen3Attention", upcasts=False),),
        mlps=(MlpSite(f"{_models('qwen3')}.Qwen3MLP", "gate_up_down", "hidden_act", "act_fn"),),
        packed_attention=(PackedAttentionSite(f"{_models('qwen3')}.Qwen3Attention", _DECODER_QKV, "head_dim",
                                              norms=("q_norm", "k_norm"), rotary=True, out="o_proj"),),
        forward_kwargs=_NO_CACHE,
        sequence_head="last_token",
        gguf_arch="qwen3",
    ),
    Family(
        name="gemma3",
        model_types=("gemma3_text", "gemma3"),
        lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        pooling="mean",
        prompts={"query": "task: search result | query: ", "document": "title: none | text: "},
        fast_paths=("varlen",),
        rms_norms=(RmsNormSite(f"{_models('gemma3')}.Gemma3RMSNorm", eps="eps", offset=1.0,
                               output_in_weight_dtype=False),),
        rope=(RopeSite(f"{_models('gemma3')}.Gemma3Attention", upcasts=False),),
        mlps=(MlpSite(f"{_models('gemma3')}.Gemma3MLP", "gate_up_down", "hidden_activation", "act_fn"),),
        packed_attention=(PackedAttentionSite(f"{_models('gemma3')}.Gemma3Attention", _DECODER_QKV, "head_dim",
                                              norms=("q_norm", "k_norm"), rotary=True, out="o_proj"),),
        forward_kwargs=_NO_CACHE,
        gguf_arch="gemma-embedding",
    ),
)

_BY_MODEL_TYPE = {model_type: family for family in FAMILIES for model_type in family.model_types}


EMBEDDING, RERANKER, CLASSIFIER = "embedding", "reranker", "classifier"  # engine.tasks' names


@dataclass(frozen=True)
class CuratedModel:
    """A model the studio offers by name. `params_m` is millions of parameters; `dim` the hidden (embedding) size;
    `tasks` the tasks (engine.tasks' names) it is offered for; `task_notes` what is particular to one of them."""

    model_id: str
    family: str
    params_m: float
    dim: int
    layers: int
    max_seq_length: int
    note: str = ""
    tasks: tuple[str, ...] = (EMBEDDING,)
    task_notes: dict = field(default_factory=dict)


STARTER_RERANKER = "lacker-studio/minilm-l6-starter-reranker"  # in assets/starter-reranker (engine.resolve)
_NEW_HEAD = "a bi-encoder checkpoint: the cross-encoder gets a new score head, trained from scratch"
CURATED_MODELS: tuple[CuratedModel, ...] = (
    CuratedModel("sentence-transformers/all-MiniLM-L6-v2", "bert", 22.7, 384, 6, 256, "bundled; works offline",
                 tasks=(EMBEDDING, RERANKER, CLASSIFIER),
                 task_notes={RERANKER: _NEW_HEAD, CLASSIFIER: "a new classification head over its encoder"}),
    CuratedModel("BAAI/bge-large-en-v1.5", "bert", 335, 1024, 24, 512),
    CuratedModel("intfloat/e5-large-v2", "bert", 335, 1024, 24, 512),
    CuratedModel("mixedbread-ai/mxbai-embed-large-v1", "bert", 335, 1024, 24, 512),
    CuratedModel("BAAI/bge-m3", "xlm-roberta", 568, 1024, 24, 8192, "multilingual"),
    CuratedModel("intfloat/multilingual-e5-large-instruct", "xlm-roberta", 560, 1024, 24, 512, "multilingual"),
    CuratedModel("Snowflake/snowflake-arctic-embed-l-v2.0", "xlm-roberta", 568, 1024, 24, 8192, "multilingual"),
    CuratedModel("sentence-transformers/all-mpnet-base-v2", "mpnet", 109, 768, 12, 384),
    CuratedModel("sentence-transformers/multi-qa-distilbert-cos-v1", "distilbert", 66, 768, 6, 512),
    CuratedModel("answerdotai/ModernBERT-base", "modernbert", 149, 768, 22, 8192, tasks=(EMBEDDING, CLASSIFIER)),
    CuratedModel("answerdotai/ModernBERT-large", "modernbert", 395, 1024, 28, 8192, tasks=(EMBEDDING, CLASSIFIER)),
    CuratedModel("Alibaba-NLP/gte-modernbert-base", "modernbert", 149, 768, 22, 8192),
    CuratedModel("Qwen/Qwen3-Embedding-0.6B", "qwen3", 596, 1024, 28, 32768, "instruction prompts"),
    CuratedModel("google/embeddinggemma-300m", "gemma3", 308, 768, 24, 2048, "task prompts"),
    CuratedModel(STARTER_RERANKER, "bert", 22.7, 384, 6, 256, "ships with Lacker Studio; works offline",
                 tasks=(RERANKER,),
                 task_notes={RERANKER: "all-MiniLM-L6-v2 with a LoRA adapter and score head trained on the Debian "
                                       "pairs (assets/starter-reranker): a reranker that already ranks"}),
    CuratedModel("BAAI/bge-reranker-v2-m3", "xlm-roberta", 568, 1024, 24, 8192,
                 "multilingual; keeps its trained score head", tasks=(RERANKER,)),
    CuratedModel("cross-encoder/ms-marco-MiniLM-L6-v2", "bert", 22.7, 384, 6, 512,
                 "trained on MS MARCO; keeps its score head", tasks=(RERANKER,)),
)


def curated_for(task: str) -> tuple[CuratedModel, ...]:
    """The curated models offered for `task`, the bundled model first."""
    return tuple(m for m in CURATED_MODELS if task in m.tasks)


DEFAULT_MODEL = CURATED_MODELS[0].model_id


def family_by_name(name: str) -> Family:
    for family in FAMILIES:
        if family.name == name:
            return family
    raise KeyError(f"unknown family {name!r}; known families are: {', '.join(f.name for f in FAMILIES)}")


def family_for(model_type: str) -> Family | None:
    """The row for a transformers `config.model_type`, or None for an architecture not in the table."""
    return _BY_MODEL_TYPE.get(model_type)


def family_of_model(hf_model) -> Family | None:
    """The row for a loaded Hugging Face model (PEFT wrappers included), or None."""
    return family_for(getattr(getattr(hf_model, "config", None), "model_type", None))


def lora_targets_for(model_type: str) -> list[str] | str:
    """LoRA target names for a model type; PEFT's "all-linear" for architectures not in the table."""
    family = family_for(model_type)
    return list(family.lora_targets) if family else "all-linear"


def apply_family(model, family: Family | None, prompts: bool = True) -> None:
    """Apply a row to a loaded sentence-transformers model: prompts (unless `prompts=False`, as for a
    cross-encoder, which scores pairs without a bi-encoder's instructions) and padding side where it has none.

    The fast path's model surgery (packed attention, fused kernels) is `engine.attention.enable` and, in the
    packed loop, `engine.loop.surgery.prepare_model`, which read the row's fast_paths and patch sites; this
    function only does what is right on every device.
    """
    if family is None:
        return
    if prompts and family.prompts and not any(model.prompts.values()):
        model.prompts = dict(family.prompts)
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None and family.padding_side != tokenizer.padding_side:
        tokenizer.padding_side = family.padding_side
