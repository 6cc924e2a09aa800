"""Lacker Studio's training engine: a library usable without the studio.

`from engine import FastSentenceTransformer` (or FastCrossEncoder) loads torch; `import engine` alone does not, so the
studio can read the family table and the data layer cheaply.
"""

import logging

__all__ = ["FastSentenceTransformer", "FastCrossEncoder", "FastClassifier", "train", "TrainConfig"]


class HeldBackLog(logging.Filter):
    """Keeps a logger's records instead of letting them through, until `release()` emits them."""

    def __init__(self, logger_name: str):
        super().__init__()
        self.logger = logging.getLogger(logger_name)
        self.records: list[logging.LogRecord] = []
        self.logger.addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False

    def release(self) -> None:
        self.logger.removeFilter(self)
        for record in self.records:
            self.logger.handle(record)
        self.records.clear()


# peft imports bitsandbytes whenever sentence-transformers is imported, and bitsandbytes then logs that
# its CPU 4-bit matmul needs `pip install kernels`. That concerns 4-bit (QLoRA) models only, so the
# warning is held here, before any engine module imports sentence-transformers, and shown when a model
# is loaded in 4 bits (engine.models).
bitsandbytes_cpu_warnings = HeldBackLog("bitsandbytes.backends.cpu.ops")


def __getattr__(name):
    if name in ("FastSentenceTransformer", "FastCrossEncoder", "FastClassifier"):
        from engine import models

        return getattr(models, name)
    if name in ("train", "TrainConfig"):
        from engine import train as train_module

        return getattr(train_module, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
