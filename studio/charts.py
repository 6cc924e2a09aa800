"""Plotly figures: the loss curve (raw, smoothed, eval points), run overlays, text-length histograms, a
classifier's rows per label, what training did to the held-out queries' similarity to their own documents, and a
classifier's confusion matrices before and after."""

from __future__ import annotations

from statistics import median

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


def label_distribution(labels: dict[str, int]) -> go.Figure:
    """Rows per class (a classifier's labels, most common first), so an imbalance shows before training."""
    fig = go.Figure(go.Bar(x=[str(label) for label in labels], y=list(labels.values()), marker_color="rgb(99,110,250)",
                           text=list(labels.values()), textposition="outside"))
    fig.update_xaxes(title_text="label", type="category")
    fig.update_yaxes(title_text="rows")
    return _layout(fig, f"Rows per label ({len(labels)} labels)")


MARGIN_BINS = 30


def similarity_margins_figure(view: dict) -> go.Figure:
    """How much closer each held-out query is to its own document than to the closest other one, base model
    and fine-tuned overlaid: training that helps moves the pile to the right, across the line where the own
    document starts coming first. `view` is `RunComparison.similarity_margins()`."""
    margins = {name: [own - other for own, other in zip(view[name]["own"], view[name]["other"])]
               for name in ("base", "trained")}
    everything = [*margins["base"], *margins["trained"]]
    low, high = min(everything, default=-1.0), max(everything, default=1.0)
    bins = dict(start=low, end=high, size=(high - low) / MARGIN_BINS or 0.01)
    fig = go.Figure()
    for name, label, color in (("base", "base model", "rgb(150,150,150)"), ("trained", "fine-tuned", "rgb(99,110,250)")):
        first = sum(margin > 0 for margin in margins[name])
        fig.add_trace(go.Histogram(x=margins[name], xbins=bins, name=f"{label}: {first} of {len(margins[name])} "
                                   "queries find their own document first", marker_color=color, opacity=0.6))
    fig.add_vline(x=0, line_dash="dash", line_color="rgb(60,60,60)")
    fig.add_annotation(x=0, y=1, yref="paper", text="own document first →", xanchor="left", xshift=8, showarrow=False)
    fig.add_annotation(x=0, y=1, yref="paper", text="← another document first", xanchor="right", xshift=-8,
                       showarrow=False)
    closer = bool(everything) and median(margins["trained"]) > median(margins["base"])
    headline = ("After training, queries sit closer to their own document" if closer
                else "Training did not bring the queries closer to their own document")
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(title_text="similarity to its own document minus similarity to the closest other document")
    fig.update_yaxes(title_text="held-out queries")
    fig = _layout(fig, f"{headline}<br><sub>each held-out query once per model; further right = closer to its own "
                       "document than to any other</sub>")
    fig.update_layout(height=440, margin=dict(t=80))
    return fig


def confusion_matrices_figure(metrics: dict) -> go.Figure:
    """The base and the fine-tuned classifier's confusion matrices side by side, one colour scale: a row per true
    label, a column per predicted one, so a good model's counts sit on the diagonal. `metrics` is the run's
    {"base": {...}, "trained": {...}}, each with the task's "confusion_matrix" {"labels", "matrix"}."""
    sides = [(name, label) for name, label in (("base", "base model"), ("trained", "fine-tuned"))
             if "confusion_matrix" in (metrics.get(name) or {})]
    fig = make_subplots(rows=1, cols=len(sides), horizontal_spacing=0.12,
                        subplot_titles=[f"{label}: {_right(metrics[name]['confusion_matrix'])}" for name, label in sides])
    highest = max((max(map(max, metrics[name]["confusion_matrix"]["matrix"]), default=0) for name, _ in sides), default=0)
    for column, (name, label) in enumerate(sides, start=1):
        known = metrics[name]["confusion_matrix"]
        fig.add_trace(go.Heatmap(z=known["matrix"], x=known["labels"], y=known["labels"], zmin=0, zmax=max(highest, 1),
                                 colorscale="Blues", showscale=column == len(sides), text=known["matrix"],
                                 texttemplate="%{text}", name=label,
                                 hovertemplate="true %{y}, predicted %{x}: %{z} texts<extra>" + label + "</extra>"),
                      row=1, col=column)
        fig.update_xaxes(title_text="predicted", row=1, col=column)
        fig.update_yaxes(title_text="true label" if column == 1 else None, autorange="reversed", row=1, col=column)
    fig = _layout(fig, "Confusion matrices on the held-out texts<br><sub>a row per true label; counts on the "
                       "diagonal are right</sub>")
    classes = len(metrics[sides[0][0]]["confusion_matrix"]["labels"]) if sides else 0
    fig.update_layout(height=max(420, 120 + 40 * classes), margin=dict(t=100))
    return fig


def _right(confusion: dict) -> str:
    matrix = confusion["matrix"]
    total = sum(map(sum, matrix))
    return f"{sum(matrix[i][i] for i in range(len(matrix)))} of {total} right"
