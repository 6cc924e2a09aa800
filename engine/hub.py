"""Uploading to the Hugging Face Hub (or whatever HF_ENDPOINT points at), with a model card.

The token comes from the `token` argument, else HF_TOKEN, else the one `hf auth login` stored; it is
passed to huggingface_hub and never written anywhere by us.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

METRIC_NAMES = ("ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100", "map@100")


def push_folder(folder, repo_id: str, token: str | None = None, private: bool | None = None,
                commit_message: str = "Upload from Lacker Studio") -> str:
    """Create `repo_id` if needed and upload every file of `folder`; returns the repo's URL."""
    from huggingface_hub import HfApi

    # Read HF_ENDPOINT now, not when huggingface_hub was imported, so a studio can be pointed elsewhere.
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token or None)
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, repo_type="model")
    return str(repo_url)


def point_adapter_at_hub_base(folder: Path, base_model: str) -> None:
    """An adapter saved locally names its base by local path; on the Hub it must name the hub id."""
    for config_path in folder.rglob("adapter_config.json"):
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = base_model
        config_path.write_text(json.dumps(config, indent=2))


def metrics_table(metrics: dict) -> str:
    """A markdown table of base vs trained retrieval metrics ({"base": {...}, "trained": {...}})."""
    base, trained = metrics.get("base", {}), metrics.get("trained", {})
    rows = ["| metric | base | fine-tuned | change |", "|---|---|---|---|"]
    for name in METRIC_NAMES:
        if name in trained:
            before = base.get(name)
            change = f"{trained[name] - before:+.4f}" if before is not None else ""
            rows.append(f"| {name} | {'' if before is None else f'{before:.4f}'} | {trained[name]:.4f} | {change} |")
    return "\n".join(rows)


def write_model_card(folder: Path, base_model: str, kind: str, metrics: dict | None = None,
                     repo_id: str = "path/to/this/model") -> None:
    """Write README.md: what the model is, how to load it, and the before / after retrieval metrics."""
    if kind == "adapter":
        load = (
            "```python\nfrom sentence_transformers import SentenceTransformer\n\n"
            f"# needs `pip install peft`; loads {base_model} and applies this adapter\n"
            f"model = SentenceTransformer(\"{repo_id}\")\n```"
        )
        what = f"A LoRA adapter for [{base_model}](https://huggingface.co/{base_model})"
    else:
        load = f"```python\nfrom sentence_transformers import SentenceTransformer\n\nmodel = SentenceTransformer(\"{repo_id}\")\n```"
        what = f"A fine-tuned version of [{base_model}](https://huggingface.co/{base_model}), LoRA merged into 16-bit weights" \
            if kind == "merged" else f"A fully fine-tuned version of [{base_model}](https://huggingface.co/{base_model})"
    sections = [
        "---\nlibrary_name: sentence-transformers\npipeline_tag: sentence-similarity\ntags:\n- sentence-transformers\n"
        f"- lacker-studio\nbase_model: {base_model}\n---",
        f"# {kind.capitalize()} model trained with Lacker Studio",
        f"{what}, trained with [Lacker Studio](https://pypi.org/project/lacker-studio/).",
        "## Usage",
        load,
    ]
    if metrics:
        sections += ["## Retrieval on the held-out split", metrics_table(metrics)]
    (folder / "README.md").write_text("\n\n".join(sections) + "\n")
