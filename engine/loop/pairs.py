"""The packed loop's batches for models that score a row (a reranker's (query, document) pair, a classifier's
text or text pair): each row ONE sequence, its texts joined by the model's own tokenization (`[CLS] a [SEP] b
[SEP]` for BERT) with its token type ids where the model takes them, tokenized once (`PairTokens`); a batch's
rows as one packed stream, with their labels (`PairPacker`).

The stream is `engine.loop.batches`' (position ids restarting per sequence, cu_seqlens, fillers up to a
`BUCKET` on CUDA), plus `token_type_ids` along it and `labels` a row.
"""

from __future__ import annotations

import contextlib
import inspect
from types import SimpleNamespace

import numpy as np
import torch

from engine.distributed import World

from .batches import Batch, BatchPacker


def takes_token_types(base_model) -> bool:
    """Whether the base model's forward reads token_type_ids (BERT's does, ModernBERT's does not)."""
    return "token_type_ids" in inspect.signature(base_model.forward).parameters


def first_position(hf_model) -> int:
    """The first position id of a sequence: padding_idx + 1 for RoBERTa-like embeddings (a learned position table
    beside a padding index), 0 for the rest; sentence-transformers' own rule for flattened batches
    (Transformer._infer_flatten_position_offset), for a model that is not inside one."""
    for module in hf_model.modules():
        padding_idx = getattr(module, "padding_idx", None)
        if isinstance(padding_idx, int) and isinstance(getattr(module, "position_embeddings", None), torch.nn.Embedding):
            return padding_idx + 1
    return 0


class PairTokens:
    """Row i's texts tokenized as one sequence, through `encode` (texts, text pairs or None) -> a padded batch
    (input_ids, attention_mask, maybe token_type_ids): the tokenization the stock path uses, so both see the same
    tokens. Types are kept where `token_types` (the model reads them) and the tokenizer gives them (XLM-R's
    gives none). The same fields as engine.loop.batches.TokenStore (tokens, lengths, starts; a row's id is
    its index), plus `types`."""

    def __init__(self, encode, texts: list[str], pairs: list[str] | None, token_types: bool, chunk: int = 4096):
        ids, types, lengths = [], [], []
        kept_types = token_types
        for start in range(0, len(texts), chunk):
            out = encode(texts[start : start + chunk], pairs[start : start + chunk] if pairs is not None else None)
            mask = out["attention_mask"].bool()  # padded rows: the real tokens, whichever side the padding is on
            ids.append(out["input_ids"][mask].numpy().astype(np.int64))
            kept_types = kept_types and "token_type_ids" in out
            if kept_types:
                types.append(out["token_type_ids"][mask].numpy().astype(np.int64))
            lengths += mask.sum(1).tolist()
        self.tokens = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        self.types = (np.concatenate(types) if types else np.zeros(0, np.int64)) if kept_types else None
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self.texts = texts

    # TokenStore's producer interface, for a store whose rows are all tokenized up front: nothing is ever pending.
    def ensure(self, ids) -> None:
        pass

    def tokenize_ahead(self, order, stop) -> None:
        pass

    def finish(self) -> None:
        pass

    @contextlib.contextmanager
    def tokenizer_free(self):
        yield


class PairPacker(BatchPacker):
    """Rows (`PairTokens` ids) as packed `Batch`es: input_ids, position_ids, seq_idx, cu_seqlens, lengths as
    BatchPacker makes them, token_type_ids where the tokens have types, and labels (one a row, `labels`' dtype:
    float relevance for a reranker, class ids for a classifier)."""

    def __init__(self, store: PairTokens, labels: np.ndarray, *, pad_id: int, max_seq_length: int | None,
                 batch_size: int, bucketed: bool, position_offset: int, pin: bool, world: World = World()):
        rows = np.arange(len(store.lengths), dtype=np.int64)[:, None]  # one sequence a row
        model = SimpleNamespace(max_seq_length=max_seq_length, tokenizer=SimpleNamespace(pad_token_id=pad_id))
        super().__init__(model, store, rows, batch_size=batch_size, packed=True, bucketed=bucketed,
                         position_offset=position_offset, mini_batch=None, pin=pin, world=world)
        self.labels = labels

    def pack_rows(self, rows: np.ndarray) -> Batch:
        batch = super().pack_rows(rows)
        tokens = batch.tensors["input_ids"].shape[0]
        if self.store.types is not None:  # along the stream as input_ids are; fillers get type 0
            lengths = self.store.lengths[rows]
            within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            types = np.zeros(tokens, dtype=np.int64)
            types[: len(within)] = self.store.types[np.repeat(self.store.starts[rows], lengths) + within]
            batch.tensors["token_type_ids"] = self._host(types, torch.long)
        batch.tensors["labels"] = self._host(self.labels[rows], torch.float32 if self.labels.dtype.kind == "f"
                                             else torch.long)
        return batch
