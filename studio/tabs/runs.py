"""Runs tab: every run in the registry, opening one in Train / Compare / Export, and overlaying curves."""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr

from studio import charts
from studio.events import progress_of
from studio.tabs.compare import comparable_runs
from studio.ui import duration

HEADERS = ["run", "status", "model", "data", "method", "steps", "duration", "NDCG@10 base", "NDCG@10 trained", "started"]


def runs_table(studio) -> list[list]:
    rows = []
    for run in studio.store.list():
        progress = progress_of(run.run_dir)
        base = ((run.metrics or {}).get("base") or {}).get("ndcg@10")
        trained = ((run.metrics or {}).get("trained") or {}).get("ndcg@10")
        status = run.status
        if status == "queued":
            status = f"queued (place {studio.runner.queue_position(run.id)})"
        rows.append([run.id, status, run.model.split("/")[-1], Path(run.data).name, run.method,
                     f"{progress.step}/{progress.total_steps or '?'}", duration(run.duration),
                     None if base is None else round(base, 4), None if trained is None else round(trained, 4),
                     time.strftime("%Y-%m-%d %H:%M", time.localtime(run.created))])
    return rows


def build(studio, ui) -> None:
    with gr.Row():
        refresh = gr.Button("Refresh", scale=1)
    table = gr.Dataframe(headers=HEADERS, value=runs_table(studio), interactive=False, label="All runs",
                         elem_id="runs-table", max_height=400)
    with gr.Row():
        open_pick = gr.Dropdown(label="Run", choices=[], scale=3, allow_custom_value=True)
        open_btn = gr.Button("Open in Train, Compare and Export", variant="primary", scale=1)
    overlay_pick = gr.Dropdown(label="Overlay the loss curves of", choices=[], multiselect=True, elem_id="runs-overlay")
    overlay_plot = gr.Plot(label="Overlay", elem_id="runs-overlay-plot")

    def refresh_all():
        ids = [run.id for run in studio.store.list()]
        return runs_table(studio), gr.update(choices=ids), gr.update(choices=ids)

    def open_run(run_id):
        try:
            run = studio.store.get(run_id)
        except KeyError:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        finished_model = (Path(run.run_dir) / "merged").exists()
        keep = gr.update(choices=comparable_runs(studio), value=run_id) if finished_model else gr.skip()
        return run_id, keep, keep, gr.Tabs(selected="train")

    def overlay(run_ids):
        if not run_ids:
            return None
        return charts.overlay_figure({run_id: progress_of(studio.store.get(run_id).run_dir) for run_id in run_ids or []})

    refresh.click(refresh_all, None, [table, open_pick, overlay_pick], api_visibility="private")
    ui.runs_tab.select(refresh_all, None, [table, open_pick, overlay_pick], api_visibility="private")
    open_btn.click(open_run, open_pick, [ui.run_state, ui.compare_run, ui.export_run, ui.tabs], api_name="open_run")
    overlay_pick.change(overlay, overlay_pick, overlay_plot, api_visibility="private")
