"""Shared pieces of the studio tests: a studio on a temporary home, quick configs, waiting for a run, and
gradio_client calls whose inputs and outputs are named the way a user sees them."""

from __future__ import annotations

import time

from studio.app import Studio
from studio.data_sources import SAMPLE
from studio.settings import Settings
from studio.tabs.train import training_config
from studio.tabs.model import describe_model
from engine.families import DEFAULT_MODEL


def make_studio(home, poll_interval: float = 0.5) -> Studio:
    studio = Studio(Settings.from_env({"LACKER_HOME": str(home)}))
    studio.runner.poll_interval = poll_interval
    return studio


def quick_config(max_steps: int = 3, evaluate: bool = False, **overrides) -> dict:
    """The bundled model on the sample: short sequences, small batches, no evaluation by default."""
    config = training_config(describe_model(DEFAULT_MODEL), {"anchor": "query", "positive": "document"}, 0.1,
                             "lora", 8, 16, 0.0, None, 1e-3, "max steps", 1, max_steps, 8, 64, 0.1, None, 42,
                             evaluate, 50)
    config.update(overrides)
    return config


def start_sample_run(studio: Studio, **config):
    return studio.start_run(quick_config(**config), SAMPLE)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


FINISHED = ("completed", "stopped", "failed")
RUN_TIMEOUT = 300  # a CPU worker: imports, loading, a few steps, saving


def finished_api_run(client, run_id: str, timeout: float = RUN_TIMEOUT) -> dict:
    """Wait until /run_status says `run_id` finished; returns that status."""
    return wait_for(lambda: (status := client.predict(run_id, api_name="/run_status"))["status"] in FINISHED
                    and status, timeout, f"run {run_id} to finish")


def _endpoint_components(client, api_name: str, side: str) -> list[dict]:
    """The components an endpoint reads ("inputs") or writes ("outputs"), in order, without the gr.State
    ones, which the server keeps per session and gradio_client neither sends nor receives."""
    dependency = next(d for d in client.config["dependencies"] if d.get("api_name") == api_name.lstrip("/"))
    components = {component["id"]: component for component in client.config["components"]}
    return [components[i] for i in dependency[side] if components[i]["type"] != "state"]


def component_name(component: dict) -> str:
    """What a user knows a component by: "error" for the error box, else its elem_id, else its label."""
    props = component["props"]
    if "lacker-error" in (props.get("elem_classes") or []):
        return "error"
    return props.get("elem_id") or props["label"]


def outputs_by_name(client, api_name: str, values) -> dict:
    """An endpoint's output values keyed by component_name (a dropdown's come as updates: read ["value"])."""
    values = values if isinstance(values, (tuple, list)) else (values,)
    components = _endpoint_components(client, api_name, "outputs")
    assert len(components) == len(values), f"{api_name} returned {len(values)} values for {len(components)} outputs"
    return {component_name(component): value for component, value in zip(components, values)}


def inputs_by_name(client, api_name: str, named: dict) -> list:
    """An endpoint's input values in order: named[component_name] where given (an update's value), else
    what the component shows when the page opens, as a button press with the form left alone would send."""
    values = []
    for component in _endpoint_components(client, api_name, "inputs"):
        value = named.get(component_name(component), component["props"].get("value"))
        values.append(value["value"] if isinstance(value, dict) and value.get("__type__") == "update" else value)
    return values


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StudioProcess:
    """`python app.py` in its own process, as Spaces starts it, with its output in a log file.
    `python` and `cwd` default to this interpreter and the checkout."""

    def __init__(self, home, env: dict | None = None, args: tuple = (), python: str | None = None, cwd=None):
        import os
        import subprocess
        import sys
        from pathlib import Path

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_path = self.home.parent / f"studio-{self.port}.log"
        root = Path(__file__).resolve().parent.parent
        full_env = {**os.environ, "LACKER_HOME": str(self.home), "GRADIO_SERVER_NAME": "127.0.0.1",
                    "GRADIO_SERVER_PORT": str(self.port), "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen([python or sys.executable, "app.py", *args], cwd=cwd or root, env=full_env,
                                        stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_until_up()

    def _wait_until_up(self, timeout: float = 60) -> None:
        import urllib.request

        def up():
            if self.process.poll() is not None:
                raise AssertionError(f"the studio exited: {self.log_path.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(self.url, timeout=2)
                return True
            except OSError as error:
                return getattr(error, "code", None) in (401, 403)  # up, behind a login

        wait_for(up, timeout, "the studio to answer")

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except Exception:
            self.process.kill()
        self._log.close()


def register_finished_run(home, run_id: str, config: dict, train_rows, held_out):
    """A finished run of any task in the registry of a studio at `home`, as the studio would have started it:
    RUN_DIR/data/{train,eval}.jsonl with the columns named by role, then `engine.train` on them (in this process,
    so no worker or monitor is needed). `config` holds the run's settings except its paths and columns. Returns
    the registered studio.store.Run."""
    import json
    from pathlib import Path

    from engine.config import TrainConfig
    from engine.train import train
    from studio.store import COMPLETED, Run, RunStore

    run_dir = Path(home) / run_id
    (run_dir / "data").mkdir(parents=True)
    for name, rows in (("train", train_rows), ("eval", held_out)):
        rows.to_json(run_dir / "data" / f"{name}.jsonl", orient="records", lines=True, force_ascii=False)
    roles = {column: column for column in train_rows.columns}
    settings = TrainConfig.from_dict({**config, "data": str(run_dir / "data" / "train.jsonl"),
                                      "eval_data": str(run_dir / "data" / "eval.jsonl"), "columns": roles,
                                      "output_dir": str(run_dir)})
    started = time.time()
    train(settings)
    metrics = run_dir / "metrics.json"
    run = Run(id=run_id, created=time.time(), status=COMPLETED, model=settings.model, data=settings.data,
              method=settings.method, run_dir=str(run_dir), config=settings.to_json(), started=started,
              finished=time.time(), metrics=json.loads(metrics.read_text()) if metrics.exists() else None)
    return RunStore(Path(home) / "runs.sqlite").add(run)
