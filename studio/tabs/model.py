"""Model tab: the curated models, any Hub id or an allowed local folder, and a GPU memory estimate."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from engine.families import CURATED_MODELS, DEFAULT_MODEL, family_by_name, family_for
from engine.resolve import model_availability
from studio.hardware import gpu_memory_estimate_gb
from studio.ui import error_box, hide_error, show_error

_CURATED = {m.model_id: m for m in CURATED_MODELS}


def curated_table() -> list[list]:
    return [[m.model_id, m.family, m.params_m, m.dim, m.layers, m.max_seq_length,
             ", ".join(family_by_name(m.family).lora_targets), m.note] for m in CURATED_MODELS]


def describe_model(name: str, local_folder: Path | None = None) -> dict:
    """What the studio knows about a model before loading it: family, size, LoRA targets."""
    curated = _CURATED.get(name)
    if curated is not None:
        family = family_by_name(curated.family)
        return {"model": name, "source": "curated", "family": family.name, "params_m": curated.params_m,
                "dim": curated.dim, "layers": curated.layers, "max_seq_length": curated.max_seq_length,
                "lora_targets": list(family.lora_targets),
                "note": "; ".join(filter(None, (curated.note, model_availability(name))))}
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


def model_summary(info: dict) -> str:
    size = f"{info['params_m']:.0f}M parameters" if info.get("params_m") else "size unknown until loaded"
    family = info.get("family") or "not in the family table"
    targets = ", ".join(info["lora_targets"]) or "all linear layers"
    return (f"**Selected:** `{info['model']}` · family **{family}** · {size}"
            + (f" · {info['dim']}-dim embeddings" if info.get("dim") else "")
            + f"\n\nDefault LoRA targets: {targets}" + (f"\n\n_{info['note']}_" if info.get("note") else ""))


def memory_summary(info: dict, method: str, batch_size: int, max_seq_length: int, lora_r: int,
                   checkpointing: bool = False) -> str:
    if not (info.get("params_m") and info.get("layers") and info.get("dim")):
        return "**GPU memory estimate:** unknown for this model (its size is known once it is loaded)."
    gb = gpu_memory_estimate_gb(info["params_m"], info["layers"], info["dim"], method, int(batch_size),
                                int(max_seq_length), int(lora_r), checkpointing)
    return (f"**GPU memory estimate:** ~{gb:.1f} GB for {method}, batch {int(batch_size)}, "
            f"{int(max_seq_length)} tokens{', gradient checkpointing' if checkpointing else ''} "
            "(a rough guide: weights + trainable state + activations).")


def build(studio, ui) -> None:
    gr.Markdown("Pick the embedding model to fine-tune. A Hub model is downloaded (once, into the Hugging Face "
                "cache) when training starts; the bundled **all-MiniLM-L6-v2** also works offline and is what the "
                "demo preset trains.")
    with gr.Row():
        model_id = gr.Dropdown(choices=list(_CURATED), value=DEFAULT_MODEL, allow_custom_value=True, scale=3,
                               label="Model: pick a curated one or type any Hugging Face Hub id")
        local_path = gr.Textbox(label="...or a local model folder", placeholder="/models/my-embedder", scale=2)
        use_local = gr.Button("Use this folder", scale=1)
    error = error_box()
    info_md = gr.Markdown(model_summary(describe_model(DEFAULT_MODEL)))
    memory_md = gr.Markdown(memory_summary(describe_model(DEFAULT_MODEL), "lora", 32, 256, 16))
    gr.Dataframe(value=curated_table(), interactive=False, wrap=True, label="Curated models (every family the engine supports)",
                 headers=["model", "family", "params (M)", "dim", "layers", "max tokens", "LoRA targets", "note"],
                 column_widths=["30%", "9%", "7%", "6%", "6%", "7%", "23%", "12%"])
    state = gr.State(describe_model(DEFAULT_MODEL))

    def pick(text: str):
        """A Hub id, or a local folder inside the allowed folders (checked whichever box it was typed in)."""
        text = (text or "").strip()
        if not text:
            return gr.skip(), gr.skip(), show_error("type a model id, for example sentence-transformers/all-MiniLM-L6-v2")
        try:
            name = studio.settings.check_model_name(text)
            if not Path(name).is_absolute():
                info = describe_model(name)
            elif (Path(name) / "config.json").exists():
                info = describe_model(name, Path(name))
            else:
                raise ValueError(f"{text} holds no config.json; give the folder a model was saved to")
        except (ValueError, OSError) as error:  # PathNotAllowed is a ValueError
            return gr.skip(), gr.skip(), show_error(str(error))
        return info, model_summary(info), hide_error()

    model_id.change(pick, model_id, [state, info_md, error], api_name="select_model")
    use_local.click(pick, local_path, [state, info_md, error], api_name="select_local_model")
    local_path.submit(pick, local_path, [state, info_md, error], api_visibility="private")
    ui.model_state, ui.model_id, ui.memory_md = state, model_id, memory_md
