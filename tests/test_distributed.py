"""Data-parallel training (engine.distributed) on the CPU: two gloo ranks started by torchrun, as `lacker train
--gpus 2` starts them on two GPUs. Two ranks at batch 4 train as one process at batch 8, step by step, because
the in-batch negatives are gathered across ranks (without the gathering they would not: that is checked too);
only rank 0 writes; a checkpoint of two ranks resumes on one; a stop ends every rank; a rank that fails or is
killed ends the run with its error named. tests/distributed_ranks.py is what the ranks run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench import models
from distributed_ranks import BATCH_PER_RANK, STEPS, train_loop
from engine.distributed import World
from test_loop import ANCHORS, POSITIVES

TESTS = Path(__file__).parent
ROOT = TESTS.parent
LAUNCH_TIMEOUT = 600  # a hung run fails the test instead of the suite


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def _ranks(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               str(TESTS / "distributed_ranks.py"), *args]
    return subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return models.build("tiny-bert", tmp_path_factory.mktemp("m") / "bert")


@pytest.fixture(scope="module")
def two_rank_loops(bert, tmp_path_factory):
    out = tmp_path_factory.mktemp("loops") / "results.pt"
    done = _ranks("loops", str(bert), str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def one_process(bert):
    """The same training in this process alone, at the two ranks' global batch."""
    return {loss: train_loop(bert, cached=loss == "cached", world=World()) for loss in ("gathered", "cached")}


@pytest.mark.parametrize("loss", ["gathered", "cached"])
def test_two_ranks_train_as_one_process_at_twice_the_batch(one_process, two_rank_loops, loss):
    """MultipleNegativesRankingLoss with a hard-negative column, and its cached form (mini-batches of 4); the
    plan's short last batch of the epoch (2 rows: one a rank) is among the steps."""
    one, two = one_process[loss], two_rank_loops[loss]
    assert two["plan"] == one["plan"] and min(map(len, one["plan"])) < 2 * BATCH_PER_RANK
    assert len(two["losses"]) == STEPS
    assert two["losses"] == pytest.approx(one["losses"], abs=1e-4)
    for name, weight in one["weights"].items():
        torch.testing.assert_close(two["weights"][name], weight, rtol=1e-4, atol=1e-5)


def test_without_gathering_the_negatives_two_ranks_train_differently(one_process, two_rank_loops):
    """What the test above would see if each rank scored its anchors against its own candidates only (plain DDP):
    the gathering is what makes the two runs equal."""
    one = one_process["gathered"]
    local = two_rank_loops["local"]["losses"]
    assert max(abs(a - b) for a, b in zip(local, one["losses"])) > 0.1


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    from tiny_models import build_tiny_model

    folder = tmp_path_factory.mktemp("data")
    data = folder / "pairs.csv"
    pd.DataFrame({"question": ANCHORS * 3, "answer": POSITIVES * 3}).drop_duplicates().to_csv(data, index=False)
    model = build_tiny_model("bert", folder / "bert")
    config = json.loads((model / "config.json").read_text())  # dropout off: ranks draw other masks than one process
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model / "config.json").write_text(json.dumps(config))
    return model, data


def _train_flags(model, data, output, **extra) -> list[str]:
    flags = {"model": model, "data": data, "batch-size": 4, "max-steps": 6, "loop": "on", "max-seq-length": 32,
             "output": output, **extra}
    return [word for name, value in flags.items() for word in (f"--{name}", str(value))]


def test_lacker_train_on_two_ranks_writes_once_and_its_checkpoint_resumes_on_one(pairs, tmp_path):
    from engine.train import train

    model, data = pairs
    run_dir = tmp_path / "two"
    done = subprocess.run([sys.executable, "-m", "engine", "train", "--gpus", "2",
                           *_train_flags(model, data, run_dir, **{"save-steps": 3})],
                          env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("saved to") == 1  # rank 0 prints the summary, the others print nothing

    events = _events(run_dir)
    assert events[0]["world_size"] == 2 and not any("world_size" in e for e in events[1:])
    assert [e["step"] for e in events if e["event"] == "train"] == [1, 2, 3, 4, 5, 6]  # one rank wrote them
    assert [e["status"] for e in events if e["event"] == "status"][-1] == "completed"
    assert any("2 ranks at batch 4 each" in e.get("message", "") for e in events)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-6"]
    assert (run_dir / "adapter").is_dir() and (run_dir / "merged").is_dir() and (run_dir / "metrics.json").exists()
    assert not list(run_dir.rglob("*.tmp*"))  # no rank left a half-written folder behind

    resumed = tmp_path / "one"
    train({"model": str(model), "data": str(data), "batch_size": 8, "max_steps": 6, "loop": "on",
           "max_seq_length": 32, "evaluate": False, "output_dir": str(resumed),
           "resume_from_checkpoint": str(run_dir / "checkpoints" / "checkpoint-3")})
    two_ranks = {e["step"]: e["loss"] for e in events if e["event"] == "train"}
    one_rank = {e["step"]: e["loss"] for e in _events(resumed) if e["event"] == "train"}
    assert sorted(one_rank) == [4, 5, 6]  # it went on where the two ranks' checkpoint was
    assert [one_rank[s] for s in (4, 5, 6)] == pytest.approx([two_ranks[s] for s in (4, 5, 6)], abs=1e-4)


def _worker_run(tmp_path, pairs, name: str, steps: int) -> Path:
    model, data = pairs
    run_dir = tmp_path / name
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({
        "model": str(model), "data": str(data), "batch_size": 4, "max_steps": steps, "loop": "on",
        "max_seq_length": 32, "evaluate": False, "gpus": 2, "save_seconds": 0}))
    return run_dir


def test_sigterm_to_the_worker_stops_every_rank_after_a_step_and_saves(pairs, tmp_path):
    run_dir = _worker_run(tmp_path, pairs, "stop", steps=5000)
    worker = subprocess.Popen([sys.executable, "-m", "engine.worker", str(run_dir)], env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        log = run_dir / "events.jsonl"
        while worker.poll() is None and not (log.exists() and '"train"' in log.read_text()):
            time.sleep(0.5)
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=LAUNCH_TIMEOUT)
    finally:
        worker.kill()
    assert worker.returncode == 0, stderr[-3000:]  # stopped, not failed, though torchrun exits 1 after a signal
    events = _events(run_dir)
    last = [e for e in events if e["event"] == "status"][-1]
    steps = [e["step"] for e in events if e["event"] == "train"]
    assert last["status"] == "stopped" and last["message"] == f"{steps[-1]} steps" and steps[-1] < 5000
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == [f"checkpoint-{steps[-1]}"]
    assert (run_dir / "merged").is_dir()


@pytest.mark.parametrize("how, said", [
    ("fail", "rank 1 of 2 failed: RuntimeError: the disk of rank one caught fire"),
    ("kill", "another of the 2 ranks stopped answering (killed, out of memory, or its host lost)"),
])
def test_a_rank_that_fails_or_is_killed_ends_the_run_naming_its_error(pairs, tmp_path, how, said):
    """Rank 1 raises, or is killed by SIGKILL, at its third step: rank 0 does not wait for it, the run fails with
    rank 1's error (or, killed, with what rank 0 knows), torchrun exits non-zero and no rank is left running."""
    run_dir = _worker_run(tmp_path, pairs, how, steps=50)
    done = _ranks(how, str(run_dir))
    assert done.returncode != 0
    events = _events(run_dir)
    errors = [e for e in events if e["event"] == "error"]
    assert errors[-1]["error"] == said and not errors[-1]["bad_input"]
    assert [e["status"] for e in events if e["event"] == "status"][-1] == "failed"
    leftover = subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True, text=True).stdout.split()
    assert leftover == []


def test_the_trainer_path_trains_on_two_ranks_through_sentence_transformers_ddp(pairs, tmp_path):
    """With the loop off, sentence-transformers' trainer runs the DDP (negatives gathered across ranks by the loss
    itself); the same one writer and one set of events."""
    model, data = pairs
    run_dir = tmp_path / "trainer"
    done = subprocess.run([sys.executable, "-m", "engine", "train", "--gpus", "2",
                           *_train_flags(model, data, run_dir, loop="off", **{"max-steps": 4}), "--no-eval"],
                          env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    events = _events(run_dir)
    assert events[0]["world_size"] == 2
    assert [e["step"] for e in events if e["event"] == "train"] == [1, 2, 3, 4]
    assert not any("packed loop" in e.get("message", "") for e in events if e["event"] == "status")
    assert [e["status"] for e in events if e["event"] == "status"][-1] == "completed"
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["checkpoint-4"] and (run_dir / "merged").is_dir()
