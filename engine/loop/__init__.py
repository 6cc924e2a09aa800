"""The fast path's training loop: in-batch-negative training on packed batches, in CUDA graphs.

SentenceTransformerTrainer keeps a small encoder's GPU mostly idle: on the H100 a MiniLM step with
packed attention kept the card busy about 7 ms of its 85 (bench/profile.py), because the trainer
embeds each column in its own forward, tokenizes every batch, syncs every step, and launches each
of some 2,000 kernels a step from Python. `PackedTrainer` does the same training as the trainer
with MultipleNegativesRankingLoss (AdamW, linear warm-up then decay, gradient clipping at 1.0,
batches without duplicate texts) with far less host work:

- every text is tokenized once, ahead of the steps (a background thread, in the order the batches use them);
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

Models left without packed attention (a relative-bias model on a run too short for FlexAttention's
compile to pay, `engine.attention.enable(steps=...)`) get the same loop over padded columns instead,
each column's length rounded up to a multiple of 16 on CUDA. On a CPU the loop runs eagerly, packed
through PyTorch's attention (engine.attention.varlen's reference).

A shape's first step runs eagerly (that warms kernels and allocates gradients and optimizer state
outside any graph); its second is captured. If a capture fails, the loop says why once and goes on
eagerly. Under gradient checkpointing steps are captured too, unless the forward draws random numbers
(`surgery.checkpointing_blocks_graphs`). tests/test_loop.py checks the math step by step against the
stock padded forward.

On several ranks (engine.distributed: torchrun, `lacker train --gpus N`) each rank packs its share of every
global batch (batch_size rows a rank), the loss gathers every rank's candidates with their gradients, and the
gradients and the loss are summed over the ranks before clipping: N ranks at batch B take the steps of one
process at N x B (tests/test_distributed.py checks it step by step on gloo). A rank's CUDA graphs hold its
collectives; where a capture fails, that rank says why and steps eagerly, in step with the others.

Rerankers and classifiers train on the same machinery (`ScoringTrainer`, engine.loop.scoring): each row, a
(query, document) pair or a text (pair), is one sequence of the packed stream with its token type ids, the
model's own head reads each sequence's logits straight from the packed tokens, and the stock trainers' losses
(BinaryCrossEntropyLoss with pos_weight, cross-entropy with class weights) close the step; tests/test_packed_tasks.py
checks it step by step against CrossEncoder's and transformers' padded forwards.

One concept a module:
    batches     TokenStore, no_duplicate_batches, BatchPacker: rows of texts -> `Batch` host tensors
    pooling     the Pooling module's mean / cls / lasttoken over packed or padded token embeddings
    loss        MultipleNegativesRankingLoss over a batch's embeddings; LOSSES, CACHED_MINI_BATCH
    surgery     prepare_model: the one step that patches the model for graphs and kernels
    trainer     PackedTrainer: the step, CUDA-graph capture and replay, fit; loop_unavailable
    checkpoint  save_state / load_state, is_loop_checkpoint
    pairs       PairTokens, PairPacker: rows scored as one sequence each -> `Batch`es with token types and labels
    heads       sequence_logits: a sequence-classification head read from the packed tokens
    scoring     ScoringTrainer: PackedTrainer for rows that are scored; its loop_unavailable
"""

from .batches import BUCKET, Batch, TokenStore, no_duplicate_batches
from .checkpoint import is_loop_checkpoint
from .loss import CACHED_MINI_BATCH, LOSSES
from .trainer import READ_EVERY, READ_SECONDS, PackedTrainer, linear_schedule, loop_unavailable
from .scoring import SCORING_LOSSES, ScoringTrainer

__all__ = ["BUCKET", "Batch", "CACHED_MINI_BATCH", "LOSSES", "PackedTrainer", "READ_EVERY", "READ_SECONDS",
           "SCORING_LOSSES", "ScoringTrainer", "TokenStore", "is_loop_checkpoint", "linear_schedule",
           "loop_unavailable", "no_duplicate_batches"]
