"""Small pieces every tab uses: inline error boxes, human-readable numbers and the metric each task is judged by."""

from __future__ import annotations

import gradio as gr

CSS = """
.lacker-error { border-left: 4px solid #d93025; background: #fdecea; padding: 8px 12px; border-radius: 4px; }
.lacker-notice { border-left: 4px solid #f9ab00; background: #fef7e0; padding: 8px 12px; border-radius: 4px; }
.lacker-progress-track { background: #e8eaed; border-radius: 6px; height: 18px; overflow: hidden; }
.lacker-progress-fill { background: linear-gradient(90deg, #4f6df5, #00b894); height: 100%; transition: width 0.5s; }
.lacker-progress-text { margin-top: 6px; font-variant-numeric: tabular-nums; }
"""


def error_box(elem_id: str | None = None) -> gr.Markdown:
    """A red box under a tab's inputs (or the one button it speaks for); hidden until a handler returns
    show_error(...)."""
    return gr.Markdown(visible=False, elem_classes=["lacker-error"], elem_id=elem_id)


def show_error(message: str) -> dict:
    return gr.update(value=f"**Error:** {message}", visible=True)


def hide_error() -> dict:
    return gr.update(value="", visible=False)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


# The metric a task's before / after is told by (engine.tasks' evaluations name them so), and how the page names it.
HEADLINE_METRICS = {"embedding": ("ndcg@10", "NDCG@10"), "reranker": ("ndcg@10", "NDCG@10"),
                    "classifier": ("accuracy", "accuracy")}


def headline_metric(task: str | None) -> tuple[str, str]:
    """(metrics key, page name) of the metric that says whether a run of `task` beat its base."""
    return HEADLINE_METRICS.get(task or "embedding", HEADLINE_METRICS["embedding"])
