"""Text the studio shows for copying: the equivalent `lacker train` command and the snippet that loads a result."""

from __future__ import annotations

import shlex

# Flags printed only when the value differs from the CLI's default.
_OPTIONAL_FLAGS = (
    ("data_config", "--data-config", None), ("data_split", "--split", None), ("eval_size", "--eval-size", 0.1),
    ("lora_dropout", "--lora-dropout", 0.0), ("warmup_ratio", "--warmup-ratio", 0.1), ("loss", "--loss", None),
    ("seed", "--seed", 42), ("eval_steps", "--eval-steps", None), ("save_steps", "--save-steps", None),
)


def lacker_train_command(config: dict, data: str, output: str, eval_data: str | None = None) -> str:
    """The `lacker train ...` command that runs the same job as `config` from a shell.

    `data` / `eval_data` name the sources as the user gave them (the run folder holds copies)."""
    args = ["lacker", "train", "--model", config["model"], "--data", data]
    if eval_data:
        args += ["--eval-data", eval_data]
    spec = [f"{role}={col}" for role, cols in (config.get("columns") or {}).items()
            for col in (cols if isinstance(cols, list) else [cols])]
    if spec:
        args += ["--columns", ",".join(spec)]
    if config.get("max_steps"):
        args += ["--max-steps", str(config["max_steps"])]
    else:
        args += ["--epochs", _number(config.get("epochs", 1))]
    args += ["--batch-size", str(config.get("batch_size", 32))]
    method = config.get("method", "lora")
    if method == "full":
        args.append("--full-finetune")
    else:
        args += ["--lora-r", str(config.get("lora_r", 16)), "--lora-alpha", str(config.get("lora_alpha", 16))]
        if config.get("target_modules"):
            args += ["--target-modules", ",".join(config["target_modules"])]
        if method == "qlora":
            args.append("--load-in-4bit")
    args += ["--learning-rate", _number(config.get("learning_rate", 2e-4)),
             "--max-seq-length", str(config.get("max_seq_length", 256))]
    if not eval_data:
        optional = _OPTIONAL_FLAGS
    else:
        optional = [f for f in _OPTIONAL_FLAGS if f[0] != "eval_size"]
    for key, flag, default in optional:
        if config.get(key, default) != default:
            args += [flag, _number(config[key])]
    if config.get("gradient_checkpointing"):
        args.append("--gradient-checkpointing")
    if not config.get("evaluate", True):
        args.append("--no-eval")
    args += ["--output", output]
    return " ".join(shlex.quote(a) for a in args)


def load_snippet(folder: str, kind: str, base_model: str) -> str:
    """Python that loads an exported folder (or its Hub repo id) in plain sentence-transformers."""
    note = f"# an adapter: loads {base_model} and applies it (needs `pip install peft`)\n" if kind == "adapter" else ""
    return (
        "from sentence_transformers import SentenceTransformer\n\n"
        f"{note}model = SentenceTransformer({folder!r})\n"
        "embeddings = model.encode([\"How do I reset my password?\"])\n"
        "print(embeddings.shape)\n"
    )


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
