"""A run's settings: `TrainConfig`, the one place each setting is declared.

Each field carries its type, default, help text and, where they apply, its choices, bounds and command-line
flag. Everything else is derived from these fields:
- `add_train_arguments` builds `lacker train`'s flags, and `config_from_args` reads them back;
- `command_line` writes the `lacker train ...` command that reproduces a config (the studio shows it);
- `TrainConfig.from_dict` is the one check of a config, whoever wrote it (the CLI, the studio's form, the API,
  a hand-written config.json): unknown keys, wrong types and values out of bounds get a message naming the field.
- `api_defaults` gives the settings a caller of the studio's API may set, with their defaults.

Adding a setting is one field here. This module imports neither torch nor pandas.
"""

from __future__ import annotations

import argparse
import dataclasses
import numbers
import os
import shlex
import typing
from dataclasses import dataclass, field

from engine.families import DEFAULT_MODEL
from engine.tasks import TASKS

METHODS = ("lora", "qlora", "full")
MAX_PASSES = 1000  # passes over the training rows a run may make (max_steps x batch_size / rows)
LOOP_MODES = ("auto", "on", "off")
MERGED_DTYPES = ("auto", "float32", "float16", "bfloat16")


def setting(default, help: str, *, flag: str | None = None, choices=None, minimum=None, maximum=None,
            cli: bool = True, api: bool = True, shown: bool = False, aliases: dict | None = None):
    """A config field. `flag`: the CLI flag (default --name-with-dashes; a boolean that defaults to True gets a
    --no-... flag); `minimum` / `maximum`: inclusive bounds; `cli`/`api`: whether `lacker train` / the studio's API take it; `shown`: always
    written in the shell command, even at its default (the settings a reader looks for first);
    `aliases`: extra flags that set this field to a fixed value ({"--full-finetune": "full"})."""
    return field(default=default, metadata={
        "help": help, "flag": flag, "choices": choices, "minimum": minimum, "maximum": maximum,
        "cli": cli, "api": api, "shown": shown, "aliases": aliases or {},
    })


@dataclass
class TrainConfig:
    """Everything a run needs; RUN_DIR/config.json holds one of these as a JSON object.

    Example::

        from engine.train import train
        result = train({"data": "assets/debian-pairs/train.jsonl", "max_steps": 200, "output_dir": "runs/first"})
    """

    task: str = setting("embedding", "what to train: " + "; ".join(f"{name} ({task.SUMMARY})"
                                                                  for name, task in TASKS.items()),
                        choices=tuple(TASKS))
    model: str = setting(DEFAULT_MODEL, "hub id or local folder of the model to fine-tune", shown=True)
    data: object = setting(None, "CSV/TSV/JSON/JSONL/Parquet file, or a Hugging Face dataset id (a pandas "
                                 "DataFrame from Python)", api=False)
    data_config: str | None = setting(None, "the dataset's configuration (Hugging Face datasets)")
    data_split: str | None = setting(None, "the dataset split to read (Hugging Face datasets)", flag="--split")
    data_name: str | None = setting(None, "how the model card names the data (default: the data file's name, or "
                                    "the dataset id)")
    eval_data: object = setting(None, "a separate held-out file (default: split --eval-size off --data)", api=False)
    eval_size: float = setting(0.1, "held-out fraction of the rows, or a row count when >= 1", minimum=0.0)
    extra_corpus: str | None = setting(None, "a file of more documents to search among when evaluating", api=False)
    columns: dict | None = setting(None, "role=column pairs: anchor=COL,positive=COL[,negative=COL][,score=COL]"
                                         "[,label=COL]; guessed from the column names when left out", shown=True)
    method: str = setting("lora", "lora, qlora (a 4-bit NF4 base through bitsandbytes) or full fine-tuning",
                          choices=METHODS, aliases={"--full-finetune": "full", "--load-in-4bit": "qlora"})
    lora_r: int = setting(16, "LoRA rank", minimum=1, maximum=1024, shown=True)
    lora_alpha: int = setting(16, "LoRA alpha (the update is scaled by alpha / r)", minimum=1, maximum=4096,
                              shown=True)
    lora_dropout: float = setting(0.0, "dropout on the LoRA branch", minimum=0.0, maximum=0.9)
    target_modules: list[str] | None = setting(None, "comma-separated LoRA targets (default: the family's "
                                                     "attention and MLP projections)")
    learning_rate: float = setting(2e-4, "peak learning rate", minimum=1e-9, maximum=1.0, shown=True)
    epochs: float = setting(1.0, "passes over the training rows (ignored when --max-steps is given)",
                            minimum=0.001, maximum=1000.0)
    max_steps: int | None = setting(None, "optimizer steps; overrides --epochs", minimum=1, maximum=10_000_000,
                                    shown=True)
    batch_size: int = setting(32, "rows per batch (in-batch negatives: each anchor sees batch_size candidates)",
                              minimum=1, maximum=65_536, shown=True)
    max_seq_length: int | None = setting(256, "tokens per text; longer texts are cut", minimum=8, maximum=131_072,
                                         shown=True)
    warmup_ratio: float = setting(0.1, "share of the steps the learning rate warms up over", minimum=0.0,
                                  maximum=1.0)
    loss: str | None = setting(None, "sentence-transformers loss class name (default: from the column roles)")
    class_weights: bool = setting(False, "classifier: weight the loss by scikit-learn's balanced class weights, so "
                                         "rare labels count as much as common ones")
    mine_with: str | None = setting(None, "reranker: the bi-encoder (hub id or folder) that mines hard negatives for "
                                          "pairs and retrieves the held-out candidates (default: the bundled "
                                          "all-MiniLM-L6-v2)")
    negatives: int = setting(3, "reranker: hard negatives mined per (query, positive) pair", minimum=1, maximum=100)
    seed: int = setting(42, "random seed (data order, split, LoRA init)", minimum=0, maximum=2**32 - 1)
    evaluate: bool = setting(True, "measure the base and the trained model on the held-out split",
                             flag="--no-eval")
    max_eval_queries: int = setting(500, "held-out queries the retrieval metrics use at most", minimum=1,
                                    maximum=1_000_000)
    eval_steps: int | None = setting(None, "also evaluate every N steps", minimum=1)
    save_steps: int | None = setting(None, "also checkpoint every N steps (checkpoints come every --save-seconds, "
                                           "at the end and on a stop in any case)", minimum=1)
    save_seconds: float = setting(120.0, "also checkpoint once this many seconds of training have passed since the "
                                         "last checkpoint (0: only --save-steps, the end and a stop)", minimum=0.0)
    resume_from_checkpoint: str | None = setting(None, "resume from a checkpoint folder, or 'latest' in --output",
                                                 flag="--resume", api=False)
    gradient_checkpointing: bool = setting(False, "recompute activations in the backward: less GPU memory for "
                                                  "long sequences, about a third slower")
    fast: bool = setting(True, "use the GPU fast path (packed attention, fused kernels) where it applies",
                         flag="--no-fast")
    # "auto": the packed loop (engine.loop) for the losses it runs (embeddings' in-batch negatives, a reranker's
    # BinaryCrossEntropyLoss, a classifier's cross-entropy) wherever the fast path is on (GPU: CUDA graphs; CPU:
    # eager, packed through PyTorch's attention); "on" even with the fast path off; "off" always the task's stock
    # trainer.
    gpus: int = setting(1, "GPUs to train on, data parallel (torchrun starts a process a GPU); --batch-size is "
                           "each GPU's, so the global batch is gpus x batch_size", minimum=1, maximum=1024)
    loop: str = setting("auto", "the packed training loop: auto, on, or off (the stock trainer)",
                        choices=LOOP_MODES)
    merged_dtype: str = setting("auto", "dtype of the saved merged model: auto (float32 after training on a CPU, "
                                "16-bit on a GPU), float32, float16 or bfloat16", choices=MERGED_DTYPES)
    output_dir: str = setting("runs/latest", "run folder: adapter/, merged/, events.jsonl, metrics.json",
                              flag="--output", api=False)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Check `values` (unknown keys, types, bounds, choices) and build a config; ValueError names the field."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                             f"known settings are: {', '.join(names)}")
        hints = typing.get_type_hints(cls)
        checked = {name: _typed(name, value, hints[name]) for name, value in values.items()}
        config = cls(**checked)
        config.check()
        return config

    def check(self) -> None:
        """Bounds, choices and the checks across fields; ValueError names the setting and what it takes."""
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if value is None or isinstance(value, bool):
                continue
            if meta["choices"] and value not in meta["choices"]:
                raise ValueError(f"{f.name} {value!r} is not one of {', '.join(meta['choices'])}")
            if isinstance(value, numbers.Real):
                if meta["minimum"] is not None and value < meta["minimum"]:
                    raise ValueError(f"{f.name} must be at least {meta['minimum']}, got {value}")
                if meta["maximum"] is not None and value > meta["maximum"]:
                    raise ValueError(f"{f.name} must be at most {meta['maximum']}, got {value}")
        if self.data is None:
            raise ValueError("no data given: pass a CSV/TSV/JSON/JSONL/Parquet file or a Hugging Face dataset id")
        if self.eval_size <= 0:
            raise ValueError(f"eval_size must be a fraction between 0 and 1 (e.g. 0.1) or a row count (e.g. 200), "
                             f"got {self.eval_size}")
        if self.eval_size >= 1:
            if self.eval_size != int(self.eval_size):
                raise ValueError(f"eval_size {self.eval_size} is neither a fraction below 1 nor a whole row count")
            self.eval_size = int(self.eval_size)

    def check_against(self, train_rows: int, max_positions: int | None = None, hidden_size: int | None = None) -> None:
        """The bounds that depend on the data and the model: a batch no larger than the training rows, at most
        MAX_PASSES passes over them, sequences no longer than the model's positions, a LoRA rank below its
        width. ValueError says which setting and what it may be."""
        if self.batch_size > train_rows:
            raise ValueError(f"batch_size {self.batch_size} is larger than the {train_rows} training rows; "
                             f"pick at most {train_rows}, or bring more data")
        if self.max_steps is not None and self.max_steps * self.batch_size > MAX_PASSES * train_rows:
            most = MAX_PASSES * train_rows // self.batch_size
            raise ValueError(f"max_steps {self.max_steps} at batch {self.batch_size} would go {MAX_PASSES}+ times over "
                             f"the {train_rows} training rows; pick at most {most} steps")
        if max_positions and self.max_seq_length and self.max_seq_length > max_positions:
            raise ValueError(f"max_seq_length {self.max_seq_length} is longer than the model's {max_positions} "
                             f"positions; pick at most {max_positions}")
        if hidden_size and self.method != "full" and self.lora_r > hidden_size:
            raise ValueError(f"lora_r {self.lora_r} is larger than the model's width ({hidden_size}); "
                             f"pick at most {hidden_size} (8 to 64 is usual)")

    def to_json(self) -> dict:
        values = dataclasses.asdict(self)
        for key in ("data", "eval_data"):
            if values[key] is not None and not isinstance(values[key], (str, os.PathLike)):
                values[key] = f"<{type(values[key]).__name__}>"
            elif values[key] is not None:
                values[key] = str(values[key])
        return values


def _typed(name: str, value, hint):
    """`value` if it fits the field's type (an int where a float is wanted becomes a float), else ValueError."""
    if hint is object:
        return value
    if value is None:
        if type(None) in typing.get_args(hint):
            return None
        raise ValueError(f"{name} needs a value, got none")
    origin = _base_type(hint)
    if origin is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name} must be true or false, got {value!r}")
    if origin is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"{name} must be a whole number, got {value!r}" + _quoted_hint(value))
    if origin is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{name} must be a number, got {value!r}" + _quoted_hint(value))
    if origin is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{name} must be text, got {value!r}")
    if origin is list:
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ValueError(f"{name} must be a list of names, got {value!r}")
    if origin is dict:
        if isinstance(value, dict):
            return value
        raise ValueError(f"{name} must be a mapping of role to column, got {value!r}")
    return value


def _quoted_hint(value) -> str:
    return " (a number in quotes is text: leave the quotes out)" if isinstance(value, str) else ""


# --- the command line, derived from the fields -------------------------------------------------------------------

def _flag(f: dataclasses.Field) -> str:
    if f.metadata["flag"]:
        return f.metadata["flag"]
    return "--" + f.name.replace("_", "-")


def _cli_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(TrainConfig) if f.metadata["cli"]]


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _column_spec(text: str) -> dict:
    from engine.data import DataError, parse_column_spec

    try:
        return parse_column_spec(text)
    except DataError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def add_train_arguments(parser: argparse.ArgumentParser, required: tuple[str, ...] = ("data", "output_dir")) -> None:
    """One flag per field of TrainConfig. Defaults stay in the dataclass: a flag left out is absent from the
    parsed namespace (argparse.SUPPRESS), so `config_from_args` fills it from the field's default."""
    hints = typing.get_type_hints(TrainConfig)
    length = parser.add_mutually_exclusive_group()
    for f in _cli_fields():
        meta = f.metadata
        default_note = "" if f.default is None or isinstance(f.default, bool) else f" (default {f.default})"
        kwargs = {"dest": f.name, "default": argparse.SUPPRESS, "help": meta["help"] + default_note}
        base = _base_type(hints[f.name])
        if base is bool:
            kwargs["action"] = "store_false" if f.default else "store_true"
            if f.default:
                kwargs["help"] = "do not " + meta["help"]
        elif f.name == "resume_from_checkpoint":
            kwargs.update(nargs="?", const="latest", metavar="CHECKPOINT")
        else:
            kwargs["type"] = {int: int, float: float, list: _comma_list, dict: _column_spec}.get(base, str)
            if meta["choices"]:
                kwargs["choices"] = meta["choices"]
            else:
                kwargs["metavar"] = _flag(f).lstrip("-").replace("-", "_").upper()
        if f.name in required:
            kwargs["required"] = True
        target = length if f.name in ("epochs", "max_steps") else parser
        target.add_argument(_flag(f), **kwargs)
        for alias, value in meta["aliases"].items():
            parser.add_argument(alias, dest=f.name, action="store_const", const=value, default=argparse.SUPPRESS,
                                help=f"the same as {_flag(f)} {value}")


def _base_type(hint):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args else hint
    return typing.get_origin(base) or base


def config_from_args(args: argparse.Namespace) -> dict:
    """The config keys a parsed `lacker train` command line set (the rest keep their defaults)."""
    names = {f.name for f in _cli_fields()}
    return {name: value for name, value in vars(args).items() if name in names}


def command_line(config: dict, data: str, output: str, eval_data: str | None = None) -> str:
    """The `lacker train ...` command that runs the same job as `config` from a shell.

    `data` / `eval_data` name the sources as the user gave them (a studio run folder holds copies). Every setting
    that differs from its default is written, and the `shown` ones always, so the command reads on its own."""
    values = {**config, "data": data, "eval_data": eval_data, "output_dir": output}
    hints = typing.get_type_hints(TrainConfig)
    words = ["lacker", "train"]
    by_steps = values.get("max_steps") is not None
    lora = values.get("method", "lora") != "full"
    for f in _cli_fields():
        value = values.get(f.name, f.default)
        if f.name == "epochs" and by_steps:
            continue  # max_steps overrides it
        always = f.name in ("data", "output_dir", "epochs") or (f.metadata["shown"] and value is not None)
        if f.name.startswith("lora_") and not lora:
            always = False
        if value == f.default and not always:
            continue
        words += _render(f, value, _base_type(hints[f.name]))
    return " ".join(shlex.quote(word) for word in words)


def _render(f: dataclasses.Field, value, base) -> list[str]:
    if base is bool:
        return [_flag(f)] if value != f.default else []
    if value is None:
        return []
    for alias, aliased in f.metadata["aliases"].items():
        if value == aliased:
            return [alias]
    if base is list:
        return [_flag(f), ",".join(value)]
    if base is dict:
        spec = [f"{role}={column}" for role, columns in value.items()
                for column in (columns if isinstance(columns, list) else [columns])]
        return [_flag(f), ",".join(spec)]
    if f.name == "resume_from_checkpoint" and value == "latest":
        return [_flag(f)]
    return [_flag(f), repr(value) if isinstance(value, float) else str(value)]


def api_defaults() -> dict:
    """The settings a caller of the studio's API may set, with their defaults (paths stay the studio's)."""
    return {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.metadata["api"]}


def _field(name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(TrainConfig) if f.name == name)


def default(name: str):
    """The default of one setting (the studio's form starts from these)."""
    return _field(name).default


def bounds(name: str) -> tuple:
    """(minimum, maximum) of one setting, None where it has none (the studio's number boxes use them)."""
    meta = _field(name).metadata
    return meta["minimum"], meta["maximum"]
