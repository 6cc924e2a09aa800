"""`PackedTrainer`: the packed loop's training step (forward, loss, backward, clipping, AdamW), its
replay from CUDA graphs, and `fit`, which runs the steps and reads their losses back.

A step reads top to bottom from `run_step`: the schedule's learning rate, then `_step` (the whole batch:
`_train_step` eagerly, or its shape's CUDA graph replayed) or `_cached_step` (GradCache); each ends in
`_update` (clip, AdamW, zero the gradients).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from engine import distributed

from . import checkpoint
from .batches import Batch, BatchPacker, TokenStore, no_duplicate_batches, plan_order
from .loss import LOSSES, in_batch_loss
from .pooling import POOLING_MODES, pool_packed, pool_padded
from .surgery import prepare_model

logger = logging.getLogger(__name__)

READ_EVERY = 10  # steps between copies of the loss history back to the host...
READ_SECONDS = 1.0  # ...or seconds, whichever comes first (the studio streams the loss curve)


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
                 mini_batch: int | None = None, world: distributed.World | None = None):
        self.model = st_model
        self.batch_size = batch_size
        # On several ranks (engine.distributed) `batch_size` is each rank's: the plan holds global batches of
        # batch_size x ranks rows, the same as one process's at that batch, and each rank packs its share.
        self.world = world or distributed.current()
        self.transformer = st_model[0]
        self.hf = self.transformer.model
        self.after_pooling = list(st_model)[2:]
        mode = st_model[1].pooling_mode
        self.pooling = mode if isinstance(mode, str) else mode[0]
        self.device = next(st_model.parameters()).device
        self.cuda = self.device.type == "cuda"
        self.scale, self.max_grad_norm = scale, max_grad_norm

        # Batches. With `mini_batch` (the cached loss, GradCache's way) each holds its sequences as mini-batches
        # of that many, embedded one at a time so activations never exceed one mini-batch's; eager for now.
        # First position id of each packed sequence: by default the one the model's packed preprocessing
        # uses (engine.attention.enable), so the loop's batches and plain encoding agree.
        if position_offset is None:
            position_offset = getattr(self.transformer, "_flatten_position_offset", 0)
        # Texts are numbered here and tokenized by `fit`, ahead of the steps (TokenStore).
        self.store = store = TokenStore(self.transformer, [t for column in columns for t in column])
        self.row_texts = np.stack([store.ids(column) for column in columns], axis=1)  # (rows, columns)
        self.packed = bool(getattr(self.transformer, "can_flatten_inputs", False))
        self.packer = BatchPacker(self.transformer, store, self.row_texts, batch_size=batch_size, packed=self.packed,
                                  bucketed=self.cuda if bucketed is None else bucketed,
                                  position_offset=position_offset, mini_batch=mini_batch, pin=self.cuda,
                                  world=self.world)
        self.max_length = self.packer.max_length

        self._set_up(steps=steps, epochs=epochs, warmup_ratio=warmup_ratio, learning_rate=learning_rate, seed=seed,
                     cuda_graphs=cuda_graphs, kernels=kernels, cached=bool(mini_batch))

    def _set_up(self, *, steps: int | None, epochs: float, warmup_ratio: float, learning_rate: float, seed: int,
                cuda_graphs: bool, kernels: bool, cached: bool) -> None:
        """What every packed loop shares, once its batches are set up (`self.packer`, `_epoch`): the plan of
        batches, the model surgery, the optimizer and the step's buffers."""
        rng = np.random.default_rng(seed)
        self.global_batch = self.batch_size * self.world.size
        per_epoch = self._epoch(rng)
        self.batches_per_epoch = len(per_epoch)
        self.total_steps = steps or max(1, math.ceil(epochs * self.batches_per_epoch))
        self.plan = list(per_epoch)
        while len(self.plan) < self.total_steps:
            self.plan += self._epoch(rng)
        self.plan = self.plan[: self.total_steps]
        self.warmup = math.ceil(warmup_ratio * self.total_steps)
        self.base_lr = learning_rate

        # The model surgery of the loop, all in one step (engine.loop.surgery).
        prepared = prepare_model(self.hf, cuda=self.cuda, graphs=self.cuda and cuda_graphs, kernels=kernels,
                                 cached=cached)
        self.graphs_on, self.graph_note, self.kernel_note = prepared.graphs, prepared.graph_note, prepared.kernel_note
        self.model_kwargs = prepared.forward_kwargs

        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if self.world.distributed:  # the same seed gives every rank the same weights; this makes sure of it
            distributed.broadcast_from_main(self.params)
        if self.cuda:
            self.lr = torch.tensor(learning_rate, device=self.device)
            self.optimizer = torch.optim.AdamW(self.params, lr=self.lr, weight_decay=0.0, fused=True, capturable=True)
        else:
            self.lr = None
            self.optimizer = torch.optim.AdamW(self.params, lr=learning_rate, weight_decay=0.0)
        self.amp = torch.bfloat16 if self.cuda else None
        self.graphs: dict[tuple, object] = {}  # shape key -> "warm" or a CUDAGraph
        self.static: dict[tuple, dict] = {}
        self.out = torch.zeros(2, device=self.device)  # loss, grad norm of the last step
        self.history = torch.zeros(self.total_steps, 2, device=self.device)
        self.step = 0
        self._pool = None  # the CUDA graphs' shared memory pool, made at the first capture

    def _epoch(self, rng: np.random.Generator) -> list[np.ndarray]:
        batches = no_duplicate_batches(self.row_texts, self.global_batch, rng)
        # An epoch's short last batch is split among the ranks; one too short to give each rank a row is left out.
        return [rows for rows in batches if len(rows) >= self.world.size]

    def pack(self, rows: np.ndarray) -> Batch:
        """A global batch of the plan as this rank's `Batch` (engine.loop.batches.BatchPacker.pack)."""
        return self.packer.pack(rows)

    # --- one step ------------------------------------------------------------------------------
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
        args = (packed.n_real, packed.batch, packed.max_length, packed.sizes)
        state = self.graphs.get(packed.key) if self.graphs_on and packed.full else None
        if state is None or state == "warm" and not self._capture(packed.key, b, args):
            if self.graphs_on and packed.full:
                self.graphs.setdefault(packed.key, "warm")
            self._train_step(b, *args)
        else:
            self.graphs[packed.key].replay()

    def _train_step(self, b: dict, n_real: int, batch: int, max_length: int, sizes: list | None) -> None:
        loss = self.loss(b, n_real, batch, max_length, sizes)
        loss.backward()
        self._update(loss)

    def loss(self, b: dict, n_real: int, batch: int, max_length: int, sizes: list | None = None) -> torch.Tensor:
        """MultipleNegativesRankingLoss: cosine similarities x scale, anchor i's target is candidate i (on several
        ranks, this rank's part of the global batch's loss, every rank's candidates gathered)."""
        return in_batch_loss(self._embeddings(b, n_real, max_length), batch, self.scale, sizes, self.world.rank)

    def _embeddings(self, b: dict, n_real: int, max_length: int) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None,
                            cache_enabled=False):
            return self._embed(b, n_real, max_length).float()

    def _embed(self, b: dict, n_real: int, max_length: int) -> torch.Tensor:
        """The model's forward and pooling, then its modules after pooling (Normalize, Dense...)."""
        if not self.packed:
            columns = sum(name.startswith("ids_") for name in b)
            pooled = torch.cat([self._embed_padded(b[f"ids_{c}"], b[f"mask_{c}"]) for c in range(columns)])
        else:
            out = self.hf(input_ids=b["input_ids"][None], position_ids=b["position_ids"][None],
                          cu_seq_lens_q=b["cu_seqlens"], cu_seq_lens_k=b["cu_seqlens"],
                          max_length_q=max_length, max_length_k=max_length, return_dict=True, **self.model_kwargs)
            pooled = pool_packed(out.last_hidden_state[0], self.pooling, b["cu_seqlens"], b["seq_idx"], b["lengths"],
                                 n_real)
        features = {"sentence_embedding": pooled}
        for module in self.after_pooling:
            features = module(features)
        return features["sentence_embedding"]

    def _embed_padded(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # The additive (rows, 1, 1, length) form goes through transformers untouched: its own conversion
        # of a 0/1 mask calls torch.where with a host scalar, which a CUDA graph cannot capture.
        additive = (1.0 - mask[:, None, None, :].to(torch.float32)) * torch.finfo(torch.float32).min
        hidden = self.hf(input_ids=ids, attention_mask=additive, return_dict=True, **self.model_kwargs).last_hidden_state
        return pool_padded(hidden, mask, self.pooling)

    def _update(self, loss: torch.Tensor) -> None:
        """Clip, step and zero the gradients; leave the loss and the gradient norm in `self.out`. On several ranks
        the gradients and the loss are first summed over them (each rank's are its part of the global batch's),
        so every rank clips and steps the same weights the same way."""
        loss = loss.detach().float().reshape(1)
        if self.world.distributed:
            loss = loss.clone()
            distributed.all_reduce_sum([p.grad for p in self.params if p.grad is not None] + [loss])
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)
        self.out.copy_(torch.cat([loss, norm.detach().reshape(1)]).to(self.out.dtype))

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
        loss = in_batch_loss(embeddings, packed.batch, self.scale, packed.sizes, self.world.rank)
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

    # --- CUDA graphs ---------------------------------------------------------------------------
    def _on_device(self, packed: Batch) -> dict:
        """The batch's tensors on the device; for a graph's shape, copied into that shape's static inputs."""
        if not (self.graphs_on and packed.full):
            return {name: t.to(self.device, non_blocking=True) for name, t in packed.tensors.items()}
        static = self.static.get(packed.key)
        if static is None:
            static = self.static[packed.key] = {name: torch.empty_like(t, device=self.device)
                                                for name, t in packed.tensors.items()}
        for name, t in packed.tensors.items():
            static[name].copy_(t, non_blocking=True)
        return static

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
        stopping = distributed.StopAgreement(self.world)  # every rank stops after the same step
        self.model.train()
        done_reading, last_read = self.step, time.monotonic()
        quit_packing, packing_done = threading.Event(), False
        self.store.tokenize_ahead(plan_order(self.row_texts, self.plan[self.step :]), quit_packing)
        batches = self.packer.prefetch(self.plan[self.step :], quit_packing)
        stream = torch.cuda.Stream(self.device) if self.cuda else None
        try:
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                while self.step < self.total_steps and not stopping.should_stop(stop):
                    packed = batches.get()
                    packing_done = packed is None or isinstance(packed, Exception)
                    if packed is None:
                        break
                    if isinstance(packed, Exception):
                        raise packed
                    self.run_step(packed)
                    if after_step is not None:
                        after_step(self.step)
                    ends_interval = every and self.step % every == 0
                    due = self.step - done_reading >= READ_EVERY or time.monotonic() - last_read >= READ_SECONDS
                    if due or self.step == self.total_steps or ends_interval:
                        done_reading, last_read = self._read_back(done_reading, on_steps), time.monotonic()
                    if ends_interval and on_every is not None:
                        with self.store.tokenizer_free():  # an evaluation tokenizes with the same tokenizer
                            on_every(self.step)
                done_reading = self._read_back(done_reading, on_steps)
            stopping.settle()
        finally:
            quit_packing.set()
            while not packing_done:  # the packing thread's end, so that nothing tokenizes after the loop
                item = batches.get()
                packing_done = item is None or isinstance(item, Exception)
            self.store.finish()
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
        return checkpoint.save_state(folder, self.model, self.optimizer, self.step, self.total_steps)

    def load_state(self, folder: str | Path) -> None:
        """Go on from `save_state`'s folder: same data, batch size and seed give the same batches; a
        different step count keeps the batches done and stretches the schedule to the new end."""
        self.step = checkpoint.load_state(folder, self.model, self.optimizer, self.device)
        if self.lr is not None:  # the schedule writes into self.lr: the groups must hold that tensor
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr
