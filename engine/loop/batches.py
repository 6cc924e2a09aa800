"""The packed loop's batches: every text tokenized once (`TokenStore`), an epoch's batches without
duplicate texts (`no_duplicate_batches`), and rows of texts made into host tensors (`BatchPacker`):
one packed token stream, or a padded block per column for models without packed attention.

A packed stream holds a batch's anchors, then its positives, then each negative column, back to back.
On CUDA a full batch's stream is padded up to a multiple of `BUCKET` tokens with filler sequences
nothing reads, so steps repeat a few shapes that CUDA graphs can replay.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import queue
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from engine.distributed import World, share

BUCKET = 512  # packed streams are padded up to a multiple of this many tokens on CUDA


@dataclass
class Batch:
    """One batch, ready to copy to the device: host tensors (pinned on CUDA) by name."""

    tensors: dict  # packed: input_ids, position_ids, seq_idx, cu_seqlens, lengths; padded: ids_i, mask_i a column
    batch: int  # anchors
    n_real: int  # sequences pooled: anchors + positives + negatives
    max_length: int  # longest sequence of the packed stream, fillers included (unused when padded)
    full: bool  # a full batch, padded to its bucket: may run from a CUDA graph
    chunks: list | None = None  # cached loss: the batch's sequences as Batches of `mini_batch` each, no tensors here
    sizes: list | None = None  # on several ranks, every rank's anchors of this global batch (distributed.share)

    @property
    def key(self) -> tuple:
        return (self.n_real, self.max_length) + tuple(tuple(t.shape) for t in self.tensors.values())


class TokenStore:
    """Every distinct text of the run, tokenized once through the model's own preprocessing, when first needed.

    The texts are numbered at once (`index`, `ids`); their tokens come later, so that training starts after the
    first batches' texts rather than after every text. `tokenize_ahead(order)` tokenizes them in a background
    thread in `order` (the plan's, `plan_order`), a chunk at a time (the fast tokenizer spreads a chunk over the
    cores), and `ensure(ids)` makes sure the texts a batch needs are there: done ahead, or tokenized then. A text's
    tokens do not depend on the others of its chunk, so the batches are the same whatever the order and timing.
    One tokenizing at a time (`_lock`): a fast tokenizer must not be used by two threads at once.

    The tokens are the model's own preprocessing's (`transformer.preprocess`), got through its tokenizer directly
    (`_direct`: lists of ids, no padded tensors, which transformers builds in Python: ~4x faster) once the first
    texts came out the same both ways; where they did not (a model whose preprocessing does more), through
    `preprocess` itself.
    """

    FIRST_CHUNK = 256  # texts in the producer's first chunk; each next one doubles, up to `chunk`

    def __init__(self, transformer, texts: list[str], chunk: int = 4096):
        self.transformer, self.chunk = transformer, chunk
        self.index: dict[str, int] = {}
        for text in texts:
            self.index.setdefault(text, len(self.index))
        self.texts = list(self.index)
        # Text i's tokens are tokens[starts[i] : starts[i] + lengths[i]] once ready[i]; `tokens` grows by copies
        # (a reader holding the older array still finds every text that was ready when it looked).
        self.lengths = np.zeros(len(self.texts), dtype=np.int64)
        self.starts = np.zeros(len(self.texts), dtype=np.int64)
        self.ready = np.zeros(len(self.texts), dtype=bool)
        self.tokens = np.zeros(0, dtype=np.int64)
        self._end = 0
        self._lock = threading.Lock()
        self._producer: threading.Thread | None = None
        self.error: BaseException | None = None  # what stopped the producer, raised again by `ensure`
        self.direct: bool | None = None  # whether the tokenizer alone gives preprocess's tokens (seen on first use)

    def ids(self, texts) -> np.ndarray:
        return np.fromiter((self.index[t] for t in texts), dtype=np.int64)

    def ensure(self, ids) -> None:
        """Tokenize whichever of the texts `ids` are not yet (after the producer's chunk in hand, if any)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if self.ready[ids].all():
            return
        with self._lock:
            if self.error is not None:
                raise self.error
            self._tokenize(np.unique(ids[~self.ready[ids]]))

    def tokenize_ahead(self, order: np.ndarray, stop: threading.Event) -> None:
        """Tokenize the texts `order` (store ids) in a background thread, a chunk at a time, until done or `stop`."""
        def work():
            start, size = 0, self.FIRST_CHUNK
            while start < len(order) and not stop.is_set():
                part = order[start : start + size]
                with self._lock:
                    try:
                        self._tokenize(part[~self.ready[part]])
                    except BaseException as error:  # `ensure` raises it where a batch needed the texts
                        self.error = error
                        return
                start, size = start + size, min(2 * size, self.chunk)

        self.finish()
        self._producer = threading.Thread(target=work, daemon=True, name="lacker-tokenize")
        self._producer.start()

    def finish(self) -> None:
        """Wait for the producer (its last chunk, once stopped): then the tokenizer is free for other callers."""
        if self._producer is not None:
            self._producer.join()
            self._producer = None

    @contextlib.contextmanager
    def tokenizer_free(self):
        """While the block runs nothing here tokenizes (the producer waits before its next chunk, `ensure` waits):
        the block may use the tokenizer."""
        with self._lock:
            yield

    def _preprocessed(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(the texts' tokens end to end, each text's length) from the model's own preprocessing."""
        out = self.transformer.preprocess(texts)
        if "cu_seq_lens_q" in out:  # flattened: one stream
            return (out["input_ids"].reshape(-1).numpy().astype(np.int64),
                    np.diff(out["cu_seq_lens_q"].numpy()).astype(np.int64))
        mask = out["attention_mask"].bool()  # padded rows: keep the real tokens, whichever side the padding is on
        return out["input_ids"][mask].numpy().astype(np.int64), mask.sum(1).numpy().astype(np.int64)

    def _direct(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """`_preprocessed`'s result from the tokenizer alone, as preprocess calls it (truncated to the model's
        max_seq_length), as lists of ids."""
        ids = self.transformer.tokenizer(texts, truncation=True, max_length=self.transformer.max_seq_length,
                                         padding=False, return_attention_mask=False,
                                         return_token_type_ids=False)["input_ids"]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        return np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum())), lengths

    def _encoded(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.direct is None:
            first = texts[: self.FIRST_CHUNK]
            try:
                direct = self._direct(first)
            except (AttributeError, TypeError, ValueError):  # no plain text tokenizer
                direct = None
            stock = self._preprocessed(first)
            self.direct = direct is not None and all(np.array_equal(a, b) for a, b in zip(direct, stock))
        return self._direct(texts) if self.direct else self._preprocessed(texts)

    def _tokenize(self, ids: np.ndarray) -> None:
        for start in range(0, len(ids), self.chunk):
            part = ids[start : start + self.chunk]
            flat, lengths = self._encoded([self.texts[i] for i in part])
            end = self._end + len(flat)
            if end > len(self.tokens):
                grown = np.zeros(max(end, 2 * len(self.tokens)), dtype=np.int64)
                grown[: self._end] = self.tokens[: self._end]
                self.tokens = grown
            self.tokens[self._end : end] = flat
            self.starts[part] = self._end + np.concatenate([[0], np.cumsum(lengths)[:-1]])
            self.lengths[part] = lengths
            self._end = end
            self.ready[part] = True  # last: whoever sees a text ready finds its tokens in place


def plan_order(row_texts: np.ndarray, plan: list[np.ndarray]) -> np.ndarray:
    """The store ids of the texts of `plan`'s batches, each once, in the order the batches first use them."""
    if not plan:
        return np.zeros(0, dtype=np.int64)
    used = row_texts[np.concatenate(plan)].reshape(-1)
    _, first = np.unique(used, return_index=True)
    return used[np.sort(first)]


def no_duplicate_batches(row_texts: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of batches (row indices) in which no text occurs twice: a row that would repeat a
    text of the batch waits for the next batch (what sentence-transformers' NoDuplicatesBatchSampler does)."""
    pending = deque(rng.permutation(len(row_texts)).tolist())
    batches = []
    while pending:
        batch, seen, waiting = [], set(), []
        while pending and len(batch) < batch_size:
            row = pending.popleft()
            texts = row_texts[row].tolist()
            if seen.isdisjoint(texts):
                batch.append(row)
                seen.update(texts)
            else:
                waiting.append(row)
        pending.extendleft(reversed(waiting))
        batches.append(np.asarray(batch, dtype=np.int64))
    return batches


class BatchPacker:
    """Rows of texts (store ids, `row_texts` (rows, columns)) as `Batch`es of host tensors."""

    def __init__(self, transformer, store: TokenStore, row_texts: np.ndarray, *, batch_size: int, packed: bool,
                 bucketed: bool, position_offset: int, mini_batch: int | None, pin: bool, world: World = World()):
        self.store, self.row_texts, self.batch_size, self.world = store, row_texts, batch_size, world
        self.packed, self.bucketed, self.position_offset = packed, bucketed, position_offset
        self.mini_batch, self.pin = mini_batch, pin
        self.max_seq_length = transformer.max_seq_length
        self.pad_id = transformer.tokenizer.pad_token_id or 0
        # No text is longer than the model's limit (texts are cut there), so fillers no longer than that keep their
        # positions inside the table. The limit, not the longest text: that would wait for every text's tokens.
        self.max_length = self.max_seq_length or self._longest()
        self.filler_count = math.ceil((BUCKET - 1) / max(1, self.max_length - 1)) if bucketed else 0

    def _longest(self) -> int:
        self.store.ensure(np.arange(len(self.store.texts)))
        return int(self.store.lengths.max()) if len(self.store.lengths) else 1

    def pack(self, rows: np.ndarray) -> Batch:
        """This rank's share of the global batch `rows` (all of it on one rank; `Batch.sizes` says every rank's
        share on several), packed by `pack_rows`."""
        if not self.world.distributed:
            return self.pack_rows(rows)
        mine, sizes = share(rows, self.world)
        packed = self.pack_rows(mine)
        packed.sizes = sizes
        return packed

    def pack_rows(self, rows: np.ndarray) -> Batch:
        """Anchors, then positives, then each negative column, as one stream; on CUDA full batches are
        padded to a bucket with `filler_count` filler sequences (never pooled), each no longer than the
        longest text. Models without packed attention get `pad` instead. With a cached loss, the same
        sequences in order as mini-batches of `mini_batch` (`Batch.chunks`), packed or padded, no fillers."""
        seqs = self.row_texts[rows].T.reshape(-1)  # column-major: all anchors first
        self.store.ensure(seqs)
        if self.mini_batch:
            parts = [seqs[i : i + self.mini_batch] for i in range(0, len(seqs), self.mini_batch)]
            chunks = [self._stream(part, len(part), 0) if self.packed else self._block(part) for part in parts]
            return Batch({}, batch=len(rows), n_real=len(seqs), max_length=0, full=False, chunks=chunks)
        if not self.packed:
            return self.pad(rows)
        return self._stream(seqs, len(rows), self.filler_count if len(rows) == self.batch_size else 0)

    def _stream(self, seqs: np.ndarray, batch: int, fillers: int) -> Batch:
        """Sequences `seqs` (store ids; the first `batch` are anchors) as one packed stream, with `fillers`
        filler sequences up to a bucket."""
        lengths = self.store.lengths[seqs]
        n, total = len(seqs), int(lengths.sum())
        if fillers:
            padded = math.ceil((total + fillers) / BUCKET) * BUCKET
            filler_lengths = np.full(fillers, (padded - total) // fillers, dtype=np.int64)
            filler_lengths[: (padded - total) % fillers] += 1
            all_lengths = np.concatenate([lengths, filler_lengths])
        else:
            all_lengths = lengths
        tokens = int(all_lengths.sum())
        offsets = np.concatenate([[0], np.cumsum(all_lengths)])
        within = np.arange(tokens) - np.repeat(offsets[:-1], all_lengths)
        ids = np.full(tokens, self.pad_id, dtype=np.int64)
        ids[:total] = self.store.tokens[np.repeat(self.store.starts[seqs], lengths) + within[:total]]
        seq_idx = np.minimum(np.repeat(np.arange(len(all_lengths)), all_lengths), n)

        tensors = {"input_ids": self._host(ids, torch.long),
                   "position_ids": self._host(within + self.position_offset, torch.long),
                   "seq_idx": self._host(seq_idx, torch.long), "cu_seqlens": self._host(offsets, torch.int32),
                   "lengths": self._host(lengths, torch.float32)}
        return Batch(tensors, batch=batch, n_real=n, full=bool(fillers),
                     max_length=self.max_length if fillers else int(all_lengths.max()))

    def pad(self, rows: np.ndarray) -> Batch:
        """Each column as a right-padded (rows, length) block with its attention mask; on CUDA the
        length is rounded up to a multiple of 16 so that steps repeat a few shapes."""
        tensors = {}
        for column, seqs in enumerate(self.row_texts[rows].T):
            tensors[f"ids_{column}"], tensors[f"mask_{column}"] = self._padded(seqs)
        full = self.bucketed and len(rows) == self.batch_size
        return Batch(tensors, batch=len(rows), n_real=len(rows) * self.row_texts.shape[1], max_length=0, full=full)

    def _block(self, seqs: np.ndarray) -> Batch:
        """Sequences `seqs` as one padded block (a cached loss's mini-batch of a model that does not pack)."""
        ids, mask = self._padded(seqs)
        return Batch({"ids_0": ids, "mask_0": mask}, batch=len(seqs), n_real=len(seqs), max_length=0, full=False)

    def _padded(self, seqs: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = self.store.lengths[seqs]
        width = int(lengths.max())
        if self.bucketed:  # never past the model's own limit
            width = min(math.ceil(width / 16) * 16, max(self.max_seq_length or width, width))
        mask = np.arange(width)[None, :] < lengths[:, None]
        ids = np.full((len(seqs), width), self.pad_id, dtype=np.int64)
        ids[mask] = self.store.tokens[np.repeat(self.store.starts[seqs], lengths) + np.nonzero(mask)[1]]
        return self._host(ids, torch.long), self._host(mask, torch.long)

    def _host(self, array, dtype) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(dtype)
        return tensor.pin_memory() if self.pin else tensor

    def prefetch(self, plan: list[np.ndarray], stop: threading.Event) -> queue.Queue:
        """Packs the batches of `plan` in a thread, a few ahead; None after the last, or the exception that stopped
        the packing (for the loop to raise)."""
        batches: queue.Queue = queue.Queue(maxsize=6)

        def work():
            try:
                for rows in plan:
                    if stop.is_set():
                        break
                    batches.put(self.pack(rows))
            except Exception as error:
                batches.put(error)
                return
            batches.put(None)

        threading.Thread(target=work, daemon=True, name="lacker-pack").start()
        return batches
