"""Text the studio shows for copying: the snippet that loads a result. (The `lacker train` command that
reproduces a run is engine.config.command_line, derived from the run's settings.)"""

from __future__ import annotations


def load_snippet(folder: str, kind: str, base_model: str) -> str:
    """Python that loads an exported folder (or its Hub repo id) in plain sentence-transformers."""
    note = f"# an adapter: loads {base_model} and applies it (needs `pip install peft`)\n" if kind == "adapter" else ""
    return (
        "from sentence_transformers import SentenceTransformer\n\n"
        f"{note}model = SentenceTransformer({folder!r})\n"
        "embeddings = model.encode([\"How do I reset my password?\"])\n"
        "print(embeddings.shape)\n"
    )
