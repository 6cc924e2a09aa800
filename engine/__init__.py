"""Lacker Studio's training engine: a library usable without the studio.

`from engine import FastSentenceTransformer` loads torch; `import engine` alone does not, so the
studio can read the family table and the data layer cheaply.
"""

__all__ = ["FastSentenceTransformer", "train", "TrainConfig"]


def __getattr__(name):
    if name == "FastSentenceTransformer":
        from engine.models import FastSentenceTransformer

        return FastSentenceTransformer
    if name in ("train", "TrainConfig"):
        from engine import train as train_module

        return getattr(train_module, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
