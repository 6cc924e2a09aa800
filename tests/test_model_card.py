"""The model card a user finds beside a saved, exported or pushed model: sentence-transformers' own card,
loading that model (never the base), with the run's settings and before / after metrics; pushes that
take every argument of SentenceTransformer.push_to_hub; and no bitsandbytes warning on a plain load."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from sentence_transformers import SentenceTransformer

from engine import FastSentenceTransformer
from engine.hub import describe_training
from hub_standin import HubStandIn
from studio.exporting import push_model, save_model, zip_model
from studio.settings import Settings
from studio.store import Run
from tiny_models import build_tiny_model

REPO = Path(__file__).resolve().parent.parent
METRICS = {"base": {"ndcg@10": 0.5, "mrr@10": 0.4}, "trained": {"ndcg@10": 0.75, "mrr@10": 0.7}}
METRIC_ROW = "| ndcg@10 | 0.5000 | 0.7500 | +0.2500 |"


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_model("bert", tmp_path_factory.mktemp("tiny") / "bert")


@pytest.fixture
def trained_model(tiny_bert, tmp_path):
    """A tiny model with a LoRA adapter and a described run, as engine.train leaves it before saving."""
    data = tmp_path / "private" / "pairs.csv"
    data.parent.mkdir()
    data.write_text("anchor,positive\nq,d\n")
    model = FastSentenceTransformer.from_pretrained(str(tiny_bert))
    FastSentenceTransformer.get_peft_model(model, r=4, lora_alpha=8)
    settings = {"method": "lora", "lora_r": 4, "lora_alpha": 8, "steps": 12, "batch_size": 8, "learning_rate": 2e-4,
                "max_seq_length": 32, "loss": "MultipleNegativesRankingLoss", "data": str(data),
                "output_dir": str(tmp_path / "run")}
    describe_training(model, settings, METRICS)
    return model


def _usage_lines(card: str) -> list[str]:
    return [line for line in card.splitlines() if "SentenceTransformer(" in line and "model =" in line]


def test_a_merged_save_carries_sentence_transformers_card_with_the_run(trained_model, tiny_bert, tmp_path):
    folder = tmp_path / "my-model"
    trained_model.save_pretrained_merged(str(folder))
    card = (folder / "README.md").read_text()

    # sentence-transformers' generated card...
    assert "library_name: sentence-transformers" in card and "### Full Model Architecture" in card
    assert "This is a [sentence-transformers](https://www.SBERT.net) model" in card
    # ...whose usage snippet loads this model, not the base...
    assert _usage_lines(card) == [f'model = SentenceTransformer("{folder}")']
    # ...plus the before / after metrics and the settings, naming the data file but not where it lies.
    assert METRIC_ROW in card and "| mrr@10 | 0.4000 | 0.7000 | +0.3000 |" in card
    for line in ("- `method`: lora", "- `lora_r`: 4", "- `lora_alpha`: 8", "- `steps`: 12", "- `batch_size`: 8",
                 "- `learning_rate`: 0.0002", "- `max_seq_length`: 32", "- `loss`: MultipleNegativesRankingLoss",
                 "- `data`: pairs.csv"):
        assert line in card
    assert "private" not in card and "output_dir" not in card
    assert "loss:MultipleNegativesRankingLoss" in card  # sentence-transformers' tag for the loss
    assert SentenceTransformer(str(folder), device="cpu").encode(["hello"]).shape == (1, 64)


def _weight_dtypes(folder: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
        return {str(weights.get_slice(name).get_dtype()) for name in weights.keys()}


def test_a_model_trained_on_a_cpu_is_saved_in_fp32_unless_asked(trained_model, tmp_path):
    trained_model.save_pretrained_merged(str(tmp_path / "cpu"))
    assert json.loads((tmp_path / "cpu" / "config.json").read_text())["dtype"] == "float32"
    assert _weight_dtypes(tmp_path / "cpu") == {"F32"}
    trained_model.save_pretrained_merged(str(tmp_path / "half"), dtype="float16")
    assert _weight_dtypes(tmp_path / "half") == {"F16"}
    assert next(trained_model.parameters()).dtype == torch.float32  # the model itself is left as it was


def test_the_adapter_save_and_metrics_added_later_reach_the_card(tiny_bert, tmp_path):
    model = FastSentenceTransformer.from_pretrained(str(tiny_bert))
    FastSentenceTransformer.get_peft_model(model, r=4)
    describe_training(model, {"method": "lora", "lora_r": 4, "loss": "MultipleNegativesRankingLoss"})
    model.save_pretrained(str(tmp_path / "adapter"))
    first = (tmp_path / "adapter" / "README.md").read_text()
    assert "- `lora_r`: 4" in first and "Retrieval on the held-out split" not in first
    assert _usage_lines(first) == [f'model = SentenceTransformer("{tmp_path / "adapter"}")']

    describe_training(model, {"method": "lora", "lora_r": 4}, METRICS)
    model.save_pretrained(str(tmp_path / "adapter"))
    assert METRIC_ROW in (tmp_path / "adapter" / "README.md").read_text()


def test_a_full_fine_tune_lists_no_lora_settings(tiny_bert, tmp_path):
    model = FastSentenceTransformer.from_pretrained(str(tiny_bert), full_finetuning=True)
    describe_training(model, {"method": "full", "lora_r": 16, "lora_alpha": 16, "batch_size": 8})
    model.save_pretrained_merged(str(tmp_path / "full"))
    card = (tmp_path / "full" / "README.md").read_text()
    assert "- `method`: full" in card and "- `batch_size`: 8" in card and "lora_r" not in card


def test_the_card_names_the_data_as_the_user_knows_it_not_the_run_folders_copy(tiny_bert, tmp_path):
    copy = tmp_path / "run" / "data" / "train.jsonl"  # where the studio puts the data a run trains on
    copy.parent.mkdir(parents=True)
    copy.write_text('{"anchor": "q", "positive": "d"}\n')
    model = FastSentenceTransformer.from_pretrained(str(tiny_bert), full_finetuning=True)
    describe_training(model, {"method": "full", "data": str(copy), "data_name": "tickets.csv"})
    model.save_pretrained_merged(str(tmp_path / "merged"))
    card = (tmp_path / "merged" / "README.md").read_text()
    assert "- `data`: tickets.csv" in card and "train.jsonl" not in card


def test_a_hub_base_model_is_named_in_the_card_and_its_own_card_is_not_copied(tmp_path):
    model = FastSentenceTransformer.from_pretrained("sentence-transformers/all-MiniLM-L6-v2", max_seq_length=32)
    describe_training(model, {"method": "full", "data": "sentence-transformers/natural-questions"}, METRICS)
    model.save_pretrained_merged(str(tmp_path / "merged"))
    card = (tmp_path / "merged" / "README.md").read_text()
    header = card.split("---")[1]
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in header
    # the base model's own card declares both; they carry over to the fine-tuned one
    assert "license: apache-2.0" in header and "- en" in header
    assert "# SentenceTransformer based on sentence-transformers/all-MiniLM-L6-v2" in card
    assert _usage_lines(card) == [f'model = SentenceTransformer("{tmp_path / "merged"}")']
    assert "- `data`: sentence-transformers/natural-questions" in card and METRIC_ROW in card


def test_push_to_hub_takes_sentence_transformers_arguments(trained_model, tiny_bert):
    plain = SentenceTransformer.push_to_hub.__get__(trained_model)
    assert inspect.signature(trained_model.push_to_hub) == inspect.signature(plain)
    assert inspect.signature(trained_model.push_to_hub_merged) == inspect.signature(plain)


def test_push_adapter_and_merged_model_to_a_hub(trained_model, tiny_bert, monkeypatch):
    with HubStandIn() as hub:
        # huggingface_hub reads HF_ENDPOINT once, when imported; point the imported library at the stand-in.
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
        # replace_model_card=True: without it sentence-transformers first asks the Hub whether the repo has a
        # README.md, a download the stand-in does not serve.
        trained_model.push_to_hub("team/adapter", token="hf_test_token", private=True, safe_serialization=True,
                                  commit_message="adapter from a test", exist_ok=True, replace_model_card=True,
                                  create_pr=False)
        monkeypatch.setenv("HF_TOKEN", "hf_env_token")
        trained_model.push_to_hub_merged("team/merged", replace_model_card=True)
        # The stand-in serves no branches: the request for one shows `revision` reached the Hub.
        with pytest.raises(Exception):
            trained_model.push_to_hub("team/adapter", revision="v2", replace_model_card=True)
        assert any("/branch/v2" in request for request in hub.unhandled)

    adapter, merged = hub.repos["team/adapter"], hub.repos["team/merged"]
    assert "Bearer hf_test_token" in hub.tokens and "Bearer hf_env_token" in hub.tokens
    assert {"adapter_model.safetensors", "adapter_config.json", "modules.json", "README.md"} <= adapter["files"].keys()
    assert json.loads(adapter["files"]["adapter_config.json"])["base_model_name_or_path"] == str(tiny_bert)
    assert {"model.safetensors", "config.json", "modules.json", "README.md"} <= merged["files"].keys()
    assert "adapter_config.json" not in merged["files"]
    assert json.loads(merged["files"]["config.json"])["dtype"] == "float32"  # trained on a CPU: run there in fp32
    assert adapter["private"] and not merged["private"]
    for repo_id, repo in (("team/adapter", adapter), ("team/merged", merged)):
        card = repo["files"]["README.md"].decode()
        assert _usage_lines(card) == [f'model = SentenceTransformer("{repo_id}")'] and METRIC_ROW in card


def test_studio_exports_name_their_own_copy_in_the_card(trained_model, tmp_path, monkeypatch):
    run_dir = tmp_path / "home" / "run-1"
    trained_model.save_pretrained_merged(str(run_dir / "merged"))
    run = Run(id="run-1", created=0.0, status="completed", model="sentence-transformers/all-MiniLM-L6-v2",
              data="pairs.csv", method="lora", run_dir=str(run_dir), metrics=METRICS)
    settings = Settings.from_env({"LACKER_HOME": str(tmp_path / "home")})
    run_card = (run_dir / "merged" / "README.md").read_text()

    with zipfile.ZipFile(zip_model(run, "merged", settings)) as archive:
        assert {name.split("/")[0] for name in archive.namelist()} == {"lacker-run-1-merged"}  # unzips into one folder
        zipped = archive.read("lacker-run-1-merged/README.md").decode()
    assert _usage_lines(zipped) == ['model = SentenceTransformer("lacker-run-1-merged")'] and METRIC_ROW in zipped
    copy = save_model(run, "merged", str(tmp_path / "home" / "exports" / "mine"), settings)
    assert _usage_lines((copy / "README.md").read_text()) == [f'model = SentenceTransformer("{copy}")']
    with HubStandIn() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        push_model(run, "merged", "team/studio", token="hf_test_token", private=True)
    pushed = hub.repos["team/studio"]["files"]["README.md"].decode()
    assert _usage_lines(pushed) == ['model = SentenceTransformer("team/studio")'] and METRIC_ROW in pushed
    assert (run_dir / "merged" / "README.md").read_text() == run_card  # the run folder is left as it was


def test_a_plain_load_shows_no_bitsandbytes_warning_and_a_4bit_load_does(tiny_bert):
    script = ("import sys\n"
              "import engine\n"
              "from engine import FastSentenceTransformer\n"
              "FastSentenceTransformer.from_pretrained('sentence-transformers/all-MiniLM-L6-v2')\n"
              "print('held', len(engine.bitsandbytes_cpu_warnings.records), flush=True)\n"
              "print('PLAIN LOAD DONE', file=sys.stderr, flush=True)\n"
              f"FastSentenceTransformer.from_pretrained({str(tiny_bert)!r}, load_in_4bit=True, device='cpu')\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    plain, four_bit = out.stderr.split("PLAIN LOAD DONE")
    assert "pip install kernels" not in plain
    if "held 0" not in out.stdout:  # this CPU is one where bitsandbytes warns: QLoRA users see it
        assert "pip install kernels" in four_bit


def test_a_trained_runs_cards_load_the_run_folders_and_carry_its_metrics(tiny_bert, tmp_path):
    """engine.train writes merged/ and adapter/ beside and renames them in: their cards name the final folders."""
    from engine.train import train

    pairs = tmp_path / "pairs.csv"
    pairs.write_text("anchor,positive\n" + "".join(f"question {i},answer {i} about it\n" for i in range(40)))
    run = tmp_path / "run"
    result = train({"model": str(tiny_bert), "data": str(pairs), "max_steps": 2, "batch_size": 8,
                    "max_seq_length": 32, "output_dir": str(run)})
    for name in ("merged", "adapter"):
        card = (run / name / "README.md").read_text()
        assert _usage_lines(card) == [f'model = SentenceTransformer("{run / name}")'], name
        assert f"| ndcg@10 | {result.metrics['base']['ndcg@10']:.4f} | {result.metrics['trained']['ndcg@10']:.4f}" in card
    assert json.loads((run / "merged" / "config.json").read_text())["dtype"] == "float32"  # trained on this CPU
    assert not any(p.name.endswith((".tmp", ".old")) for p in run.iterdir())
