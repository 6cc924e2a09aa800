"""The engine as a user drives it: the source document's inference example, model resolution, the
worker's stop / resume / reproducibility, and the CLI end to end (pushes: test_model_card.py)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from bad_inputs import run_cli
from engine import FastSentenceTransformer
from engine.resolve import ModelNotAvailable
from tiny_models import build_tiny_model

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_model("bert", tmp_path_factory.mktemp("tiny") / "bert")


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "pairs.csv"
    pd.DataFrame({
        "question": [f"what does package {i} do for topic {i % 7}" for i in range(64)],
        "answer": [f"package {i} is a tool about topic {i % 7} with feature {i * 3}" for i in range(64)],
    }).to_csv(path, index=False)
    return path


def _events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _write_config(run_dir: Path, **values) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(values))


def test_source_document_inference_example_ranks_mars_first():
    model = FastSentenceTransformer.from_pretrained("sentence-transformers/all-MiniLM-L6-v2", for_inference=True)
    query = "Which planet is known as the Red Planet?"
    documents = [
        "Venus is often called Earth's twin because of its similar size and proximity.",
        "Mars, known for its reddish appearance, is often referred to as the Red Planet.",
        "Jupiter, the largest planet in our solar system, has a prominent red spot.",
        "Saturn, famous for its rings, is sometimes mistaken for the Red Planet.",
    ]
    query_embedding = model.encode_query(query)
    document_embedding = model.encode_document(documents)
    assert query_embedding.shape == (384,) and document_embedding.shape == (4, 384)
    similarity = model.similarity(query_embedding, document_embedding)
    assert int(similarity.argmax()) == 1
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_unknown_model_says_it_is_not_available_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailable, match="not available offline.*local folder"):
        FastSentenceTransformer.from_pretrained("nobody/no-such-model-xyz")
    with pytest.raises(ModelNotAvailable, match="holds no model"):
        FastSentenceTransformer.from_pretrained(str(tmp_path))


def test_merged_model_loads_without_this_package(tiny_bert, pairs_csv, tmp_path):
    run_dir = tmp_path / "run"
    _write_config(run_dir, model=str(tiny_bert), data=str(pairs_csv), max_steps=2, batch_size=8,
                  max_seq_length=32, evaluate=False)
    subprocess.run([sys.executable, "-m", "engine.worker", str(run_dir)], cwd=REPO, check=True, capture_output=True)
    # `engine` is made unimportable, and nothing in the saved folder may name it.
    script = ("import sys; sys.modules['engine'] = None\n"
              "from sentence_transformers import SentenceTransformer\n"
              "from transformers import AutoModel\n"
              f"m = SentenceTransformer({str(run_dir / 'merged')!r}, device='cpu')\n"
              f"AutoModel.from_pretrained({str(run_dir / 'merged')!r})\n"
              "print(m.encode(['hello']).shape)")
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(1, 64)" in out.stdout
    for file in [*(run_dir / "merged").glob("config*.json"), run_dir / "merged" / "modules.json"]:
        assert "engine." not in file.read_text(), f"{file} names a module of this package"


def test_worker_stops_cleanly_on_sigterm(tiny_bert, pairs_csv, tmp_path):
    run_dir = tmp_path / "run"
    _write_config(run_dir, model=str(tiny_bert), data=str(pairs_csv), max_steps=5000, batch_size=8,
                  max_seq_length=32, evaluate=False)
    with (run_dir / "worker.log").open("w") as log:
        worker = subprocess.Popen([sys.executable, "-m", "engine.worker", str(run_dir)], cwd=REPO,
                                  stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and not any(e["event"] == "train" for e in _events(run_dir)):
        time.sleep(0.5)
        assert worker.poll() is None, (run_dir / "worker.log").read_text()[-3000:]
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=120) == 0
    events = _events(run_dir)
    assert events[-1]["event"] == "status" and events[-1]["status"] == "stopped"
    last_step = max(e["step"] for e in events if e["event"] == "train")
    assert last_step < 5000
    assert (run_dir / "checkpoints" / f"checkpoint-{last_step}").is_dir()
    assert (run_dir / "merged" / "model.safetensors").exists()


def test_resume_continues_from_the_latest_checkpoint_and_seed_reproduces(tiny_bert, pairs_csv, tmp_path):
    from engine.train import train

    common = dict(model=str(tiny_bert), data=str(pairs_csv), batch_size=8, max_seq_length=32, evaluate=False,
                  learning_rate=1e-3, seed=7, warmup_ratio=0.0)
    first = train({**common, "max_steps": 4, "save_steps": 2, "output_dir": str(tmp_path / "a")})
    assert first.steps == 4 and (tmp_path / "a" / "checkpoints" / "checkpoint-4").is_dir()
    train({**common, "max_steps": 4, "save_steps": 2, "output_dir": str(tmp_path / "b")})
    losses = lambda d: [e["loss"] for e in _events(d) if e["event"] == "train"]
    assert losses(tmp_path / "a") == pytest.approx(losses(tmp_path / "b"), rel=1e-5)

    resumed = train({**common, "max_steps": 6, "save_steps": 2, "resume_from_checkpoint": "latest",
                     "output_dir": str(tmp_path / "a")})
    assert resumed.steps == 6
    steps_after_resume = [e["step"] for e in _events(tmp_path / "a") if e["event"] == "train"][4:]
    assert steps_after_resume == [5, 6]


def test_failed_run_reports_the_cause_and_the_fix(tiny_bert, pairs_csv, tmp_path):
    run_dir = tmp_path / "run"
    _write_config(run_dir, model=str(tiny_bert), data=str(pairs_csv), columns={"anchor": "query", "positive": "answer"},
                  max_steps=2)
    out = subprocess.run([sys.executable, "-m", "engine.worker", str(run_dir)], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 1
    error = [e for e in _events(run_dir) if e["event"] == "error"][-1]
    assert "'query'" in error["error"] and "question" in error["error"] and error["hint"]
    assert _events(run_dir)[-1]["status"] == "failed"


def test_cli_train_and_eval_end_to_end(tiny_bert, pairs_csv, tmp_path):
    out_dir = tmp_path / "out"
    distractors = tmp_path / "more.jsonl"
    distractors.write_text("".join(json.dumps({"text": f"unrelated text {i}"}) + "\n" for i in range(20)))
    train = subprocess.run(
        [sys.executable, "-m", "engine", "train", "--model", str(tiny_bert), "--data", str(pairs_csv),
         "--columns", "anchor=question,positive=answer", "--max-steps", "3", "--batch-size", "8",
         "--lora-r", "4", "--lora-alpha", "8", "--learning-rate", "2e-2", "--max-seq-length", "32",
         "--extra-corpus", str(distractors), "--output", str(out_dir)], cwd=REPO, capture_output=True, text=True)
    assert train.returncode == 0, train.stderr[-3000:]
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert set(metrics) == {"base", "trained"}
    assert set(metrics["trained"]) == {"ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100", "map@100"}
    assert (out_dir / "adapter" / "adapter_model.safetensors").exists()
    assert (out_dir / "merged" / "model.safetensors").exists()
    assert [e["step"] for e in _events(out_dir) if e["event"] == "train"] == [1, 2, 3]
    messages = [e["message"] for e in _events(out_dir) if e["event"] == "log"]
    held_out = int(re.search(r"(\d+) held out", " ".join(messages)).group(1))
    assert f"{held_out} queries over {held_out + 20} documents" in " ".join(messages)

    def evaluate(model: Path) -> dict:  # `lacker eval` in this process: its own process is `lacker train`'s above
        code, out, err = run_cli(["eval", "--model", str(model), "--data", str(pairs_csv),
                                  "--columns", "anchor=question,positive=answer"])
        assert code == 0, err[-3000:]
        return json.loads(out[out.index("{"):])

    # Over the pairs it was trained on, the merged model must rank better than the base it started from.
    base, trained = evaluate(tiny_bert)["ndcg@10"], evaluate(out_dir / "merged")["ndcg@10"]
    assert trained > base, f"training did not lift NDCG@10 on its own pairs: {base:.4f} -> {trained:.4f}"

    code, _, err = run_cli(["train", "--data", str(pairs_csv), "--columns", "anchor=q,positive=answer",
                            "--max-steps", "1", "--output", str(tmp_path / "bad")])
    assert code != 0 and "'q'" in err and "question" in err


@pytest.mark.parametrize("kind", ["embedding", "reranker", "classifier"])
def test_lora_over_a_16_bit_base_keeps_fp32_weights_that_small_updates_move(kind, tiny_bert):
    """On a GPU LoRA loads the frozen base in bf16. LoRA's A and B must still be fp32: in bf16 (8 bits of
    mantissa) AdamW's steps at a learning rate of 1e-5 round away and A never moves."""
    from transformers import AutoTokenizer

    from engine import FastClassifier, FastCrossEncoder

    if kind == "classifier":
        model = FastClassifier.get_peft_model(FastClassifier.from_pretrained(
            str(tiny_bert), labels=["a", "b"], dtype="bfloat16", device="cpu"), random_state=0)
        hf = model
    else:
        fast = FastSentenceTransformer if kind == "embedding" else FastCrossEncoder
        model = fast.get_peft_model(fast.from_pretrained(str(tiny_bert), dtype="bfloat16", device="cpu"),
                                    random_state=0)
        hf = model[0].auto_model
    lora = {name: p for name, p in hf.named_parameters() if "lora_" in name}
    assert lora and {p.dtype for p in lora.values()} == {torch.float32}
    assert hf.get_input_embeddings().weight.dtype == torch.bfloat16  # the base stays 16-bit
    before = {name: p.detach().clone() for name, p in lora.items()}
    batch = AutoTokenizer.from_pretrained(str(tiny_bert))(["a package for topic one", "another tool"],
                                                          padding=True, return_tensors="pt")
    optimizer = torch.optim.AdamW([p for p in hf.parameters() if p.requires_grad], lr=1e-5)
    for _ in range(3):  # B starts at 0, so A's first gradient is 0: it moves from the second step on
        optimizer.zero_grad()
        hf(**batch)[0].float().pow(2).mean().backward()
        optimizer.step()
    reached = {name: p for name, p in lora.items() if p.grad is not None}  # not the unused pooler's
    assert len(reached) >= len(lora) - 2
    assert [name for name, p in reached.items() if torch.equal(p, before[name])] == []


def test_qlora_trains_on_a_4bit_base_and_merges_onto_unquantized_weights(tiny_bert, pairs_csv, tmp_path):
    from safetensors.torch import load_file

    from engine.train import train

    result = train({"model": str(tiny_bert), "data": str(pairs_csv), "method": "qlora", "max_steps": 2,
                    "batch_size": 8, "max_seq_length": 32, "learning_rate": 1e-2, "evaluate": False,
                    "output_dir": str(tmp_path / "run")})
    assert result.model[0].auto_model.is_loaded_in_4bit
    merged = load_file(str(tmp_path / "run" / "merged" / "model.safetensors"))
    base = load_file(str(tiny_bert / "model.safetensors"))
    name = "encoder.layer.0.attention.self.query.weight"
    # not 4-bit codes: the merge rebuilds the base unquantized, in the dtype a CPU user runs (float32; 16-bit after a
    # GPU run)
    assert merged[name].dtype in ((torch.bfloat16, torch.float16) if torch.cuda.is_available() else (torch.float32,))
    assert not torch.allclose(merged[name].float(), base[name].float(), atol=1e-3), "the trained adapter was not merged"
    assert torch.allclose(merged["embeddings.word_embeddings.weight"].float(),
                          base["embeddings.word_embeddings.weight"].float(), atol=1e-2)


def test_periodic_evaluation_reports_retrieval_metrics(tiny_bert, pairs_csv, tmp_path):
    from engine.train import train

    train({"model": str(tiny_bert), "data": str(pairs_csv), "max_steps": 4, "eval_steps": 2, "batch_size": 8,
           "max_seq_length": 32, "output_dir": str(tmp_path / "run")})
    evals = [e for e in _events(tmp_path / "run") if e["event"] == "eval"]
    # every 2 steps, then the final measurement (the packed loop, which trains here, does not repeat step 4)
    assert [(e["which"], e["step"]) for e in evals] == [("base", 0), ("trained", 2), ("trained", 4)]
    assert all(set(e["metrics"]) == {"ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100", "map@100"}
               for e in evals)
