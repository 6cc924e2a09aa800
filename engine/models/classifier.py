"""FastClassifier: load any encoder as a text classifier, add LoRA, save, merge and push.

What `from_pretrained` returns IS a transformers `AutoModelForSequenceClassification` (BertForSequenceClassification,
ModernBertForSequenceClassification, ...) with `config.id2label` / `config.label2id` naming the classes, so
transformers' `Trainer` and `pipeline("text-classification")` work on it unchanged. Its tokenizer is
`model.tokenizer`. The methods the source document names (`save_pretrained`, `save_pretrained_merged`,
`push_to_hub`, `push_to_hub_merged`) are bound onto that instance and save the tokenizer and a model card with it.

The classification head (and any weight the checkpoint lacks, such as a pooler) is trained in full beside the LoRA
adapter (PEFT's modules_to_save), so a merged save is a plain transformers model: it loads with
`AutoModelForSequenceClassification.from_pretrained(DIR)` or `pipeline("text-classification", model=DIR)`
without this package.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import types
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from engine.families import lora_targets_for
from engine.models.loading import (adapters_in_fp32, default_device, head_modules, load_adapter_weights,
                                   loader_kwargs, sequence_head, torch_dtype_of)
from engine.resolve import resolve_model

logger = logging.getLogger(__name__)

GENERIC_LABEL = re.compile(r"LABEL_\d+")  # transformers' names for classes nobody named


def checkpoint_labels(config) -> list[str] | None:
    """The class names of a checkpoint that is a sequence classifier already (its own trained head), else None."""
    architectures = getattr(config, "architectures", None) or []
    if not any(name.endswith("ForSequenceClassification") for name in architectures):
        return None
    return [config.id2label[i] for i in range(config.num_labels)]


def _label_names(labels, num_labels: int | None, own: list[str] | None) -> tuple[list[str], bool]:
    """(class names in head order, whether the checkpoint's own head is kept). The head is kept when it has as
    many classes as the data; its order is kept where it names the same classes."""
    if labels is not None:
        names = [str(label) for label in labels]
        if len(set(names)) != len(names):
            raise ValueError(f"labels {list(labels)} repeat a name; give each class once")
    elif num_labels is not None:
        names = own if own and len(own) == num_labels else [f"LABEL_{i}" for i in range(num_labels)]
    elif own:
        names = own
    else:
        raise ValueError("the checkpoint has no classification head, so the classes are unknown: pass "
                         "labels=[...] (the class names) or num_labels=N")
    if len(names) < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {names}")
    keep_head = bool(own) and len(own) == len(names)
    if keep_head and set(own) == set(names):
        names = list(own)
    elif keep_head and not all(GENERIC_LABEL.fullmatch(name) for name in own):
        logger.info("the checkpoint's head classes %s are read as %s, in that order", own, names)
    return names, keep_head


def trained_in_full(model) -> list[str]:
    """The modules that are not the pretrained encoder (the classification head) and those whose weights the
    checkpoint lacked: LoRA leaves them out and trains them whole."""
    names = head_modules(model)
    missing = getattr(model, "_lacker_missing_modules", ())
    return sorted(set(names) | {m for m in missing if not any(m == n or m.startswith(n + ".") for n in names)})


class FastClassifier:
    """Loader and adapter helpers; the models it returns are plain transformers `...ForSequenceClassification`s.

    Inputs the classifier task trains on:

        | roles                    | labels                           |
        |--------------------------|----------------------------------|
        | text, label              | strings or integers, 2 or more   |
        | text, text_pair, label   | strings or integers, 2 or more   |

    Example::

        from engine import FastClassifier

        model = FastClassifier.from_pretrained("answerdotai/ModernBERT-base", labels=["admin", "games", "web"])
        FastClassifier.get_peft_model(model, r=16)
        ...  # train with transformers' Trainer (engine.tasks.classifier does)
        model.save_pretrained_merged("out/merged")

        from transformers import pipeline
        pipeline("text-classification", model="out/merged")("A real-time strategy game")
    """

    @staticmethod
    def from_pretrained(
        model_name_or_path: str,
        labels: list | None = None,
        num_labels: int | None = None,
        max_seq_length: int | None = None,
        dtype=None,
        load_in_4bit: bool = False,
        full_finetuning: bool = False,
        for_inference: bool = False,
        trust_remote_code: bool = False,
        device: str | None = None,
        **kwargs,
    ):
        """Load a model by hub id (from the local cache, the Hub or the bundled MiniLM) or local path.

        Args:
            labels: the class names (strings, or integers named by their digits), in the head's order. A checkpoint
                that is a classifier already keeps its head when it has as many classes (in its own order where the
                names match); any other model gets a new head.
            num_labels: the number of classes, when they have no names.
            max_seq_length: tokens per text (the tokenizer's `model_max_length`).
            dtype: "float32", "bfloat16", "float16" or a torch dtype; default fp32, or 16-bit on a GPU under LoRA.
            load_in_4bit: a 4-bit NF4 base (QLoRA, through bitsandbytes); the head stays in 16 bits.
            full_finetuning: train every weight (fp32 master weights).
            for_inference: eval mode, gradients off, adapters merged (see `for_inference`).
            kwargs: go to `AutoModelForSequenceClassification.from_pretrained`.
        """
        device = device or default_device()
        if (Path(model_name_or_path).expanduser() / "adapter_config.json").exists():  # our own save_pretrained
            return _from_adapter(Path(model_name_or_path).expanduser(), labels, max_seq_length=max_seq_length, dtype=dtype, load_in_4bit=load_in_4bit,
                                 for_inference=for_inference, trust_remote_code=trust_remote_code, device=device,
                                 **kwargs)
        path = resolve_model(model_name_or_path)
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        names, keep_head = _label_names(labels, num_labels, checkpoint_labels(config))
        model_kwargs = loader_kwargs(device, dtype, load_in_4bit, full_finetuning, for_inference, kwargs,
                                     keep_unquantized=sequence_head(config, len(names)) if load_in_4bit else None)

        model, loading = AutoModelForSequenceClassification.from_pretrained(
            str(path), num_labels=len(names), id2label=dict(enumerate(names)),
            label2id={name: i for i, name in enumerate(names)}, ignore_mismatched_sizes=not keep_head,
            trust_remote_code=trust_remote_code, output_loading_info=True, **model_kwargs,
        )
        if not load_in_4bit:
            model.to(device)
        model._lacker_missing_modules = sorted({key.rpartition(".")[0] for key in loading["missing_keys"]})
        model._lacker_base_path = str(path)
        model._lacker_base_name = str(model_name_or_path)
        model._lacker_own_head = keep_head
        model.tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        if max_seq_length is not None:
            model.tokenizer.model_max_length = max_seq_length
        if model.config.pad_token_id is None:  # decoders: a batch of several texts needs a padding token
            if model.tokenizer.pad_token is None:
                model.tokenizer.pad_token = model.tokenizer.eos_token
            model.config.pad_token_id = model.tokenizer.pad_token_id
        _bind_extra_methods(model)

        if load_in_4bit:
            from peft import prepare_model_for_kbit_training

            prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        if for_inference:
            FastClassifier.for_inference(model)
        return model

    @staticmethod
    def get_peft_model(
        model,
        r: int = 16,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        target_modules: list[str] | str | None = None,
        bias: str = "none",
        use_gradient_checkpointing: bool = False,
        use_rslora: bool = False,
        modules_to_save: list[str] | None = None,
        random_state: int | None = None,
        init_lora_weights: bool | str = True,
        **kwargs,
    ):
        """Add a LoRA adapter in place (the model keeps its class). target_modules=None uses the family's attention
        and MLP projections inside the encoder (PEFT's "all-linear" outside the family table); the head and the
        weights the checkpoint lacked are trained in full (`modules_to_save`, by default `trained_in_full(model)`)."""
        from peft import LoraConfig

        if random_state is not None:
            torch.manual_seed(random_state)
        whole = modules_to_save if modules_to_save is not None else trained_in_full(model)
        targets = target_modules if target_modules is not None else _encoder_targets(model, whole)
        config = LoraConfig(
            r=r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=targets,
            bias=bias,
            use_rslora=use_rslora,
            modules_to_save=whole,
            init_lora_weights=init_lora_weights,
            task_type="SEQ_CLS",
            **kwargs,
        )
        model.add_adapter(config)
        adapters_in_fp32(model)
        if use_gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        return model

    @staticmethod
    def for_inference(model):
        """Switch a model to inference in place: adapters merged into the weights, eval mode, no gradients."""
        if _has_adapter(model):
            merge_adapters_in_place(model)
        model.eval()
        model.requires_grad_(False)
        return model


def _from_adapter(folder: Path, labels, for_inference: bool, **kwargs):
    """A classifier saved by `save_pretrained` with an adapter: its base with a head of the saved classes, then the
    adapter's LoRA and trained-in-full weights."""
    from peft import LoraConfig

    config = LoraConfig.from_pretrained(str(folder))
    saved = json.loads((folder / "labels.json").read_text()) if (folder / "labels.json").exists() else None
    if labels is not None and saved is not None and [str(label) for label in labels] != saved:
        raise ValueError(f"{folder.name} was trained on the classes {saved}, not {list(labels)}; leave labels out")
    model = FastClassifier.from_pretrained(config.base_model_name_or_path, labels=saved or labels, **kwargs)
    model.add_adapter(config)
    load_adapter_weights(model, folder)
    model.tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if kwargs.get("max_seq_length") is not None:
        model.tokenizer.model_max_length = kwargs["max_seq_length"]
    if for_inference:
        FastClassifier.for_inference(model)
    return model


def _encoder_targets(model, whole: list[str]) -> list[str] | str:
    """The family's LoRA target names as a pattern that matches inside the encoder only: a head's own `dense`
    (RoBERTa's, MPNet's) is trained in full, not adapted."""
    targets = lora_targets_for(model.config.model_type)
    if isinstance(targets, str):  # "all-linear": PEFT leaves modules_to_save out itself
        return targets
    outside = "|".join(re.escape(name) for name in whole)
    inside = f"(?!(?:{outside})(?:\\.|$))" if outside else ""
    return f"^{inside}.*\\.(?:{'|'.join(re.escape(t) for t in targets)})$"


def _has_adapter(model) -> bool:
    return bool(getattr(model, "_hf_peft_config_loaded", False))


def merge_adapters_in_place(model) -> None:
    """Fold every LoRA update into its base weight, put each trained-in-full module in place of its original, and
    drop the adapter bookkeeping: what is left is the plain transformers model."""
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    for name, module in list(model.named_modules()):
        if isinstance(module, (LoraLayer, ModulesToSaveWrapper)):
            if isinstance(module, LoraLayer):
                module.merge(safe_merge=True)
                plain = module.get_base_layer()
            else:
                plain = module.modules_to_save[module.active_adapter]
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, plain)
    model._hf_peft_config_loaded = False
    if hasattr(model, "peft_config"):
        del model.peft_config


def merged_copy(model, dtype=None):
    """A copy of `model` with its adapters merged, in `dtype` (default 16-bit: bf16 where the model was loaded in
    bf16, else fp16), leaving `model` itself untouched and trainable."""
    tokenizer = model.tokenizer
    if getattr(model, "is_loaded_in_4bit", False):
        # 4-bit weights cannot be merged exactly: rebuild the 16-bit base, add the same adapter and copy the trained
        # weights over by name.
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        copy_ = FastClassifier.from_pretrained(model._lacker_base_path, labels=labels, dtype=torch.bfloat16,
                                               device=str(model.device))
        copy_.add_adapter(copy.deepcopy(model.peft_config["default"]))
        trained = {name: p for name, p in model.named_parameters() if p.requires_grad}
        with torch.no_grad():
            for name, param in copy_.named_parameters():
                if name in trained:
                    param.copy_(trained.pop(name).to(param.dtype))
        if trained:
            raise RuntimeError(f"could not place trained weights {sorted(trained)[:3]} in the 16-bit base")
    else:
        copy_ = copy.deepcopy(model)
    if _has_adapter(copy_):
        merge_adapters_in_place(copy_)
    target = torch_dtype_of(dtype) or (
        torch.bfloat16 if next(model.parameters()).dtype == torch.bfloat16 else torch.float16
    )
    copy_.to(target)
    copy_.eval()
    copy_.tokenizer = tokenizer
    return copy_


def describe_training(model, settings: dict, metrics: dict | None = None) -> None:
    """Record how `model` was fine-tuned (the run's settings as engine.hub.shown_settings picks them, the base and
    trained metrics), for the model card every later save writes."""
    from engine.hub import shown_settings

    model._lacker_card = {"settings": shown_settings(settings), "metrics": dict(metrics or {})}


def model_card(model, name: str) -> str:
    """README.md of a saved classifier: how to load it from `name` in plain transformers, its classes and, once
    `describe_training` has run, its training and metrics."""
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    base = model._lacker_base_name
    lines = ["---", "library_name: transformers", "pipeline_tag: text-classification", "tags:", "- lacker-studio",
             *([f"base_model: {base}"] if not Path(base).expanduser().exists() else []), "---", "",
             f"# A text classifier fine-tuned from {base}", "",
             f"Classes: {', '.join(f'`{label}`' for label in labels)}.", "", "```python",
             "from transformers import pipeline", "",
             f'classifier = pipeline("text-classification", model="{name}")',
             'print(classifier("a text to classify"))', "```"]
    card = getattr(model, "_lacker_card", None)
    if card and card["metrics"]:
        lines += ["", "## On the held-out split", "", "| metric | base | fine-tuned |", "|---|---|---|"]
        base_metrics, trained = card["metrics"].get("base", {}), card["metrics"].get("trained", {})
        for metric in ("accuracy", "macro_f1"):
            if metric in base_metrics or metric in trained:
                lines.append(f"| {metric} | {_number(base_metrics.get(metric))} | {_number(trained.get(metric))} |")
    if card and card["settings"]:
        lines += ["", "## Training settings", ""] + [f"- `{key}`: {value}" for key, value in card["settings"].items()]
    return "\n".join(lines) + "\n"


def _number(value) -> str:
    return "" if value is None else f"{value:.4f}"


def _save_folder(model, save_directory, **kwargs) -> str:
    """The model (the adapter alone, where it has one) with its tokenizer and card."""
    folder = Path(save_directory)
    type(model).save_pretrained(model, str(folder), **kwargs)
    model.tokenizer.save_pretrained(str(folder))
    if _has_adapter(model):  # the classes, for loading the adapter onto a base with a head of the right size
        (folder / "labels.json").write_text(json.dumps([model.config.id2label[i]
                                                        for i in range(model.config.num_labels)]))
    (folder / "README.md").write_text(model_card(model, str(folder)))
    return str(folder)


def save_pretrained(self, save_directory, **kwargs) -> str:
    """transformers' `save_pretrained` (same arguments: the adapter alone where the model has one), plus the
    tokenizer and a model card."""
    return _save_folder(self, save_directory, **kwargs)


def save_pretrained_merged(self, save_directory, dtype=None, **kwargs) -> str:
    """Write a merged 16-bit model (with tokenizer and card) that loads in plain transformers:
    `AutoModelForSequenceClassification.from_pretrained(DIR)`, `pipeline("text-classification", model=DIR)`."""
    merged = merged_copy(self, dtype=dtype)
    merged._lacker_base_name = self._lacker_base_name
    merged._lacker_card = getattr(self, "_lacker_card", None)
    return _save_folder(merged, save_directory, **kwargs)


def _push(model, repo_id: str, token: str | None = None, private: bool | None = None,
          commit_message: str = "Upload from Lacker Studio") -> str:
    import tempfile

    from engine.hub import point_adapter_at_hub_base, push_folder

    with tempfile.TemporaryDirectory() as folder:
        _save_folder(model, folder)
        (Path(folder) / "README.md").write_text(model_card(model, repo_id))
        point_adapter_at_hub_base(Path(folder), model._lacker_base_name)
        return push_folder(folder, repo_id, token=token, private=private, commit_message=commit_message)


def push_to_hub(self, repo_id: str, token: str | None = None, private: bool | None = None,
                commit_message: str = "Upload from Lacker Studio") -> str:
    """Upload the LoRA adapter (or, without adapters, the model) with its tokenizer and card; returns the repo's
    URL. The token comes from `token=`, else HF_TOKEN, else `hf auth login`."""
    return _push(self, repo_id, token, private, commit_message)


def push_to_hub_merged(self, repo_id: str, token: str | None = None, private: bool | None = None,
                       commit_message: str = "Upload from Lacker Studio") -> str:
    """Merge the adapters into a 16-bit copy and upload that (as `push_to_hub`)."""
    merged = merged_copy(self)
    merged._lacker_base_name = self._lacker_base_name
    merged._lacker_card = getattr(self, "_lacker_card", None)
    return _push(merged, repo_id, token, private, commit_message)


def _bind_extra_methods(model) -> None:
    for method in (save_pretrained, save_pretrained_merged, push_to_hub, push_to_hub_merged):
        setattr(model, method.__name__, types.MethodType(method, model))
