"""What the studio can say about the machine without importing torch: is there a GPU, how fast
will a CPU run go, and roughly how much GPU memory a training setup needs."""

from __future__ import annotations

import shutil
import subprocess
from functools import lru_cache

# Measured with the demo preset (all-MiniLM-L6-v2, LoRA, batch 16, max_seq_length 128) on 2 vCPUs with the
# packed loop: 60 steps trained in 37 s (about 97 a minute; `lacker train --data assets/debian-pairs/train.jsonl
# --max-steps 60 --batch-size 16 --max-seq-length 128 --no-eval`, 2026-11-27), rounded down; the studio prefers
# its own measurement from finished CPU runs when it has one.
CPU_STEPS_PER_MINUTE = 90


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


def device_notice(cpu_steps_per_minute: float | None = None) -> str:
    name = gpu_name()
    if name:
        return f"GPU: {name}."
    rate = round(cpu_steps_per_minute or CPU_STEPS_PER_MINUTE)
    return (f"**No GPU found: training runs on the CPU, fine for the demo preset; expect ~{rate} steps/min** "
            "(bundled model, batch 16, sequences of 128 tokens). Bigger models or settings will be much slower; "
            "QLoRA saves memory on a GPU and runs, slowly, on the CPU.")


def gpu_memory_estimate_gb(params_m: float, layers: int, dim: int, method: str, batch_size: int,
                           max_seq_length: int, lora_r: int = 16, checkpointing: bool = False) -> float:
    """A rough peak-memory estimate in GB for training on a GPU in 16-bit.

    weights: 2 bytes a parameter (0.55 for 4-bit QLoRA); full fine-tuning adds fp32 gradients and
    AdamW's two moments (12 bytes a parameter); LoRA adds about 2*r*dim parameters per targeted
    matrix (~6 a layer) with the same 16 bytes each. Activations: ~18 values of 2 bytes per token,
    per hidden unit and layer, kept for the backward pass, for anchor and positive texts (x2); with
    gradient checkpointing, one value per hidden unit and layer plus one layer's ~18 while it is recomputed.
    """
    params = params_m * 1e6
    weights = params * (0.55 if method == "qlora" else 2.0)
    if method == "full":
        trainable = params * 16.0
    else:
        trainable = layers * 6 * 2 * lora_r * dim * 16.0
    kept = layers + 18 if checkpointing else layers * 18
    activations = 2 * batch_size * max_seq_length * dim * kept * 2.0
    overhead = 0.6e9  # CUDA context and allocator slack
    return (weights + trainable + activations + overhead) / 1e9
