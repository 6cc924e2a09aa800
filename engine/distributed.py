"""Data-parallel training on several GPUs (or CPU processes) through torch.distributed.

A run on N devices is N copies of the same process, one a rank, started by `torchrun --nproc-per-node N`
(what `lacker train --gpus N` runs for the user, `torchrun_command`), `accelerate launch`, or torchrun's
rendezvous on several hosts: each reads RANK, WORLD_SIZE and LOCAL_RANK from its environment (`current`) and
`setup` joins the process group (NCCL on CUDA, gloo on a CPU) with `COLLECTIVE_TIMEOUT` on every collective, so
that a rank that hangs ends the run instead of freezing it. Every rank builds the same model (same seed) and
the same plan of global batches; each trains on its share (`share`) of every global batch, the packed loop
gathers the in-batch candidates of all ranks with their gradients (`gather_columns`) and sums the gradients
(`all_reduce_sum`), so N ranks at batch B a device train as one at N x B.

Rank 0 alone writes (events, checkpoints, adapter/, merged/, metrics): `is_main`. The ranks agree on a stop
through `StopAgreement` on a gloo group beside the main one, so a stop asked of any of them ends all of them
after the same step. Nothing here assumes one host.

`current` and `is_main` read the environment only: importing this module imports no torch.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta

# Rank 0 evaluates and saves while the others wait in their next collective: generous, but finite, so a rank
# that died without its connection closing (a lost host) still ends the run. LACKER_COLLECTIVE_TIMEOUT
# (seconds) overrides it.
COLLECTIVE_TIMEOUT = timedelta(seconds=float(os.environ.get("LACKER_COLLECTIVE_TIMEOUT", 1800)))
BUCKET_BYTES = 64 << 20  # gradients all-reduced in flat buckets of about this size
# How long torchrun lets the ranks take to stop after SIGTERM before it kills them: rank 0 finishes its step and
# saves a checkpoint and the model (torchrun's own default, 30 s, is too short for a large model's merged save).
STOP_GRACE_SECONDS = 600


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run: `rank` of `size`, `local_rank` on its host."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def current() -> World:
    """The world torchrun (or accelerate launch) described in this process's environment; one rank without it."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def is_main() -> bool:
    """Whether this process is rank 0, the one that writes."""
    return current().main


def torchrun_command(gpus: int, module_args: list[str]) -> list[str]:
    """The command that runs `python -m MODULE_ARGS...` as `gpus` ranks on this host (torchrun's standalone
    rendezvous: a free port, nothing shared with other runs)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
            "-m", *module_args]


def run_ranks(gpus: int, module_args: list[str]) -> int:
    """Run `python -m MODULE_ARGS...` as `gpus` ranks under torchrun and wait; SIGTERM and SIGINT to this process go
    on to torchrun, which passes them to every rank. Returns torchrun's exit status (not 0 after a signal, even
    when the ranks stopped cleanly: the run's events say how it ended)."""
    import signal
    import subprocess

    import torch

    if torch.cuda.is_available() and gpus > torch.cuda.device_count():  # a CPU runs that many gloo processes
        raise ValueError(f"gpus {gpus} is more than the {torch.cuda.device_count()} GPUs this machine has; pick at "
                         f"most {torch.cuda.device_count()}")
    env = {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(STOP_GRACE_SECONDS), **os.environ}
    child = subprocess.Popen(torchrun_command(gpus, module_args), env=env)

    def forward(signum, frame):
        child.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        return child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


_control = None  # the gloo group the ranks agree on stops through (a CPU one, also beside NCCL)


def setup() -> World:
    """Join the process group this process's environment describes (once; a no-op for one rank). On CUDA each
    rank takes the GPU of its LOCAL_RANK, before anything is put on a device."""
    global _control
    world = current()
    if not world.distributed:
        return world
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            if world.local_rank >= torch.cuda.device_count():
                raise RuntimeError(f"rank {world.rank} wants GPU {world.local_rank}, but this host has "
                                   f"{torch.cuda.device_count()}; start at most that many processes a host")
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=COLLECTIVE_TIMEOUT,
                                device_id=torch.device("cuda", world.local_rank) if cuda else None)
    if _control is None:
        _control = dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT)
    return world


def teardown() -> None:
    global _control
    if current().distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    _control = None


def share(rows, world: World):
    """This rank's part of a global batch `rows`: contiguous, the sizes differing by one at most (a short last
    batch), and `sizes`, every rank's count, known to all ranks without asking (the same plan everywhere)."""
    import numpy as np

    parts = np.array_split(rows, world.size)
    return parts[world.rank], [len(p) for p in parts]


def gather_columns(tensor, sizes: list[int]):
    """(columns, rows, d) on each rank -> (columns, sum(sizes), d): each column's rows of every rank in rank order,
    so that a global batch split by `share` is put back in its order. The gradient flows back to the rank each
    part came from (torch.distributed.nn.functional.all_gather, what sentence-transformers' gather_across_devices
    uses). `sizes`: each rank's row count; shorter parts are padded for the collective and cut back after."""
    import torch
    import torch.nn.functional as F
    from torch.distributed.nn.functional import all_gather

    longest = max(sizes)
    padded = F.pad(tensor, (0, 0, 0, longest - tensor.shape[1])) if tensor.shape[1] < longest else tensor
    parts = all_gather(padded.contiguous())
    return torch.cat([part[:, :n] for part, n in zip(parts, sizes)], dim=1)


def all_reduce_sum(tensors: list) -> None:
    """Sum `tensors` over the ranks in place, in flat buckets of about BUCKET_BYTES (one collective for the
    small gradients of a LoRA, a few for a full fine-tune) of one dtype each. Capturable in a CUDA graph on NCCL."""
    import torch
    import torch.distributed as dist

    buckets: dict = {}
    for tensor in tensors:
        open_ = buckets.setdefault(tensor.dtype, [[]])
        if open_[-1] and sum(t.numel() for t in open_[-1]) * tensor.element_size() >= BUCKET_BYTES:
            open_.append([])
        open_[-1].append(tensor)
    for groups in buckets.values():
        for group in groups:
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.all_reduce(flat)
            for tensor, reduced in zip(group, flat.split([t.numel() for t in group])):
                tensor.copy_(reduced.view_as(tensor))


def broadcast_from_main(tensors: list) -> None:
    """Rank 0's values of `tensors` on every rank (the trainable weights at the start: the same seed should give
    the same, this makes sure)."""
    import torch.distributed as dist

    for tensor in tensors:
        dist.broadcast(tensor.data, src=0)


class StopAgreement:
    """Whether the ranks stop, the same answer on each, asked once a step. Each rank offers its own `stop` flag
    after a step; the answer at the next step is whether any rank offered one, so every rank stops after the
    same step, one step after the first that was asked to. The collective runs on the gloo group in the
    background: no rank waits on the others for it, nor syncs its GPU."""

    def __init__(self, world: World):
        self.world = world
        self._pending = None

    def should_stop(self, stop) -> bool:
        if not self.world.distributed:
            return stop.is_set()
        import torch
        import torch.distributed as dist

        decided = False
        if self._pending is not None:
            work, value = self._pending
            work.wait()
            decided = bool(value.item())
        if decided:
            self._pending = None
            stop.set()  # this rank stops too, as asked of another: what follows sees a stopped run
            return True
        value = torch.tensor([int(stop.is_set())])
        self._pending = (dist.all_reduce(value, op=dist.ReduceOp.MAX, group=_control, async_op=True), value)
        return False

    def settle(self) -> None:
        """Wait for the last offer (call once the loop ends, so that no collective is left in flight)."""
        if self._pending is not None:
            self._pending[0].wait()
            self._pending = None


def is_peer_lost(error: BaseException) -> bool:
    """Whether `error` is a collective that failed because another rank went away (died, was killed, timed out)."""
    name = type(error).__name__
    text = str(error)
    return name in ("DistBackendError", "DistNetworkError", "DistError") or any(
        words in text for words in ("Connection closed by peer", "Connection reset by peer", "NCCL error",
                                    "Timed out waiting", "timed out", "Broken pipe"))
