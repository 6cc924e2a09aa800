"""Endpoints for programs (gradio_client), beside the ones the tabs' buttons expose.

    from gradio_client import Client
    client = Client("http://127.0.0.1:7860/")
    run = client.predict({"max_steps": 20}, "sample", api_name="/start_run")
    client.predict(run["run_id"], api_name="/run_status")
"""

from __future__ import annotations

import gradio as gr

from engine import data as data_layer
from engine.config import api_defaults
from studio.data_sources import read_source, source_from_text
from studio.events import progress_of
from studio.store import Run

DEFAULTS = api_defaults()  # every setting of engine.config.TrainConfig but the paths the studio sets itself


def run_record(studio, run: Run) -> dict:
    progress = progress_of(run.run_dir)
    return {"run_id": run.id, "status": run.status, "stage": progress.status, "task": run.config.get("task") or "embedding",
            "model": run.model, "data": run.data,
            "method": run.method, "step": progress.step, "total_steps": progress.total_steps,
            "loss_points": len(progress.losses), "queue_position": studio.runner.queue_position(run.id),
            "duration": run.duration, "metrics": run.metrics, "error": run.error, "hint": run.hint,
            "run_dir": run.run_dir}


def register(studio) -> None:
    """Add the endpoints to the Blocks being built."""

    def start_run(config: dict, data: str) -> dict:
        """Queue a run. `config`: worker config keys (defaults fill the rest; paths other than "model" are the
        studio's to set; "task" is embedding, reranker or classifier); `data`: "sample", "demo", "sections", an allowed
        local file or a Hugging Face dataset id. "model" is a Hub id or a model folder inside the allowed folders.
        Columns default to the engine's guess for the task."""
        unknown = sorted(set(config) - set(DEFAULTS))
        if unknown:
            raise gr.Error(f"unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                           f"the settings are: {', '.join(DEFAULTS)}")
        try:
            full = {**DEFAULTS, **config}
            full["model"] = studio.settings.check_model_name(str(full["model"] or ""))
            source = source_from_text(data, studio.settings, full["data_config"], full["data_split"])
            if not full["columns"]:
                full["columns"] = data_layer.guess_columns(read_source(source, studio.settings), full["task"])
            run = studio.start_run(full, source)
        except (ValueError, OSError) as problem:
            raise gr.Error(str(problem))
        return run_record(studio, run)

    def run_status(run_id: str) -> dict:
        """The run's status, progress, metrics and, for a failed run, the error and what to do."""
        try:
            return run_record(studio, studio.store.get(run_id))
        except KeyError as problem:
            raise gr.Error(str(problem))

    def stop_run(run_id: str) -> dict:
        """Cancel a queued run, or ask a running one to stop after its current step."""
        try:
            return run_record(studio, studio.runner.stop(run_id))
        except KeyError as problem:
            raise gr.Error(str(problem))

    def list_runs() -> list:
        """Every run in the registry, newest first."""
        return [run_record(studio, run) for run in studio.store.list()]

    for fn in (start_run, run_status, stop_run, list_runs):
        gr.api(fn, api_name=fn.__name__)
