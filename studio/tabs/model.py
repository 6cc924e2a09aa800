"""Model tab: what to train (an embedding model, a reranker or a classifier), the curated models for it, any Hub id
or an allowed local folder, and a GPU memory estimate for the task."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from engine.families import CURATED_MODELS, DEFAULT_MODEL, curated_for, family_by_name, family_for
from engine.resolve import model_availability
from studio.hardware import gpu_memory_estimate_gb
from studio.ui import error_box, hide_error, show_error

_CURATED = {m.model_id: m for m in CURATED_MODELS}
TASK_CHOICES = [("Embedding model", "embedding"), ("Reranker", "reranker"), ("Classifier", "classifier")]
TASK_NAMES = {value: label for label, value in TASK_CHOICES}
TASK_INTROS = {
    "embedding": "An **embedding model** (a sentence-transformers bi-encoder) turns each text into a vector, so that a "
                 "query lands near the texts it should find: for search and retrieval.",
    "reranker": "A **reranker** (a sentence-transformers cross-encoder) reads a query and a document together and "
                "scores how well the document answers it: it reorders a search's top hits. A bi-encoder checkpoint "
                "gets a new score head; a trained reranker keeps its own.",
    "classifier": "A **classifier** (transformers' sequence classification) puts a text, or a pair of texts, in one of "
                  "the classes its labels name: topics, intents, sentiment.",
}
# What the memory estimate's batch counts, per task (SEQUENCES_PER_ROW in studio.hardware says what each costs).
BATCH_ROWS = {"embedding": "pairs", "reranker": "(query, document) pairs", "classifier": "texts"}


def curated_table(task: str = "embedding") -> list[list]:
    return [[m.model_id, m.family, m.params_m, m.dim, m.layers, m.max_seq_length,
             ", ".join(family_by_name(m.family).lora_targets), _note(m, task)] for m in curated_for(task)]


def _note(curated, task: str) -> str:
    return "; ".join(filter(None, (curated.note, curated.task_notes.get(task))))


def describe_model(name: str, local_folder: Path | None = None, task: str = "embedding") -> dict:
    """What the studio knows about a model before loading it: family, size, LoRA targets."""
    curated = _CURATED.get(name)
    if curated is not None:
        family = family_by_name(curated.family)
        return {"model": name, "source": "curated", "family": family.name, "params_m": curated.params_m,
                "dim": curated.dim, "layers": curated.layers, "max_seq_length": curated.max_seq_length,
                "lora_targets": list(family.lora_targets),
                "note": "; ".join(filter(None, (_note(curated, task), model_availability(name))))}
    if local_folder is None:
        return {"model": name, "source": "hub", "family": None, "params_m": None, "dim": None, "layers": None,
                "max_seq_length": None, "lora_targets": [],
                "note": f"not in the curated list: {model_availability(name)}; LoRA targets every linear layer"}
    config = json.loads((local_folder / "config.json").read_text())
    family = family_for(config.get("model_type", ""))
    dim = config.get("hidden_size") or config.get("dim") or config.get("d_model")
    layers = config.get("num_hidden_layers") or config.get("n_layers")
    vocab = config.get("vocab_size") or 0
    params_m = (12 * layers * dim * dim + vocab * dim) / 1e6 if dim and layers else None
    return {"model": str(local_folder), "source": "local", "family": family.name if family else None,
            "params_m": params_m, "dim": dim, "layers": layers,
            "max_seq_length": config.get("max_position_embeddings"),
            "lora_targets": list(family.lora_targets) if family else [],
            "note": f"local folder, model type {config.get('model_type', 'unknown')}"}


def model_summary(info: dict, task: str = "embedding") -> str:
    size = f"{info['params_m']:.0f}M parameters" if info.get("params_m") else "size unknown until loaded"
    family = info.get("family") or "not in the family table"
    targets = ", ".join(info["lora_targets"]) or "all linear layers"
    width = (f" · {info['dim']}-dim embeddings" if task == "embedding" else f" · hidden size {info['dim']}") \
        if info.get("dim") else ""
    return (f"**Selected:** `{info['model']}` as {TASK_NAMES.get(task, task).lower()} · family **{family}** · {size}"
            + width + f"\n\nDefault LoRA targets: {targets}" + (f"\n\n_{info['note']}_" if info.get("note") else ""))


def memory_summary(info: dict, method: str, batch_size: int, max_seq_length: int, lora_r: int,
                   checkpointing: bool = False, task: str = "embedding", gpus: int = 1) -> str:
    if not (info.get("params_m") and info.get("layers") and info.get("dim")):
        return "**GPU memory estimate:** unknown for this model (its size is known once it is loaded)."
    gpus = int(gpus or 1)
    gb = gpu_memory_estimate_gb(info["params_m"], info["layers"], info["dim"], method, int(batch_size),
                                int(max_seq_length), int(lora_r), checkpointing, task, gpus)
    where = (f" on each of {gpus} GPUs (a global batch of {gpus * int(batch_size)})" if gpus > 1 else "")
    return (f"**GPU memory estimate:** ~{gb:.1f} GB{where} for {method}, batch {int(batch_size)} "
            f"{BATCH_ROWS.get(task, 'rows')}, {int(max_seq_length)} tokens"
            f"{', gradient checkpointing' if checkpointing else ''} "
            "(a rough guide: weights + trainable state + activations).")


def build(studio, ui) -> None:
    task = gr.Radio(TASK_CHOICES, value="embedding", label="What to train", elem_id="task")
    intro = gr.Markdown(TASK_INTROS["embedding"], elem_id="task-intro")
    gr.Markdown("A Hub model is downloaded (once, into the Hugging Face cache) when training starts; the bundled "
                "**all-MiniLM-L6-v2** also works offline, for every task, and is what the demo presets train.")
    with gr.Row():
        model_id = gr.Dropdown(choices=[m.model_id for m in curated_for("embedding")], value=DEFAULT_MODEL,
                               allow_custom_value=True, scale=3,
                               label="Model: pick a curated one or type any Hugging Face Hub id")
        local_path = gr.Textbox(label="...or a local model folder", placeholder="/models/my-embedder", scale=2)
        use_local = gr.Button("Use this folder", scale=1)
    error = error_box()
    info_md = gr.Markdown(model_summary(describe_model(DEFAULT_MODEL)), elem_id="model-summary")
    memory_md = gr.Markdown(memory_summary(describe_model(DEFAULT_MODEL), "lora", 32, 256, 16))
    table = gr.Dataframe(value=curated_table(), interactive=False, wrap=True, elem_id="curated-models",
                         label="Curated models for this task",
                         headers=["model", "family", "params (M)", "dim", "layers", "max tokens", "LoRA targets", "note"],
                         column_widths=["30%", "9%", "7%", "6%", "6%", "7%", "20%", "15%"])
    state = gr.State(describe_model(DEFAULT_MODEL))

    def pick(text: str, task_value: str):
        """A Hub id, or a local folder inside the allowed folders (checked whichever box it was typed in)."""
        text = (text or "").strip()
        if not text:
            return gr.skip(), gr.skip(), show_error("type a model id, for example sentence-transformers/all-MiniLM-L6-v2")
        try:
            name = studio.settings.check_model_name(text)
            if not Path(name).is_absolute():
                info = describe_model(name, task=task_value)
            elif (Path(name) / "config.json").exists():
                info = describe_model(name, Path(name), task=task_value)
            else:
                raise ValueError(f"{text} holds no config.json; give the folder a model was saved to")
        except (ValueError, OSError) as error:  # PathNotAllowed is a ValueError
            return gr.skip(), gr.skip(), show_error(str(error))
        return info, model_summary(info, task_value), hide_error()

    def task_changed(task_value: str, current: str):
        """The task's curated models; the model picked stays (any encoder trains as any task: a bi-encoder
        checkpoint becomes a cross-encoder or a classifier with a new head), so a run opened again keeps its own."""
        offered = [m.model_id for m in curated_for(task_value)]
        return (gr.update(choices=offered, value=current or DEFAULT_MODEL), curated_table(task_value),
                TASK_INTROS[task_value])

    model_id.change(pick, [model_id, task], [state, info_md, error], api_name="select_model")
    use_local.click(pick, [local_path, task], [state, info_md, error], api_name="select_local_model")
    local_path.submit(pick, [local_path, task], [state, info_md, error], api_visibility="private")
    task.change(task_changed, [task, model_id], [model_id, table, intro], api_name="select_task").then(
        pick, [model_id, task], [state, info_md, error], api_visibility="private")
    ui.model_state, ui.model_id, ui.memory_md, ui.task = state, model_id, memory_md, task
