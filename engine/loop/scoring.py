"""`ScoringTrainer`: the packed loop for models that score a row, a reranker (sentence-transformers CrossEncoder)
or a classifier (transformers AutoModelForSequenceClassification), with the stock trainers' losses:

    loss                    rows                                       logits  the stock value it equals
    BinaryCrossEntropyLoss  (query, document) + relevance (1/0, 0..1)  1       sentence-transformers' loss
                            pos_weight optional                                (BCEWithLogitsLoss, batch mean)
    CrossEntropyLoss        text (or text pair) + class id             N       engine.tasks.classifier's loss
                            class weights optional                             (summed, over the batch's rows)

Each row is ONE packed sequence (engine.loop.pairs, token type ids where the model reads them) through varlen
attention (engine.attention.enable switches the model to it); the logits come from the model's own head modules
on the packed tokens (engine.loop.heads). Everything else is PackedTrainer's: the schedule, clipping, AdamW,
CUDA graphs on a GPU, checkpoints and the sum over ranks. Batches are shuffled rows, as the stock trainers'
(no duplicate-free batches: nothing here compares rows with each other).

tests/test_packed_tasks.py checks the steps against the stock padded forward with the library's losses.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from engine import distributed
from engine.attention import ATTN_IMPLEMENTATION, scoring_model, scoring_unavailable
from engine.families import family_of_model

from .heads import sequence_logits
from .pairs import PairPacker, PairTokens, first_position, takes_token_types
from .trainer import PackedTrainer

SCORING_LOSSES = ("BinaryCrossEntropyLoss", "CrossEntropyLoss")


def loop_unavailable(model, loss_name: str) -> str | None:
    """None when `ScoringTrainer` can train `model` (a CrossEncoder or a sequence classifier) with `loss_name`,
    else why not (a short phrase)."""
    if loss_name not in SCORING_LOSSES:
        return f"the packed loop scores rows with {' or '.join(SCORING_LOSSES)}, not {loss_name}"
    hf_model = scoring_model(model)
    if hf_model is None:
        return "the model is not a sequence classifier"
    if (reason := scoring_unavailable(family_of_model(hf_model))) is not None:
        return reason
    if hf_model.config._attn_implementation != ATTN_IMPLEMENTATION:
        return "the fast path's packed attention is off"
    device = next(hf_model.parameters()).device
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bf16 (fp16 training needs the trainer's loss scaling)"
    return None


class ScoringTrainer(PackedTrainer):
    """Trains `model` on rows of `texts` (with `pairs`, or None: single texts) and `labels` with `loss`
    (SCORING_LOSSES); `encode(texts, pairs)` is the model's own padded tokenization. Call `fit()`; the model is
    trained in place. `pos_weight` (BinaryCrossEntropyLoss) and `class_weights` (CrossEntropyLoss, a weight a
    class id) are optional. Other arguments as PackedTrainer's."""

    def __init__(self, model, encode, texts: list[str], pairs: list[str] | None, labels, *, loss: str,
                 batch_size: int, learning_rate: float, steps: int | None = None, epochs: float = 1.0,
                 warmup_ratio: float = 0.0, seed: int = 42, pos_weight: float | None = None,
                 class_weights: list[float] | None = None, max_grad_norm: float = 1.0, cuda_graphs: bool = True,
                 bucketed: bool | None = None, kernels: bool = True, world: distributed.World | None = None):
        unavailable = loop_unavailable(model, loss)
        if unavailable is not None:
            raise ValueError(f"the packed loop cannot train this model: {unavailable}")
        self.model, self.batch_size = model, batch_size
        self.world = world or distributed.current()
        self.hf = scoring_model(model)
        self.base = self.hf.base_model
        self.reading = family_of_model(self.hf).sequence_head
        self.device = next(self.hf.parameters()).device
        self.cuda = self.device.type == "cuda"
        self.max_grad_norm = max_grad_norm
        self.loss_name = loss

        store = PairTokens(encode, list(texts), None if pairs is None else list(pairs), takes_token_types(self.base))
        labels = np.asarray(labels, dtype=np.float32 if loss == "BinaryCrossEntropyLoss" else np.int64)
        tokenizer = getattr(model, "tokenizer", None)
        self.packer = PairPacker(store, labels, pad_id=getattr(tokenizer, "pad_token_id", None) or 0,
                                 max_seq_length=getattr(tokenizer, "model_max_length", None), batch_size=batch_size,
                                 bucketed=self.cuda if bucketed is None else bucketed,
                                 position_offset=first_position(self.hf), pin=self.cuda, world=self.world)
        self.store, self.row_texts = store, self.packer.row_texts  # what PackedTrainer.fit's producer reads
        self.packed, self.max_length = True, self.packer.max_length
        self.pos_weight = None if pos_weight is None else torch.tensor(float(pos_weight), device=self.device)
        self.class_weights = None if not class_weights else torch.tensor(class_weights, dtype=torch.float32,
                                                                         device=self.device)
        self._set_up(steps=steps, epochs=epochs, warmup_ratio=warmup_ratio, learning_rate=learning_rate, seed=seed,
                     cuda_graphs=cuda_graphs, kernels=kernels, cached=False)

    def _epoch(self, rng: np.random.Generator) -> list[np.ndarray]:
        order = rng.permutation(len(self.packer.row_texts))
        batches = [order[i : i + self.global_batch] for i in range(0, len(order), self.global_batch)]
        return [rows for rows in batches if len(rows) >= self.world.size]

    def logits(self, b: dict, n_real: int, max_length: int) -> torch.Tensor:
        """(n_real, num_labels) fp32: the base model over the packed stream, the head on each sequence."""
        inputs = {"input_ids": b["input_ids"][None], "position_ids": b["position_ids"][None]}
        if "token_type_ids" in b:
            inputs["token_type_ids"] = b["token_type_ids"][None]
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None,
                            cache_enabled=False):
            hidden = self.base(**inputs, cu_seq_lens_q=b["cu_seqlens"], cu_seq_lens_k=b["cu_seqlens"],
                               max_length_q=max_length, max_length_k=max_length, return_dict=True,
                               **self.model_kwargs).last_hidden_state[0]
            logits = sequence_logits(self.hf, self.reading, hidden, b["cu_seqlens"], b["seq_idx"], b["lengths"],
                                     n_real)
        return logits.float()

    def loss(self, b: dict, n_real: int, batch: int, max_length: int, sizes: list | None = None) -> torch.Tensor:
        """The batch's loss; on several ranks this rank's rows' part of the global batch's mean, so the ranks'
        losses (and gradients) sum to one process's on the whole batch."""
        logits = self.logits(b, n_real, max_length)
        rows = sum(sizes) if sizes is not None else batch
        if self.loss_name == "BinaryCrossEntropyLoss":
            return F.binary_cross_entropy_with_logits(logits.view(-1), b["labels"], pos_weight=self.pos_weight,
                                                      reduction="sum") / rows
        return F.cross_entropy(logits, b["labels"], weight=self.class_weights, reduction="sum") / rows
