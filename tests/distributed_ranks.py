"""What each rank runs in tests/test_distributed.py, started by torchrun (gloo on the CPU):

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/distributed_ranks.py loops CHECKPOINT OUT
        the packed loop at batch 4 a rank, in-batch negatives gathered (plain and cached loss) and, to show what
        the gathering is for, not gathered; rank 0 writes the losses and final weights to OUT (torch.save);
        on CUDA (NCCL, bf16, CUDA graphs) where there is one GPU a rank
    ... tests/distributed_ranks.py fail|kill RUN_DIR
        engine.worker on RUN_DIR, rank 1 raising an error (fail) or killed by SIGKILL (kill) at its third step
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

BATCH_PER_RANK, STEPS, LEARNING_RATE, WARMUP = 4, 6, 5e-3, 0.2


def train_loop(checkpoint, cached: bool, world=None, device: str = "cpu"):
    """Losses and final trainable weights of the packed loop on tests/test_loop.py's rows; dropout off."""
    from engine.loop import PackedTrainer
    from test_loop import ANCHORS, NEGATIVES, POSITIVES, lora_model

    model, _ = lora_model("tiny-bert", checkpoint, packed=True, device=device)
    per_rank = BATCH_PER_RANK * (2 if world is not None and not world.distributed else 1)
    trainer = PackedTrainer(model, [ANCHORS, POSITIVES, NEGATIVES], batch_size=per_rank, learning_rate=LEARNING_RATE,
                            steps=STEPS, warmup_ratio=WARMUP, mini_batch=4 if cached else None, world=world)
    records = []
    trainer.fit(on_steps=records.extend)
    weights = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    return {"losses": [r[1] for r in records], "weights": weights, "plan": [rows.tolist() for rows in trainer.plan],
            "graph_note": trainer.graph_note, "graphed": any(not isinstance(g, str) for g in trainer.graphs.values())}


def loops(checkpoint: str, out: str) -> None:
    import torch

    from engine import distributed
    from engine.loop import trainer as loop_trainer

    world = distributed.setup()
    device = f"cuda:{world.local_rank}" if torch.cuda.is_available() else "cpu"
    results = {"gathered": train_loop(checkpoint, cached=False, device=device),
               "cached": train_loop(checkpoint, cached=True, device=device)}
    gathered_loss = loop_trainer.in_batch_loss

    def local_only(embeddings, batch, scale, sizes=None, rank=0):  # plain DDP: each rank's own candidates only
        return gathered_loss(embeddings, batch, scale) * batch / sum(sizes)

    loop_trainer.in_batch_loss = local_only
    results["local"] = train_loop(checkpoint, cached=False, device=device)
    if world.main:
        torch.save(results, out)
    distributed.teardown()


def failing_worker(how: str, run_dir: str) -> int:
    from engine import distributed
    from engine.loop import PackedTrainer
    from engine.worker import main

    step = PackedTrainer.run_step

    def run_step(self, packed):
        if distributed.current().rank == 1 and self.step == 2:
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("the disk of rank one caught fire")
        step(self, packed)

    PackedTrainer.run_step = run_step
    return main([run_dir])


if __name__ == "__main__":
    if sys.argv[1] == "loops":
        loops(*sys.argv[2:])
    else:
        sys.exit(failing_worker(*sys.argv[1:]))
