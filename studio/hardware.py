"""What the studio can say about the machine without importing torch: is there a GPU (how many), how long will a
run take here, and roughly how much GPU memory a training setup needs.

Time estimates come from one place, `estimate`: a step costs about k seconds per unit of `step_work` (parameters x
batch x sequences a row x tokens), with k measured from the last runs that finished on this machine (`StepSample`s), or the stated
default below until there are some. The device notice's steps a minute and the Train tab's duration are both read
from it, so they agree."""

from __future__ import annotations

import math
import os
import shutil
import statistics
import subprocess
from dataclasses import dataclass
from functools import lru_cache

# Measured with the demo preset (all-MiniLM-L6-v2, LoRA, batch 16, max_seq_length 128) on 2 vCPUs with the
# packed loop: 60 steps trained in 37 s (about 97 a minute; `lacker train --data assets/debian-pairs/train.jsonl
# --max-steps 60 --batch-size 16 --max-seq-length 128 --no-eval`, 2026-11-27), rounded down; the studio prefers
# its own measurement from finished runs when it has one.
CPU_STEPS_PER_MINUTE = 90
DEMO_SHAPE = {"params_m": 22.7, "batch_size": 16, "max_seq_length": 128}  # what that figure was measured on
CHECKPOINTING_COST = 4 / 3  # gradient checkpointing recomputes the forward: about a third slower
# Loading the model, saving it and (with evaluation) measuring both models, besides the steps; the demo preset's
# run spent about 23 s so on 2 vCPUs (55 s in all for 40 steps at ~0.8 s), without evaluation about 15 s.
DEFAULT_OVERHEAD_SECONDS = {True: 25.0, False: 15.0}
# Sequences a model reads per training row (the batch size counts rows, per GPU): a bi-encoder embeds the anchor and
# the positive apart; a cross-encoder reads a (query, document) pair as one sequence (its default
# BinaryCrossEntropyLoss trains on one pair a row, the mined negatives being rows of their own); a classifier one text
# (a text pair is one sequence too).
SEQUENCES_PER_ROW = {"embedding": 2, "reranker": 1, "classifier": 1}
# A reranker trained on pairs first mines hard negatives among its training documents (engine.tasks.reranker): for the
# reranker preset's 1,000 pairs that took 137 s on 2 vCPUs shared with five other jobs (load average ~10, 2026-12-02),
# so about 20 s alone; the studio prefers its own measurement from finished reranker runs.
TASK_OVERHEAD_SECONDS = {"reranker": 20.0}
CPU_LONG_SECONDS = 600  # past this a CPU run gets a warning before Start
SAMPLES_USED = 5  # the latest finished runs the estimate is measured from


def step_work(params_m: float | None, batch_size: int, max_seq_length: int | None,
              checkpointing: bool = False, task: str = "embedding") -> float:
    """The relative cost of one training step on one device: parameters (millions; the bundled model's when unknown)
    x rows (per GPU) x the task's sequences a row x tokens a sequence, a third more with gradient checkpointing."""
    work = ((params_m or DEMO_SHAPE["params_m"]) * batch_size * SEQUENCES_PER_ROW.get(task, 2)
            * (max_seq_length or DEMO_SHAPE["max_seq_length"]))
    return work * (CHECKPOINTING_COST if checkpointing else 1.0)


@dataclass(frozen=True)
class StepSample:
    """What one finished run on this machine says about its speed."""

    seconds_per_step: float
    work: float  # its step_work
    overhead_seconds: float  # its whole duration less the training steps
    evaluate: bool
    task: str = "embedding"  # what it trained: mining negatives and measuring differ per task


@dataclass(frozen=True)
class Estimate:
    seconds: float
    step_seconds: float
    measured_runs: int  # how many finished runs it comes from; 0: the stated default

    @property
    def steps_per_minute(self) -> float:
        return 60 / self.step_seconds

    @property
    def basis(self) -> str:
        if self.measured_runs:
            runs = "run" if self.measured_runs == 1 else f"{self.measured_runs} runs"
            return f"from the speed of the last {runs} finished on this machine"
        return (f"no run has finished here yet, so this assumes {CPU_STEPS_PER_MINUTE} steps a minute for "
                f"all-MiniLM-L6-v2 at batch {DEMO_SHAPE['batch_size']} and {DEMO_SHAPE['max_seq_length']} tokens "
                "(measured on 2 CPU cores) and scales it by model size, batch and sequence length")


def estimate(steps: int, work: float, evaluate: bool, samples: list[StepSample] | tuple = (),
             task: str = "embedding") -> Estimate | None:
    """How long a run of `steps` steps of `work` each takes here; None on a GPU with no run measured yet (the
    default is a CPU's). The time besides the steps is measured on runs of the same task (a reranker mines its
    negatives first), else the stated default."""
    samples = list(samples)[:SAMPLES_USED]
    default_overhead = DEFAULT_OVERHEAD_SECONDS[evaluate] + TASK_OVERHEAD_SECONDS.get(task, 0.0)
    if samples:
        per_work = statistics.median(s.seconds_per_step / s.work for s in samples)
        alike = [s.overhead_seconds for s in samples if s.evaluate == evaluate and s.task == task]
        overhead = statistics.median(alike) if alike else default_overhead
    elif gpu_name():
        return None
    else:
        per_work = 60 / CPU_STEPS_PER_MINUTE / step_work(**DEMO_SHAPE)
        overhead = default_overhead
    step_seconds = per_work * work
    return Estimate(seconds=steps * step_seconds + overhead, step_seconds=step_seconds, measured_runs=len(samples))


def demo_speed(samples: list[StepSample] | tuple = ()) -> Estimate | None:
    """The demo preset's shape, one step: what the device notice quotes."""
    return estimate(1, step_work(**DEMO_SHAPE), evaluate=False, samples=samples)


def about(seconds: float) -> str:
    """A duration as a person says it: "under a minute", "about 4 minutes", "about 1 h 20 min"."""
    minutes = seconds / 60
    if minutes < 1:
        return "under a minute"
    if minutes < 1.5:
        return "about a minute"
    if minutes < 90:
        return f"about {round(minutes)} minutes"
    hours, rest = divmod(int(math.ceil(minutes / 10) * 10), 60)
    return f"about {hours} h {rest:02d} min" if rest else f"about {hours} h"


def gpu_count() -> int:
    """How many GPUs a run here may use: nvidia-smi's, fewer where CUDA_VISIBLE_DEVICES names fewer; 0 without one."""
    if not gpu_name():
        return 0
    listed = _smi_gpus()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        listed = min(listed, len([d for d in visible.split(",") if d.strip()]))
    return listed


@lru_cache(maxsize=1)
def _smi_gpus() -> int:
    out = subprocess.run([shutil.which("nvidia-smi") or "nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=10)
    return len(out.stdout.strip().splitlines()) if out.returncode == 0 else 1


@lru_cache(maxsize=1)
def gpu_name() -> str | None:
    """The first NVIDIA GPU's name and memory ("NVIDIA H100 80GB HBM3, 81559 MiB"), or None."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    line = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    return line or None


def device_notice(samples: list[StepSample] | tuple = ()) -> str:
    name = gpu_name()
    if name:
        return f"GPU: {name}."
    rate = round(demo_speed(samples).steps_per_minute)
    return (f"**No GPU found: training runs on the CPU, fine for the demo preset; expect ~{rate} steps/min** "
            f"(bundled model, batch {DEMO_SHAPE['batch_size']}, sequences of {DEMO_SHAPE['max_seq_length']} tokens"
            f"{'' if samples else '; measured here once a run finishes'}). Bigger models or settings will be much "
            "slower (the Train tab estimates each run before Start); QLoRA saves memory on a GPU and runs, slowly, "
            "on the CPU.")


def gpu_memory_estimate_gb(params_m: float, layers: int, dim: int, method: str, batch_size: int,
                           max_seq_length: int, lora_r: int = 16, checkpointing: bool = False,
                           task: str = "embedding", gpus: int = 1) -> float:
    """A rough peak-memory estimate in GB for training on one GPU in 16-bit (each of `gpus`, at `batch_size` rows
    apiece).

    weights: 2 bytes a parameter (0.55 for 4-bit QLoRA); full fine-tuning adds fp32 gradients and
    AdamW's two moments (12 bytes a parameter); LoRA adds about 2*r*dim parameters per targeted
    matrix (~6 a layer) with the same 16 bytes each. Activations: ~18 values of 2 bytes per token,
    per hidden unit and layer, kept for the backward pass, for each sequence the task reads a row
    (SEQUENCES_PER_ROW); with gradient checkpointing, one value per hidden unit and layer plus one layer's ~18 while
    it is recomputed. Data parallel (gpus > 1) adds the all-reduce's buckets: another 4 bytes a trainable parameter.
    """
    params = params_m * 1e6
    weights = params * (0.55 if method == "qlora" else 2.0)
    trainable_params = params if method == "full" else layers * 6 * 2 * lora_r * dim
    trainable = trainable_params * 16.0
    buckets = trainable_params * 4.0 if gpus > 1 else 0.0
    kept = layers + 18 if checkpointing else layers * 18
    activations = SEQUENCES_PER_ROW.get(task, 2) * batch_size * max_seq_length * dim * kept * 2.0
    overhead = 0.6e9  # CUDA context and allocator slack
    return (weights + trainable + buckets + activations + overhead) / 1e9
