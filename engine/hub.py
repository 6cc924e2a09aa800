"""What the model card says about a fine-tuning run, and uploading a saved folder to the Hugging Face Hub.

A model's README.md is sentence-transformers' own card, written on every save and push from
`model.model_card_data` (`engine.models.sentence_transformer.FineTuningCard`, for bi- and cross-encoders). `describe_training` records on the
model what a run adds to it: the training settings and the before / after retrieval metrics.
The studio works on saved folders and without torch: `name_model_in_card`, `point_adapter_at_hub_base`
and `push_folder` serve it.

The token comes from the `token` argument, else HF_TOKEN, else the one `hf auth login` stored; it is
passed to huggingface_hub and never written anywhere by us.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

METRIC_NAMES = ("ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100", "map@100")
# The settings the card shows, named as in engine.config.TrainConfig, in this order.
SETTINGS_SHOWN = ("method", "lora_r", "lora_alpha", "steps", "batch_size", "learning_rate", "max_seq_length",
                  "loss", "data")
LORA_SETTINGS = ("lora_r", "lora_alpha")
# The line of a usage snippet that names the model to load: sentence-transformers' card (a SentenceTransformer or
# a CrossEncoder), or a classifier's pipeline("text-classification", model="...") (engine.models.classifier).
USAGE_MODEL_LINE = re.compile(
    r'(model = (?:SentenceTransformer|CrossEncoder)\("|pipeline\("text-classification", model=")[^"\n]*(")')


def describe_training(model, settings: dict, metrics: dict | None = None) -> None:
    """Record on `model` how it was fine-tuned, so that every later save (`save_pretrained`,
    `save_pretrained_merged`) and push (`push_to_hub`, `push_to_hub_merged`) writes it into the model card.

    Args:
        model: a model from `FastSentenceTransformer.from_pretrained`.
        settings: the run's settings, named as in `engine.config.TrainConfig`, plus `loss` (a
            sentence-transformers loss name) and `steps` (the steps trained). The card shows those in
            `SETTINGS_SHOWN` that are set; `data` as `data_name` says, else by file name only, so no local
            path is published.
        metrics: retrieval metrics on the held-out split, `{"base": {...}, "trained": {...}}` keyed
            by `METRIC_NAMES`. Call again to add them once they are measured.

    Example::

        from engine import FastSentenceTransformer, hub

        model = FastSentenceTransformer.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
        FastSentenceTransformer.get_peft_model(model, r=16)
        ...  # train
        hub.describe_training(model, {"method": "lora", "lora_r": 16, "loss": "MultipleNegativesRankingLoss",
                                      "data": "pairs.csv"}, {"base": {"ndcg@10": 0.61}, "trained": {"ndcg@10": 0.74}})
        model.save_pretrained_merged("out/merged")  # out/merged/README.md carries both
    """
    card = model.model_card_data
    if not hasattr(card, "training_settings"):
        raise TypeError(f"{type(card).__name__} has no place for the training description; "
                        "load the model with FastSentenceTransformer.from_pretrained")
    shown = shown_settings(settings)
    card.training_settings = shown
    card.retrieval_metrics = dict(metrics or {})
    # sentence-transformers writes a new card, rather than the one of the model it loaded, only for a
    # model carrying this tag; its trainer adds it, our packed loop does not.
    card.add_tags("generated_from_trainer")
    if "loss" in shown:
        card.add_tags(f"loss:{shown['loss']}")
    for dataset in card.train_datasets:  # recorded by sentence-transformers' trainer, unnamed for a local file
        dataset["name"] = dataset.get("name") or shown.get("data")


def shown_settings(settings: dict) -> dict:
    """The settings a model card shows (SETTINGS_SHOWN that are set; no LoRA settings for full fine-tuning), the data
    by the name the user knows it by (`data_name`) or its file name only, so that no local path is published."""
    shown = {key: settings[key] for key in SETTINGS_SHOWN if settings.get(key) is not None}
    if shown.get("method") == "full":
        for key in LORA_SETTINGS:
            shown.pop(key, None)
    if "data" in shown:
        shown["data"] = settings.get("data_name") or _data_name(shown["data"])
    return shown


def _data_name(data) -> str:
    """How the card names a run's data: a local file by its name, a Hugging Face dataset by its id."""
    path = Path(str(data)).expanduser()
    return path.name if path.exists() else str(data)


def fine_tuning_section(settings: dict, metrics: dict) -> str:
    """The card's markdown section for `describe_training`'s settings and metrics."""
    lines = ["## Fine-tuning with Lacker Studio", "",
             "Trained with [Lacker Studio](https://pypi.org/project/lacker-studio/)."]
    if metrics.get("base") or metrics.get("trained"):
        lines += ["", "### Retrieval on the held-out split", "", metrics_table(metrics)]
    if settings:
        lines += ["", "### Training settings", ""] + [f"- `{key}`: {value}" for key, value in settings.items()]
    return "\n".join(lines)


def metric_rows(metrics: dict) -> list[tuple[str, float | None, float | None, str]]:
    """(metric, base, fine-tuned, change such as "+0.0312" or "") for each of METRIC_NAMES measured in
    `metrics` ({"base": {...}, "trained": {...}})."""
    base, trained = metrics.get("base") or {}, metrics.get("trained") or {}
    rows = []
    for name in METRIC_NAMES:
        if name in base or name in trained:
            before, after = base.get(name), trained.get(name)
            rows.append((name, before, after, f"{after - before:+.4f}" if None not in (before, after) else ""))
    return rows


def metrics_table(metrics: dict) -> str:
    """`metric_rows` as a markdown table."""
    lines = ["| metric | base | fine-tuned | change |", "|---|---|---|---|"]
    for name, before, after, change in metric_rows(metrics):
        lines.append(f"| {name} | {_number(before)} | {_number(after)} | {change} |")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def name_model_in_card(folder, name: str) -> None:
    """Make the usage snippet in `folder`'s README.md load `name`: the repo id it is pushed to, or
    where a copy of the folder goes. A folder saved without a card is left without one."""
    readme = Path(folder) / "README.md"
    if readme.exists():
        readme.write_text(USAGE_MODEL_LINE.sub(lambda line: f"{line[1]}{name}{line[2]}", readme.read_text()))


def point_adapter_at_hub_base(folder: Path, base_model: str) -> None:
    """An adapter saved locally names its base by local path; on the Hub it must name the hub id."""
    for config_path in Path(folder).rglob("adapter_config.json"):
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = base_model
        config_path.write_text(json.dumps(config, indent=2))


def push_folder(folder, repo_id: str, token: str | None = None, private: bool | None = None,
                commit_message: str = "Upload from Lacker Studio") -> str:
    """Create `repo_id` if needed and upload every file of `folder`; returns the repo's URL."""
    from huggingface_hub import HfApi

    # Read HF_ENDPOINT now, not when huggingface_hub was imported, so a studio can be pointed elsewhere.
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token or None)
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, repo_type="model")
    return str(repo_url)
