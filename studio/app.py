"""The studio: a Gradio Blocks app with tabs Model, Data, Train, Compare, Export and Runs.

    python app.py                       # as Hugging Face Spaces starts it (GRADIO_SERVER_NAME / _PORT honoured)
    lacker studio [--port 7860] [--auth user:password]
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import types
from pathlib import Path

import gradio as gr
from starlette.middleware import Middleware

from engine import atomic
from engine.tasks import task_module
from studio import api, hardware
from engine.config import command_line
from engine.families import CURATED_MODELS
from studio.data_sources import RUN_SOURCE, DataSource, read_source, shown_data, shown_eval_data, write_run_data
from studio.events import progress_of
from studio.login import ClientAddress, LoginThrottle
from studio.runner import Runner
from studio.settings import Settings
from studio.store import COMPLETED, FAILED, Run, RunStore
from studio.tabs import compare, data, export, model, runs, train
from studio.tabs.model import describe_model
from studio.ui import CSS

logger = logging.getLogger(__name__)

CURATED_PARAMS_M = {m.model_id: m.params_m for m in CURATED_MODELS}
STUDIO_PATHS = ("data", "eval_data", "extra_corpus", "output_dir", "resume_from_checkpoint")


class Studio:
    """What every tab shares: the settings, the run registry and the runner."""

    def __init__(self, settings: Settings, warm_compare: bool = False):
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        self.store = RunStore(settings.registry_path)
        self.runner = Runner(self.store, settings.home, on_finish=self._warm_compare if warm_compare else None)

    def _warm_compare(self, run: Run) -> None:
        """Load a finished run's two models and encode its held-out split in the background, so
        Compare answers at once (on a CPU that takes as long as a few training steps)."""
        if run.status == FAILED or not (Path(run.run_dir) / "merged").exists():
            return

        def warm():
            from studio.comparison import comparison_for

            try:
                comparison_for(run)
            except Exception:  # Compare will show the same problem when it is opened
                logger.exception("preparing Compare for run %s failed", run.id)

        threading.Thread(target=warm, name=f"compare-{run.id}", daemon=True).start()

    def start_run(self, config: dict, source: DataSource) -> Run:
        """Check the settings and the data against the mapping, then queue the run (its folder gets a copy of
        the data). ValueError names a bad setting (PathNotAllowed a model path outside the allowed folders);
        DataError a problem in the data."""
        from engine.config import TrainConfig

        named = {"data_name": config.get("data_name") or source.card_name}  # the card names the data, not its copy
        checked = TrainConfig.from_dict({**config, "data": source.label, **named}).to_json()
        # Paths are the studio's to set: the run folder holds the data's copies and is the output.
        config = {key: value for key, value in checked.items() if key not in STUDIO_PATHS}
        config["model"] = self.settings.check_model_name(config["model"])  # the form and the API alike
        table = read_source(source, self.settings)
        task_module(config["task"]).validate(table, config["columns"] or {}, source.name, loss=config["loss"])

        def write_data(run_dir: Path) -> dict:
            overrides = write_run_data(run_dir, source, self.settings, config["columns"], config["eval_size"],
                                       config["seed"], config["task"])
            shown = {**config, "data_config": source.config, "data_split": source.split}
            (run_dir / "command.txt").write_text(command_line(
                shown, shown_data(source, overrides), str(run_dir), eval_data=shown_eval_data(source, overrides)) + "\n")
            # config.json names the run's copies of the data; Open in Train shows what the user picked.
            atomic.write_text(run_dir / RUN_SOURCE, json.dumps({"source": source.to_dict(), "columns": config["columns"]}))
            return overrides

        return self.runner.submit(config, source.label, write_data)

    def source_of(self, run: Run) -> tuple[DataSource | None, dict]:
        """The data a run was started on and its column mapping, as the user picked them; (None, {}) for a run
        started before the studio kept them."""
        try:
            saved = json.loads((Path(run.run_dir) / RUN_SOURCE).read_text())
            return DataSource.from_dict(saved["source"]), saved["columns"]
        except (OSError, ValueError, KeyError, TypeError):
            return None, {}

    def command_for(self, run: Run) -> str:
        try:
            return (Path(run.run_dir) / "command.txt").read_text().strip()
        except OSError:
            return ""

    def step_samples(self) -> list[hardware.StepSample]:
        """The speed of the latest runs that completed here, newest first: what every time estimate is measured
        from. A resumed run is left out (its clock restarted at the checkpoint), and so is one whose model's size
        is unknown."""
        samples = []
        for run in self.store.list((COMPLETED,)):
            progress = progress_of(run.run_dir)
            params_m = model_params_m(run.model)
            if run.resumed_from or not (progress.elapsed and progress.step) or run.duration is None or not params_m:
                continue
            cfg = run.config
            task = cfg.get("task") or "embedding"
            work = hardware.step_work(params_m, cfg.get("batch_size") or 1, cfg.get("max_seq_length"),
                                      bool(cfg.get("gradient_checkpointing")), task)
            samples.append(hardware.StepSample(progress.elapsed / progress.step, work,
                                               max(0.0, run.duration - progress.elapsed), bool(cfg.get("evaluate")),
                                               task))
            if len(samples) == hardware.SAMPLES_USED:
                break
        return samples


def model_params_m(name: str) -> float | None:
    """Millions of parameters of a curated model or a local model folder, without loading it; None if unknown."""
    if name in CURATED_PARAMS_M:
        return CURATED_PARAMS_M[name]
    folder = Path(name)
    if folder.is_absolute() and (folder / "config.json").exists():
        return describe_model(name, folder).get("params_m")
    return None


def build_app(studio: Studio) -> gr.Blocks:
    with gr.Blocks(title="Lacker Studio") as demo:
        ui = types.SimpleNamespace(demo=demo)
        gr.Markdown("# Lacker Studio\nFine-tune an embedding model, a reranker or a classifier on your own data, "
                    "watch it train, and see it beside the base model.")
        # A callable value is worked out again on every page load: the same figure before and after a reload.
        gr.Markdown(lambda: hardware.device_notice(studio.step_samples()), elem_id="device-notice",
                    elem_classes=[] if hardware.gpu_name() else ["lacker-notice"])
        # The data this browser loaded, kept across reloads (studio.tabs.train); outside the tabs, whose contents the
        # browser builds only once they are opened, and so writes nothing for.
        ui.saved_data = gr.BrowserState(None, storage_key="lacker-data")
        with gr.Tabs(selected="model") as tabs:
            ui.tabs = tabs
            for tab_id, title, module in (("model", "Model", model), ("data", "Data", data), ("train", "Train", train),
                                          ("compare", "Compare", compare), ("export", "Export", export),
                                          ("runs", "Runs", runs)):
                with gr.Tab(title, id=tab_id) as tab:
                    setattr(ui, f"{tab_id}_tab", tab)
                    module.build(studio, ui)
        api.register(studio)
    return demo


def main(args: argparse.Namespace) -> None:
    """Serve the studio with the flags of `studio.add_arguments`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    environ = None
    if args.home:
        import os

        environ = {**os.environ, "LACKER_HOME": args.home}
    settings = Settings.from_env(environ, auth=args.auth)
    studio = Studio(settings, warm_compare=True)
    studio.runner.start_monitor()
    demo = build_app(studio)
    demo.queue(default_concurrency_limit=4)
    settings.downloads_dir.mkdir(parents=True, exist_ok=True)
    # The file route serves the export zips and Gradio's own uploads and cache (named by a hash of their content,
    # which only the session that sent or received a file learns); never the registry, the uploads kept under the
    # home, or a run's files.
    login = LoginThrottle(*settings.auth) if settings.auth else None
    demo.launch(server_name=args.host, server_port=args.port, auth=login, max_file_size=f"{settings.max_upload_mb}mb",
                allowed_paths=[str(settings.downloads_dir)],
                blocked_paths=[str(settings.registry_path), str(settings.uploads_dir)],
                app_kwargs={"middleware": [Middleware(ClientAddress)]},
                css=CSS, theme=gr.themes.Soft(), show_error=True)
