"""The engine's model stack (torch, transformers, sentence-transformers, peft, accelerate), imported by one thread.

Gradio runs each event in a worker thread, and two events that import this stack for the first time at once see
each other's half-built modules ("cannot import name 'AutoConfig' from 'transformers'", "... from partially
initialized module 'accelerate.state'"): Compare then shows nothing for the run it opened. So whatever the studio
does with models (Compare, Export) calls `engine_stack()` first, which imports the stack under one lock. Not at
the app's start: imported there in a thread beside the first page's load events, a browser test's run then
trained the default 250 steps rather than the 20 typed into the form (the page's restore came after the typing).
"""

from __future__ import annotations

import threading

_lock = threading.Lock()


def engine_stack() -> None:
    """Import the modules the studio's model work needs; returns once they are (at once after the first time)."""
    with _lock:
        import engine.evaluate  # noqa: F401  (torch, sentence-transformers, transformers)
        import engine.models  # noqa: F401  (peft, accelerate)
