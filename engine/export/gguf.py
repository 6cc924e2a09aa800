"""GGUF files for llama.cpp and Ollama, written with the `gguf` package (its GGUFWriter, tensor-name tables and
quantizers) from a saved sentence-transformers folder.

What a sentence-transformers model does around its transformer travels in the metadata, under the keys llama.cpp
reads: the pooling (`{arch}.pooling_type`), the tokenizer (`tokenizer.ggml.*`, its lower-casing and accent
stripping included), the context length (the model's max_seq_length, so llama.cpp embeds no more tokens than
sentence-transformers does). llama.cpp has no key for prompts or for normalization: its servers L2-normalize
embeddings by default, and we write both under `lacker.*` (PROMPT_KEY, NORMALIZE_KEY), where engine.export.parity
reads them back to embed the held-out queries with their prompt.

A reranker (a sentence-transformers CrossEncoder with one score a pair) is written for llama.cpp's rank pooling: its
classification head as the `cls` (dense, then tanh; GELU and `cls.norm` for ModernBERT) and `cls.output` tensors
(RANK_HEADS), and how its tokenizer joins a query and a document as the file's rerank template
(`tokenizer.chat_template.rerank`), which llama-server and node-llama-cpp both read, where without one they join
WordPiece pairs differently (node-llama-cpp with two separators). A Qwen3 reranker is written as llama.cpp runs
Qwen3-Reranker: a two-row `cls.output` after the last token, softmaxed (_qwen3).

Architectures are written by the functions in WRITERS, keyed by the family table's `gguf_arch`; a family without
one is refused with a pointer to ONNX.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engine.export import ExportError

QUANTIZATIONS = ("f16", "q8_0")
PROMPT_KEY = "lacker.prompt.{name}"
NORMALIZE_KEY = "lacker.normalize"
POOLING_TYPES = {"mean": "MEAN", "cls": "CLS", "lasttoken": "LAST"}  # sentence-transformers -> gguf.PoolingType


def llama_cpp_arch(model, kind: str = "embedding") -> str:
    """The llama.cpp architecture `model` (a SentenceTransformer, or a CrossEncoder for `kind` "reranker") is
    written as, or ExportError saying why not: `refusal`'s rule, on the loaded model."""
    hf_model = model[0].auto_model
    token_types = getattr(hf_model.base_model.embeddings, "token_type_embeddings", None) \
        if hasattr(hf_model.base_model, "embeddings") else None
    return _arch(hf_model.config, kind, lambda: None if token_types is None else token_types.weight.detach(),
                 lambda: model.tokenizer)


def refusal(model_folder: Path, kind: str) -> ExportError | None:
    """Why llama.cpp cannot take the saved model in `model_folder` (of task `kind`), or None; read from its config,
    tokenizer and token-type weights, without loading the model: what `llama_cpp_arch` finds on the loaded one, so
    that `export` refuses before anything is loaded or written and the studio's Export tab leaves GGUF out of such
    a run's formats. (What only the writers find, such as an embedding model's unusual pooling or vocabulary, is
    refused when the file is written.)"""
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(model_folder)
    except (OSError, ValueError):  # no transformers config at the top (an older sentence-transformers layout)
        return None  # the writers' own check, on the loaded model, decides
    try:
        _arch(config, kind, lambda: _saved_token_types(Path(model_folder)),
              lambda: AutoTokenizer.from_pretrained(model_folder))
    except ExportError as error:
        return error
    return None


def _saved_token_types(folder: Path):
    """The token-type embedding table of the model saved in `folder` (its safetensors files), or None."""
    from safetensors import safe_open

    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as weights:
            for key in weights.keys():
                if key.endswith("embeddings.token_type_embeddings.weight"):
                    return weights.get_tensor(key)
    return None


def _arch(config, kind: str, token_types, tokenizer) -> str:
    """The rule of `llama_cpp_arch` and `refusal`: `config` the transformers config, `token_types` and `tokenizer`
    called only where a reranker's checks need them."""
    from engine.families import family_for

    if kind == "classifier":
        raise ExportError("GGUF export of classifier models is not written yet (llama.cpp runs embedding models and "
                          "rerankers from the GGUF files this exports)", "export the classifier to ONNX instead")
    family = family_for(config.model_type)
    if family is None:
        raise ExportError(f"GGUF export does not know the {config.model_type!r} architecture",
                          "export to ONNX instead, which runs any architecture")
    if family.gguf_arch is None:
        raise ExportError(f"llama.cpp does not run {family.name} models, so there is no GGUF for this one",
                          "export to ONNX instead: it runs in onnxruntime and in "
                          "SentenceTransformer(path, backend='onnx')")
    if family.gguf_arch not in WRITERS:
        raise ExportError(f"GGUF export of {family.name} models is not written yet",
                          "export to ONNX instead")
    if kind == "reranker":
        _refuse_reranker(config, family, token_types, tokenizer)
    return family.gguf_arch


def _refuse_reranker(config, family, token_types, tokenizer) -> None:
    """ExportError where llama.cpp's rank pooling cannot score pairs as this reranker does."""
    if family.gguf_arch not in ("bert", "modern-bert", "qwen3") or family.sequence_head not in RANK_HEADS:
        raise ExportError(f"GGUF export of {family.name} rerankers is not written yet (llama.cpp ranks with BERT, "
                          "XLM-RoBERTa, ModernBERT and Qwen3 cross-encoders)", "export the reranker to ONNX instead")
    if config.num_labels != 1:
        raise ExportError(f"the reranker gives {config.num_labels} scores a pair, and llama.cpp's ranking one",
                          "export it to ONNX instead, which keeps every score")
    if family.gguf_arch == "qwen3":
        _refuse_qwen3_reranker(tokenizer(), config)
        return
    if family.gguf_arch == "modern-bert" and (config.classifier_pooling != "mean" or config.classifier_bias
                                              or config.norm_bias or config.classifier_activation != "gelu"):
        # llama.cpp's modern-bert ranking: the mean of the tokens, a dense layer without bias, GELU, a norm without
        # bias (gte-reranker-modernbert's head)
        raise ExportError("the reranker's head pools, adds biases or activates otherwise than llama.cpp's ModernBERT "
                          "ranking (mean pooling, no biases, GELU)", "export the reranker to ONNX instead")
    types = token_types()
    if types is not None and len(types) > 1 and float((types[1].float() - types[0].float()).abs().max()) > 0:
        # llama.cpp's bert graph adds the first token type's row to every token ("Sentence A")
        raise ExportError("the reranker reads the document as the second segment (BERT's token type 1), and "
                          "llama.cpp gives every token the first segment's type, so its scores would differ",
                          "export the reranker to ONNX instead, or train one from a model with a single token type "
                          "(XLM-RoBERTa's, as bge-reranker-v2-m3)")


def _refuse_qwen3_reranker(tokenizer, config) -> None:
    """llama.cpp ranks with a Qwen3 on the pair's last token; Qwen3ForSequenceClassification scores its last token
    that is not the padding token, so the two differ where the tokenizer ends a pair with the padding token (as
    Qwen3-Embedding's tokenizer ends a text with <|endoftext|>, its padding token too)."""
    pair = tokenizer("query", "document")["input_ids"]
    if config.pad_token_id is not None and pair and pair[-1] == config.pad_token_id:
        raise ExportError(f"the reranker scores the token before the {tokenizer.convert_ids_to_tokens(pair[-1])!r} "
                          "its tokenizer ends a pair with (its padding token), and llama.cpp's Qwen3 ranking scores "
                          "the last token", "export the reranker to ONNX instead")


def write(model, model_dir: Path, path: Path, quantize: str, kind: str = "embedding") -> dict:
    """Write `model` (loaded from `model_dir`, fp32, adapters merged; a SentenceTransformer, or a CrossEncoder for
    `kind` "reranker") to the GGUF file `path`.

    Returns what the file says about pooling, normalization, prompts or the pair template, and context length
    (shown in parity.json)."""
    import gguf

    if quantize not in QUANTIZATIONS:
        raise ExportError(f"GGUF quantization {quantize!r} is not offered",
                          f"pick one of: {', '.join(QUANTIZATIONS)}")
    arch = llama_cpp_arch(model, kind)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(Path(model_dir).name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if quantize == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    if kind == "reranker":
        template = _pair_template(Path(model_dir))
        writer.add_pooling_type(gguf.PoolingType.RANK)
        writer.add_string(gguf.Keys.Tokenizer.CHAT_TEMPLATE_N.format(name="rerank"), template)
        described = {"pooling": "rank", "pair_template": template}
    else:
        pooling = _pooling_mode(model)
        writer.add_pooling_type(getattr(gguf.PoolingType, POOLING_TYPES[pooling]))
        normalize = any(type(module).__name__ == "Normalize" for module in model)
        writer.add_bool(NORMALIZE_KEY, normalize)
        prompts = {name: text for name, text in (model.prompts or {}).items() if text}
        for name, text in prompts.items():
            writer.add_string(PROMPT_KEY.format(name=name), text)
        described = {"pooling": pooling, "normalize": normalize, "prompts": prompts}
    context = WRITERS[arch](writer, model, Path(model_dir), quantize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"architecture": arch, **described, "context_length": context}


def _pair_template(model_dir: Path) -> str:
    """How the model's tokenizer joins a (query, document) pair (tokenizer.json's post-processor), as llama.cpp's
    rerank template: the special tokens' texts around {query} and {document}."""
    post = json.loads((model_dir / "tokenizer.json").read_text()).get("post_processor") or {}
    if post.get("type") == "TemplateProcessing":
        pieces = [piece["SpecialToken"]["id"] if "SpecialToken" in piece else
                  {"A": "{query}", "B": "{document}"}[piece["Sequence"]["id"]] for piece in post["pair"]]
        return "".join(pieces)
    if post.get("type") == "ByteLevel":  # Qwen's: a pair is its two texts' tokens, nothing between or around
        return "{query}{document}"
    if post.get("type") in ("BertProcessing", "RobertaProcessing"):
        (cls, _), (sep, _) = post["cls"], post["sep"]
        middle = sep if post["type"] == "BertProcessing" else sep + sep
        return f"{cls}{{query}}{middle}{{document}}{sep}"
    raise ExportError(f"the tokenizer joins a query and a document with a {post.get('type')} step, which the GGUF "
                      "export cannot write as llama.cpp's rerank template", "export the reranker to ONNX instead")


def read_metadata(path: Path) -> dict:
    """The metadata of a GGUF file as {key: value} (tensor data is not read)."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError, IndexError) as error:  # a short or overwritten file breaks the reader anywhere
        raise ExportError(f"{Path(path).name} is damaged or incomplete: it does not read as GGUF ({error})",
                          "export it again") from error
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def _pooling_mode(model) -> str:
    pooling = next((module for module in model if type(module).__name__ == "Pooling"), None)
    mode = pooling.get_config_dict().get("pooling_mode") if pooling is not None else None
    if mode not in POOLING_TYPES:
        raise ExportError(f"llama.cpp pools embeddings by mean, CLS or last token, not {mode!r}",
                          "export to ONNX instead")
    if not pooling.get_config_dict().get("include_prompt", True):
        raise ExportError("the model leaves its prompt out of the pooling, which llama.cpp cannot do",
                          "export to ONNX instead")
    return mode


def _refuse_extra_modules(model, allowed=("Transformer", "Pooling", "Normalize")) -> None:
    extra = [type(module).__name__ for module in model if type(module).__name__ not in allowed]
    if extra:
        raise ExportError(f"the model has {', '.join(extra)} layers after pooling, which llama.cpp's "
                          f"{model[0].auto_model.config.model_type} graph has no place for",
                          "export to ONNX instead, which keeps every layer")


def _tensor_type(name: str, array: np.ndarray, quantize: str):
    """1-D tensors (norms, biases) and the two-row token-type table stay fp32, as llama.cpp's own converter
    keeps them, and so does a reranker's head (cls, cls.output): its rounding goes straight into the score, and it
    is one hidden-by-hidden matrix.
    q8_0 needs rows that are a whole number of 32-value blocks, else the tensor is f16."""
    from gguf import GGMLQuantizationType

    if array.ndim == 1 or name.startswith(("token_types", "cls")):
        return GGMLQuantizationType.F32
    if quantize == "q8_0" and array.shape[-1] % 32 == 0:
        return GGMLQuantizationType.Q8_0
    return GGMLQuantizationType.F16


def _add_tensor(writer, name: str, array: np.ndarray, quantize: str) -> None:
    from gguf import GGMLQuantizationType, quants

    kind = _tensor_type(name, array, quantize)
    if kind == GGMLQuantizationType.F32:
        writer.add_tensor(name, array.astype(np.float32))
    elif kind == GGMLQuantizationType.F16:
        writer.add_tensor(name, array.astype(np.float16))
    else:
        writer.add_tensor(name, quants.quantize(array.astype(np.float32), kind), raw_dtype=kind)


def _add_mapped_tensors(writer, arch: str, state: dict, n_blocks: int, quantize: str, skip=()) -> None:
    """Every tensor of `state` under its GGUF name from the gguf package's table for `arch`."""
    import gguf

    model_arch = next(key for key, name in gguf.MODEL_ARCH_NAMES.items() if name == arch)
    names = gguf.get_tensor_name_map(model_arch, n_blocks)
    for hf_name, tensor in state.items():
        if hf_name.startswith(skip):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(f"GGUF has no place for the weight {hf_name!r} of this {arch} model",
                              "export to ONNX instead, which keeps every weight")
        _add_tensor(writer, name, tensor, quantize)


def _wordpiece_vocab(writer, tokenizer, model_dir: Path, n_vocab: int) -> None:
    """A WordPiece vocabulary as llama.cpp's "bert" tokenizer reads it: word-initial pieces carry the
    SentencePiece space mark and continuation pieces lose their "##"."""
    import gguf

    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    special = set(tokenizer.all_special_ids)
    tokens, types = [], []
    for index in range(n_vocab):
        token = by_id.get(index, f"[PAD{index}]")
        if index in special or index not in by_id:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if index in special else gguf.TokenType.UNUSED)
        else:
            tokens.append(token[2:] if token.startswith("##") else "\u2581" + token)
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    normalizer = json.loads((model_dir / "tokenizer.json").read_text()).get("normalizer") or {}
    lowercase = bool(normalizer.get("lowercase", getattr(tokenizer, "do_lower_case", False)))
    strip_accents = normalizer.get("strip_accents")
    writer.add_bool("tokenizer.ggml.normalizer.lowercase", lowercase)
    writer.add_bool("tokenizer.ggml.normalizer.strip_accents", lowercase if strip_accents is None else strip_accents)
    gguf.SpecialVocab(model_dir, n_vocab=n_vocab).add_to_gguf(writer, quiet=True)
    writer.add_uint32("tokenizer.ggml.cls_token_id", tokenizer.cls_token_id)  # SpecialVocab has no writer for it


def _bert(writer, model, model_dir: Path, quantize: str) -> int:
    _refuse_extra_modules(model)
    hf = model[0].auto_model
    config = hf.config
    if config.hidden_act != "gelu":
        raise ExportError(f"llama.cpp's bert graph uses GELU, and this model uses {config.hidden_act!r}",
                          "export to ONNX instead")
    # llama.cpp sizes its context from the position table, so the table stops at the same length.
    context = _context_length(model, config)
    _encoder_shape(writer, config, config.layer_norm_eps)
    writer.add_token_type_count(config.type_vocab_size)
    _vocab(writer, model, model_dir, config.vocab_size)
    # the encoder without a reranker's head (a BertModel is its own base model)
    state = {name: tensor.detach().float().cpu().numpy() for name, tensor in hf.base_model.state_dict().items()}
    # XLM-RoBERTa numbers positions from padding_idx + 1; llama.cpp's bert graph numbers them from 0
    first = config.pad_token_id + 1 if config.model_type in ("xlm-roberta", "roberta") else 0
    positions = state["embeddings.position_embeddings.weight"][first:]
    context = min(context, len(positions))
    state["embeddings.position_embeddings.weight"] = positions[:context]
    writer.add_context_length(context)
    _add_mapped_tensors(writer, "bert", state, config.num_hidden_layers, quantize,
                        skip=("pooler.", "embeddings.position_ids", "embeddings.token_type_ids"))
    _add_rank_head(writer, model, quantize)
    return context


# A reranker's head as llama.cpp's rank pooling runs it, {GGUF name: layer}, by the family table's sequence_head: on
# the first token, BERT's pooler (cls, then tanh) and classifier, RoBERTa's classifier.dense and out_proj; on the mean
# of the tokens, ModernBERT's head (cls, then GELU, then its norm) and classifier
RANK_HEADS = {"pooler": lambda hf: {"cls": hf.base_model.pooler.dense, "cls.output": hf.classifier},
              "first_token": lambda hf: {"cls": hf.classifier.dense, "cls.output": hf.classifier.out_proj},
              "prediction_head": lambda hf: {"cls": hf.head.dense, "cls.norm": hf.head.norm,
                                             "cls.output": hf.classifier},
              "last_token": lambda hf: {"cls.output": hf.score}}  # Qwen3's, as two rows (_add_rank_head's no_row)


def _add_rank_head(writer, model, quantize: str, no_row: bool = False) -> None:
    """A reranker's head (RANK_HEADS); nothing for an embedding model, which is its own base model. `no_row`: each
    tensor followed by a row of zeros, for llama.cpp's Qwen3 ranking, which softmaxes two rows (yes, no): with a
    zero second logit that softmax is the sigmoid of the head's, CrossEncoder's score."""
    from engine.models.sentence_transformer import family_of

    hf = model[0].auto_model
    if hf is hf.base_model:
        return
    for name, layer in RANK_HEADS[family_of(model).sequence_head](hf).items():
        for part in ("weight", "bias"):
            if getattr(layer, part, None) is not None:
                array = getattr(layer, part).detach().float().cpu().numpy()
                if no_row:
                    array = np.concatenate([array, np.zeros_like(array)])
                _add_tensor(writer, f"{name}.{part}", array, quantize)


# The split before byte-level BPE that Qwen2 and Qwen3 tokenizers make (their tokenizer.json's Split regex), which
# llama.cpp knows as the "qwen2" pre-tokenizer
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")


def _vocab(writer, model, model_dir: Path, n_vocab: int, adds_tokens: bool = True) -> None:
    """The model's vocabulary as llama.cpp reads it: WordPiece as its "bert" tokenizer, byte-level BPE as "gpt2",
    SentencePiece Unigram (XLM-RoBERTa's) as "t5", SentencePiece BPE (Gemma's) as "llama"; others are refused.
    `adds_tokens` False: a byte-level BPE file says llama.cpp adds no beginning or end token (a Qwen3 reranker's
    rerank template spells out every token of a pair)."""
    spec = json.loads((model_dir / "tokenizer.json").read_text())
    kind = spec["model"]["type"]
    if kind == "WordPiece":
        return _wordpiece_vocab(writer, model.tokenizer, model_dir, n_vocab)
    if kind == "BPE" and _bpe_pre_tokenizer(spec.get("pre_tokenizer")):
        return _bpe_vocab(writer, model.tokenizer, model_dir, n_vocab, spec, adds_tokens)
    if kind == "Unigram":
        return _unigram_vocab(writer, model.tokenizer, model_dir, n_vocab, spec)
    if kind == "BPE" and _is_sentencepiece_bpe(spec):
        return _sentencepiece_bpe_vocab(writer, model_dir, n_vocab, spec)
    raise ExportError(f"GGUF export of this {kind} vocabulary ({type(model.tokenizer).__name__}: a BPE split otherwise "
                      "than GPT-2's, Qwen's or SentencePiece's) is not written yet", "export to ONNX instead")


def _bpe_pre_tokenizer(pre: dict | None) -> str | None:
    """llama.cpp's name for how the vocabulary splits text before BPE, or None where it is not one we know."""
    pre = pre or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    steps = pre.get("pretokenizers") or []
    if (pre.get("type") == "Sequence" and len(steps) == 2 and steps[0].get("type") == "Split"
            and steps[0].get("pattern", {}).get("Regex") == QWEN2_SPLIT and steps[1].get("type") == "ByteLevel"
            and not steps[1].get("use_regex", True)):
        return "qwen2"
    return None


def _bpe_vocab(writer, tokenizer, model_dir: Path, n_vocab: int, spec: dict, adds_tokens: bool = True) -> None:
    """A byte-level BPE vocabulary as llama.cpp's "gpt2" tokenizer reads it: tokens, merges, which tokens are special,
    and the special tokens the tokenizer adds (tokenizer.json's post-processor, read by the gguf package)."""
    import gguf

    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = {token["id"]: token for token in spec.get("added_tokens", [])}
    tokens, types = [], []
    for index in range(n_vocab):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[index])
        if index in added:
            types.append(gguf.TokenType.CONTROL if added[index].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_bpe_pre_tokenizer(spec.get("pre_tokenizer")))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=n_vocab)
    if not adds_tokens:
        special.add_special_token = {"bos": False, "eos": False}
    special.add_to_gguf(writer, quiet=True)


# A SentencePiece BPE vocabulary's normalizer in tokenizer.json (Gemma's): spaces become the space mark, nothing else
SENTENCEPIECE_SPACES = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}


def _is_sentencepiece_bpe(spec: dict) -> bool:
    """Whether tokenizer.json is SentencePiece's BPE as transformers writes Gemma's: spaces marked, the text merged
    whole (its split on spaces finds none once they are marked), bytes for characters the vocabulary lacks."""
    pre = spec.get("pre_tokenizer")
    return (spec.get("normalizer") == SENTENCEPIECE_SPACES and bool(spec["model"].get("byte_fallback"))
            and not spec["model"].get("ignore_merges")
            and (pre is None or (pre.get("type") == "Split" and pre.get("pattern") == {"String": " "})))


def _sentencepiece_bpe_vocab(writer, model_dir: Path, n_vocab: int, spec: dict) -> None:
    """A SentencePiece BPE vocabulary (Gemma's) as llama.cpp's "llama" (SPM) tokenizer reads it. llama.cpp merges
    the adjacent pieces whose joined piece scores highest, where tokenizer.json's BPE applies its merges in order:
    a piece's score is minus the rank of the first merge that makes it, so both merge alike. Pieces no merge makes
    (characters, bytes, special tokens) score below every merge; bytes are marked as such for llama.cpp's byte
    fallback. The text is not prefixed with a space, and spaces are kept as they are, as the normalizer does."""
    bpe = spec["model"]
    made_by = {}
    for rank, merge in enumerate(bpe["merges"]):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        made_by.setdefault(left + right, rank)
    unmade = -float(len(bpe["merges"]) + 1)
    pieces = {index: (piece, -float(made_by[piece]) if piece in made_by else unmade)
              for piece, index in bpe["vocab"].items()}
    _write_sentencepiece(writer, "llama", model_dir, n_vocab, spec, pieces, bpe["vocab"].get(bpe.get("unk_token")),
                         unmade, space_prefix=False, merge_spaces=False)


def _unigram_vocab(writer, tokenizer, model_dir: Path, n_vocab: int, spec: dict) -> None:
    """A SentencePiece Unigram vocabulary (XLM-RoBERTa's) as llama.cpp's "t5" (UGM) tokenizer reads it: the pieces
    with their scores, which pieces are special or unknown, and the normalization tokenizer.json spells out, which
    llama.cpp has as SentencePiece's own settings: the precompiled_charsmap (NFKC and the like), the space mark before
    the first word, and whether runs of spaces become one."""
    import base64

    unigram = spec["model"]
    if unigram.get("byte_fallback"):
        raise ExportError("the vocabulary falls back to bytes for unknown characters, which llama.cpp's Unigram "
                          "tokenizer does not", "export to ONNX instead")
    charsmap, merge_spaces = _unigram_normalizer(spec.get("normalizer"))
    space_prefix, split_on_whitespace = _unigram_pre_tokenizer(spec.get("pre_tokenizer"))
    pieces = {index: (piece, float(score)) for index, (piece, score) in enumerate(unigram["vocab"])}
    _write_sentencepiece(writer, "t5", model_dir, n_vocab, spec, pieces, unigram.get("unk_id"), -10000.0,
                         space_prefix, merge_spaces or split_on_whitespace)
    if charsmap:
        writer.add_precompiled_charsmap(base64.b64decode(charsmap))
    writer.add_uint32("tokenizer.ggml.cls_token_id", tokenizer.cls_token_id)  # SpecialVocab has no writer for it


def _write_sentencepiece(writer, tokenizer_model: str, model_dir: Path, n_vocab: int, spec: dict, pieces: dict,
                         unknown: int | None, unused_score: float, space_prefix: bool, merge_spaces: bool) -> None:
    """A SentencePiece vocabulary's tokens for llama.cpp's `tokenizer_model` ("t5", "llama"): `pieces` {id: (piece,
    score)}, the tokenizer's added tokens (special ones as CONTROL), bytes (<0x41>) as BYTE, the rows of the embedding
    table no token uses as UNUSED (scored `unused_score`, below any piece), and the special token ids."""
    import re

    import gguf

    added = {token["id"]: token for token in spec.get("added_tokens", [])}
    pieces = {**pieces, **{index: (token["content"], pieces.get(index, ("", 0.0))[1]) for index, token in added.items()}}
    if max(pieces) >= n_vocab:
        raise ExportError(f"the tokenizer has {max(pieces) + 1} tokens and the model's embedding table {n_vocab}",
                          "resize the model's token embeddings to the tokenizer, or export to ONNX instead")
    tokens, scores, types = [], [], []
    for index in range(n_vocab):
        piece, score = pieces.get(index, (f"[PAD{index}]", unused_score))
        tokens.append(piece)
        scores.append(score)
        if index not in pieces:
            types.append(gguf.TokenType.UNUSED)
        elif index == unknown:
            types.append(gguf.TokenType.UNKNOWN)
        elif index in added:
            types.append(gguf.TokenType.CONTROL if added[index].get("special") else gguf.TokenType.USER_DEFINED)
        elif re.fullmatch(r"<0x[0-9A-F]{2}>", piece) and spec["model"].get("byte_fallback"):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model(tokenizer_model)
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_add_space_prefix(space_prefix)
    writer.add_remove_extra_whitespaces(merge_spaces)
    gguf.SpecialVocab(model_dir, n_vocab=n_vocab).add_to_gguf(writer, quiet=True)


def _unigram_normalizer(normalizer: dict | None) -> tuple[str | None, bool]:
    """(the precompiled_charsmap, base64, or None; whether runs of spaces become one) of a Unigram tokenizer's
    normalizer, or ExportError for a step llama.cpp does not take."""
    normalizer = normalizer or {}
    steps = normalizer["normalizers"] if normalizer.get("type") == "Sequence" else [normalizer] if normalizer else []
    charsmap, merge_spaces = None, False
    for step in steps:
        if step["type"] == "Precompiled":
            charsmap = step.get("precompiled_charsmap") or None
        elif step["type"] == "Replace" and step.get("pattern", {}).get("Regex") == " {2,}" and step["content"] == " ":
            merge_spaces = True
        else:
            raise ExportError(f"the tokenizer normalizes text with a {step['type']} step, which llama.cpp's Unigram "
                              "tokenizer does not take (it applies SentencePiece's precompiled character map and "
                              "merges spaces, nothing else)", "export to ONNX instead")
    return charsmap, merge_spaces


def _unigram_pre_tokenizer(pre: dict | None) -> tuple[bool, bool]:
    """(whether a space mark goes before the first word; whether text is split on any whitespace first, which
    merges runs of it) of a Unigram tokenizer's pre-tokenizer: SentencePiece's Metaspace, after a WhitespaceSplit in
    the tokenizers transformers 5 builds."""
    steps = (pre or {}).get("pretokenizers", []) if (pre or {}).get("type") == "Sequence" else [pre or {}]
    names = [step.get("type") for step in steps]
    if names not in (["Metaspace"], ["WhitespaceSplit", "Metaspace"]) or steps[-1].get("replacement") != "\u2581":
        raise ExportError(f"the tokenizer splits text with {' then '.join(map(str, names))}, where llama.cpp's "
                          "Unigram tokenizer marks spaces as SentencePiece does (Metaspace)", "export to ONNX instead")
    metaspace = steps[-1]
    scheme = metaspace.get("prepend_scheme", "always" if metaspace.get("add_prefix_space", True) else "never")
    return scheme != "never", names[0] == "WhitespaceSplit"


def _context_length(model, config) -> int:
    """llama.cpp embeds no more tokens than sentence-transformers does: the model's max_seq_length."""
    return min(model.max_seq_length or config.max_position_embeddings, config.max_position_embeddings)


def _qwen3(writer, model, model_dir: Path, quantize: str) -> int:
    """Qwen3 (Qwen3-Embedding): a causal decoder pooled by its last token, which llama.cpp's qwen3 graph runs; as a
    reranker (Qwen3ForSequenceClassification, one score from the last token) what llama.cpp ranks Qwen3-Reranker
    with: a `cls.output` of two rows ("yes", "no") after the last token, softmaxed, the score the first probability.
    The score head's row and a row of zeros make that softmax the sigmoid of the head's logit, CrossEncoder's score.
    A pair is written as the rerank template with no token added around it: node-llama-cpp adds no others then,
    and llama-server adds none to a template."""
    _refuse_extra_modules(model)
    config = model[0].auto_model.config
    if config.hidden_act != "silu":
        raise ExportError(f"llama.cpp's qwen3 graph uses SiLU, and this model uses {config.hidden_act!r}",
                          "export to ONNX instead")
    if (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default") != "default":
        raise ExportError("the model scales its rotary positions, which this GGUF export does not write yet",
                          "export to ONNX instead")
    context = _context_length(model, config)
    writer.add_context_length(context)
    _decoder_shape(writer, config)
    writer.add_rope_freq_base(_rope_theta(config))
    hf = model[0].auto_model
    reranker = hf is not hf.base_model
    _vocab(writer, model, model_dir, config.vocab_size, adds_tokens=not reranker)
    state = {name: tensor.detach().float().cpu().numpy() for name, tensor in hf.base_model.state_dict().items()}
    _add_mapped_tensors(writer, "qwen3", state, config.num_hidden_layers, quantize, skip=("rotary_emb.",))
    if reranker:
        writer.add_classifier_output_labels(["yes", "no"])
        _add_rank_head(writer, model, quantize, no_row=True)
    return context


def _encoder_shape(writer, config, eps: float) -> None:
    """The sizes llama.cpp's encoder graphs (bert, modern-bert) read: widths, layers, heads, the LayerNorm epsilon
    (`eps`: the config names it per family), bidirectional attention."""
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_layer_norm_eps(eps)
    writer.add_causal_attention(False)


def _decoder_shape(writer, config) -> None:
    """The sizes llama.cpp's decoder graphs (qwen3, gemma-embedding) read: widths, layers, grouped heads and
    their dimension, the RMSNorm epsilon."""
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)


def _rope_theta(config) -> float:
    """transformers 5 keeps the rotary base in rope_parameters; older configs in rope_theta."""
    parameters = getattr(config, "rope_parameters", None) or {}
    return float(parameters.get("rope_theta") or getattr(config, "rope_theta", 10000.0))


def _modernbert(writer, model, model_dir: Path, quantize: str) -> int:
    """ModernBERT: llama.cpp's modern-bert graph, with its global layers every `global_attn_every_n_layers` (the
    first among them) and local attention over `local_attention` tokens between, each with its own rotary base."""
    from gguf import RopeScalingType

    _refuse_extra_modules(model)
    config = model[0].auto_model.config
    every = config.global_attn_every_n_layers
    pattern = ["full_attention" if layer % every == 0 else "sliding_attention"
               for layer in range(config.num_hidden_layers)]
    if list(config.layer_types) != pattern:
        raise ExportError("the model mixes its global and local attention layers otherwise than every "
                          f"{every}th layer, which llama.cpp's modern-bert graph cannot", "export to ONNX instead")
    if config.hidden_activation != "gelu":
        raise ExportError(f"llama.cpp's modern-bert graph uses GELU, and this model uses {config.hidden_activation!r}",
                          "export to ONNX instead")
    context = _context_length(model, config)
    writer.add_context_length(context)
    _encoder_shape(writer, config, config.norm_eps)
    writer.add_sliding_window(config.local_attention)
    writer.add_sliding_window_pattern(every)
    writer.add_rope_freq_base(float(config.rope_parameters["full_attention"]["rope_theta"]))
    writer.add_rope_freq_base_swa(float(config.rope_parameters["sliding_attention"]["rope_theta"]))
    writer.add_rope_scaling_type(RopeScalingType.NONE)
    _vocab(writer, model, model_dir, config.vocab_size)
    hf = model[0].auto_model
    state = {name: tensor.detach().float().cpu().numpy() for name, tensor in hf.base_model.state_dict().items()}
    _add_mapped_tensors(writer, "modern-bert", state, config.num_hidden_layers, quantize)
    _add_rank_head(writer, model, quantize)
    return context


GEMMA_GLOBAL_EVERY = 6  # llama.cpp's gemma graphs make every sixth layer global, whatever the file says


def _gemma_embedding(writer, model, model_dir: Path, quantize: str) -> int:
    """Gemma3 as EmbeddingGemma: llama.cpp's gemma-embedding graph (bidirectional, local attention between its
    global layers), mean pooling and the two Dense layers after it, written as dense_2 / dense_3."""
    _refuse_extra_modules(model, allowed=("Transformer", "Pooling", "Dense", "Normalize"))
    config = model[0].auto_model.config
    dense = [module for module in model if type(module).__name__ == "Dense"]
    refusal = _gemma_refusal(config, dense)
    if refusal:
        raise ExportError(f"llama.cpp's gemma-embedding graph cannot run this model: {refusal}",
                          "export to ONNX instead, which keeps every layer")
    context = _context_length(model, config)
    writer.add_context_length(context)
    _decoder_shape(writer, config)
    writer.add_rope_freq_base(float(config.rope_parameters["full_attention"]["rope_theta"]))
    writer.add_rope_freq_base_swa(float(config.rope_parameters["sliding_attention"]["rope_theta"]))
    # transformers halves a bidirectional model's window when it loads it (config.sliding_window becomes
    # window // 2 + 1, the distance either way); llama.cpp takes the window as the checkpoint states it
    writer.add_sliding_window(json.loads((model_dir / "config.json").read_text())["sliding_window"])
    writer.add_causal_attention(False)
    for name, layer in zip(("dense_2", "dense_3"), dense):
        writer.add_dense_features_dims(name, layer.linear.in_features, layer.linear.out_features)
    _vocab(writer, model, model_dir, config.vocab_size)
    # Gemma's RMSNorm scales by (1 + weight); llama.cpp's by the weight it reads
    state = {name: tensor.detach().float().cpu().numpy() + (1.0 if name.endswith("norm.weight") else 0.0)
             for name, tensor in model[0].auto_model.state_dict().items()}
    _add_mapped_tensors(writer, "gemma-embedding", state, config.num_hidden_layers, quantize)
    for name, layer in zip(("dense_2", "dense_3"), dense):
        _add_tensor(writer, f"{name}.weight", layer.linear.weight.detach().float().cpu().numpy(), quantize)
    return context


def _gemma_refusal(config, dense) -> str | None:
    """What of this Gemma3 model and its Dense layers the gemma-embedding graph has no place for, or None."""
    pattern = ["full_attention" if (layer + 1) % GEMMA_GLOBAL_EVERY == 0 else "sliding_attention"
               for layer in range(config.num_hidden_layers)]
    if not getattr(config, "use_bidirectional_attention", False):
        return "it attends causally, and EmbeddingGemma's graph attends both ways"
    if list(config.layer_types) != pattern:
        return f"its global attention layers are not every {GEMMA_GLOBAL_EVERY}th"
    if config.num_hidden_layers < GEMMA_GLOBAL_EVERY:  # llama.cpp fails to allocate a graph with no global layer
        return f"it has {config.num_hidden_layers} layers, so none of them global"
    if config.query_pre_attn_scalar != config.head_dim:
        return f"it scales queries by {config.query_pre_attn_scalar} ** -0.5 instead of head_dim ** -0.5"
    if (config.hidden_activation != "gelu_pytorch_tanh" or config.attn_logit_softcapping
            or config.final_logit_softcapping):
        return "its activation or logit soft-capping differs from Gemma3's"
    if dense and (len(dense) != 2 or dense[0].linear.in_features != config.hidden_size
                  or dense[1].linear.out_features != config.hidden_size):
        return "its Dense layers are not two that lead back to the hidden size, as EmbeddingGemma's"
    for layer in dense:
        if layer.linear.bias is not None or type(layer.activation_function).__name__ != "Identity":
            return "its Dense layers have a bias or an activation, which llama.cpp does not apply"
    return None


# llama.cpp architecture (the family table's gguf_arch) -> writer(writer, model, model_dir, quantize) -> context length
WRITERS = {"bert": _bert, "qwen3": _qwen3, "modern-bert": _modernbert, "gemma-embedding": _gemma_embedding}
