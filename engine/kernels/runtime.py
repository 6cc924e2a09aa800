"""Where the Triton kernels of engine.kernels run, and the one log line a caller gives where they do not:
on CUDA tensors, or on any tensor under Triton's interpreter (TRITON_INTERPRET=1, as the CPU tests set it)."""

from __future__ import annotations

import functools
import logging
import os

import torch

try:
    import triton
except ImportError:  # every kernel's PyTorch reference serves
    triton = None


def triton_runs_on(t: torch.Tensor) -> bool:
    return triton is not None and (t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


def why_not(t: torch.Tensor) -> str:
    """Why no kernel runs on `t`, where `triton_runs_on(t)` is False."""
    return "triton is not installed" if triton is None else f"no triton kernel runs on {t.device.type}"


def log_once(logger: logging.Logger, message: str) -> None:
    """`logger.info(message)` the first time only; nothing while torch.compile traces (a logging call
    would break its graph)."""
    if not torch.compiler.is_compiling():
        _log_once(logger, message)


@functools.cache
def _log_once(logger: logging.Logger, message: str) -> None:
    logger.info(message)
