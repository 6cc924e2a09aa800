"""Train tab: the method and hyperparameters (the task's losses; class weights for a classifier; how many GPUs
where there are several), a demo preset per task, Start / Stop, and the live view of the current run (progress,
loss curve, last log lines) that a reloaded page finds again."""

from __future__ import annotations

import html
import math
from pathlib import Path

import gradio as gr

from engine import data as data_layer
from engine.config import MAX_PASSES, bounds, default
from engine.data import DataError
from engine.families import DEFAULT_MODEL, STARTER_RERANKER
from engine.tasks import TASKS, task_module
from studio import charts, hardware
from studio.data_sources import DEMO_SAMPLE, SECTIONS_SAMPLE, DataSource, held_out_split
from studio.events import progress_of
from studio.settings import PathNotAllowed
from studio.store import QUEUED, RUNNING
from studio.tabs.data import mapping_from
from studio.tabs.model import describe_model, memory_summary
from studio.ui import duration, error_box, headline_metric, hide_error, show_error

METHODS = [("LoRA", "lora"), ("QLoRA (4-bit base; slow on a CPU)", "qlora"), ("Full fine-tuning", "full")]
LOG_LINES_SHOWN = 30

# On the demo sample (assets/vera-pairs: acronyms are short, so 48 tokens hold them and a batch of 32 costs less
# than 16 of the Debian pairs' 128-token texts did) 40 steps lift NDCG@10 on its 300 held-out queries from 0.22 to
# 0.34 with a falling loss (BENCHMARKS.md: the run and why its time is to be retaken on an idle machine).
DEMO_PRESET = {"method": "lora", "lora_r": 16, "lora_alpha": 16, "learning_rate": 1e-3, "max_steps": 40,
               "batch_size": 32, "max_seq_length": 48, "warmup_ratio": 0.1, "max_eval_queries": 300}
# One preset a task, each on the bundled model and a bundled sample, measured with the engine's metrics.json (base vs
# trained) on 2 vCPUs shared with five other jobs (load average 5 to 11, 2026-12-02), so their times are to be retaken
# on an idle machine. The classifier's 40 steps lift accuracy on 300 held-out debian-sections texts from the majority
# class's 0.13 to 0.59 (0.14 to 0.61 through the studio; 215 CPU-seconds in all). The reranker's starts from the
# starter reranker (assets/starter-reranker: a score head trained on the Debian pairs, where it lifts the retriever's
# NDCG@10 from 0.941 to 0.954 on their test split), as a new head on the bi-encoder fell below the retriever's order
# in 40 steps (0.22 -> 0.10) and stayed below it after 150 (0.125). From the starter its 40 LoRA steps lift NDCG@10 on
# the studio's 100 held-out acronyms from 0.149 to 0.163 (2026-12-03; about a minute on a 2-core CPU; on the GPU
# 0.131 -> 0.143 on vera-pairs' 300 test queries), still below the retriever's own order of them (0.238).
RERANKER_PRESET = {"model": STARTER_RERANKER, "method": "lora", "lora_r": 16, "lora_alpha": 16, "learning_rate": 1e-3,
                   "max_steps": 40, "batch_size": 32, "max_seq_length": 32, "warmup_ratio": 0.1,
                   "max_eval_queries": 100, "negatives": 3}
CLASSIFIER_PRESET = {"method": "lora", "lora_r": 16, "lora_alpha": 16, "learning_rate": 1e-3, "max_steps": 40,
                     "batch_size": 32, "max_seq_length": 64, "warmup_ratio": 0.1, "max_eval_queries": 300}
# Mining a hard negative for each of the demo sample's 7,105 pairs alone takes minutes on a CPU: the reranker's preset
# trains on its first 1,000 (and mines among them).
RERANKER_SAMPLE = DataSource("sample", DEMO_SAMPLE.location, rows=1000)
DEMO_PRESETS = {"embedding": (DEMO_SAMPLE, {"anchor": "query", "positive": "document"}, DEMO_PRESET),
                "reranker": (RERANKER_SAMPLE, {"anchor": "query", "positive": "document"}, RERANKER_PRESET),
                "classifier": (SECTIONS_SAMPLE, {"text": "text", "label": "section"}, CLASSIFIER_PRESET)}


def training_config(model_state, mapping, eval_size, method, lora_r, lora_alpha, lora_dropout, targets, learning_rate,
                    length_mode, epochs, max_steps, batch_size, max_seq_length, warmup_ratio, loss, seed, evaluate,
                    max_eval_queries, gradient_checkpointing=False, *, task="embedding", class_weights=False,
                    negatives=None, gpus=1) -> dict:
    """The worker's config.json from the form (data keys are added when the run folder is written); the studio
    checks it against engine.config.TrainConfig when the run starts."""
    default_targets = (model_state or {}).get("lora_targets") or []
    chosen = list(targets or [])
    if length_mode == "max steps" and not max_steps:
        raise ValueError("set Max steps, or train for a number of epochs")
    return {
        "task": task or "embedding",
        "model": (model_state or {}).get("model") or DEFAULT_MODEL,
        "columns": mapping,
        "eval_size": eval_size,
        "method": method,
        "lora_r": lora_r,
        "lora_alpha": lora_alpha,
        "lora_dropout": lora_dropout,
        "target_modules": None if not chosen or sorted(chosen) == sorted(default_targets) else chosen,
        "learning_rate": learning_rate,
        "epochs": epochs,
        "max_steps": max_steps if length_mode == "max steps" else None,
        "batch_size": batch_size,
        "max_seq_length": max_seq_length,
        "warmup_ratio": warmup_ratio,
        "loss": loss or None,
        "seed": seed,
        "evaluate": bool(evaluate),
        "max_eval_queries": max_eval_queries,
        "gradient_checkpointing": bool(gradient_checkpointing),
        "class_weights": bool(class_weights),
        "negatives": int(negatives) if negatives else default("negatives"),
        "gpus": int(gpus or 1),
    }


def model_info(name: str, task: str = "embedding") -> dict:
    """describe_model for a Hub id or a model folder, as the Model tab picks either."""
    folder = Path(name)
    if folder.is_absolute() and (folder / "config.json").exists():
        return describe_model(name, folder, task=task)
    return describe_model(name, task=task)


def task_losses(task: str, mapping: dict) -> tuple[list[str], str] | None:
    """(the losses `task` trains with on data mapped so, the default one); None while the mapping lacks a role the
    task needs."""
    losses = task_module(task).LOSSES
    if task == "classifier":
        shape = "text-pairs" if mapping.get("text_pair") else "texts"
        return (list(losses[shape]), losses[shape][0]) if mapping.get("text") and mapping.get("label") else None
    try:
        shape = data_layer.task_for(mapping)
        return list(losses.get(shape, [])), data_layer.default_loss(mapping, losses=losses)
    except DataError:
        return None


def run_loss(config: dict) -> str | None:
    """The loss a run trained with when it left the choice to its column roles."""
    found = task_losses(config.get("task") or "embedding", config.get("columns") or {})
    return found[1] if found else None


def setting_box(name: str, label: str, whole: bool = False) -> gr.Number:
    """A number box for one run setting: its default and bounds come from engine.config.TrainConfig."""
    minimum, maximum = bounds(name)
    if default(name) is None:  # a box left empty reads as 0, which Gradio refuses below a minimum with a bare "Error"
        minimum = None
    return gr.Number(default(name), label=label, precision=0 if whole else None, minimum=minimum, maximum=maximum)


def progress_html(progress, run_status: str) -> str:
    percent = round(progress.fraction * 100)
    total = progress.total_steps or "?"
    parts = [f"step {progress.step} / {total}", f"{percent}%", f"elapsed {duration(progress.elapsed)}",
             f"ETA {duration(progress.eta) if run_status == RUNNING and progress.eta is not None else '-'}"]
    if progress.samples_per_second:
        parts.append(f"{progress.samples_per_second:.1f} samples/s")
    return (f'<div id="run-progress" data-step="{progress.step}" data-total="{progress.total_steps or 0}" '
            f'data-percent="{percent}"><div class="lacker-progress-track"><div class="lacker-progress-fill" '
            f'style="width:{percent}%"></div></div><div class="lacker-progress-text">{" · ".join(parts)}</div></div>')


def status_markdown(studio, run, progress) -> str:
    if run.status == QUEUED:
        place = studio.runner.queue_position(run.id)
        active = studio.runner.active()
        busy = f" (run `{active.id}` is training)" if active else ""
        return f"Run `{run.id}` is **waiting: place {place} in the queue**{busy}."
    if run.status == RUNNING:
        if progress.finished:  # the worker said its last word and is exiting
            return f"Run `{run.id}`: **finishing**"
        stage = progress.status if progress.status != "queued" else "starting"
        return f"Run `{run.id}`: **{stage}**" + (f": {html.escape(progress.message)}" if progress.message else "")
    if run.status == "completed":
        trained, base = (run.metrics or {}).get("trained") or {}, (run.metrics or {}).get("base") or {}
        key, name = headline_metric(run.config.get("task"))
        gain = ""
        if key in trained and key in base:
            gain = f" {name} {base[key]:.3f} → **{trained[key]:.3f}**."
        return f"Run `{run.id}` **completed** in {duration(run.duration)}.{gain} See it in **Compare** and **Export**."
    if run.status == "stopped":
        return (f"Run `{run.id}` **stopped** at step {progress.step}; "
                + ("a checkpoint and the model were saved." if progress.step else (run.hint or "nothing was trained.")))
    return f"Run `{run.id}` **failed**: {run.error or progress.error or 'unknown error'}" + (
        f"\n\n**What to do:** {run.hint}" if run.hint else "")


def planned_steps(length_mode, epochs, max_steps, batch_size, train_rows: int | None, gpus: int = 1) -> int | None:
    """The optimizer steps the form asks for (by epochs: from the training rows, each step taking a batch on every
    GPU); None where they are unknown."""
    if length_mode == "max steps":
        return int(max_steps) if max_steps else None
    if not (epochs and batch_size and train_rows):
        return None
    return math.ceil(epochs * train_rows / (batch_size * int(gpus or 1)))


def run_estimate(studio, info: dict, steps: int, batch_size, max_seq_length, checkpointing, evaluate,
                 task: str = "embedding"):
    """hardware.estimate for the form: a step's work is one GPU's batch (each GPU steps through its own at once)."""
    work = hardware.step_work((info or {}).get("params_m"), int(batch_size or 1), max_seq_length, bool(checkpointing),
                              task)
    return hardware.estimate(steps, work, bool(evaluate), studio.step_samples(), task)


def estimate_sentence(estimate, steps: int) -> str:
    if estimate is None:
        return f"**{steps:,} steps.** The time is known once a first run has finished on this GPU."
    return (f"**Expected time: {hardware.about(estimate.seconds)} on this machine** ({steps:,} steps at about "
            f"{estimate.step_seconds:.1f} s each, loading, saving and evaluation included; {estimate.basis}).")


def plan_markdown(studio, info, data_state, eval_size, method, length_mode, epochs, max_steps, batch_size,
                  max_seq_length, checkpointing, evaluate, max_eval_queries, lora_r, task="embedding", gpus=1) -> str:
    """What Start will do, before it is pressed: how long it takes here, each setting the run caps and to what,
    and each one it would refuse. Shown beside Start and worked out again as the settings change."""
    info = info or {}
    task = task or "embedding"
    gpus = int(gpus or 1)
    lines, split = [], None
    source = DataSource.from_dict(data_state)
    if source is not None:
        try:
            split = held_out_split(source, studio.settings, float(eval_size or 0.1), task)
        except (DataError, PathNotAllowed, OSError):
            split = None
    train_rows = split.train_rows if split else None
    steps = planned_steps(length_mode, epochs, max_steps, batch_size, train_rows, gpus)
    batch = int(batch_size or 1)
    if steps is None:
        lines.append("Set Max steps to see how long the run takes." if length_mode == "max steps" else
                     "The number of steps is known once data is loaded (training by epochs).")
    else:
        estimate = run_estimate(studio, info, steps, batch, max_seq_length, checkpointing, evaluate, task)
        lines.append(estimate_sentence(estimate, steps))
        if gpus > 1:
            lines.append(f"On {gpus} GPUs: each takes a batch of {batch} a step, so a step trains on {gpus * batch:,} "
                         "rows.")
        if estimate is not None and not info.get("params_m"):
            lines.append("The model's size is unknown until it loads: this assumes one as small as all-MiniLM-L6-v2.")
        if estimate is not None and not hardware.gpu_name() and estimate.seconds > hardware.CPU_LONG_SECONDS:
            lines.append(f"⚠️ **That is long for a CPU ({hardware.about(estimate.seconds)}).** Lower Max steps, Batch "
                         "size or Max sequence length, or press the demo preset, for a run of a minute or two.")
    if train_rows is not None:
        if gpus > 1 and batch <= train_rows < batch * gpus:
            lines.append(f"⚠️ Batch size {batch} on {gpus} GPUs takes {batch * gpus:,} rows a step, more than the "
                         f"{train_rows:,} training rows. Pick at most {train_rows // gpus:,}.")
        if batch > train_rows:
            lines.append(f"⚠️ Batch size {batch} is larger than the {train_rows:,} training rows: the run would stop "
                         f"at once. Pick at most {train_rows:,}.")
        elif steps and steps * batch > MAX_PASSES * train_rows:
            lines.append(f"⚠️ {steps:,} steps at batch {batch} go more than {MAX_PASSES} times over the "
                         f"{train_rows:,} training rows: the run would refuse it. Pick at most "
                         f"{MAX_PASSES * train_rows // batch:,} steps.")
    positions = info.get("max_seq_length")
    if positions and max_seq_length and max_seq_length > positions:
        lines.append(f"⚠️ Max sequence length {int(max_seq_length)} is longer than the model's {positions} positions: "
                     f"the run would refuse it. Pick at most {positions}.")
    if info.get("dim") and method != "full" and lora_r and lora_r > info["dim"]:
        lines.append(f"⚠️ LoRA r {int(lora_r)} is larger than the model's width ({info['dim']}): the run would "
                     f"refuse it. Pick at most {info['dim']} (8 to 64 is usual).")
    if split is not None and evaluate:
        held, wanted = split.held_out_rows, int(max_eval_queries or 1)
        unit = "texts" if task == "classifier" else "queries"
        others = {"embedding": "; the documents of the others stay in the search as distractors",
                  "reranker": "; the documents of the others stay among the candidates"}.get(task, "")
        if wanted < held:
            lines.append(f"Evaluation scores {wanted:,} of the {held:,} held-out {unit} (capped by Eval queries)"
                         f"{others}.")
        elif wanted > held:
            lines.append(f"Eval queries {wanted:,} is more than the {held:,} held-out {unit}: all {held:,} are "
                         "scored.")
    return "\n\n".join(lines)


def preset_note(studio, source_dict, info, task: str = "embedding") -> str:
    """What the task's demo preset button set, read from DEMO_PRESETS and the data it loaded."""
    p = DEMO_PRESETS[task][2]
    source = DataSource.from_dict(source_dict)
    data = f"**{source.name}**" if source else "the sample"
    try:
        split = held_out_split(source, studio.settings, 0.1, task) if source else None
        rows = f" ({split.train_rows:,} training rows)" if split else ""
    except (DataError, PathNotAllowed, OSError):
        rows = ""
    estimate = run_estimate(studio, info, p["max_steps"], p["batch_size"], p["max_seq_length"], False, True, task)
    expected = f"; expected {hardware.about(estimate.seconds)} on this machine" if estimate else ""
    method = f"{p['method']} r {p['lora_r']}" if p["method"] != "full" else "full fine-tuning"
    unit = "texts" if task == "classifier" else "queries"
    return (f"Set: {task} **{info['model'].split('/')[-1]}**, data {data}{rows}, {method}, "
            f"**{p['max_steps']} steps** at batch {p['batch_size']} and {p['max_seq_length']} tokens, learning rate "
            f"{p['learning_rate']:g}, evaluation on {p['max_eval_queries']} {unit}{expected}. Press Start training.")


def build(studio, ui) -> None:
    gpu_count = hardware.gpu_count()
    with gr.Row():
        preset_btn = gr.Button("Demo preset for the task: bundled model + sample data, about a minute on a CPU",
                               variant="secondary", elem_id="demo-preset", scale=1)
        preset_md = gr.Markdown(elem_id="demo-preset-note")
    with gr.Row():
        with gr.Column(scale=1):
            method = gr.Radio(METHODS, value=default("method"), label="Method")
            with gr.Row():
                lora_r = setting_box("lora_r", "LoRA r", whole=True)
                lora_alpha = setting_box("lora_alpha", "LoRA alpha", whole=True)
                lora_dropout = setting_box("lora_dropout", "LoRA dropout")
            targets = gr.CheckboxGroup(label="LoRA target modules (from the model's family)",
                                       choices=describe_model(DEFAULT_MODEL)["lora_targets"],
                                       value=describe_model(DEFAULT_MODEL)["lora_targets"])
            loss = gr.Dropdown(label="Loss (default from the column roles)", choices=[], allow_custom_value=True)
            class_weights = gr.Checkbox(default("class_weights"), visible=False, elem_id="class-weights",
                                        label="Class weights: rare labels count as much in the loss as common ones")
        with gr.Column(scale=1):
            with gr.Row():
                learning_rate = setting_box("learning_rate", "Learning rate")
                warmup = setting_box("warmup_ratio", "Warmup ratio")
            with gr.Row():
                length_mode = gr.Radio(["max steps", "epochs"], label="Train for",
                                       value="max steps" if default("max_steps") else "epochs")
                max_steps = setting_box("max_steps", "Max steps", whole=True)
                epochs = setting_box("epochs", "Epochs")
            with gr.Row():
                batch_size = setting_box("batch_size", "Batch size", whole=True)
                max_seq_length = setting_box("max_seq_length", "Max sequence length (tokens)", whole=True)
            # Only where a run can use several: torchrun starts a process a GPU (engine.worker), each with its batch.
            gpus = gr.Slider(1, max(gpu_count, 2), value=default("gpus"), step=1, visible=gpu_count > 1,
                             label=f"GPUs to train on (data parallel; this machine has {gpu_count})", elem_id="gpus")
            checkpointing = gr.Checkbox(default("gradient_checkpointing"),
                                        label="Gradient checkpointing: less GPU memory for "
                                        "long sequences, about a third slower", elem_id="gradient-checkpointing")
            with gr.Row():
                seed = setting_box("seed", "Seed", whole=True)
                evaluate = gr.Checkbox(default("evaluate"), label="Evaluate base and trained model")
                max_eval_queries = setting_box("max_eval_queries", "Eval queries", whole=True)
    memory_md = gr.Markdown(elem_id="train-memory")
    with gr.Row(equal_height=True):
        with gr.Column(scale=1, min_width=160):
            start_btn = gr.Button("Start training", variant="primary", elem_id="start-training")
            stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-training")
        plan_md = gr.Markdown(elem_id="train-plan")
    error = error_box()
    status_md = gr.Markdown("No run yet: pick data, then Start (or use the demo preset).", elem_id="train-status")
    progress_view = gr.HTML(progress_html(progress_of("/nonexistent"), ""), elem_id="train-progress")
    loss_plot = gr.Plot(label="Loss", elem_id="loss-plot")
    logs = gr.Textbox(label="Log, newest line first", lines=8, max_lines=8, interactive=False, elem_id="train-logs")
    command = gr.Textbox(label="The same run from a shell", lines=2, max_lines=6, interactive=False,
                         buttons=["copy"], elem_id="train-command")
    run_state = gr.State(None)
    drawn = gr.State(None)  # what the loss plot shows now, so an unchanged tick sends nothing
    timer = gr.Timer(1.0)
    task = ui.task
    # The form's boxes by the TrainConfig setting each one holds: a preset and an opened run fill them by name.
    boxes = {"method": method, "lora_r": lora_r, "lora_alpha": lora_alpha, "lora_dropout": lora_dropout,
             "learning_rate": learning_rate, "epochs": epochs, "max_steps": max_steps, "batch_size": batch_size,
             "max_seq_length": max_seq_length, "warmup_ratio": warmup, "seed": seed, "evaluate": evaluate,
             "max_eval_queries": max_eval_queries, "gradient_checkpointing": checkpointing,
             "class_weights": class_weights, "negatives": ui.negatives, "gpus": gpus}

    form = [task, ui.model_state, ui.data_state, *ui.mapping_inputs, ui.eval_size, method, lora_r, lora_alpha,
            lora_dropout, targets, learning_rate, length_mode, epochs, max_steps, batch_size, max_seq_length, warmup, loss,
            seed, evaluate, max_eval_queries, checkpointing, class_weights, ui.negatives, gpus]
    roles = len(ui.mapping_inputs)

    def start(task_value, model_state, data_state, *rest):
        source = DataSource.from_dict(data_state)
        if source is None:
            return gr.skip(), show_error("no data yet: load a file, a dataset or the sample on the Data tab"), gr.skip()
        mapping = mapping_from(task_value, *rest[:roles])
        *settings, weights, negatives, gpu_choice = rest[roles:]
        try:
            config = training_config(model_state, mapping, *settings, task=task_value, class_weights=weights,
                                     negatives=negatives, gpus=gpu_choice)
            run = studio.start_run(config, source)
        except (DataError, PathNotAllowed, ValueError, OSError) as problem:
            return gr.skip(), show_error(str(problem)), gr.skip()
        return run.id, hide_error(), studio.command_for(run)

    def stop(run_id):
        if not run_id:
            return show_error("no run to stop")
        studio.runner.stop(run_id)
        return hide_error()

    def render(run_id, drawn_before):
        if not run_id:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        run = studio.store.get(run_id)
        progress = progress_of(run.run_dir)
        signature = (run_id, len(progress.losses), len(progress.evals), progress.total_steps)
        figure = charts.loss_figure(progress, f"Training loss: run {run_id}") if signature != drawn_before else gr.skip()
        log_text = "\n".join(reversed(list(progress.logs)[-LOG_LINES_SHOWN:]))  # the last word visible unscrolled
        return status_markdown(studio, run, progress), progress_html(progress, run.status), figure, log_text, signature

    settings_outputs = [task, ui.model_id, ui.model_state, targets, length_mode, loss, *boxes.values(), ui.eval_size]
    shown_outputs = [run_state, command, *settings_outputs, *ui.data_load_outputs]

    def settings_of(run) -> dict:
        """The form's settings as `run` was started with them, its task included."""
        cfg = run.config
        task_value = cfg.get("task") or default("task")
        info = model_info(cfg.get("model") or DEFAULT_MODEL, task_value)
        chosen = cfg.get("target_modules") or info["lora_targets"]
        values = {task: task_value, ui.model_id: info["model"], ui.model_state: info,
                  targets: gr.update(choices=sorted({*info["lora_targets"], *chosen}), value=chosen),
                  length_mode: "max steps" if cfg.get("max_steps") else "epochs", loss: cfg.get("loss") or run_loss(cfg)}
        for name, box in boxes.items():
            values[box] = cfg.get(name, default(name))
        values[gpus] = min(int(values[gpus] or 1), max(gpu_count, 1))  # a run from a larger machine
        fraction = cfg.get("eval_size")
        if isinstance(fraction, float) and 0 < fraction < 1:  # a row count (from the API) has no place on the slider
            values[ui.eval_size] = min(max(fraction, ui.eval_size.minimum), ui.eval_size.maximum)
        return values

    def data_view(source: DataSource, columns: dict | None, task_value: str) -> dict:
        """The Data tab showing `source` mapped as `columns` (guessed where None) for the task; nothing if it cannot
        be read or does not validate as mapped: a page load or an opened run must not greet the user with a red box
        they did not cause."""
        try:
            shown = ui.load_source(source, columns or None, task_value)
        except (DataError, PathNotAllowed, OSError, TypeError):
            return {}
        problem = shown[-1]  # the Data tab's error box, the last of its load outputs
        return {} if isinstance(problem, dict) and problem.get("visible") else dict(zip(ui.data_load_outputs, shown))

    def run_view_of(run, with_data: bool = True) -> dict:
        values = {run_state: run.id, command: studio.command_for(run), **settings_of(run)}
        source, columns = studio.source_of(run)
        if with_data and source is not None:
            values.update(data_view(source, columns, values[task]))
        return values

    def show_run(run_id):
        """Open in Train (and Resume): the form, the task, the data and the shell command become that run's."""
        try:
            return run_view_of(studio.store.get(run_id)) if run_id else gr.skip()
        except KeyError:
            return gr.skip()

    def restore(saved):
        """On page load: the running job (else the next queued one, else the latest run) with its settings and
        command, and the data this browser session had loaded (else that run's)."""
        run = studio.runner.active() or next(iter(studio.store.list((QUEUED,))), None) or next(
            iter(studio.store.list()), None)
        values = run_view_of(run, with_data=not saved) if run is not None else {}
        if saved:
            try:
                source = DataSource.from_dict(saved.get("source"))
            except (AttributeError, TypeError):
                source = None
            if source is not None:
                saved_task = saved.get("task") if saved.get("task") in TASKS else default("task")
                values.update(data_view(source, saved.get("columns"), saved_task))
                values[task] = saved_task  # the roles shown are that task's
        return values or gr.skip()

    def remember(task_value, source_dict, *roles):
        """What restore gives back after a reload: the loaded data, the task and the columns picked for it."""
        return ({"source": source_dict, "task": task_value, "columns": mapping_from(task_value, *roles)}
                if source_dict else gr.skip())

    def preset(task_value):
        """The task's demo preset: its model (the bundled one, or the starter reranker built on it), the task's sample
        mapped, and the preset's settings."""
        sample, mapping, p = DEMO_PRESETS[task_value]
        data = ui.load_source(sample, mapping, task_value, said="Columns the demo preset maps")
        model = p.get("model", DEFAULT_MODEL)
        info = describe_model(model, task=task_value)
        values = {**dict(zip(ui.data_load_outputs, data)), ui.model_state: info, ui.model_id: model,
                  length_mode: "max steps", evaluate: True, class_weights: False, gpus: 1}
        values.update({box: p.get(name, default(name)) for name, box in boxes.items() if box not in values})
        values[preset_md] = preset_note(studio, data[ui.data_load_outputs.index(ui.data_state)], info, task_value)
        return values

    def loss_choices(task_value, *rest):
        *values, current = rest
        found = task_losses(task_value, mapping_from(task_value, *values))
        if found is None:
            return gr.skip()
        choices, chosen = found
        return gr.update(choices=choices, value=current if current in choices else chosen)

    def model_changed(info, chosen):
        """The new model's targets, keeping the ones picked that it has too (a run opened again keeps its own)."""
        targets_now = info.get("lora_targets") or []
        kept = [t for t in chosen or [] if t in targets_now]
        return gr.update(choices=targets_now, value=kept or targets_now)

    def memory(info, method_value, batch, seq, r, recompute, task_value, gpu_choice):
        text = memory_summary(info or {}, method_value, batch or 1, seq or 1, r or 1, bool(recompute), task_value,
                              gpu_choice)
        return text, text

    run_view = [status_md, progress_view, loss_plot, logs, drawn]
    start_btn.click(start, form, [run_state, error, command], api_name="start_training").then(
        render, [run_state, drawn], run_view, api_visibility="private")
    stop_btn.click(stop, run_state, error, api_name="stop_training")
    max_steps.input(lambda: "max steps", None, length_mode, api_visibility="private")
    epochs.input(lambda: "epochs", None, length_mode, api_visibility="private")
    timer.tick(render, [run_state, drawn], run_view, api_visibility="private", show_progress="hidden")
    ui.demo.load(restore, ui.saved_data, shown_outputs, api_visibility="private")
    gr.on([ui.data_state.change, task.change, *(dropdown.change for dropdown in ui.mapping_inputs)], remember,
          [task, ui.data_state, *ui.mapping_inputs], ui.saved_data, api_visibility="private", trigger_mode="always_last")
    preset_btn.click(preset, task, [*ui.data_load_outputs, ui.model_state, ui.model_id, length_mode, preset_md,
                                    *boxes.values()], api_name="demo_preset")
    gr.on([task.change, *(dropdown.change for dropdown in ui.mapping_inputs)], loss_choices,
          [task, *ui.mapping_inputs, loss], loss, api_visibility="private")
    task.change(lambda value: gr.update(visible=value == "classifier"), task, class_weights, api_visibility="private")
    ui.model_state.change(model_changed, [ui.model_state, targets], targets, api_visibility="private")
    memory_inputs = [ui.model_state, method, batch_size, max_seq_length, lora_r, checkpointing, task, gpus]
    gr.on([component.change for component in memory_inputs], memory, memory_inputs, [memory_md, ui.memory_md],
          api_visibility="private", trigger_mode="always_last")
    ui.demo.load(memory, memory_inputs, [memory_md, ui.memory_md], api_visibility="private")
    plan_inputs = [ui.model_state, ui.data_state, ui.eval_size, method, length_mode, epochs, max_steps, batch_size,
                   max_seq_length, checkpointing, evaluate, max_eval_queries, lora_r, task, gpus]
    gr.on([*(component.change for component in plan_inputs), ui.train_tab.select, ui.demo.load],
          lambda *form: plan_markdown(studio, *form), plan_inputs, plan_md, api_visibility="private",
          trigger_mode="always_last", show_progress="hidden")
    ui.run_state, ui.render_run, ui.run_view = run_state, render, run_view
    ui.show_run, ui.shown_outputs = show_run, shown_outputs
