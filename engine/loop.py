"""The fast path's training loop: in-batch-negative training on packed batches, in CUDA graphs.

SentenceTransformerTrainer keeps a small encoder's GPU mostly idle: on the H100 a MiniLM step with
packed attention kept the card busy about 7 ms of its 85 (bench/profile.py), because the trainer
embeds each column in its own forward, tokenizes every batch, syncs every step, and launches each
of some 2,000 kernels a step from Python. `PackedTrainer` does the same training as the trainer
with MultipleNegativesRankingLoss (AdamW, linear warm-up then decay, gradient clipping at 1.0,
batches without duplicate texts) with far less host work:

- every text is tokenized once, up front;
- a batch's anchors, positives and negatives go into one packed token stream, embedded in one
  forward (`engine.attention`'s varlen attention keeps the sequences apart), pooled per sequence;
- on CUDA the stream is padded up to a multiple of `BUCKET` tokens with filler sequences nothing
  reads, so steps repeat a few shapes, and each shape's whole step (forward, loss, backward,
  clipping, AdamW) is captured once in a CUDA graph and replayed: one launch instead of thousands;
- losses are copied back every `READ_EVERY` steps (or `READ_SECONDS`), not every step.

CachedMultipleNegativesRankingLoss is the same loss computed GradCache's way: a batch's sequences are
embedded `mini_batch` at a time, first without gradients, then again with the loss's gradient pushed
through, so no more than one mini-batch's activations are held: large batches and long sequences fit
a small GPU, for about one more forward a step. These steps run eagerly (no CUDA graphs yet).

Models left without packed attention (an MPNet run too short for FlexAttention's compile to pay,
`engine.attention.enable(steps=...)`) get the same loop over padded columns instead, each column's
length rounded up to a multiple of 16 on CUDA. On a CPU the
loop runs eagerly, packed through PyTorch's attention (engine.attention.varlen's reference).

A shape's first step runs eagerly (that warms kernels and allocates gradients and optimizer state
outside any graph); its second is captured. If a capture fails, the loop says why once and goes on
eagerly. Under gradient checkpointing steps are captured too, unless the forward draws random numbers
(`checkpointing_blocks_graphs`). tests/test_loop.py checks the math step by step against the stock
padded forward.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import queue
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.kernels.pooling import sequence_means

logger = logging.getLogger(__name__)

LOSSES = ("MultipleNegativesRankingLoss", "CachedMultipleNegativesRankingLoss")
CACHED_MINI_BATCH = 32  # sequences embedded at a time by the cached loss (its mini_batch_size)
POOLING_MODES = ("mean", "cls", "lasttoken")
BUCKET = 512  # packed streams are padded up to a multiple of this many tokens on CUDA
READ_EVERY = 10  # steps between copies of the loss history back to the host...
READ_SECONDS = 1.0  # ...or seconds, whichever comes first (the studio streams the loss curve)
STATE_FILE = "loop_state.pt"


def _pooling_index(st_model) -> int | None:
    for index, module in enumerate(st_model):
        if type(module).__name__ == "Pooling":
            return index
    return None


def loop_unavailable(st_model, loss_name: str) -> str | None:
    """None when `PackedTrainer` can train `st_model` with `loss_name`, else why not (a short phrase)."""
    if loss_name not in LOSSES:
        return f"the packed loop trains {', '.join(LOSSES)}, not {loss_name}"
    if not hasattr(st_model[0], "model") or not hasattr(st_model[0], "preprocess"):
        return "the first module is not a sentence-transformers Transformer"
    index = _pooling_index(st_model)
    if index != 1:
        return "the model has no Pooling module right after its transformer"
    mode = st_model[index].pooling_mode
    modes = (mode,) if isinstance(mode, str) else tuple(mode)
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        return f"pooling {'+'.join(modes)} is not one of {', '.join(POOLING_MODES)}"
    device = next(st_model.parameters()).device
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bf16 (fp16 training needs the trainer's loss scaling)"
    return None


@dataclass
class Batch:
    """One batch, ready to copy to the device: host tensors (pinned on CUDA) by name."""

    tensors: dict  # packed: input_ids, position_ids, seq_idx, cu_seqlens, lengths; padded: ids_i, mask_i a column
    batch: int  # anchors
    n_real: int  # sequences pooled: anchors + positives + negatives
    max_length: int  # longest sequence of the packed stream, fillers included (unused when padded)
    full: bool  # a full batch, padded to its bucket: may run from a CUDA graph
    chunks: list | None = None  # cached loss: the batch's sequences as Batches of `mini_batch` each, no tensors here

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


def linear_schedule(step: int, total: int, warmup: int) -> float:
    """transformers' linear schedule: the factor on the learning rate at 0-based update `step`."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


class PackedTrainer:
    """Trains `st_model` on rows of texts (columns: anchor, positive, negatives...) with in-batch
    negatives. Call `fit()`; the model is trained in place."""

    def __init__(self, st_model, columns: list[list[str]], *, batch_size: int, learning_rate: float,
                 steps: int | None = None, epochs: float = 1.0, warmup_ratio: float = 0.0, seed: int = 42,
                 position_offset: int | None = None, scale: float = 20.0, max_grad_norm: float = 1.0,
                 cuda_graphs: bool = True, bucketed: bool | None = None, kernels: bool = True,
                 mini_batch: int | None = None):
        self.model = st_model
        self.transformer = st_model[0]
        self.hf = self.transformer.model
        self.after_pooling = list(st_model)[2:]
        mode = st_model[1].pooling_mode
        self.pooling = mode if isinstance(mode, str) else mode[0]
        self.device = next(st_model.parameters()).device
        self.cuda = self.device.type == "cuda"
        self.batch_size, self.scale, self.max_grad_norm = batch_size, scale, max_grad_norm
        # First position id of each packed sequence: by default the one the model's packed preprocessing uses
        # (engine.attention.enable), so the loop's batches and plain encoding agree.
        if position_offset is None:
            position_offset = getattr(self.transformer, "_flatten_position_offset", 0)
        self.position_offset = position_offset

        self.store = TokenStore(self.transformer, [t for column in columns for t in column])
        self.row_texts = np.stack([self.store.ids(column) for column in columns], axis=1)  # (rows, columns)
        self.max_length = int(self.store.lengths.max()) if len(self.store.lengths) else 1
        # Enough fillers that none is longer than the longest text (positions stay inside the table).
        self.packed = bool(getattr(self.transformer, "can_flatten_inputs", False))
        bucketed = self.bucketed = self.cuda if bucketed is None else bucketed
        self.filler_count = math.ceil((BUCKET - 1) / max(1, self.max_length - 1)) if bucketed else 0
        self.pad_id = self.transformer.tokenizer.pad_token_id or 0
        # Decoder families (Qwen3, Gemma3) build a KV cache by default: nothing here reads it, and
        # Gemma3's sliding cache copies from the host, which no CUDA graph can hold.
        self.model_kwargs = {"use_cache": False} if "use_cache" in inspect.signature(self.hf.forward).parameters else {}
        if self.cuda:
            _position_bias_on_device(self.hf)

        rng = np.random.default_rng(seed)
        per_epoch = no_duplicate_batches(self.row_texts, batch_size, rng)
        self.batches_per_epoch = len(per_epoch)
        self.total_steps = steps or max(1, math.ceil(epochs * self.batches_per_epoch))
        self.plan = list(per_epoch)
        while len(self.plan) < self.total_steps:
            self.plan += no_duplicate_batches(self.row_texts, batch_size, rng)
        self.plan = self.plan[: self.total_steps]
        self.warmup = math.ceil(warmup_ratio * self.total_steps)
        self.base_lr = learning_rate

        self.params = [p for p in st_model.parameters() if p.requires_grad]
        if self.cuda:
            self.lr = torch.tensor(learning_rate, device=self.device)
            self.optimizer = torch.optim.AdamW(self.params, lr=self.lr, weight_decay=0.0, fused=True, capturable=True)
        else:
            self.lr = None
            self.optimizer = torch.optim.AdamW(self.params, lr=learning_rate, weight_decay=0.0)
        self.amp = torch.bfloat16 if self.cuda else None
        self.graphs_on = self.cuda and cuda_graphs
        # Cached steps (GradCache, what CachedMultipleNegativesRankingLoss does): the batch's sequences are
        # embedded `mini_batch` at a time, so activations never exceed one mini-batch's; eager for now.
        self.mini_batch = mini_batch
        self.graph_note: str | None = checkpointing_blocks_graphs(self.hf) if self.graphs_on else None
        if self.graphs_on and mini_batch:
            self.graph_note = "CUDA graphs off: the cached loss embeds mini-batches eagerly"
        if self.graph_note:
            self.graphs_on = False
            logger.warning(self.graph_note)
        # Replayed from graphs, the Triton RoPE / RMSNorm / gated-activation kernels cost one launch each;
        # eager, their Python-side cost can exceed the GPU time they save.
        self.kernel_note = None
        if self.graphs_on and kernels:
            from engine.kernels import patch_layers

            self.kernel_note = patch_layers(self.hf)
        self.graphs: dict[tuple, object] = {}  # shape key -> "warm" or a CUDAGraph
        self.static: dict[tuple, dict] = {}
        self.out = torch.zeros(2, device=self.device)  # loss, grad norm of the last step
        self.history = torch.zeros(self.total_steps, 2, device=self.device)
        self.step = 0
        self._pool = None  # the CUDA graphs' shared memory pool, made at the first capture

    # --- batches -------------------------------------------------------------------------------
    def pack(self, rows: np.ndarray) -> Batch:
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
            width = min(math.ceil(width / 16) * 16, max(self.transformer.max_seq_length or width, width))
        mask = np.arange(width)[None, :] < lengths[:, None]
        ids = np.full((len(seqs), width), self.pad_id, dtype=np.int64)
        ids[mask] = self.store.tokens[np.repeat(self.store.starts[seqs], lengths) + np.nonzero(mask)[1]]
        return self._host(ids, torch.long), self._host(mask, torch.long)

    def _host(self, array, dtype) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(dtype)
        return tensor.pin_memory() if self.cuda else tensor

    def _prefetch(self, start: int, stop: threading.Event) -> queue.Queue:
        """Packs the batches from step `start` on in a thread, a few ahead."""
        batches: queue.Queue = queue.Queue(maxsize=6)

        def work():
            for rows in self.plan[start:]:
                if stop.is_set():
                    break
                batches.put(self.pack(rows))
            batches.put(None)

        threading.Thread(target=work, daemon=True, name="lacker-pack").start()
        return batches

    # --- one step ------------------------------------------------------------------------------
    def _embed(self, b: dict, n_real: int, max_length: int) -> torch.Tensor:
        if not self.packed:
            columns = sum(name.startswith("ids_") for name in b)
            return torch.cat([self._embed_padded(b[f"ids_{c}"], b[f"mask_{c}"]) for c in range(columns)])
        out = self.hf(input_ids=b["input_ids"][None], position_ids=b["position_ids"][None],
                      cu_seq_lens_q=b["cu_seqlens"], cu_seq_lens_k=b["cu_seqlens"],
                      max_length_q=max_length, max_length_k=max_length, return_dict=True, **self.model_kwargs)
        hidden = out.last_hidden_state[0]
        if self.pooling == "cls":
            pooled = hidden[b["cu_seqlens"][:n_real].long()]
        elif self.pooling == "lasttoken":
            pooled = hidden[(b["cu_seqlens"][1 : n_real + 1] - 1).long()]
        else:
            pooled = sequence_means(hidden, b["seq_idx"], b["lengths"])
        return self._after_pooling(pooled)

    def _embed_padded(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # The additive (rows, 1, 1, length) form goes through transformers untouched: its own conversion
        # of a 0/1 mask calls torch.where with a host scalar, which a CUDA graph cannot capture.
        additive = (1.0 - mask[:, None, None, :].to(torch.float32)) * torch.finfo(torch.float32).min
        hidden = self.hf(input_ids=ids, attention_mask=additive, return_dict=True, **self.model_kwargs).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "lasttoken":  # right padding: the last real token
            pooled = hidden[torch.arange(ids.shape[0], device=ids.device), mask.sum(1) - 1]
        else:
            weights = mask.unsqueeze(-1).to(torch.float32)
            pooled = (hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return self._after_pooling(pooled)

    def _after_pooling(self, pooled: torch.Tensor) -> torch.Tensor:
        features = {"sentence_embedding": pooled}
        for module in self.after_pooling:
            features = module(features)
        return features["sentence_embedding"]

    def loss(self, b: dict, n_real: int, batch: int, max_length: int) -> torch.Tensor:
        """MultipleNegativesRankingLoss: cosine similarities x scale, anchor i's target is candidate i."""
        return self._ranking_loss(self._embeddings(b, n_real, max_length), batch)

    def _embeddings(self, b: dict, n_real: int, max_length: int) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None,
                            cache_enabled=False):
            return self._embed(b, n_real, max_length).float()

    def _ranking_loss(self, embeddings: torch.Tensor, batch: int) -> torch.Tensor:
        embeddings = F.normalize(embeddings, dim=-1)
        anchors, candidates = embeddings[:batch], embeddings[batch:]
        scores = anchors @ candidates.t() * self.scale
        return F.cross_entropy(scores, torch.arange(batch, device=scores.device))

    def _train_step(self, b: dict, n_real: int, batch: int, max_length: int) -> None:
        loss = self.loss(b, n_real, batch, max_length)
        loss.backward()
        self._update(loss)

    def _cached_step(self, packed: Batch) -> None:
        """One update as GradCache does it: embed every mini-batch without keeping activations, take the
        loss's gradient with respect to the embeddings, then embed each mini-batch again with gradients
        and push that gradient through it. Same gradients as the whole batch at once; each mini-batch
        replays its first pass's random state, so dropout draws the same masks both times."""
        chunks = [(self._on_device(chunk), chunk) for chunk in packed.chunks]
        states, embeddings = [], []
        with torch.no_grad():
            for b, chunk in chunks:
                states.append(self._random_state())
                embeddings.append(self._embeddings(b, chunk.n_real, chunk.max_length))
        embeddings = torch.cat(embeddings).requires_grad_()
        loss = self._ranking_loss(embeddings, packed.batch)
        loss.backward()
        grads = embeddings.grad.split([chunk.n_real for _, chunk in chunks])
        for (b, chunk), state, grad in zip(chunks, states, grads):
            with self._replaying(state):
                self._embeddings(b, chunk.n_real, chunk.max_length).backward(grad)
        self._update(loss.detach())

    def _random_state(self) -> tuple:
        return torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if self.cuda else None

    @contextlib.contextmanager
    def _replaying(self, state: tuple):
        with torch.random.fork_rng(devices=[self.device] if self.cuda else [], device_type=self.device.type):
            torch.set_rng_state(state[0])
            if self.cuda:
                torch.cuda.set_rng_state(state[1], self.device)
            yield

    def _update(self, loss: torch.Tensor) -> None:
        """Clip, step and zero the gradients; leave the loss and the gradient norm in `self.out`."""
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)
        self.out.copy_(torch.stack([loss.detach(), norm.detach()]).to(self.out.dtype))

    def _on_device(self, packed: Batch) -> dict:
        if not (self.graphs_on and packed.full):
            return {name: t.to(self.device, non_blocking=True) for name, t in packed.tensors.items()}
        static = self.static.get(packed.key)
        if static is None:
            static = self.static[packed.key] = {name: torch.empty_like(t, device=self.device)
                                                for name, t in packed.tensors.items()}
        for name, t in packed.tensors.items():
            static[name].copy_(t, non_blocking=True)
        return static

    def run_step(self, packed: Batch) -> None:
        """One optimizer update on `packed`; leaves loss and grad norm in `self.history[self.step]`."""
        factor = linear_schedule(self.step, self.total_steps, self.warmup)
        if self.lr is not None:
            self.lr.fill_(self.base_lr * factor)
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = self.base_lr * factor
        if packed.chunks is not None:
            self._cached_step(packed)
        else:
            self._step(packed)
        self.history[self.step].copy_(self.out)
        self.step += 1

    def _step(self, packed: Batch) -> None:
        """The whole batch at once: replayed from its shape's CUDA graph where there is one."""
        b = self._on_device(packed)
        args = (packed.n_real, packed.batch, packed.max_length)
        state = self.graphs.get(packed.key) if self.graphs_on and packed.full else None
        if state is None or state == "warm" and not self._capture(packed.key, b, args):
            if self.graphs_on and packed.full:
                self.graphs.setdefault(packed.key, "warm")
            self._train_step(b, *args)
        else:
            self.graphs[packed.key].replay()

    def _capture(self, key, b: dict, args) -> bool:
        """Capture the step for shape `key` in a CUDA graph (all shapes share one memory pool: nothing
        made inside a graph outlives its replay). False, once logged, if capture is impossible."""
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self._pool, stream=torch.cuda.current_stream(self.device),
                                  capture_error_mode="thread_local"):
                self._train_step(b, *args)
        except Exception as error:  # an op that syncs or allocates on the host: stay eager
            torch.cuda.synchronize()
            self.optimizer.zero_grad(set_to_none=True)  # gradients may point into the abandoned capture
            self.graphs_on = False
            where = next((f"{Path(f.filename).name}:{f.lineno}" for f in reversed(traceback.extract_tb(error.__traceback__))
                          if "/torch/" not in f.filename), "?")
            self.graph_note = f"CUDA graphs off ({type(error).__name__} at {where}: {str(error).splitlines()[0][:120]})"
            logger.warning(self.graph_note, exc_info=True)
            return False
        self.graphs[key] = graph
        return True

    # --- the loop ------------------------------------------------------------------------------
    def fit(self, on_steps=None, stop: threading.Event | None = None, every: int | None = None, on_every=None,
            after_step=None) -> int:
        """Train from `self.step` to the end, or until `stop` is set. `on_steps(records)` gets
        [(step, loss, grad_norm, lr)] as they are read back; `on_every(step)` runs after every
        `every`-th step (evaluation, checkpoints), once the records up to it are out; `after_step(step)`
        after every step, with nothing read back (for timing). Returns the number of steps done."""
        stop = stop or threading.Event()
        self.model.train()
        done_reading, last_read = self.step, time.monotonic()
        quit_packing = threading.Event()
        batches = self._prefetch(self.step, quit_packing)
        stream = torch.cuda.Stream(self.device) if self.cuda else None
        try:
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                while self.step < self.total_steps and not stop.is_set():
                    packed = batches.get()
                    if packed is None:
                        break
                    self.run_step(packed)
                    if after_step is not None:
                        after_step(self.step)
                    ends_interval = every and self.step % every == 0
                    due = self.step - done_reading >= READ_EVERY or time.monotonic() - last_read >= READ_SECONDS
                    if due or self.step == self.total_steps or ends_interval:
                        done_reading, last_read = self._read_back(done_reading, on_steps), time.monotonic()
                    if ends_interval and on_every is not None:
                        on_every(self.step)
                done_reading = self._read_back(done_reading, on_steps)
        finally:
            quit_packing.set()
            while not batches.empty():
                batches.get_nowait()
            if stream is not None:
                torch.cuda.current_stream(self.device).wait_stream(stream)
        return self.step

    def _read_back(self, start: int, on_steps) -> int:
        if self.step > start and on_steps is not None:
            values = self.history[start : self.step].tolist()
            on_steps([(start + i + 1, loss, norm, self.base_lr * linear_schedule(start + i, self.total_steps, self.warmup))
                      for i, (loss, norm) in enumerate(values)])
        return self.step

    # --- checkpoints ---------------------------------------------------------------------------
    def save_state(self, folder: str | Path) -> Path:
        """Trainable weights, optimizer state and the step, enough for `load_state` to go on."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        trainable = {name: p.detach().cpu() for name, p in self.model.named_parameters() if p.requires_grad}
        torch.save({"step": self.step, "trainable": trainable, "optimizer": self.optimizer.state_dict(),
                    "total_steps": self.total_steps}, folder / STATE_FILE)
        return folder

    def load_state(self, folder: str | Path) -> None:
        """Go on from `save_state`'s folder: same data, batch size and seed give the same batches; a
        different step count keeps the batches done and stretches the schedule to the new end."""
        state = torch.load(Path(folder) / STATE_FILE, map_location=self.device, weights_only=True)
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in state["trainable"].items():
                params[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.lr is not None:  # the schedule writes into self.lr: the groups must hold that tensor
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr
        self.step = state["step"]


def draws_random(model: torch.nn.Module) -> bool:
    """Whether a forward of `model` in train mode may draw random numbers: a dropout module with p > 0
    (PEFT's lora_dropout included; PEFT uses nn.Identity for 0), or a config value named *dropout* above
    0 (attention dropouts go to the attention functions as floats, not modules). Conservative: a head's
    dropout in the config counts too."""
    if any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        return True
    config = getattr(model, "config", None)
    return config is not None and _config_has_dropout(config.to_dict())


def _config_has_dropout(values: dict) -> bool:
    for name, value in values.items():
        if isinstance(value, dict) and _config_has_dropout(value):  # a sub-config (text, vision)
            return True
        if "dropout" in str(name) and isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return True
    return False


def checkpointing_blocks_graphs(model: torch.nn.Module) -> str | None:
    """Make gradient checkpointing capturable in a CUDA graph, or say why it cannot be.

    transformers checkpoints each layer through `torch.utils.checkpoint` with preserve_rng_state=True,
    which copies the RNG state to the host before every layer so that the backward's recompute draws
    the same dropout masks; a capture cannot hold that copy. A forward that draws no random numbers
    recomputes the same values without it, so there each module's checkpoint function is rewrapped
    with preserve_rng_state=False (its other arguments, use_reentrant, kept) and None is returned.
    With dropout the saved state is needed: returns the reason graphs must stay off."""
    if not getattr(model, "is_gradient_checkpointing", False):
        return None
    if draws_random(model):
        return ("CUDA graphs off: with gradient checkpointing, a model with dropout copies its RNG state to the "
                "host at every layer, which a CUDA graph cannot capture, so training goes on without graphs "
                "(slower); turn gradient checkpointing off, or set lora_dropout to 0 if it is the only dropout, "
                "to keep them")
    for module in model.modules():
        checkpoint = getattr(module, "_gradient_checkpointing_func", None)
        if checkpoint is not None:
            module._gradient_checkpointing_func = functools.partial(checkpoint, preserve_rng_state=False)
    return None


def _position_bias_on_device(model: torch.nn.Module) -> None:
    """MPNet builds its relative-position buckets on the host and copies them over every forward,
    which no CUDA graph can hold: look the bias up on the device instead, from the packed path's
    table of every distance (`engine.attention.relative.bias_table`, rebuilt each forward: the bias
    may be trained). Calls with other buckets than MPNet's default 32 keep MPNet's own code."""
    from engine.attention.relative import REACH, bias_table

    for module in model.modules():
        if not (hasattr(module, "compute_position_bias") and hasattr(module, "relative_attention_bias")):
            continue
        original = module.compute_position_bias

        def compute_position_bias(x, position_ids=None, num_buckets=32, module=module, original=original):
            if position_ids is not None or num_buckets != 32:
                return original(x, position_ids, num_buckets)
            positions = torch.arange(x.size(1), device=x.device)
            distance = (positions[None, :] - positions[:, None]).clamp(-REACH, REACH) + REACH
            values = bias_table(module)[:, distance].to(module.relative_attention_bias.weight.dtype)
            return values.unsqueeze(0).expand(x.size(0), -1, -1, -1).contiguous()

        module.compute_position_bias = compute_position_bias


def is_loop_checkpoint(folder: str | Path | None) -> bool:
    return folder is not None and (Path(folder) / STATE_FILE).exists()
