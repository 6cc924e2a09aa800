"""Data-parallel training on CUDA (NCCL, bf16, CUDA graphs): `pytest -m gpu tests/gpu/test_distributed_gpu.py`.

On one GPU: `lacker train` under torchrun (one rank) trains as it does without it, CUDA graphs on, world_size 1
in the events. On two or more (skipped with fewer): two ranks at batch 4 train as one process at batch 8 within
bf16's tolerance, plain and cached loss, with CUDA graphs captured on every rank; `lacker train --gpus 2` writes
once; a killed rank ends the run. tests/test_distributed.py runs the same on the CPU with gloo."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

from bench import models  # noqa: E402
from distributed_ranks import train_loop  # noqa: E402
from engine.distributed import World  # noqa: E402
from test_distributed import LAUNCH_TIMEOUT, _env, _events, _ranks, _train_flags, _worker_run, pairs  # noqa: E402,F401

two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")


def _lacker_train(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)


def test_one_gpu_under_torchrun_trains_as_without_it(pairs, tmp_path):
    model, data = pairs
    plain, ranked = tmp_path / "plain", tmp_path / "torchrun"
    done = _lacker_train("-m", "engine", "train", *_train_flags(model, data, plain, **{"max-steps": 12}))
    assert done.returncode == 0, done.stderr[-3000:]
    done = _lacker_train("-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", "-m", "engine", "train",
                         *_train_flags(model, data, ranked, **{"max-steps": 12}))
    assert done.returncode == 0, done.stderr[-3000:]
    losses = [[e["loss"] for e in _events(run) if e["event"] == "train"] for run in (plain, ranked)]
    assert len(losses[1]) == 12 and losses[1] == pytest.approx(losses[0], rel=0.02, abs=0.02)
    assert _events(ranked)[0]["world_size"] == 1
    assert not any("CUDA graphs off" in e.get("message", "") for e in _events(ranked))


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return models.build("tiny-bert", tmp_path_factory.mktemp("m") / "bert")


@two_gpus
def test_two_gpus_train_as_one_at_twice_the_batch_with_graphs_on_every_rank(bert, tmp_path):
    out = tmp_path / "results.pt"
    done = _ranks("loops", str(bert), str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    two = torch.load(out, weights_only=False)
    for loss in ("gathered", "cached"):
        one = train_loop(bert, cached=loss == "cached", world=World(), device="cuda")
        assert two[loss]["losses"] == pytest.approx(one["losses"], rel=0.02, abs=0.02), loss
    assert two["gathered"]["graph_note"] is None and two["gathered"]["graphed"]  # NCCL collectives captured


@two_gpus
def test_lacker_train_on_two_gpus_writes_once(pairs, tmp_path):
    model, data = pairs
    run_dir = tmp_path / "two"
    done = _lacker_train("-m", "engine", "train", "--gpus", "2", *_train_flags(model, data, run_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    events = _events(run_dir)
    assert events[0]["world_size"] == 2
    assert [e["step"] for e in events if e["event"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert (run_dir / "merged").is_dir() and json.loads((run_dir / "metrics.json").read_text())["trained"]


@two_gpus
def test_a_killed_rank_ends_a_two_gpu_run(pairs, tmp_path):
    run_dir = _worker_run(tmp_path, pairs, "kill", steps=50)
    done = _ranks("kill", str(run_dir))  # NCCL: rank 0 waits in a collective until torchrun ends it
    assert done.returncode != 0
