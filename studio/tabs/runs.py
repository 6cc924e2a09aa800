"""Runs tab: every run in the registry with its task, opening one in Train / Compare / Export (its task and settings
with it), resuming a failed or stopped one from its last checkpoint, and overlaying curves. A line above the table
says when the registry cannot be written."""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr

from studio import charts
from studio.events import progress_of
from studio.tabs.compare import comparable_runs
from studio.ui import duration, error_box, headline_metric, hide_error, show_error

HEADERS = ["run", "status", "task", "model", "data", "method", "steps", "duration", "metric", "base", "trained",
           "started", "resumed from"]
REGISTRY_CHECK_SECONDS = 5.0


def runs_table(studio) -> list[list]:
    rows = []
    for run in studio.store.list():
        progress = progress_of(run.run_dir)
        task = run.config.get("task") or "embedding"
        key, name = headline_metric(task)
        base = ((run.metrics or {}).get("base") or {}).get(key)
        trained = ((run.metrics or {}).get("trained") or {}).get(key)
        status = run.status
        if status == "queued":
            status = f"queued (place {studio.runner.queue_position(run.id)})"
        rows.append([run.id, status, task, run.model.split("/")[-1], Path(run.data).name, run.method,
                     f"{progress.step}/{progress.total_steps or '?'}", duration(run.duration), name,
                     None if base is None else round(base, 4), None if trained is None else round(trained, 4),
                     time.strftime("%Y-%m-%d %H:%M", time.localtime(run.created)), run.resumed_from or ""])
    return rows


def registry_notice(studio) -> dict:
    """The registry's write problem as a visible box, or nothing."""
    problem = studio.store.write_problem
    return show_error(problem) if problem else hide_error()


def build(studio, ui) -> None:
    registry = error_box()
    with gr.Row():
        refresh = gr.Button("Refresh", scale=1)
    table = gr.Dataframe(headers=HEADERS, value=runs_table(studio), interactive=False, label="All runs",
                         elem_id="runs-table", max_height=400)
    with gr.Row():
        open_pick = gr.Dropdown(label="Run", choices=[], scale=3, allow_custom_value=True)
        open_btn = gr.Button("Open in Train, Compare and Export", variant="primary", scale=1)
        resume_btn = gr.Button("Resume from its last checkpoint", interactive=False, scale=1, elem_id="resume-run")
    resume_error = error_box()
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

    def resumable(run_id):
        try:
            run = studio.store.get(run_id)
        except KeyError:
            return gr.update(interactive=False)
        return gr.update(interactive=studio.runner.can_resume(run))

    def resume(run_id):
        """Queue the resumed run and show it in the Train tab, where its curve goes on from the checkpoint."""
        try:
            resumed = studio.runner.resume(run_id)
        except (KeyError, ValueError, OSError) as problem:
            return gr.skip(), show_error(str(problem).strip("'\"")), gr.skip(), gr.skip()
        return resumed.id, hide_error(), runs_table(studio), gr.Tabs(selected="train")

    def overlay(run_ids):
        if not run_ids:
            return None
        return charts.overlay_figure({run_id: progress_of(studio.store.get(run_id).run_dir) for run_id in run_ids or []})

    refresh.click(refresh_all, None, [table, open_pick, overlay_pick], api_visibility="private")
    ui.runs_tab.select(refresh_all, None, [table, open_pick, overlay_pick], api_visibility="private")
    gr.Timer(REGISTRY_CHECK_SECONDS).tick(lambda: registry_notice(studio), None, registry, api_visibility="private",
                                          show_progress="hidden")
    ui.demo.load(lambda: registry_notice(studio), None, registry, api_visibility="private")
    open_pick.change(resumable, open_pick, resume_btn, api_visibility="private")
    resume_btn.click(resume, open_pick, [ui.run_state, resume_error, table, ui.tabs], api_name="resume_run").then(
        ui.show_run, ui.run_state, ui.shown_outputs, api_visibility="private")
    open_btn.click(open_run, open_pick, [ui.run_state, ui.compare_run, ui.export_run, ui.tabs], api_name="open_run").then(
        ui.show_run, ui.run_state, ui.shown_outputs, api_visibility="private")  # its settings, data and command
    overlay_pick.change(overlay, overlay_pick, overlay_plot, api_visibility="private")
