"""Plotly figures: the loss curve (raw, smoothed, eval points), run overlays, text-length histograms
and the 2-D embedding map."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from studio.events import RunProgress

SMOOTHING = 0.8  # weight of the running average, as in TensorBoard's slider
EVAL_METRIC = "ndcg@10"


def smoothed(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """Exponential moving average with bias correction, so the first points are not pulled to zero."""
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**i))
    return out


def _layout(fig: go.Figure, title: str) -> go.Figure:
    fig.update_layout(title=title, height=380, margin=dict(l=50, r=20, t=50, b=40), template="plotly_white",
                      legend=dict(orientation="h", y=-0.2))
    return fig


def loss_figure(progress: RunProgress, title: str = "Training loss") -> go.Figure:
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    steps = [s for s, _ in progress.losses]
    losses = [loss for _, loss in progress.losses]
    fig.add_trace(go.Scatter(x=steps, y=losses, name="loss", mode="lines+markers",
                             line=dict(color="rgba(99,110,250,0.35)"), marker=dict(size=4)))
    fig.add_trace(go.Scatter(x=steps, y=smoothed(losses), name="loss (smoothed)", mode="lines",
                             line=dict(color="rgb(99,110,250)", width=3)))
    evals = [e for e in progress.evals if EVAL_METRIC in e["metrics"]]
    if evals:
        fig.add_trace(go.Scatter(x=[e["step"] for e in evals], y=[e["metrics"][EVAL_METRIC] for e in evals],
                                 name=f"eval {EVAL_METRIC}", mode="markers+text",
                                 text=[e["which"] for e in evals], textposition="middle right",
                                 marker=dict(size=11, symbol="diamond", color="rgb(239,85,59)")),
                      secondary_y=True)
        fig.update_yaxes(title_text=EVAL_METRIC, range=[0, 1.05], secondary_y=True)
    fig.update_xaxes(title_text="step", range=[0, max(progress.total_steps or 0, max(steps, default=1))])
    fig.update_yaxes(title_text="loss", secondary_y=False)
    return _layout(fig, title)


def overlay_figure(curves: dict[str, RunProgress]) -> go.Figure:
    """Smoothed loss of several runs on one chart, labelled by run id."""
    fig = go.Figure()
    for name, progress in curves.items():
        steps = [s for s, _ in progress.losses]
        fig.add_trace(go.Scatter(x=steps, y=smoothed([loss for _, loss in progress.losses]), name=name, mode="lines"))
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="loss (smoothed)")
    return _layout(fig, "Loss curves, overlaid")


def length_histogram(text_lengths: dict[str, list[int]]) -> go.Figure:
    fig = go.Figure()
    for role, lengths in text_lengths.items():
        fig.add_trace(go.Histogram(x=lengths, name=role, opacity=0.6, nbinsx=40))
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(title_text="characters")
    fig.update_yaxes(title_text="rows")
    return _layout(fig, "Text lengths by role")


def embedding_map(points: dict[str, dict]) -> go.Figure:
    """Side-by-side scatter plots. `points[name]` = {"x", "y", "kind" ("query"/"document"), "text"}."""
    fig = make_subplots(rows=1, cols=len(points), subplot_titles=list(points))
    colors = {"query": "rgb(99,110,250)", "document": "rgb(0,204,150)"}
    for col, (name, p) in enumerate(points.items(), start=1):
        for kind in ("query", "document"):
            idx = [i for i, k in enumerate(p["kind"]) if k == kind]
            fig.add_trace(go.Scatter(x=[p["x"][i] for i in idx], y=[p["y"][i] for i in idx], mode="markers",
                                     name=kind, legendgroup=kind, showlegend=col == 1,
                                     text=[p["text"][i][:120] for i in idx], hoverinfo="text",
                                     marker=dict(size=6, color=colors[kind], opacity=0.7)),
                          row=1, col=col)
    fig = _layout(fig, "Queries and documents, 2-D projection (PCA)")
    fig.update_layout(height=440)
    return fig
