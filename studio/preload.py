"""The engine's model stack (torch, transformers, sentence-transformers, peft, accelerate), imported by one thread.

Gradio runs each event in a worker thread, and two events that import this stack for the first time at once see
each other's half-built modules ("cannot import name 'AutoConfig' from 'transformers'", "... from partially
initialized module 'accelerate.state'"): Compare then shows nothing for the run it opened. So whatever the studio
does with models (Compare, Export) calls `engine_stack()` first, which imports the stack under one lock, and the
app starts that in a background thread as it launches (`start`), so the page comes up at once and the first
Compare seldom waits for it.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()


def engine_stack() -> None:
    """Import the modules the studio's model work needs; returns once they are (at once after the first time)."""
    with _lock:
        import engine.evaluate  # noqa: F401  (torch, sentence-transformers, transformers)
        import engine.models  # noqa: F401  (peft, accelerate)


def start() -> threading.Thread:
    thread = threading.Thread(target=engine_stack, daemon=True, name="lacker-preload")
    thread.start()
    return thread
