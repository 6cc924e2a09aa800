"""The Model and Train tabs' GPU memory estimate, as a user reads it."""

import re

from studio.tabs.model import memory_summary

EMBEDDINGGEMMA = {"params_m": 303, "layers": 24, "dim": 768}


def gigabytes(text: str) -> float:
    return float(re.search(r"~([\d.]+) GB", text).group(1))


def test_gradient_checkpointing_lowers_the_estimate_and_says_so():
    plain = memory_summary(EMBEDDINGGEMMA, "lora", 64, 1024, 16)
    recomputed = memory_summary(EMBEDDINGGEMMA, "lora", 64, 1024, 16, checkpointing=True)
    assert "gradient checkpointing" in recomputed and "gradient checkpointing" not in plain
    assert gigabytes(recomputed) < gigabytes(plain) / 5  # activations: 24 + 18 values a unit, not 24 x 18
    # QLoRA's 4-bit base still shows under checkpointing
    assert gigabytes(memory_summary(EMBEDDINGGEMMA, "qlora", 64, 1024, 16, checkpointing=True)) < gigabytes(recomputed)
