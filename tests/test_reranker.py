"""The reranker task: FastCrossEncoder per family (load, LoRA with the head trained in full, two training steps,
merged save that plain sentence-transformers reloads with the same scores), hard-negative mining, the reranker's
bad-data errors, and `lacker train --task reranker` end to end on the bundled all-MiniLM-L6-v2."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from sentence_transformers import CrossEncoder

from bad_inputs import reranker_cases, run_cli
from engine import FastCrossEncoder, FastSentenceTransformer
from engine.config import TrainConfig
from engine.events import EventLog
from engine.models.cross_encoder import head_modules
from engine.tasks import reranker
from tiny_models import build_tiny_model

REPO = Path(__file__).resolve().parent.parent
FAMILIES = ("bert", "xlm-roberta", "distilbert", "mpnet", "modernbert")
PAIRS = [("what compresses files fast?", "zstd is a fast lossless compression algorithm"),
         ("what compresses files fast?", "vim is a highly configurable text editor"),
         ("which program edits text?", "vim is a highly configurable text editor"),
         ("which program edits text?", "zstd is a fast lossless compression algorithm")]


def judged_pairs():
    from datasets import Dataset

    return Dataset.from_dict({"anchor": [q for q, _ in PAIRS] * 4, "document": [d for _, d in PAIRS] * 4,
                              "label": [1.0, 0.0, 1.0, 0.0] * 4})


def two_steps(model, tmp_path):
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    args = CrossEncoderTrainingArguments(output_dir=str(tmp_path / "trainer"), max_steps=2, per_device_train_batch_size=8,
                                         learning_rate=5e-3, report_to=[], use_cpu=True, save_strategy="no",
                                         disable_tqdm=True)
    CrossEncoderTrainer(model=model, args=args, train_dataset=judged_pairs(), loss=BinaryCrossEntropyLoss(model)).train()


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_trains_with_lora_and_its_saves_reload_with_the_same_scores(family, tmp_path):
    """The merged save in plain CrossEncoder; the adapter (LoRA and the head) in FastCrossEncoder."""
    folder = build_tiny_model(family, tmp_path / "base")  # an encoder without a head: it gets a new one
    model = FastCrossEncoder.from_pretrained(str(folder), max_seq_length=64, device="cpu")
    assert isinstance(model, CrossEncoder) and model._lacker_new_head
    FastCrossEncoder.get_peft_model(model, r=4, lora_alpha=8, random_state=0)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    head = head_modules(model[0].auto_model)
    assert any(".lora_A." in name for name in trainable)
    head_params = [name for name in trainable if any(f".{module}." in name for module in head)]
    assert head_params and not any("lora" in name for name in head_params), head_params  # the head in full
    before = model.predict(PAIRS)
    two_steps(model, tmp_path)
    model.eval()
    trained = model.predict(PAIRS)
    assert abs(trained - before).max() > 1e-4, "two steps changed nothing"

    model.save_pretrained_merged(str(tmp_path / "merged"))
    plain = CrossEncoder(str(tmp_path / "merged"), device="cpu")
    assert torch.allclose(torch.tensor(plain.predict(PAIRS), dtype=torch.float32),
                          torch.tensor(trained, dtype=torch.float32), atol=5e-3)  # a 16-bit save

    model.save_pretrained(str(tmp_path / "adapter"))  # the adapter with the head: what resuming and the studio load
    again = FastCrossEncoder.from_pretrained(str(tmp_path / "adapter"), max_seq_length=64, device="cpu")
    again.eval()
    assert torch.allclose(torch.tensor(again.predict(PAIRS)), torch.tensor(trained), atol=1e-5)


def test_a_trained_head_is_kept_and_its_size_checked(tmp_path):
    folder = build_tiny_model("bert", tmp_path / "base")
    model = FastCrossEncoder.from_pretrained(str(folder), device="cpu")
    model.save_pretrained(str(tmp_path / "reranker"))  # now a checkpoint with a sequence-classification head
    again = FastCrossEncoder.from_pretrained(str(tmp_path / "reranker"), device="cpu", for_inference=True)
    assert not again._lacker_new_head
    assert torch.allclose(torch.tensor(again.predict(PAIRS)), torch.tensor(model.eval().predict(PAIRS)), atol=1e-5)
    with pytest.raises(ValueError, match="head with 1 outputs, not 3; pass num_labels=1"):
        FastCrossEncoder.from_pretrained(str(tmp_path / "reranker"), num_labels=3, device="cpu")


def test_qlora_trains_a_reranker_over_a_4_bit_encoder_with_its_head_unquantized(tmp_path):
    """`lacker train --task reranker --method qlora`: the head is trained in full, so the 4-bit load leaves it
    unquantized (quantized, PEFT's trainable copy of it lost bitsandbytes' quantization state and the first step
    failed); the merged model loads in plain CrossEncoder, its encoder rebuilt unquantized and trained."""
    import bitsandbytes as bnb
    from safetensors.torch import load_file

    from engine.train import train

    folder = build_tiny_model("bert", tmp_path / "base")
    model = FastCrossEncoder.from_pretrained(str(folder), load_in_4bit=True, device="cpu")
    assert isinstance(model[0].auto_model.bert.encoder.layer[0].attention.self.query, bnb.nn.Linear4bit)
    assert type(model[0].auto_model.classifier) is torch.nn.Linear  # the head, kept whole
    pairs = tmp_path / "pairs.jsonl"
    pd.read_json(REPO / "assets/debian-pairs/train.jsonl", lines=True).head(40).to_json(pairs, orient="records",
                                                                                        lines=True)
    train({"task": "reranker", "model": str(folder), "data": str(pairs), "method": "qlora", "max_steps": 2,
           "columns": {"anchor": "query", "positive": "document"}, "negatives": 1, "batch_size": 8,
           "max_seq_length": 32, "learning_rate": 1e-2, "evaluate": False, "output_dir": str(tmp_path / "run")})
    plain = CrossEncoder(str(tmp_path / "run" / "merged"), device="cpu")
    assert plain.predict(PAIRS).shape == (len(PAIRS),)
    name = "encoder.layer.0.attention.self.query.weight"
    merged = load_file(str(tmp_path / "run" / "merged" / "model.safetensors"))
    base = load_file(str(folder / "model.safetensors"))
    assert merged[f"bert.{name}"].dtype == torch.float32  # not 4-bit codes: the base rebuilt, as a CPU user runs it
    assert not torch.allclose(merged[f"bert.{name}"], base[name], atol=1e-3), "the trained adapter was not merged"


def test_a_16_bit_checkpoint_is_fully_fine_tuned_in_fp32(tmp_path):
    """A checkpoint saved in fp16 (as many on the Hub are) trains with fp32 weights: in fp16, AdamW's epsilon is 0
    and its first update turned every weight NaN (the GPU reranker run diverged at step 2)."""
    from transformers import AutoModel

    folder = build_tiny_model("bert", tmp_path / "base")
    AutoModel.from_pretrained(str(folder), dtype=torch.float16).save_pretrained(folder)
    for model in (FastCrossEncoder.from_pretrained(str(folder), full_finetuning=True, device="cpu"),
                  FastSentenceTransformer.from_pretrained(str(folder), full_finetuning=True, device="cpu")):
        assert {p.dtype for p in model.parameters()} == {torch.float32}, type(model).__name__


class Events(EventLog):
    def __init__(self):
        super().__init__(None)
        self.seen: list[dict] = []

    def emit(self, event, **fields):
        self.seen.append({"event": event, **fields})
        return fields


def test_mining_adds_hard_negatives_and_reports_an_example():
    rows = pd.read_json(REPO / "assets/debian-pairs/test.jsonl", lines=True).head(60)
    rows = rows.rename(columns={"query": "anchor", "document": "positive"})[["anchor", "positive"]]
    events = Events()
    config = TrainConfig(task="reranker", data="x", negatives=2)
    mined = reranker.training_rows(rows, "BinaryCrossEntropyLoss", config, events)
    per_query = mined.groupby("anchor")["label"].agg(["sum", "count"])
    assert (per_query["sum"] == 1).all() and (per_query["count"] > 1).mean() > 0.9  # one positive, negatives beside
    positives = dict(zip(rows["anchor"], rows["positive"]))
    negatives = mined[mined["label"] == 0]
    assert not (negatives["document"] == negatives["anchor"].map(positives)).any()
    report = next(e for e in events.seen if e["event"] == "mining")
    assert report["seconds"] > 0 and len(report["example"]["negatives"]) == 2
    assert report["example"]["positive"] == positives[report["example"]["query"]]
    assert 1.5 < reranker.positive_weight(mined["label"]) <= 2.0  # negatives per positive


def test_the_listwise_losses_get_one_row_per_query():
    rows = pd.DataFrame({"anchor": ["q1", "q1", "q2"], "positive": ["a", "b", "c"], "label": [1, 0, 1]})
    listed = reranker.training_rows(rows, "ListNetLoss", TrainConfig(task="reranker", data="x"), Events())
    assert listed.to_dict("list") == {"anchor": ["q1", "q2"], "documents": [["a", "b"], ["c"]],
                                      "labels": [[1.0, 0.0], [1.0]]}


@pytest.mark.parametrize("case", reranker_cases(), ids=[case.name for case in reranker_cases()])
def test_the_cli_names_each_reranker_data_problem(case, tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    argv = ["train", "--data", str(case.write(tmp_path)), "--output", str(tmp_path / "run")]
    for key, value in case.settings.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    code, _out, stderr = run_cli(argv)
    assert code == 2, stderr
    missing = [words for words in case.expect if words not in stderr]
    assert not missing and "Traceback" not in stderr, stderr


def test_lacker_train_reranker_end_to_end_on_the_bundled_minilm(tmp_path, monkeypatch):
    """A short run: mining, training, both orders measured, a merged model for plain sentence-transformers. Whether
    a real run beats the retriever is tests/gpu/test_reranker_gpu.py's question (it takes hundreds of steps)."""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    rows = pd.read_json(REPO / "assets/debian-pairs/train.jsonl", lines=True).head(120)
    data = tmp_path / "pairs.jsonl"
    rows.to_json(data, orient="records", lines=True)
    output = tmp_path / "run"
    code, out, err = run_cli(["train", "--task", "reranker", "--model", "sentence-transformers/all-MiniLM-L6-v2",
                              "--data", str(data), "--columns", "anchor=query,positive=document", "--full-finetune",
                              "--max-steps", "3", "--batch-size", "8", "--learning-rate", "2e-5", "--negatives", "2",
                              "--max-seq-length", "64", "--eval-size", "20", "--output", str(output)])
    assert code == 0, err
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["base"]["ndcg@10"] == metrics["base"]["retriever_ndcg@10"]  # a new head: the base is the retriever
    assert set(metrics["trained"]) == {"ndcg@10", "mrr@10", "retriever_ndcg@10", "retriever_mrr@10"}
    assert metrics["trained"]["retriever_ndcg@10"] == metrics["base"]["retriever_ndcg@10"]  # the same candidates
    events = [json.loads(line) for line in (output / "events.jsonl").read_text().splitlines()]
    mining = next(e for e in events if e["event"] == "mining")
    assert len(mining["example"]["negatives"]) == 2
    training = [e["message"] for e in events if e["event"] == "status" and e["status"] == "training"]
    assert training == ["full on sentence-transformers/all-MiniLM-L6-v2 (packed loop)"], training  # BCE: the fast path
    assert not (output / "adapter").exists()  # full fine-tuning saves the merged model only
    card = (output / "merged" / "README.md").read_text()
    assert f'CrossEncoder("{output / "merged"}")' in card and "| ndcg@10 |" in card  # loads the folder; the metrics
    plain = CrossEncoder(str(output / "merged"), device="cpu")
    assert plain.num_labels == 1 and len(plain.predict([(rows["query"][0], rows["document"][0])])) == 1


def test_a_stopped_lora_run_resumes_its_adapter_and_head_as_if_never_stopped(tmp_path):
    """The stock trainer's resume of a LoRA reranker (CrossEncoderTrainer's own reloads an adapter folder as a whole
    model and fails): the losses after the resume are those of the run that was never stopped."""
    from training_checks import assert_resumes_as_if_never_stopped

    queries = [f"how do I use tool {i}?" for i in range(24)]
    documents = [f"tool {i} does task {i} from the command line" for i in range(24)]
    config = {"task": "reranker", "model": str(build_tiny_model("bert", tmp_path / "base")),
              "data": pd.DataFrame({"q": queries, "d": documents, "n": documents[1:] + documents[:1]}),
              "columns": {"anchor": "q", "positive": "d", "negative": "n"}, "max_steps": 4, "batch_size": 4,
              "max_seq_length": 32, "learning_rate": 5e-3, "evaluate": False, "method": "lora",
              "loop": "off"}  # the stock trainer's resume (the packed loop's: test_packed_tasks)
    assert_resumes_as_if_never_stopped(config, tmp_path)
    plain = CrossEncoder(str(tmp_path / "run" / "merged"), device="cpu")
    whole = CrossEncoder(str(tmp_path / "whole" / "merged"), device="cpu")
    assert torch.allclose(torch.tensor(plain.predict(PAIRS)), torch.tensor(whole.predict(PAIRS)), atol=1e-3)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_run_from_a_saved_reranker_adapter_starts_where_that_run_ended(method, tmp_path):
    """A second run whose model is the first run's adapter/ (as the shipped starter reranker is one): its base is
    that cross-encoder, measured with its trained head (the first run's trained scores, not the retriever's order),
    and it trains on from there, with a new adapter or in full."""
    from engine.train import train

    queries = [f"how do I use tool {i}?" for i in range(40)]
    documents = [f"tool {i} does task {i} from the command line" for i in range(40)]
    data = pd.DataFrame({"q": queries, "d": documents, "n": documents[1:] + documents[:1]})
    settings = {"task": "reranker", "data": data, "columns": {"anchor": "q", "positive": "d", "negative": "n"},
                "max_steps": 3, "batch_size": 8, "max_seq_length": 32, "learning_rate": 5e-3, "eval_size": 10,
                "method": "lora"}
    first = train({**settings, "model": str(build_tiny_model("bert", tmp_path / "base")),
                   "output_dir": str(tmp_path / "first")}).metrics
    assert first["base"]["ndcg@10"] == first["base"]["retriever_ndcg@10"]  # a new head: the base is the retriever
    second = train({**settings, "model": str(tmp_path / "first" / "adapter"), "method": method,
                    "output_dir": str(tmp_path / "second")}).metrics
    assert second["base"] == pytest.approx(first["trained"], abs=1e-6)  # the same held-out split, the same model
    merged = CrossEncoder(str(tmp_path / "second" / "merged"), device="cpu")
    after_first = CrossEncoder(str(tmp_path / "first" / "merged"), device="cpu")
    assert abs(merged.predict(PAIRS) - after_first.predict(PAIRS)).max() > 1e-4, "the second run trained nothing"
