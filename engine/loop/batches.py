"""The packed loop's batches: every text tokenized once (`TokenStore`), an epoch's batches without
duplicate texts (`no_duplicate_batches`), and rows of texts made into host tensors (`BatchPacker`):
one packed token stream, or a padded block per column for models without packed attention.

A packed stream holds a batch's anchors, then its positives, then each negative column, back to back.
On CUDA a full batch's stream is padded up to a multiple of `BUCKET` tokens with filler sequences
nothing reads, so steps repeat a few shapes that CUDA graphs can replay.
"""

from __future__ import annotations

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
    """Every distinct text of the run tokenized once, through the model's own preprocessing."""

    def __init__(self, transformer, texts: list[str], chunk: int = 4096):
        self.index: dict[str, int] = {}
        for text in texts:
            self.index.setdefault(text, len(self.index))
        unique = list(self.index)
        ids, lengths = [], []
        for start in range(0, len(unique), chunk):
            out = transformer.preprocess(unique[start : start + chunk])
            if "cu_seq_lens_q" in out:  # flattened: one stream
                cu = out["cu_seq_lens_q"].tolist()
                ids.append(out["input_ids"].reshape(-1).numpy().astype(np.int64))
                lengths += [b - a for a, b in zip(cu[:-1], cu[1:])]
            else:  # padded rows: keep the real tokens, whichever side the padding is on
                mask = out["attention_mask"].bool()
                ids.append(out["input_ids"][mask].numpy().astype(np.int64))
                lengths += mask.sum(1).tolist()
        self.tokens = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)

    def ids(self, texts) -> np.ndarray:
        return np.fromiter((self.index[t] for t in texts), dtype=np.int64)


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
        self.max_length = int(store.lengths.max()) if len(store.lengths) else 1
        # Enough fillers that none is longer than the longest text (positions stay inside the table).
        self.filler_count = math.ceil((BUCKET - 1) / max(1, self.max_length - 1)) if bucketed else 0

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
        """Packs the batches of `plan` in a thread, a few ahead; None after the last."""
        batches: queue.Queue = queue.Queue(maxsize=6)

        def work():
            for rows in plan:
                if stop.is_set():
                    break
                batches.put(self.pack(rows))
            batches.put(None)

        threading.Thread(target=work, daemon=True, name="lacker-pack").start()
        return batches
